"""Benchmarks of guru_async against hand-written baselines: ``python -m benchmarks``.

Every figure is a ratio of guru_async to a baseline measured in the same run, on the same
machine, against the same emulator (``guru_async.testing``). The emulator runs in its own
process (``python -m guru_async.testing --json``) so that it does not share the client's event
loop, except where a figure must read or set the emulator's state (token counters, analysis
ready times): those use an in-process ``GuruEmulator`` and say so. Memory is measured in a
fresh child process per measurement (``benchmarks._child``). Temporary files, and the
emulator's stored uploads, live on tmpfs (``/dev/shm``) when it has room, so that disk
writeback does not add noise. Figure groups: ``upload`` (1), ``memory`` (2), ``tokens`` (3),
``polling`` (4), ``overhead`` (5), ``decode`` (6), ``scale`` (7).
"""
