"""Static checks of the code structure: what the runtime may import, no import cycles in the training package,
no process environment written by library code.

These read the source files with ``ast`` (nothing is imported), so they also see imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"lusifer": REPO / "lusifer", "lusifer.train": REPO / "train", "lusifer.export": REPO / "export",
                "lusifer.runtime": REPO / "runtime"}
# what the runtime never imports, not even inside a function (it must stay torch-free and training-free)
RUNTIME_FORBIDDEN = ("torch", "transformers", "peft", "safetensors", "lusifer.train", "lusifer.export",
                     "lusifer.modeling", "lusifer.backbones", "lusifer.tiny", "lusifer.convert")
# the one documented entry point from the runtime into training code: (file, function)
BUILDER_ENTRY = ("default_model.py", "load_builder")


def _module_name(package: str, path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([package, *parts]) if parts else package


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """``(imported module, line)`` of every import in ``tree``, relative imports resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_package else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _sources(package: str) -> dict[str, tuple[Path, ast.AST]]:
    root = PACKAGE_DIRS[package]
    paths = sorted(root.glob("*.py")) if package != "lusifer" else sorted(root.rglob("*.py"))
    return {_module_name(package, p, root): (p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in paths}


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_runtime_never_imports_training_code():
    """No runtime module imports torch, transformers, peft or training/export code, even lazily."""
    bad = []
    for module, (path, tree) in _sources("lusifer.runtime").items():
        for name, line in _imports(tree, module, path.name == "__init__.py"):
            if any(_is_under(name, f) for f in RUNTIME_FORBIDDEN):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not bad, "the runtime imports training code:\n" + "\n".join(bad)


def test_runtime_reaches_training_only_through_the_builder_entry_point():
    """Training code is named (for a look-up by name) nowhere in the runtime; ``import_module`` with a computed
    name is used only by the documented builder entry point."""
    bad = []
    for module, (path, tree) in _sources("lusifer.runtime").items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if any(f"{p}." in node.value or node.value == p for p in ("lusifer.train", "lusifer.export")) \
                        and not _is_docstring(tree, node):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} names {node.value!r}")
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for call in [n for n in ast.walk(func) if isinstance(n, ast.Call)]:
                target = call.func
                name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                if name in ("import_module", "__import__") and call.args and not isinstance(call.args[0], ast.Constant):
                    if (path.name, func.name) != BUILDER_ENTRY and not _looks_up_own_package(func):
                        bad.append(f"{path.relative_to(REPO)}:{call.lineno} imports a computed module name in "
                                   f"{func.name}()")
    assert not bad, "\n".join(bad)


def _is_docstring(tree: ast.AST, node: ast.Constant) -> bool:
    for owner in ast.walk(tree):
        if isinstance(owner, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and owner.body:
            first = owner.body[0]
            if isinstance(first, ast.Expr) and first.value is node:
                return True
    return False


def _looks_up_own_package(func: ast.FunctionDef) -> bool:
    """``lusifer.runtime.__getattr__`` loads its own submodules lazily (from a literal table of runtime modules)."""
    return func.name == "__getattr__"


def test_runtime_lazy_table_names_only_runtime_modules():
    import lusifer.runtime as runtime

    assert all(m.startswith("lusifer.runtime.") for m in runtime._LAZY.values())


def test_builder_entry_point_names_a_real_function():
    from lusifer.default_model import BUILDER
    from lusifer.runtime.default_model import load_builder
    from lusifer.train.lusifer_small import build_lusifer_small

    assert BUILDER == "lusifer.train.lusifer_small:build_lusifer_small"
    assert load_builder() is build_lusifer_small


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each reported once, from its first node)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def _import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    sources = {}
    for package in packages:
        sources.update(_sources(package))
    graph = {}
    for module, (path, tree) in sources.items():
        targets = set()
        for name, _ in _imports(tree, module, path.name == "__init__.py"):
            while name and name not in sources:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def test_no_import_cycles_between_training_modules():
    """Every import counts, also one inside a function: no module of ``lusifer.train`` reaches itself."""
    graph = _import_graph(("lusifer.train",))
    graph = {m: {t for t in ts if _is_under(t, "lusifer.train") and t != "lusifer.train"} for m, ts in graph.items()}
    assert _cycles(graph) == []


def test_no_import_cycles_between_runtime_and_shared_modules():
    graph = _import_graph(("lusifer", "lusifer.runtime"))
    graph = {m: {t for t in ts if not _is_under(t, "lusifer.train") and t not in ("lusifer", "lusifer.runtime")}
             for m, ts in graph.items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_library_code_writes_no_environment_variables():
    """Only command-line entry points (``cli.py``) may set process environment variables."""
    bad = []
    for package in PACKAGE_DIRS:
        for module, (path, tree) in _sources(package).items():
            if path.name in ("cli.py", "__main__.py"):
                continue
            for node in ast.walk(tree):
                if _writes_environ(node):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not bad, "library code writes os.environ:\n" + "\n".join(bad)


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (isinstance(node, ast.Name)
                                                                            and node.id == "environ")


def _writes_environ(node: ast.AST) -> bool:
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        return any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr in ("setdefault", "update", "pop", "clear", "popitem") and _is_environ(node.func.value):
            return True
        if node.func.attr in ("putenv", "unsetenv"):
            return True
    return False
