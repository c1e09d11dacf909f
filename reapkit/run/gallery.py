"""The gallery: the notebooks `make demo` executed, as pages of the documentation site.

    write_gallery("runs/demo", "docs/gallery")
    [PosixPath('docs/gallery/01_saliency.md'), ...]

`reapkit demo` (`make demo`) writes it after its runs, into `docs/gallery/` of the checkout
(:func:`default_gallery_dir`); `make docs` builds it into `site/gallery/`. A page is its notebook as
it ran: the Markdown cells, the code, and what each cell showed: readings (Markdown), figures (PNG
files beside the page), tables (HTML), printed text and errors. Progress bars (widgets) are left out,
and so is any explorer (batch runs build none).

The pages are made, not committed: `docs/gallery/` holds only `index.md`. Its list of pages is
written when the site builds, by :func:`on_page_markdown` (a mkdocs hook named in `mkdocs.yml`),
from the `gallery.json` that :func:`write_gallery` leaves; without it (a fresh clone) the index says
how to fill the gallery, and the site builds with ``--strict`` either way, since nothing links to a
page that is not there.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

__all__ = ["MARKER", "default_gallery_dir", "notebook_page", "write_gallery", "listing", "on_page_markdown"]

#: The line of docs/gallery/index.md that the list of pages replaces.
MARKER = "<!-- gallery: the list of pages, written when the site builds -->"
MANIFEST = "gallery.json"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_WIDGET = "application/vnd.jupyter.widget-view+json"


def default_gallery_dir(root=None) -> Path | None:
    """`docs/gallery` of the checkout that holds the documentation site (mkdocs.yml), else None."""
    from reapkit.run.notebook import NOTEBOOKS_DIR

    root = Path(root) if root is not None else NOTEBOOKS_DIR.parent
    return root / "docs" / "gallery" if (root / "mkdocs.yml").is_file() else None


def _text_block(text: str, lang: str = "text") -> str:
    text = _ANSI.sub("", text).rstrip("\n")
    fence = "````" if "```" in text else "```"
    return f"{fence}{lang}\n{text}\n{fence}"


def _html_block(html: str) -> str:
    """Raw HTML as one Markdown block: no blank lines inside (they would end it)."""
    lines = [line for line in html.strip().splitlines() if line.strip()]
    return '<div class="gallery-output">\n' + "\n".join(lines) + "\n</div>"


def _output(output, files: dict, stem: str, index: int) -> str | None:
    kind = output.get("output_type")
    if kind == "stream":
        return _text_block(output.get("text", ""))
    if kind == "error":
        return _text_block("\n".join(output.get("traceback", [])) or f"{output.get('ename')}: {output.get('evalue')}")
    data = output.get("data", {})
    if _WIDGET in data:
        return None  # a progress bar: its state is not the result
    if "image/png" in data:
        name = f"{stem}_files/output{index:02d}-{len(files)}.png"
        files[name] = base64.b64decode(data["image/png"])
        return f"![figure of cell {index}]({name})"
    if "text/markdown" in data:
        return "".join(data["text/markdown"]).strip()
    if "text/html" in data:
        return _html_block("".join(data["text/html"]))
    if "text/plain" in data:
        return _text_block("".join(data["text/plain"]))
    return None


def notebook_page(path) -> tuple[str, dict[str, bytes], dict]:
    """An executed notebook as a Markdown page: ``(markdown, {relative file: bytes}, summary)``.

        markdown, files, summary = notebook_page("runs/demo/01_saliency/01_saliency.ipynb")

    `summary`: name, title (the first heading), question (the paragraph opening with **Question:**),
    figures, seconds (papermill's duration), errors.
    """
    import nbformat

    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    stem, files, parts = path.stem, {}, []
    title, question, errors = stem, "", 0
    for index, cell in enumerate(nb.cells):
        source = cell.source.strip()
        if cell.cell_type == "markdown":
            heading = re.search(r"^# (.+)$", source, re.M)
            if heading and title == stem:
                title = heading[1].strip()
            found = re.search(r"\*\*Question:\*\*(.+?)(?:\n\n|$)", source, re.S)
            if found and not question:
                question = " ".join(found[1].split())
            parts.append(source)
            continue
        if cell.cell_type != "code" or not source:
            continue
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags:
            continue  # the defaults: the run's values are in the injected cell and in the checked `P` below
        if "injected-parameters" in tags:
            parts.append("*Parameters of this run (injected by papermill):*")
        parts.append(_text_block(source, "python"))
        for output in cell.get("outputs", []):
            errors += output.get("output_type") == "error"
            shown = _output(output, files, stem, index)
            if shown:
                parts.append(shown)
    seconds = (nb.metadata.get("papermill") or {}).get("duration")
    ran = f" in {seconds:.0f} s" if seconds else ""
    note = (
        f"*As `make demo` ran it{ran}: the notebook `notebooks/{stem}.ipynb` with its figures and readings. "
        "In JupyterLab (`make lab`) its explorer shows at the end.*"
    )
    if parts and parts[0].startswith("# "):  # the note goes under the notebook's title
        first, _, rest = parts[0].partition("\n")
        parts[0:1] = [first, note, rest.strip()] if rest.strip() else [first, note]
    else:
        parts.insert(0, note)
    figures = sum(name.endswith(".png") for name in files)
    summary = dict(name=stem, title=title, question=question, figures=figures, seconds=seconds, errors=errors)
    return "\n\n".join(parts) + "\n", files, summary


def write_gallery(runs_dir, gallery_dir, notebooks=None) -> list[Path]:
    """``write_gallery("runs/demo", "docs/gallery")``: a page per executed notebook `runs_dir/<name>/<name>.ipynb`
    into `gallery_dir`, with their figures and `gallery.json`; pages of an earlier gallery go first. Returns the
    pages written."""
    from reapkit.atomic import atomic_write_text
    from reapkit.run.notebook import DEMO_NOTEBOOKS

    runs_dir, gallery_dir = Path(runs_dir), Path(gallery_dir)
    names = sorted(notebooks or DEMO_NOTEBOOKS)
    gallery_dir.mkdir(parents=True, exist_ok=True)
    for old in [*gallery_dir.glob("[0-9]*.md"), gallery_dir / MANIFEST]:
        old.unlink(missing_ok=True)
    for old in gallery_dir.glob("[0-9]*_files"):
        shutil.rmtree(old)
    pages, summaries = [], []
    for name in names:
        executed = runs_dir / name / f"{name}.ipynb"
        if not executed.is_file():
            continue
        markdown, files, summary = notebook_page(executed)
        for relative, data in files.items():
            target = gallery_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        pages.append(atomic_write_text(gallery_dir / f"{name}.md", markdown))
        summaries.append(summary)
    atomic_write_text(gallery_dir / MANIFEST, json.dumps(summaries, indent=1) + "\n")
    return pages


def listing(gallery_dir) -> str:
    """The Markdown list of the gallery's pages (from `gallery.json`), or how to fill an empty gallery."""
    manifest = Path(gallery_dir) / MANIFEST
    entries = json.loads(manifest.read_text()) if manifest.is_file() else []
    entries = [e for e in entries if (Path(gallery_dir) / f"{e['name']}.md").is_file()]
    if not entries:
        return (
            '!!! note "Not made yet"\n'
            "    The gallery is made by `make demo` (about 5 minutes on 2 CPU cores); then `make docs` builds it "
            "into the site."
        )
    rows = []
    for e in entries:
        ran = f", ran in {e['seconds']:.0f} s" if e.get("seconds") else ""
        rows.append(f"- **[{e['title']}]({e['name']}.md)** {e['question']} ({e['figures']} figures{ran})")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """mkdocs hook: on `gallery/index.md`, the :data:`MARKER` line becomes :func:`listing`."""
    if page.file.src_uri != "gallery/index.md" or MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, listing(Path(config["docs_dir"]) / "gallery"))
