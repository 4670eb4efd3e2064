"""The package's shape: no import cycles, every shipped config valid, a light top-level import."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "layoutdiffuse"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every package module that ``path`` imports, at module level or inside a function."""
    return imported_modules_of(ast.parse(path.read_text(), str(path)).body, path, modules)


def imported_modules_of(nodes: list[ast.stmt], path: Path, modules: set[str]) -> set[str]:
    """The package modules imported by the statements ``nodes`` of ``path`` (and everything inside them)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in (inner for top in nodes for inner in ast.walk(top)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


#: imports up the layers allowed inside one function, each with its reason: Lightning's API puts
#: ``load_from_checkpoint`` on the module class, and the loader sits above the training modules
LATE_IMPORTS = {("layoutdiffuse.training.inference", "layoutdiffuse.factory"): "SamplingInterface.load_from_checkpoint"}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {name: imported_modules(path, modules) for name, path in files.items()}
    for (source, target), function in LATE_IMPORTS.items():
        tree = ast.parse(files[source].read_text())
        name = function.rpartition(".")[2]
        imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                   and target in imported_modules_of([node], files[source], modules)]
        allowed = [node for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) and fn.name == name
                   for node in ast.walk(fn) if node in imports]
        assert imports and len(allowed) == len(imports), f"{source} may import {target} only inside {function}"
        graph[source].discard(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    assert len(graph) > 40
    found = cycles(graph)
    assert not found, "import cycles (module sets that import each other): " + "; ".join(" <-> ".join(c) for c in found)


def test_leaf_modules_import_nothing_from_the_package_but_its_errors():
    graph = import_graph()
    for leaf in ("layoutdiffuse.errors", "layoutdiffuse.schema", "layoutdiffuse.registry", "layoutdiffuse.sd.schedules"):
        assert graph[leaf] <= {"layoutdiffuse.errors"}, f"{leaf} imports {sorted(graph[leaf])}"


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_validates(config):
    from layoutdiffuse.config import load_config, validate

    validate(load_config(config))


def test_import_layoutdiffuse_is_light():
    code = "import sys, layoutdiffuse; print(json.dumps(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning', 'diffusers', 'torchvision') if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("name", ["DDPMTraining", "DDIMTraining", "UNet", "EmbedBlock", "ConditionBlock", "ResBlock", "AttentionBlock",
                                  "GaussianDiffusion", "sample", "adapt", "load_checkpoint", "make_sampler", "build_module"])
def test_the_public_names_import_from_the_top(name):
    import layoutdiffuse

    assert getattr(layoutdiffuse, name) is not None
    assert name in dir(layoutdiffuse)


def test_every_top_level_name_resolves():
    import layoutdiffuse

    missing = [name for name in layoutdiffuse.__all__ if getattr(layoutdiffuse, name, None) is None]
    assert not missing



def upward_imports(graph: dict[str, set[str]], lower: str, upper: str) -> dict[str, list[str]]:
    """The modules of package ``lower`` that import modules of package ``upper``, and what they import."""
    found = {name: sorted(t for t in targets if t == upper or t.startswith(upper + "."))
             for name, targets in graph.items() if name == lower or name.startswith(lower + ".")}
    return {name: targets for name, targets in found.items() if targets}


def test_the_layer_rule_sees_an_upward_import():
    graph = {"p.sd.a": {"p.training.ddpm", "p.errors"}, "p.sd.b": {"p.sd.a"}, "p.training.ddpm": {"p.sd.b"}, "p.sdx": {"p.training"}}
    assert upward_imports(graph, "p.sd", "p.training") == {"p.sd.a": ["p.training.ddpm"]}


def test_foundations_sit_below_the_training_modules():
    """``sd/`` (foundations: files, loading, the layout UNet) imports nothing from ``training/``; the
    training module around a foundation is built by ``layoutdiffuse.factory``."""
    graph = import_graph()
    assert sum(name.startswith("layoutdiffuse.sd.") for name in graph) > 5
    assert upward_imports(graph, "layoutdiffuse.sd", "layoutdiffuse.training") == {}
