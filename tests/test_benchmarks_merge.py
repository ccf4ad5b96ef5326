"""``python -m benchmarks --only NAME --merge``: one group's figures replace their own rows,
details and method section in RESULTS.md, and every other figure stays as it was."""

from __future__ import annotations

from benchmarks._harness import Figure, render
from benchmarks._merge import merge


def _figure(number: str, value: str) -> Figure:
    return Figure(number, f"Figure {number}", value, "-", None, "", "target", True, [value])


def test_merge_replaces_only_the_measured_figures_and_their_method() -> None:
    """Merging C1 twice leaves one C1 row, detail block and method section, each the latest,
    with the other figures' rows, details and methods unchanged and a note saying what was
    measured again."""
    full = render(
        [_figure("1a", "one"), _figure("9f", "nine")],
        mode="",
        seconds=500,
        date="D0",
        load=(0.5, 1.0),
        methods="Intro.\n\n### upload\n\nHow 1a is measured.\n\n### fleet\n\nHow 9f is.",
    )
    options = {"mode": " --only chaos", "seconds": 60.0, "load": (1.0, 2.0)}
    once = merge(
        full, [_figure("C1", "first")], groups={"chaos": "Old chaos."}, date="D1", **options
    )
    twice = merge(
        once, [_figure("C1", "second")], groups={"chaos": "New chaos."}, date="D2", **options
    )

    assert twice.count("| C1 |") == 1
    assert "| C1 | Figure C1 | second |" in twice
    assert twice.count("**C1. Figure C1**") == 1
    assert "- second" in twice
    assert "first" not in twice
    assert twice.count("### chaos") == 1
    assert "New chaos." in twice
    assert "Old chaos." not in twice
    assert twice.count("measured again by") == 1
    assert "on D2" in twice
    for kept in ("| 1a | Figure 1a | one |", "| 9f | Figure 9f | nine |", "- one", "- nine"):
        assert kept in twice
    assert "How 1a is measured." in twice
    assert "How 9f is." in twice
    # The table stays one table: the new row follows the others.
    rows = [line for line in twice.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows][-3:] == ["| 1a", "| 9f", "| C1"]
