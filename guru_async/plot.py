"""Plot a joint angle over time from Get Joint Data, with each rep shaded and marked.

Needs matplotlib (``pip install "guru-async[plot]"``), imported only when a plot is drawn so the
rest of the SDK never pays for it::

    joints = await guru.get_joint_data(video_id)
    plot_joint_angle(joints, await guru.get_analysis(video_id), "squat.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._models import Analysis, JointData, Rep

KNEE = ("leftHip", "leftKnee", "leftAnkle")
"""The default joints: the angle at the knee, between hip and ankle."""

JOINT_ANGLES: dict[str, tuple[str, str, str]] = {
    "hip-knee": ("Hip", "Knee", "Ankle"),
    "shoulder-elbow": ("Shoulder", "Elbow", "Wrist"),
    "shoulder-hip": ("Shoulder", "Hip", "Knee"),
}
"""Named angles (the middle joint is the vertex), for ``joints_for``."""

_PLOT_EXTRA_HINT = 'plotting needs matplotlib: pip install "guru-async[plot]"'


def joints_for(name: str, side: str = "left") -> tuple[str, str, str]:
    """The three j2p joint names of a named angle, e.g. ``("leftHip", "leftKnee", "leftAnkle")``.

    Args:
        name: One of the keys of :data:`JOINT_ANGLES`, e.g. ``"hip-knee"``.
        side: ``"left"`` or ``"right"``.

    Raises:
        ValueError: An unknown name or side (the message lists the accepted values).
    """
    if side not in ("left", "right"):
        raise ValueError(f"unknown side {side!r}; accepted values: left, right")
    try:
        a, b, c = JOINT_ANGLES[name]
    except KeyError:
        raise ValueError(
            f"unknown joint angle {name!r}; accepted values: {', '.join(JOINT_ANGLES)}"
        ) from None
    return (side + a, side + b, side + c)


def joint_angle_series(
    joint_data: JointData, joints: Sequence[str] = KNEE
) -> list[tuple[float, float]]:
    """The angle at the middle joint, in degrees, per frame: ``[(timestamp_seconds, degrees)]``.

    Only frames where all three joints were detected count. Positions are scaled back to pixels
    with the video's resolution first: x and y are normalised separately, so on a portrait
    video an angle computed from the raw 0..1 values would be skewed.

    Raises:
        ValueError: ``joints`` is not three names, or the data lacks one of them.
    """
    if len(joints) != 3:
        raise ValueError(f"joints must name three joints (vertex in the middle), got {joints!r}")
    missing = [j for j in joints if j not in joint_data.joint_to_points]
    if missing:
        known = ", ".join(sorted(joint_data.joint_to_points)) or "none (is the analysis done?)"
        raise ValueError(f"joint data has no {', '.join(missing)}; joints present: {known}")
    width = float(joint_data.resolution_width or 1)
    height = float(joint_data.resolution_height or 1)
    a_frames, b_frames, c_frames = (
        {f.frame_idx: f for f in joint_data.joint_to_points[j]} for j in joints
    )
    series: list[tuple[float, float]] = []
    for idx in sorted(b_frames.keys() & a_frames.keys() & c_frames.keys()):
        a, b, c = a_frames[idx].position, b_frames[idx].position, c_frames[idx].position
        ux, uy = (a.x - b.x) * width, (a.y - b.y) * height
        vx, vy = (c.x - b.x) * width, (c.y - b.y) * height
        if (ux == 0 and uy == 0) or (vx == 0 and vy == 0):
            continue  # two joints on one pixel: no angle is defined
        # atan2 of cross and dot stays accurate near 0 and 180 degrees, where acos does not.
        angle = math.degrees(math.atan2(abs(ux * vy - uy * vx), ux * vx + uy * vy))
        series.append((b_frames[idx].timestamp, angle))
    return series


_JOINT_WORDS = frozenset({"SHOULDER", "ELBOW", "WRIST", "HIP", "KNEE", "ANKLE"})


def _angle_vertex(analysis_type: str) -> str | None:
    """The joint an angle analysis measures at: the last joint word before ``ANGLE``, e.g.
    KNEE for ``HIP_KNEE_ANGLE_DEGREES`` and ``KNEE_EXTENSION_ANGLE_DEGREES``, HIP for
    ``HIP_ANGLE_DEGREES``; None when the type is not an angle in degrees."""
    words = analysis_type.split("_")
    if not analysis_type.endswith("_DEGREES") or "ANGLE" not in words:
        return None
    before = words[: words.index("ANGLE")]
    return next((w for w in reversed(before) if w in _JOINT_WORDS), None)


def rep_label(index: int, rep: Rep, joints: Sequence[str] = KNEE) -> str:
    """A rep's label on the chart: its number, and Guru's value of the plotted angle (the one
    measured at the middle joint of ``joints``) when the analysis has it, never another one."""
    vertex = joints[1].removeprefix("left").removeprefix("right").upper()
    label = f"rep {index}"
    for item in rep.analyses:
        if item.analysis_scalar is not None and _angle_vertex(item.analysis_type) == vertex:
            label += f"\n{item.analysis_scalar:.1f}°"
            if item.analysis_opinion:
                label += f" {item.analysis_opinion}"
            break
    return label


def plot_joint_angle(
    joint_data: JointData,
    analysis: Analysis | None,
    out: str | os.PathLike[str],
    *,
    joints: Sequence[str] = KNEE,
    title: str | None = None,
) -> Path:
    """Draw the angle at the middle of ``joints`` over time to an image file (PNG, SVG, PDF...).

    Each rep of ``analysis`` (or, when None, of the analysis embedded in ``joint_data``) is
    shaded, with dashed lines at its start and end and a solid line at its mid point.

    Args:
        joint_data: The result of ``get_joint_data``.
        analysis: The video's analysis, for the reps; None to use ``joint_data.analysis``.
        out: The file to write; its suffix picks the format.
        joints: Three j2p joint names, the vertex in the middle; default the left knee angle.
        title: The chart's title; by default it names the joints and the activity.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed (``pip install "guru-async[plot]"``).
        ValueError: The joint data lacks the joints (e.g. the analysis is not Complete).
    """
    figure_cls, canvas_cls = _matplotlib()
    series = joint_angle_series(joint_data, joints)
    if analysis is None:
        analysis = joint_data.analysis
    reps = analysis.reps if analysis is not None else []

    fig = figure_cls(figsize=(10, 4.5), dpi=100, layout="constrained")
    canvas_cls(fig)  # binds the Agg renderer to this figure only, leaving pyplot's state alone
    ax: Any = fig.subplots()
    ax.plot(
        [t for t, _ in series],
        [a for _, a in series],
        color="tab:blue",
        lw=1.8,
        label=f"angle at {joints[1]}",
    )
    for i, rep in enumerate(reps, 1):
        start, mid, end = (
            None if ms is None else ms / 1000.0
            for ms in (rep.start_timestamp_ms, rep.mid_timestamp_ms, rep.end_timestamp_ms)
        )
        first = i == 1  # label each kind of mark once, so the legend lists it once
        if start is not None and end is not None:
            ax.axvspan(start, end, color="tab:orange", alpha=0.12, lw=0)
        for x, style, name in ((start, "--", "rep start"), (end, ":", "rep end")):
            if x is not None:
                ax.axvline(x, color="tab:gray", ls=style, lw=1, label=name if first else None)
        if mid is not None:
            ax.axvline(mid, color="tab:red", lw=1.2, label="rep mid" if first else None)
            ax.annotate(
                rep_label(i, rep, joints),
                xy=(mid, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, -4),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=8,
            )
    if series:
        # Headroom above the curve for the rep labels drawn along the top edge.
        low, high = min(a for _, a in series), max(a for _, a in series)
        ax.set_ylim(low - 5, high + max(10.0, 0.2 * (high - low)))
    activity = f" ({analysis.activity})" if analysis is not None and analysis.activity else ""
    ax.set_title(title or f"{joints[0]}-{joints[1]}-{joints[2]} angle{activity}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"angle at {joints[1]} (degrees)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path = Path(out)
    fig.savefig(path)
    return path


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_PLOT_EXTRA_HINT, name="matplotlib") from exc
    return Figure, FigureCanvasAgg


def matplotlib_available() -> bool:
    """True when plot_joint_angle can draw (matplotlib imports)."""
    try:
        _matplotlib()
    except ImportError:
        return False
    return True
