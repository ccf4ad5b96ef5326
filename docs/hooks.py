"""mkdocs hooks: README sections as guides, and a check that every public name has a docstring.

A page line ``<!-- readme-section: Heading -->`` is replaced by the body of README's
``## Heading`` section (up to the next ``## ``), so a guide and README never say things twice;
``<!-- readme-section: Heading | optional -->`` shows a short note while the section does not
exist yet, ``<!-- readme-section: Heading | omit: Start -->`` leaves out the section's
paragraphs that begin with ``Start`` (a page that shows them otherwise, e.g. as admonitions; a
warning when none does), and ``<!-- include: path -->`` includes a whole Markdown file of the
repository (its first ``# `` title dropped). README's own ``(#anchor)`` links lead to the guide
page holding that heading, or to README on GitHub when no guide includes it.

Every module an API page renders (``::: module``) must give each name in its ``__all__``, and
each public method and property of those classes, a docstring: a missing one is a warning,
so ``mkdocs build --strict`` fails.

A page holding a Mermaid diagram (a ```` ```mermaid ```` block) gets the site's own copy of
Mermaid (``docs/assets/mermaid/``), so diagrams render offline and without a CDN; other pages
do not load it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any

from markdown.extensions.toc import slugify
from mkdocs.utils import get_relative_url

log = logging.getLogger("mkdocs.hooks.guru_async")

ROOT = Path(__file__).resolve().parents[1]
REPO_URL = "https://github.com/guru-async/guru_async/blob/main/"
SECTION = re.compile(
    r"^<!-- readme-section: (?P<heading>[^|]+?)(?P<optional> \| optional)?"
    r"(?: \| omit: (?P<omit>[^|]+?))? -->$",
    re.M,
)
INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+) -->$", re.M)
RENDERED = re.compile(r"^::: (?P<identifier>[\w.]+)\s*$", re.M)
# A Markdown link whose target is a repository path: on the site it points at GitHub instead.
RELATIVE_LINK = re.compile(r"\]\((?!https?:|mailto:|#)(?P<target>[^)\s]+)\)")
ANCHOR_LINK = re.compile(r"\]\(#(?P<slug>[^)\s]+)\)")
SUBHEADING = re.compile(r"^#{3,6} (?P<text>.+)$", re.M)
README_URL = "https://github.com/guru-async/guru_async"
MERMAID_JS = "assets/mermaid/mermaid.tiny.js"
# Material's script: Mermaid must be defined before it looks for diagrams.
MATERIAL_BUNDLE = re.compile(r'<script src="[^"]*assets/javascripts/bundle\.[^"]*"></script>')


def readme_sections() -> dict[str, str]:
    """README's ``## `` sections by heading, each body without its heading line."""
    sections: dict[str, str] = {}
    heading: str | None = None
    lines: list[str] = []
    in_fence = False
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and line.startswith("## "):
            if heading is not None:
                sections[heading] = "\n".join(lines).strip() + "\n"
            heading, lines = line[3:].strip(), []
        elif heading is not None:
            lines.append(line)
    if heading is not None:
        sections[heading] = "\n".join(lines).strip() + "\n"
    return sections


def _from_repository(text: str) -> str:
    return RELATIVE_LINK.sub(lambda m: f"]({REPO_URL}{m['target']})", text)


def anchor_pages(docs_dir: Path, sections: dict[str, str]) -> dict[str, str]:
    """Where each README heading lives on the site: a ``## `` section's slug maps to the page
    including it, a deeper heading's slug to ``page#slug``."""
    where: dict[str, str] = {}
    for page in sorted(docs_dir.rglob("*.md")):
        src = page.relative_to(docs_dir).as_posix()
        for match in SECTION.finditer(page.read_text(encoding="utf-8")):
            heading = match["heading"].strip()
            where.setdefault(slugify(heading, "-"), src)
            for sub in SUBHEADING.finditer(sections.get(heading, "")):
                slug = slugify(sub["text"].strip(), "-")
                where.setdefault(slug, f"{src}#{slug}")
    return where


def omit_paragraphs(text: str, start: str) -> tuple[str, int]:
    """``text`` without its paragraphs (blank-line separated, code blocks kept whole) that begin
    with ``start``, and how many were left out."""
    blocks: list[list[str]] = [[]]
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if not line.strip() and not in_fence:
            blocks.append([])
        else:
            blocks[-1].append(line)
    kept = [b for b in blocks if b and not b[0].startswith(start)]
    dropped = sum(1 for b in blocks if b) - len(kept)
    return "\n\n".join("\n".join(b) for b in kept) + "\n", dropped


def _readme_anchors(text: str, src_path: str, where: dict[str, str]) -> str:
    def link(match: re.Match[str]) -> str:
        target = where.get(match["slug"])
        if target is None:
            return f"]({README_URL}#{match['slug']})"
        path, _, anchor = target.partition("#")
        relative = os.path.relpath(path, os.path.dirname(src_path) or ".")
        return f"]({Path(relative).as_posix()}{'#' + anchor if anchor else ''})"

    return ANCHOR_LINK.sub(link, text)


def on_page_markdown(markdown: str, page: Any, config: Any, **_: Any) -> str:
    """Replace the include lines of a page with the text they name."""
    if not (SECTION.search(markdown) or INCLUDE.search(markdown)):
        return markdown
    sections = readme_sections()
    where = anchor_pages(Path(config["docs_dir"]), sections)

    def section(match: re.Match[str]) -> str:
        heading = match["heading"].strip()
        if heading in sections:
            text = sections[heading]
            if match["omit"]:
                text, dropped = omit_paragraphs(text, match["omit"].strip())
                if not dropped:
                    log.warning(
                        "%s: README's '## %s' has no paragraph starting %r to omit",
                        page.file.src_path,
                        heading,
                        match["omit"].strip(),
                    )
            return _readme_anchors(_from_repository(text), page.file.src_path, where)
        if match["optional"]:
            return f'!!! note "Coming soon"\n    README\'s "{heading}" section is being written.\n'
        log.warning("%s: README.md has no '## %s' section", page.file.src_path, heading)
        return ""

    def include(match: re.Match[str]) -> str:
        path = ROOT / match["path"]
        if not path.is_file():
            log.warning("%s: no file %s to include", page.file.src_path, match["path"])
            return ""
        text = re.sub(r"\A# .*\n", "", path.read_text(encoding="utf-8"))
        return _from_repository(text)

    return INCLUDE.sub(include, SECTION.sub(section, markdown))


def _resolve(identifier: str) -> Any:
    """The object an API page's ``::: identifier`` names: a module, or a member of one."""
    parts = identifier.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(identifier)


def undocumented(identifier: str) -> list[str]:
    """The public names (a module's ``__all__``, or what it defines) and their public
    methods and properties, with no docstring of their own."""
    obj = _resolve(identifier)
    if inspect.ismodule(obj):
        public = getattr(obj, "__all__", None)
        if public is None:  # no __all__: what the module defines under a public name
            public = [
                n for n, o in vars(obj).items() if not n.startswith("_") and _defined_in(o, obj)
            ]
        named = [(f"{identifier}.{name}", getattr(obj, name)) for name in public]
    else:
        named = [(identifier, obj)]
    missing: list[str] = []
    for name, member in named:
        missing += _undocumented_object(name, member)
    return missing


def _undocumented_object(name: str, obj: Any) -> list[str]:
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return []  # constants and type aliases are described where they are used
    missing: list[str] = []
    if not (vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__):
        missing.append(name)
    if inspect.isclass(obj):
        for member_name, member in vars(obj).items():
            if member_name.startswith("_"):
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if (inspect.isfunction(member) or isinstance(member, property)) and not member.__doc__:
                missing.append(f"{name}.{member_name}")
    return missing


def _defined_in(obj: object, module: Any) -> bool:
    return (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__


def on_files(files: Any, config: Any) -> Any:
    """Warn about every undocumented public name of what the API pages render."""
    identifiers: set[str] = set()
    for path in Path(config["docs_dir"]).rglob("*.md"):
        identifiers.update(RENDERED.findall(path.read_text(encoding="utf-8")))
    for identifier in sorted(identifiers):
        try:
            missing = undocumented(identifier)
        except (ImportError, AttributeError):
            continue  # mkdocstrings reports the broken reference itself
        for name in missing:
            log.warning("%s has no docstring", name)
    return files


def on_post_page(output: str, page: Any, config: Any, **_: Any) -> str:
    """Load the site's Mermaid on a page holding a diagram, before Material's own script."""
    if 'class="mermaid"' not in output:
        return output
    src = get_relative_url(MERMAID_JS, page.url)
    tag = f'<script src="{src}"></script>'
    bundle = MATERIAL_BUNDLE.search(output)
    if bundle is None:
        log.warning("%s: no Material script found to load Mermaid before", page.file.src_path)
        return output.replace("</body>", f"{tag}\n</body>", 1)
    return output[: bundle.start()] + tag + "\n" + output[bundle.start() :]
