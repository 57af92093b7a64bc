"""No import cycles inside speaker_neurons.models, counting imports inside functions (lazy imports) too.

Every module of the package `speaker_neurons` is parsed with `ast` (nothing is imported). An edge A -> B means
module A has an `import B` / `from B import ...` statement anywhere (module level or in a function or class
body, also under `if` / `try`). `from speaker_neurons.models import X` is an edge to the package's `__init__`
(that statement runs it), plus an edge to the submodule `speaker_neurons.models.X` when X is one. The
`__init__` re-exports are ordinary edges here: no edge is excluded.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "speaker_neurons"
SUBPACKAGE = "speaker_neurons.models"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py of the package (a package is named by its __init__)."""
    out = {}
    for f in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that `name` imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def known(dotted: str) -> str | None:
        # `import a.b.c` runs a.b.c (and its parents); keep the deepest module of the package
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                m = known(alias.name)
                if m:
                    out.add(m)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            m = known(target)
            if m:
                out.add(m)
            for alias in node.names:  # `from pkg import submodule`
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    out.add(sub)
    out.discard(name)
    return out


def in_models(m: str) -> bool:
    return m == SUBPACKAGE or m.startswith(SUBPACKAGE + ".")


def models_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph = {m: imported_modules(m, f, modules) for m, f in modules.items()}
    return {m: {d for d in deps if in_models(d)} for m, deps in graph.items() if in_models(m)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_parser_sees_lazy_and_package_imports(tmp_path):
    """The graph builder itself: function-level imports, `from pkg import X` and relative imports count."""
    pkg = tmp_path / "speaker_neurons" / "models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from speaker_neurons.models.a import f\n")
    (pkg / "a.py").write_text("def f():\n    from speaker_neurons.models import b\n    return b\n")
    (pkg / "b.py").write_text("import speaker_neurons.models.c as c\nfrom . import a\n")
    (pkg / "c.py").write_text("x = 1\n")
    modules = {"speaker_neurons.models": pkg / "__init__.py", "speaker_neurons.models.a": pkg / "a.py",
               "speaker_neurons.models.b": pkg / "b.py", "speaker_neurons.models.c": pkg / "c.py"}
    graph = {m: imported_modules(m, f, modules) for m, f in modules.items()}
    assert graph["speaker_neurons.models"] == {"speaker_neurons.models.a"}
    assert graph["speaker_neurons.models.a"] == {"speaker_neurons.models", "speaker_neurons.models.b"}
    assert graph["speaker_neurons.models.b"] == {"speaker_neurons.models", "speaker_neurons.models.a",
                                                 "speaker_neurons.models.c"}
    assert find_cycle(graph) == ["speaker_neurons.models", "speaker_neurons.models.a", "speaker_neurons.models"]
    del graph["speaker_neurons.models"]
    assert find_cycle(graph) == ["speaker_neurons.models.a", "speaker_neurons.models.b", "speaker_neurons.models.a"]


def test_models_has_no_import_cycle():
    graph = models_graph()
    assert {"speaker_neurons.models", "speaker_neurons.models.loader", "speaker_neurons.models.native"} <= set(graph)
    cycle = find_cycle(graph)
    if cycle:
        pytest.fail("import cycle in speaker_neurons.models: " + " -> ".join(cycle))


def test_readers_share_the_name_mapping_not_each_other():
    graph = models_graph()
    assert "speaker_neurons.models.names" in graph["speaker_neurons.models.hf"]
    assert "speaker_neurons.models.fairseq_ckpt" not in graph["speaker_neurons.models.hf"]


def test_one_checkpoint_error_class():
    """CheckpointError is defined once (errors.py); every other module imports it."""
    defined = []
    for m, f in module_files().items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ClassDef) and node.name == "CheckpointError":
                defined.append(m)
    assert defined == ["speaker_neurons.models.errors"]
