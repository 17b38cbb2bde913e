"""The structure docs/architecture.md describes: module imports form no cycle, and the
repository refers to nothing outside itself."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "svdlib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """svdlib modules imported at module level (not inside functions: those run on demand)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("svdlib"):
                found.add(module)
                found.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("svdlib"))
    return found


def test_the_core_modules_import_each_other_without_a_cycle():
    modules = {_module_name(p): p for p in PACKAGE.glob("*.py")}
    graph = {name: {m for m in _top_level_imports(path) if m in modules and m != name}
             for name, path in modules.items() if name != "svdlib"}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
    # the stage and the matrix functions in particular
    assert "svdlib.matfuncs" not in graph["svdlib.fused"] and "svdlib.eigen" not in graph["svdlib.fused"]
    assert "svdlib.remedies" not in graph["svdlib.fused"] and "svdlib.remedies" not in graph["svdlib._options"]
    # forward mode and second derivatives sit between the remedies and their users
    assert "svdlib.higher_order" not in graph["svdlib.fused"] | graph["svdlib.remedies"]
    assert not {"svdlib.eigen", "svdlib.matfuncs"} & graph["svdlib.higher_order"]


def test_the_repository_refers_to_nothing_outside_it(repo_root):
    try:
        files = subprocess.run(["git", "ls-files"], cwd=repo_root, capture_output=True, text=True,
                               check=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    outside = ("DES" + "IGN.md", "../" + "shared", "GPU" + ".md")  # spelled apart so this file passes
    hits = []
    for name in files:
        path = repo_root / name
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        hits += [f"{name}: {word}" for word in outside if word in text]
    assert hits == []
