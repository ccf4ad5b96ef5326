"""The fleet's chaos harness: a seeded schedule of real faults, a history, invariants at the end.

``tests.chaos.harness`` is the reusable core (``run_seed``), ``tests/chaos/test_chaos.py`` runs a
few fixed seeds in CI, ``python -m benchmarks --only chaos --seeds 50`` runs many, and
``python -m tests.chaos --seed N`` replays one seed and prints its report.
"""
