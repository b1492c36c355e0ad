"""The import graph reads top-down: no module imports a layer above its own, and there are no cycles.

Layers (docs/architecture.md): ground floor < capabilities < trainers < entry points. Function-level (lazy) imports
count too. Sibling capabilities do not import each other, except `modeling`, which every capability may use.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trl_ext

PACKAGE_DIR = Path(trl_ext.__file__).parent

#: module-name prefix -> (layer, capability group). The longest matching prefix wins.
LAYERS = {
    "trl_ext.assets": (0, "ground"),
    "trl_ext.recipe": (0, "ground"),
    "trl_ext.configs": (0, "ground"),
    "trl_ext.runtime": (0, "ground"),
    "trl_ext.model_source": (0, "ground"),
    "trl_ext.data": (0, "ground"),
    "trl_ext.checkpoints": (0, "ground"),
    "trl_ext.data.build": (4, "asset builders"),  # seeded scripts that make the bundled assets: run, not imported
    "trl_ext.modeling": (1, "modeling"),
    "trl_ext.adapters": (1, "modeling"),
    "trl_ext.merge": (2, "merge"),
    "trl_ext.chat": (2, "chat"),
    "trl_ext.ewc": (2, "ewc"),
    "trl_ext.rewards": (2, "rewards"),
    "trl_ext.memory": (2, "memory"),
    "trl_ext.callbacks": (2, "callbacks"),
    "trl_ext.trainers": (3, "trainers"),
    "trl_ext.train": (4, "entry"),
    "trl_ext.cli": (4, "entry"),
    "trl_ext.memcheck": (4, "entry"),
    "trl_ext.check": (4, "entry"),
    "trl_ext.preflight": (4, "entry"),
    "trl_ext.pipeline": (4, "entry"),
}
PUBLIC_FACE = "trl_ext"  # the package __init__ re-exports every layer lazily


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> tuple[int, str]:
    best = max(
        (p for p in LAYERS if name == p or name.startswith(p + ".") or name.startswith(p + "_")), key=len, default=None
    )
    if best is None:
        raise AssertionError(f"{name} has no layer: add it to LAYERS and to docs/architecture.md")
    return LAYERS[best]


def imports_of(path: Path) -> set[str]:
    """Every trl_ext module `path` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("trl_ext"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("trl_ext"):
                continue
            for alias in node.names:  # `from trl_ext.x import y` may name a submodule y
                candidate = f"{base}.{alias.name}"
                found.add(
                    candidate
                    if (PACKAGE_DIR.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                    or (PACKAGE_DIR.parent / candidate.replace(".", "/")).is_dir()
                    else base
                )
    # strings in the lazy public-API table and the CLI command table are imports too
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("trl_ext."):
            target = node.value.split(":")[0]
            if all(part.isidentifier() for part in target.split(".")):
                found.add(target)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}
GRAPH = {name: {i for i in imports_of(path) if i != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != PUBLIC_FACE))
def test_module_imports_only_its_own_layer_or_below(name):
    layer, group = layer_of(name)
    for target in sorted(GRAPH[name]):
        if target == PUBLIC_FACE:
            raise AssertionError(f"{name} imports the public face `trl_ext`; import the defining module instead")
        t_layer, t_group = layer_of(target)
        assert t_layer <= layer, f"{name} (layer {layer}) imports {target} (layer {t_layer}), a layer above it"
        if layer == 2 and t_layer == 2:
            assert t_group == group, f"capability {name} imports sibling capability {target}"


def _resolve(target: str) -> str | None:
    """The module a name refers to (a submodule import may name a function of a module)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_cycles():
    graph = {n: {t for t in map(_resolve, deps) if t and t != n} for n, deps in GRAPH.items() if n != PUBLIC_FACE}
    # package __init__ files that only re-export their own submodules are not cycles with them
    for n in graph:
        graph[n] = {
            t for t in graph[n] if t != PUBLIC_FACE and not (MODULES[t].name == "__init__.py" and n.startswith(t + "."))
        }
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_package_init_files_only_re_export():
    for name, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            allowed = (ast.Import, ast.ImportFrom, ast.Expr, ast.Assign, ast.AnnAssign, ast.If)
            if name == PUBLIC_FACE and isinstance(node, ast.FunctionDef) and node.name in ("__getattr__", "__dir__"):
                continue  # the lazy re-export hook of the public face
            assert isinstance(node, allowed), f"{path} defines {type(node).__name__} at line {node.lineno}"


def test_no_module_is_over_400_lines():
    too_long = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in MODULES.items()}
    too_long = {n: c for n, c in too_long.items() if c > 420}
    assert not too_long, f"modules over ~400 lines (split them by concept): {too_long}"
