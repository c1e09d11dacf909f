"""The gallery: executed notebooks as pages of the docs site, which builds with --strict with and without them."""

import base64
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from reapkit.run.gallery import MARKER, default_gallery_dir, listing, notebook_page, on_page_markdown, write_gallery

ROOT = Path(__file__).resolve().parents[2]


def _png() -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _executed(path: Path) -> Path:
    """A notebook as papermill leaves it: every kind of output a reapkit notebook shows."""
    out = nbformat.v4.new_output
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"duration": 12.3}
    params = nbformat.v4.new_code_cell('model = "demo"')
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell('# Parameters\nmodel = "/tmp/tiny"')
    injected.metadata["tags"] = ["injected-parameters"]
    body = nbformat.v4.new_code_cell("run = calibrate(P)")
    body.outputs = [
        out("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "0%"}),
        out("stream", name="stdout", text="domains ['code']\n"),
        out("display_data", data={"text/markdown": "**Reading.** REAP keeps 4 of 8.", "text/plain": "<Markdown>"}),
        out("display_data", data={"image/png": _png(), "text/plain": "<Figure>"}),
        out("display_data", data={"text/html": "<table>\n\n<tr><td>0.5</td></tr>\n</table>", "text/plain": "df"}),
        out("error", ename="ValueError", evalue="bad", traceback=["\x1b[31mValueError\x1b[0m: bad"]),
    ]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 1. Which experts matter?\n\n**Question:** which\nexperts?\n\nMore."),
        params,
        injected,
        body,
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def test_a_page_is_the_notebook_as_it_ran(tmp_path):
    markdown, files, summary = notebook_page(_executed(tmp_path / "01_saliency" / "01_saliency.ipynb"))
    assert summary == dict(
        name="01_saliency",
        title="1. Which experts matter?",
        question="which experts?",
        figures=1,
        seconds=12.3,
        errors=1,
    )
    assert markdown.startswith("# 1. Which experts matter?\n\n*As `make demo` ran it in 12 s")
    assert 'model = "demo"' not in markdown and 'model = "/tmp/tiny"' in markdown  # the run's values
    assert "**Reading.** REAP keeps 4 of 8." in markdown and "domains ['code']" in markdown
    assert "0%" not in markdown  # a progress bar's state is no result
    (name,) = files
    assert f"![figure of cell 3]({name})" in markdown and files[name].startswith(b"\x89PNG")
    assert '<div class="gallery-output">\n<table>\n<tr><td>0.5</td></tr>\n</table>\n</div>' in markdown
    assert "ValueError: bad" in markdown and "\x1b" not in markdown


def test_write_gallery_replaces_the_last_one_and_the_index_lists_it(tmp_path):
    gallery = tmp_path / "docs" / "gallery"
    (gallery / "09_old_files").mkdir(parents=True)
    (gallery / "09_old.md").write_text("stale")
    index = SimpleNamespace(file=SimpleNamespace(src_uri="gallery/index.md"))
    config = {"docs_dir": str(tmp_path / "docs")}
    assert "make demo" in on_page_markdown(f"# Gallery\n\n{MARKER}\n", index, config, None)  # nothing made yet
    _executed(tmp_path / "runs" / "01_saliency" / "01_saliency.ipynb")
    pages = write_gallery(tmp_path / "runs", gallery, notebooks=["01_saliency", "02_clusters"])  # 02 never ran
    assert pages == [gallery / "01_saliency.md"] and not (gallery / "09_old.md").exists()
    assert not (gallery / "09_old_files").exists() and len(list((gallery / "01_saliency_files").glob("*.png"))) == 1
    text = on_page_markdown(f"# Gallery\n\n{MARKER}\n", index, config, None)
    assert "- **[1. Which experts matter?](01_saliency.md)** which experts? (1 figures, ran in 12 s)" in text
    assert text.replace(listing(gallery), "") == "# Gallery\n\n\n"
    other = SimpleNamespace(file=SimpleNamespace(src_uri="notebooks.md"))
    assert on_page_markdown(MARKER, other, config, None) == MARKER
    assert default_gallery_dir(ROOT) == ROOT / "docs" / "gallery" and default_gallery_dir(tmp_path) is None


def _site_copy(tmp_path: Path) -> Path:
    """The documentation sources as a fresh clone has them (no gallery pages), beside the package."""
    site = tmp_path / "clone"
    site.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", site)
    made = shutil.ignore_patterns("[0-9]*.md", "[0-9]*_files", "gallery.json")
    shutil.copytree(ROOT / "docs", site / "docs", ignore=made)
    (site / "reapkit").symlink_to(ROOT / "reapkit")
    return site


def _build(site: Path) -> Path:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site / "site")],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return site / "site" / "gallery"


@pytest.mark.slow
def test_the_site_builds_strict_without_and_with_the_gallery_of_a_real_run(tmp_path, monkeypatch):
    """A fresh clone (no pages: the index says how to make them), then notebook 02 executed by papermill on a
    tiny model, as `make demo` runs it (here from a shell inside a JupyterLab kernel: still no explorer)."""
    from tiny_models import tiny_checkpoint

    from reapkit.run.execute import run_notebook

    site = _site_copy(tmp_path)
    assert not list((site / "docs" / "gallery").glob("[0-9]*"))
    built = _build(site)
    assert "Not made yet" in (built / "index.html").read_text()

    model, spec = tiny_checkpoint(tmp_path / "tiny")
    monkeypatch.setenv("JPY_SESSION_NAME", "outer.ipynb")
    params = dict(model=str(model), calibration=spec, max_length=12, batch_size=4, layers=[1], n_clusters=3)
    run_notebook(
        ROOT / "notebooks" / "02_clusters.ipynb",
        {**params, "cache_dir": str(tmp_path / "cache")},
        tmp_path / "runs" / "02_clusters",
    )
    write_gallery(tmp_path / "runs", site / "docs" / "gallery")
    page = (site / "docs" / "gallery" / "02_clusters.md").read_text()
    assert page.count("![figure of cell") == 5 and page.count("**Reading.**") == 4
    assert page.rstrip().endswith(
        "show_explorer(P.interactive):\n    display(ClusterExplorer(distances, by_layer, "
        "n_clusters=P.n_clusters, ratio=P.ratio, criterion=P.criterion))\n```"
    )  # no output

    built = _build(site)
    index = (built / "index.html").read_text()
    assert 'href="02_clusters/"' in index and "Which experts are alike?" in index
    html = (built / "02_clusters" / "index.html").read_text()
    assert html.count('<img alt="figure of cell') == 5 and "Reading." in html
    assert len(list((built / "02_clusters_files").glob("*.png"))) == 5  # beside the page, as in docs/gallery/
