"""Docstrings as the API reference shows them: a griffe extension that mkdocs.yml loads.

reapkit's docstrings are written for `help()` and for doctest: `>>>` examples and Sphinx roles such
as :func:`score`. Markdown reads a `>>>` line as a quotation and a role as plain text, so before the
docstrings are rendered:

- each run of `>>>` lines, with its `...` continuations and its output, becomes a `pycon` code block
  (doctest flags such as `# doctest: +SKIP` dropped);
- each role becomes a cross-reference (`~` keeps the last name only), so a role naming something that
  does not exist fails `mkdocs build --strict`;
- reST's `::` before a literal block becomes `:` (the indented block is code in Markdown too).
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|mod|class|data|meth|attr|obj|exc):`(~?)([\w.]+)`")
FLAGS = re.compile(r"\s*# doctest:[^\n]*$")
FENCE = re.compile(r"^\s*(```|~~~)")
LITERAL = re.compile(r"(?<=\S)::$")


def _role(match: re.Match) -> str:
    short, target = match.groups()
    return f"[`{target.rsplit('.', 1)[-1] if short else target}`][{target}]"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def markdown(text: str) -> str:
    """`text` with its doctest runs fenced and its roles turned into cross-references."""
    out: list[str] = []
    lines = text.split("\n")
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            fenced = not fenced
        if fenced or not line.lstrip().startswith(">>>"):
            out.append(line if fenced else LITERAL.sub(":", ROLE.sub(_role, line)))
            i += 1
            continue
        indent = _indent(line)
        block = []
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= indent:
            block.append(FLAGS.sub("", lines[i][indent:]))
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += ["```pycon", *block, "```"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


class Docstrings(griffe.Extension):
    """Rewrite every docstring with `markdown` as griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
