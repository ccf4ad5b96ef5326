"""A griffe extension: the docstrings' few reST habits, rendered as Markdown for the site.

The docstrings are Google style and read well in ``help()``; three reST habits in them would
show literally in Markdown: roles (``:class:`~pkg.Name``` becomes ```Name```), double backticks
(already a Markdown code span) and ``::`` before an indented example (becomes a fenced Python
block).
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|attr|exc|mod|data|obj):`~?(?P<target>[^`]+)`")


def _role(match: re.Match[str]) -> str:
    target = match["target"]
    # ``~pkg.mod.Name`` shows only ``Name``, as Sphinx does.
    return f"`{target.rsplit('.', 1)[-1] if match[0].count('~') else target}`"


def to_markdown(text: str) -> str:
    """Docstring text with roles as code spans and ``::`` examples as fenced Python blocks."""
    lines = ROLE.sub(_role, text).split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::"):
            out.append(line)
            i += 1
            continue
        head = line.rstrip()[:-2].rstrip()
        if head:
            out.append(head + ":")
        indent = len(line) - len(line.lstrip())
        i += 1
        block: list[str] = []
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        code = textwrap.dedent("\n".join(block)).strip("\n")
        pad = " " * indent
        out += ["", f"{pad}```python", *(pad + c if c else c for c in code.split("\n"))]
        out += [f"{pad}```", ""]
    return "\n".join(out)


class RestToMarkdown(griffe.Extension):
    """Rewrite every docstring of a loaded package with `to_markdown`."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Convert the docstrings of the package and of everything defined in it."""
        todo: list[griffe.Object] = [pkg]
        while todo:
            obj = todo.pop()
            if obj.docstring is not None:
                obj.docstring.value = to_markdown(obj.docstring.value)
            todo += [m for m in obj.members.values() if not m.is_alias]
