"""The documentation site: it builds with --strict, its runnable blocks run as written, its layout page is complete.

How blocks are marked and run: tests/doc_blocks.py (shared with the README's test).
"""

import os
import re
import subprocess
import sys

import pytest
from doc_blocks import DOCS, ROOT, blocks, pages, run_page

RUNNABLE_PAGES = [p for p in pages() if p.parent == DOCS and any(b.runs_here for b in blocks(p))]


def test_site_builds_strict(tmp_path):
    """What `make docs` runs: a link to a missing page, heading or Python name fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "select" / "index.html").read_text()
    assert 'id="reapkit.select.plan.PruningPlan.from_observations"' in api  # generated from the docstrings
    assert "&gt;&gt;&gt;" not in re.sub(r"<code.*?</code>|<pre.*?</pre>", "", api, flags=re.S)  # examples are code


def test_make_docs_builds_the_site():
    recipe = re.search(r"^docs:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe and "mkdocs build" in recipe[1]
    assert "site/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: p.name)
def test_runnable_blocks_run_as_written(page, tmp_path):
    ran = run_page(page, tmp_path)
    assert ran, f"{page.name}: no block ran"


def test_blocks_run_by_other_tests_are_run_there():
    """`runnable by tests/x.py`: that test exists and fetches the block by the heading above it."""
    delegated = [b for p in pages() for b in blocks(p) if b.by]
    assert delegated, "no page delegates a block (docs/importing.md and docs/lm-eval.md should)"
    for block in delegated:
        test = ROOT / block.by
        assert test.is_file(), f"{block}: {block.by} does not exist"
        assert re.search(rf"readme_block\(\"#+ {re.escape(block.heading)}\"\)", test.read_text()), (
            f"{block}: {block.by} does not run the block under {block.heading!r}"
        )


def test_markers_are_well_formed():
    """A marker without a fenced block right under it, or with a misspelt word, would silently run nothing."""
    for page in pages():
        text = page.read_text()
        markers = re.findall(r"^<!-- (?:runnable|file:)[^\n]*-->$", text, re.M)
        assert len(markers) == len(blocks(page)), f"{page.name}: a marker is not followed by a ``` block"
        assert all(b.lang in ("bash", "python") for b in blocks(page) if not b.file), page.name


def test_layout_page_names_every_module():
    """docs/layout.md has one row per module of the package, and names no module that is gone."""
    layout = (DOCS / "layout.md").read_text()
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", layout, re.M))
    modules = {p.relative_to(ROOT / "reapkit").as_posix() for p in (ROOT / "reapkit").rglob("*.py")}
    modules -= {p for p in modules if p.endswith("/__init__.py")}  # a subpackage has its own bold row
    assert listed == modules, f"missing: {sorted(modules - listed)}; gone: {sorted(listed - modules)}"
    packages = {p.parent.name for p in (ROOT / "reapkit").glob("*/__init__.py")}
    assert set(re.findall(r"^\| \*\*`(\w+)/`\*\* \|", layout, re.M)) == packages


def test_api_reference_has_a_page_per_subpackage():
    packages = {p.parent.name for p in (ROOT / "reapkit").glob("*/__init__.py")}
    for name in [*packages, "errors"]:
        page = DOCS / "api" / f"{name}.md"
        assert page.is_file() and f"::: reapkit.{name}" in page.read_text(), page
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f"api/{name}.md" in nav for name in packages)


def test_cli_page_names_every_option():
    """Every subcommand has a section on docs/cli.md that names each of its options (help strings are no manual)."""
    from reapkit.run.cli import build_parser

    page = (DOCS / "cli.md").read_text()
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", page, re.S | re.M))
    assert "`--plugin MODULE_OR_FILE`" in page.split("\n## ")[0]  # every command takes it: said once, on top
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a.choices, dict)).choices
    assert set(sections) == set(commands), "docs/cli.md: one section per command, no other"
    for name, sub in commands.items():
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--plugin"):
                    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", sections[name]), (
                        f"docs/cli.md, section {name}: `reapkit {name} {option}` is not explained"
                    )


def test_docstring_extension_fences_examples_and_links_roles():
    sys.path.insert(0, str(DOCS))
    try:
        from docstrings import markdown
    finally:
        sys.path.remove(str(DOCS))
    text = "Use :func:`~reapkit.select.criteria.score`:\n    >>> score(obs)  # doctest: +SKIP\n    [1, 2]\n\nAfter."
    assert markdown(text) == (
        "Use [`score`][reapkit.select.criteria.score]:\n\n```pycon\n>>> score(obs)\n[1, 2]\n```\n\nAfter."
    )
    assert markdown("Grammar::\n\n    a:1") == "Grammar:\n\n    a:1"  # reST's literal-block marker
    fenced = "```python\n>>> kept :class:`as is`\n```"
    assert markdown(fenced) == fenced  # code that is already fenced is left alone
