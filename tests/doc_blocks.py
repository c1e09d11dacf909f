"""The code blocks of the README and of docs/*.md that are marked to run, and how a test runs them as written.

A marker is an HTML comment on the line before a fenced block (invisible on GitHub and in the site):

    <!-- runnable -->                  run it: bash line by line, python as a script
    <!-- file: my_criteria.py -->      write it to that file, for the blocks after it
    <!-- runnable by tests/x.py -->    that test prepares what it needs and runs it (found by its heading)

All marked blocks of one page run in order in one fresh folder, as a reader would type them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARK = re.compile(
    r"^<!-- (?:(?P<runnable>runnable)(?: by (?P<by>\S+))?|file: (?P<file>\S+)) -->\n"
    r"```(?P<lang>\w+)\n(?P<body>.*?)^```",
    re.S | re.M,
)
HEADING = re.compile(r"^#+ +(.+?) *$", re.M)


@dataclass(frozen=True)
class Block:
    page: Path
    heading: str  # the nearest heading above the block
    lang: str
    body: str
    file: str | None = None  # `file: NAME`: written, not run
    by: str | None = None  # `runnable by TEST`: run by that test

    @property
    def runs_here(self) -> bool:
        """Run by `run_page` (not written to a file, not left to another test)."""
        return self.file is None and self.by is None

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)} ({self.heading!r}, {self.lang})"


def pages() -> list[Path]:
    """The README and every page of the documentation."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """The marked blocks of `page`, in order."""
    text = page.read_text()
    found = []
    for match in MARK.finditer(text):
        headings = HEADING.findall(text[: match.start()])
        found.append(
            Block(
                page,
                headings[-1] if headings else "",
                match["lang"],
                match["body"],
                file=match["file"],
                by=match["by"],
            )
        )
    return found


def commands(body: str) -> list[str]:
    """The command lines of a bash block: comments and blank lines dropped, `\\` continuations joined."""
    lines = [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return [line for line in lines if not line.lstrip().startswith("#")]


def readme_block(heading: str) -> list[str]:
    """The command lines of the first bash block after `heading` (any level) in the README or a docs page."""
    title = heading.lstrip("#").strip()
    found = []
    for page in pages():
        text = page.read_text()
        match = re.search(rf"^#+ +{re.escape(title)} *$", text, re.M)
        if match:
            found.append(re.search(r"^```bash\n(.*?)^```", text[match.end() :], re.S | re.M).group(1))
    assert len(found) == 1, f"heading {heading!r} found on {len(found)} pages (README.md, docs/), expected one"
    return commands(found[0])


def as_subprocess(line: str) -> list[str]:
    """`reapkit ...` and `python ...` run by this interpreter; comments dropped."""
    words = shlex.split(line, comments=True)
    if words[0] == "reapkit":
        return [sys.executable, "-m", "reapkit", *words[1:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    raise AssertionError(f"command {line!r} starts with neither reapkit nor python")


def environment() -> dict[str, str]:
    """What the commands run with: this checkout importable, no hub access, one thread each."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run_page(page: Path, folder: Path) -> list[Block]:
    """Run the blocks of `page` marked `runnable` (and write its `file:` blocks) in `folder`, in order.

    The folder gets a copy of `sweeps/`, as a clone has. Returns the blocks that ran.
    """
    shutil.copytree(ROOT / "sweeps", folder / "sweeps", dirs_exist_ok=True)
    ran = []
    for block in blocks(page):
        if block.file:
            (folder / block.file).write_text(block.body)
            continue
        if not block.runs_here:
            continue
        if block.lang == "bash":
            runs = [(line, as_subprocess(line)) for line in commands(block.body)]
        elif block.lang == "python":
            script = folder / f"block-{len(ran)}.py"
            script.write_text(block.body)
            runs = [(block.body, [sys.executable, script.name])]
        else:
            raise AssertionError(f"{block}: a runnable block must be bash or python")
        for text, argv in runs:
            run = subprocess.run(argv, cwd=folder, env=environment(), capture_output=True, text=True)
            assert run.returncode == 0, f"{block} failed:\n{text}\n{run.stderr[-3000:]}"
        ran.append(block)
    return ran
