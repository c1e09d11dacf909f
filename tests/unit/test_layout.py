"""The package's shape: imports point down the stages, no module imports itself back, modules stay small."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "reapkit"
#: The stages in the order the work flows; a module may import its own stage and the ones before it.
STAGES = ["model", "data", "observe", "select", "compress", "measure", "study", "plot", "run"]
#: Modules of the package root every stage may use (and which import no stage).
FOUNDATION = {"reapkit", "reapkit.errors", "reapkit.atomic", "reapkit.lazy"}
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every reapkit module `path` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reapkit"):
            assert node.level == 0, f"{path}: relative import; the package uses absolute imports"
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from reapkit.x import module`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("reapkit"))
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__main__.py"}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def stage(name: str) -> int:
    if name in FOUNDATION:
        return -1
    return STAGES.index(name.split(".")[1])


def test_every_module_lives_in_a_stage_or_the_foundation():
    assert [n for n in MODULES if n not in FOUNDATION and n.split(".")[1] not in STAGES] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_the_stages(name):
    if name in FOUNDATION - {"reapkit"}:
        assert not GRAPH[name] - FOUNDATION, f"{name} is a foundation module and imports {GRAPH[name] - FOUNDATION}"
        return
    if name == "reapkit":
        return
    upward = sorted(m for m in GRAPH[name] if stage(m) > stage(name))
    assert upward == [], f"{name} (stage {STAGES[stage(name)]}) imports later stages: {upward}"


def test_no_import_cycles():
    """Between modules, counting imports inside functions too (a package __init__ is not a cycle with its own
    modules: it names them lazily)."""
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in GRAPH.items()}
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_modules_stay_small():
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert {n: k for n, k in long.items() if k > MAX_LINES} == {}, f"split modules over {MAX_LINES} lines by concept"
