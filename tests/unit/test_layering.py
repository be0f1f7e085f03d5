"""The layering of DESIGN.md, checked on the source: imports point down only (remotes and the
`bmm` command -> vmm_drivers / im_drivers -> bmm), and the product never imports the simulated
lab (bmm_lab, its own package), which the `bmm lab` command group only names as a string."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("bmm", "vmm_drivers", "im_drivers")
# a package may import only the packages listed for it (and the standard library, and PyPI)
MAY_IMPORT = {
    "bmm": {"bmm"},
    "vmm_drivers": {"bmm", "vmm_drivers"},
    "im_drivers": {"bmm", "vmm_drivers", "im_drivers"},
}
# the `bmm` command is an entry point, like the remotes: it may run the drivers
ENTRY_POINTS = {"bmm/cli": {"bmm", "vmm_drivers", "im_drivers"}}
OURS = {"bmm", "vmm_drivers", "im_drivers", "bmm_lab", "tests", "remotes"}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", PRODUCT)
def test_the_product_imports_only_downwards_and_never_the_lab(package):
    wrong = {}
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        allowed = next((ok for prefix, ok in ENTRY_POINTS.items() if rel.startswith(prefix + "/")),
                       MAY_IMPORT[package])
        bad = imported_packages(path) - allowed
        if bad:
            wrong[rel] = sorted(bad)
    assert wrong == {}


def test_the_remotes_reach_bmm_only_through_the_drivers_entry_points():
    for path in sorted((REPO / "remotes").rglob("*")):
        if path.is_file() and path.read_bytes().startswith(b"#!") and b"python" in path.read_bytes()[:100]:
            assert "bmm_lab" not in imported_packages(path), path


def lab_import_graph() -> dict[str, set[str]]:
    """bmm_lab's modules and the bmm_lab modules each imports (at the top or inside a function)."""
    pkg = REPO / "lab" / "bmm_lab"
    modules = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name in modules:
        deps = set()
        for node in ast.walk(ast.parse((pkg / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "bmm_lab":
                deps |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bmm_lab."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("bmm_lab.")}
        graph[name] = deps - {name}
    return graph


def test_the_lab_modules_import_each_other_without_cycles():
    graph = lab_import_graph()
    cycles = []

    def visit(name, path):
        for dep in sorted(graph.get(name, ())):
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif len(path) < len(graph):
                visit(dep, path + [dep])

    for name in sorted(graph):
        visit(name, [name])
    assert cycles == []
