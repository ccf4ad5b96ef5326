"""Regenerate the pictures of the documentation site: ``python docs/pictures.py``.

It runs ``guru-async demo`` (its embedded emulator: no network, no credentials) in a
pseudo-terminal, reads the terminal's screen with pyte the way a terminal would draw it, and
writes into ``docs/images/``:

- ``demo-progress.svg``: the screen while analyses are still pending (the live progress);
- ``demo-result.svg``: the screen when the demo has finished (the progress, the result table);
- ``squat-hip-knee.png``: the joint-angle chart the demo draws (``guru_async.plot``).

The SVGs are rich's terminal export (``Console(record=True).save_svg``). Needs the ``cli``,
``plot`` and ``dev`` extras (rich, matplotlib, pyte). Rerun it when the CLI's output changes.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import pyte
from rich.console import Console
from rich.style import Style
from rich.text import Text

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
COLUMNS, ROWS = 118, 60
TITLE = "guru-async demo"
# A screen mid-run worth showing: some analyses done, some still pending.
MID_RUN = re.compile(r"\b[1-9]\d* pending\b.*\b[1-9]\d* complete\b")
TABLE_HEADER = re.compile(r"^VIDEO\s+ID\b")
CDN_FONT = re.compile(r',\s*url\("https://[^"]*"\) format\("[\w-]+"\)')

# pyte's names for the 16 ANSI colours, as rich names them.
_COLOURS = {"brown": "yellow", "brightbrown": "bright_yellow"}


def _colour(name: str) -> str | None:
    if name == "default":
        return None
    if re.fullmatch(r"[0-9a-fA-F]{6}", name):
        return f"#{name}"
    name = _COLOURS.get(name, name)
    return name.replace("bright", "bright_", 1) if name.startswith("bright") else name


def screen_text(screen: pyte.Screen) -> list[Text]:
    """The screen's lines as rich Text, with the colours and weights the program drew."""
    lines: list[Text] = []
    for y in range(screen.lines):
        row = screen.buffer[y]
        text = Text(no_wrap=True, end="")
        run, run_style = "", Style()
        for x in range(screen.columns):
            char = row[x]
            if char.data == "":  # the second cell of a wide character
                continue
            fg, bg = _colour(char.fg), _colour(char.bg)
            if char.reverse:
                fg, bg = bg or "black", fg or "white"
            style = Style(color=fg, bgcolor=bg, bold=char.bold, italic=char.italics)
            if style != run_style:  # one span per run of a style, not one per cell
                text.append(run, style=run_style or None)
                run, run_style = "", style
            run += char.data
        text.append(run, style=run_style or None)
        text.rstrip()
        lines.append(text)
    while lines and not lines[-1].plain:
        lines.pop()
    return lines


def save_svg(lines: list[Text], path: Path) -> None:
    """Write lines as rich's SVG of a terminal window, as wide as the pseudo-terminal."""
    console = Console(
        record=True,
        width=COLUMNS,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
    )
    for line in lines:
        console.print(line, crop=True, overflow="crop")
    # rich's font faces fall back to a web font on a CDN: drop it, so a page showing the
    # picture asks no third party (a browser does not fetch it for an <img> anyway).
    svg = CDN_FONT.sub("", console.export_svg(title=TITLE))
    path.write_text(svg, encoding="utf-8")


def run_demo(folder: Path) -> tuple[list[Text], list[Text]]:
    """Run the demo in a pseudo-terminal in ``folder``; the screen mid-run and at the end."""
    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.ByteStream(screen)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GURU_", "NO_COLOR"))}
    env.update(COLUMNS=str(COLUMNS), LINES=str(ROWS), TERM="xterm-256color")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "guru_async", "demo", "--out", "guru-demo"],
        cwd=folder,
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    mid_run: list[Text] | None = None
    before_table: list[Text] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # the program has exited and closed the terminal
                break
            if not data:
                break
            stream.feed(data)
            shown = [line.rstrip() for line in screen.display]
            if not any(TABLE_HEADER.match(line) for line in shown):
                before_table = screen_text(screen)
                if any(MID_RUN.search(line) for line in shown):
                    mid_run = before_table
        else:
            raise TimeoutError("the demo did not finish in 120 s")
    finally:
        os.close(leader)
        returncode = process.wait(timeout=30)
    if returncode != 0:
        raise RuntimeError(f"guru-async demo exited with {returncode}")
    # Without a mid-run screen (an unlucky schedule), the last one before the table.
    return mid_run or before_table, screen_text(screen)


def main() -> None:
    """Run the demo once and write the three pictures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=IMAGES, help="default: docs/images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="guru-pictures-") as tmp:
        progress, result = run_demo(Path(tmp))
        save_svg(progress, args.out / "demo-progress.svg")
        save_svg(result, args.out / "demo-result.svg")
        shutil.copyfile(
            Path(tmp, "guru-demo", "squat-hip-knee.png"), args.out / "squat-hip-knee.png"
        )
    for name in ("demo-progress.svg", "demo-result.svg", "squat-hip-knee.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
