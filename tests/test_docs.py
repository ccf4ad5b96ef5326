"""The documentation site's build hooks: README sections as guides, the docstring check, and
the reST-to-Markdown docstring rewrite (the strict build itself runs in .ci/run)."""

from __future__ import annotations

import importlib.util
import logging
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def load(name: str) -> ModuleType:
    """Import one of docs/*.py by path (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load("hooks")


def test_every_guide_names_a_readme_section() -> None:
    """Each readme-section line of docs/ names a README '## ' section (or is marked optional),
    so no guide renders empty."""
    sections = hooks.readme_sections()
    for page in DOCS.rglob("*.md"):
        for match in hooks.SECTION.finditer(page.read_text()):
            assert match["optional"] or match["heading"].strip() in sections, (page, match[0])


def test_included_section_is_readme_text_with_repo_links() -> None:
    """A guide gets README's section body, with repository-relative links sent to GitHub."""

    class Page:
        class file:  # mimics mkdocs' page.file.src_path
            src_path = "testing.md"

    out = hooks.on_page_markdown(
        "<!-- readme-section: Testing your own app -->\n", Page(), {"docs_dir": str(DOCS)}
    )
    assert "async def test_counts_reps(guru: GuruSession, guru_emulator: GuruEmulator" in out
    assert "## Testing your own app" not in out
    assert hooks._from_repository("see [results](benchmarks/RESULTS.md)") == (
        "see [results](https://github.com/guru-async/guru_async/blob/main/benchmarks/RESULTS.md)"
    )


def test_readme_anchor_links_lead_to_the_guide_page() -> None:
    """A README link to one of its own headings leads to the guide holding that heading (its
    anchor for a sub-heading), or to README on GitHub when no guide includes it."""
    where = hooks.anchor_pages(DOCS, hooks.readme_sections())
    text = "[a](#batches) [b](#running-the-examples-offline) [c](#development)"
    assert hooks._readme_anchors(text, "cli.md", where) == (
        "[a](batches.md) [b](quick-start.md#running-the-examples-offline) "
        "[c](https://github.com/guru-async/guru_async#development)"
    )


def test_undocumented_public_names_are_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A public class, method or property without a docstring is a warning (which fails
    ``mkdocs build --strict``); private names and documented ones are not."""
    (tmp_path / "docpkg.py").write_text(
        textwrap.dedent(
            '''
            __all__ = ["Documented", "Bare", "helper", "CONSTANT"]
            CONSTANT = 1

            class Documented:
                """Has one."""

                def method(self):
                    """Has one."""

                @property
                def prop(self):
                    return 1

                def _private(self):
                    pass

            class Bare(Exception):
                pass

            def helper():
                pass
            '''
        )
    )
    (tmp_path / "api.md").write_text("::: docpkg\n::: docpkg.Missing\n")  # mkdocstrings' error
    monkeypatch.syspath_prepend(str(tmp_path))
    caplog.set_level(logging.WARNING, logger="mkdocs")
    try:
        hooks.on_files([], {"docs_dir": str(tmp_path)})
    finally:
        sys.modules.pop("docpkg", None)
    assert sorted(r.getMessage() for r in caplog.records) == [
        "docpkg.Bare has no docstring",
        "docpkg.Documented.prop has no docstring",
        "docpkg.helper has no docstring",
    ]


def test_rest_docstrings_become_markdown() -> None:
    """Roles become code spans and a ``::`` example a fenced Python block."""
    pytest.importorskip("griffe")
    rest = load("griffe_rest")
    text = (
        "Use :class:`~guru_async.GuruSession`::\n\n    async with GuruSession() as s:\n        ..."
    )
    assert rest.to_markdown(text) == (
        "Use `GuruSession`:\n\n```python\nasync with GuruSession() as s:\n    ...\n```\n"
    )


def test_omitted_paragraphs_leave_the_rest_of_the_section(caplog: pytest.LogCaptureFixture) -> None:
    """``| omit: Start`` drops the section's paragraphs beginning with Start (a code block with
    blank lines stays whole), and warns, failing the strict build, when none begins so."""
    text = "Intro.\n\nGuarantees: one.\ntwo.\n\n```python\nx = 1\n\nGuarantees = 2\n```\n\nEnd.\n"
    assert hooks.omit_paragraphs(text, "Guarantees:") == (
        "Intro.\n\n```python\nx = 1\n\nGuarantees = 2\n```\n\nEnd.\n",
        1,
    )

    class Page:
        class file:
            src_path = "fleet.md"

    caplog.set_level(logging.WARNING, logger="mkdocs")
    page = "<!-- readme-section: Beyond one machine | omit: No such start: -->\n"
    out = hooks.on_page_markdown(page, Page(), {"docs_dir": str(DOCS)})
    assert "A fleet is any number of worker processes" in out
    assert [r.getMessage() for r in caplog.records] == [
        "fleet.md: README's '## Beyond one machine' has no paragraph starting 'No such start:' "
        "to omit"
    ]


def test_mermaid_is_loaded_before_material_only_where_a_diagram_is() -> None:
    """A page holding a diagram loads the site's own Mermaid, by a path relative to the page,
    before Material's script (which otherwise fetches Mermaid from a CDN); other pages don't."""

    class Page:
        url = "fleet/"

        class file:
            src_path = "fleet.md"

    bundle = '<script src="../assets/javascripts/bundle.a5f9d56c.min.js"></script>'
    html = f'<body><pre class="mermaid"><code>flowchart TB</code></pre>{bundle}</body>'
    assert hooks.on_post_page(html, Page(), {}) == html.replace(
        bundle, f'<script src="../assets/mermaid/mermaid.tiny.js"></script>\n{bundle}'
    )
    plain = f"<body><p>no diagram</p>{bundle}</body>"
    assert hooks.on_post_page(plain, Page(), {}) == plain
    assert (DOCS / hooks.MERMAID_JS).is_file()


def test_screen_capture_keeps_what_the_terminal_drew() -> None:
    """docs/pictures.py reads a screen as a terminal draws it: a redraw replaces the line, and
    colours and weights become rich styles (pyte's "brown" is yellow), blank rows dropped."""
    pyte = pytest.importorskip("pyte")
    pictures = load("pictures")
    screen = pyte.Screen(20, 5)
    stream = pyte.ByteStream(screen)
    stream.feed(b"uploads 1/6\r\x1b[2Kuploads \x1b[1;33m6/6\x1b[0m\r\n\x1b[38;5;196mred\x1b[0m")
    first, second = pictures.screen_text(screen)
    assert first.plain == "uploads 6/6"
    assert [(span.start, span.end) for span in first.spans if span.style.bold] == [(8, 11)]
    assert first.get_style_at_offset(pictures.Console(), 9).color.name == "yellow"
    assert second.plain == "red"
    assert second.get_style_at_offset(pictures.Console(), 0).color.name == "#ff0000"
