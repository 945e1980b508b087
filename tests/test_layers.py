"""The packages depend one way, launch -> lmm -> data_pipeline, and no modules import each other in a cycle.

Every import counts, the lazy ones inside functions too: a lazy import hides a cycle from Python, not from a
reader."""
import ast
from pathlib import Path

from conftest import REPO_ROOT

LAYERS = ("launch", "lmm", "data_pipeline")  # each may import only the ones after it


def project_modules() -> dict[str, set[str]]:
    """module -> the project modules it imports (``pkg.mod``; ``from pkg import mod`` counts as ``pkg.mod``)."""
    files = {".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for layer in LAYERS for p in (REPO_ROOT / layer).rglob("*.py")}
    imports = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                          for a in node.names}
        imports[name] = {m for m in found if m in files and m != name}
    return imports


def test_packages_depend_one_way():
    wrong = [f"{module} imports {target}" for module, targets in project_modules().items() for target in targets
             if LAYERS.index(target.split(".")[0]) < LAYERS.index(module.split(".")[0])]
    assert not wrong, wrong


def test_no_import_cycles():
    graph = project_modules()
    state, cycles = {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
