"""The package's import structure (docs/DESIGN.md, "Layers of code"): no import cycle, and no module imports
from a layer above its own. Every module is parsed with `ast` (nothing is imported). An edge A -> B means
module A has an `import B` / `from B import ...` statement anywhere (module level or in a function or class
body, also under `if` / `try`), except under `if TYPE_CHECKING:` (annotations only, never run).
`from pkg import X` is an edge to the package's `__init__` (that statement runs it), plus an edge to the
submodule `pkg.X` when X is one."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = "speaker_neurons"

#: Bottom to top; a module may import from its own layer and the layers below. A module is placed by the
#: longest prefix listed here. (The same table is in docs/DESIGN.md.)
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["speaker_neurons", "speaker_neurons.utils", "speaker_neurons.config", "speaker_neurons.audio",
              "speaker_neurons.rowfile", "speaker_neurons.statistics", "speaker_neurons.stores", "speaker_neurons.batching",
              "speaker_neurons.kmeans"]),
    ("data and models", ["speaker_neurons.data", "speaker_neurons.models"]),
    ("analysis", ["speaker_neurons.analysis", "speaker_neurons.evaluation", "speaker_neurons.paired",
                  "speaker_neurons.pruning", "speaker_neurons.pretrain"]),
    ("evaluation stages", ["speaker_neurons.heads", "speaker_neurons.sid_pool", "speaker_neurons.sid",
                           "speaker_neurons.pr_data", "speaker_neurons.pr",
                           "speaker_neurons.erase", "speaker_neurons.plant", "speaker_neurons.summary"]),
    ("workflow", ["speaker_neurons.catalogue", "speaker_neurons.leaks", "speaker_neurons.costs", "speaker_neurons.plan",
                  "speaker_neurons.runner",
                  "speaker_neurons.stages", "speaker_neurons.__main__"]),
]


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

    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                   for n in ast.walk(block)}  # annotations only: never run
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
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


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports}, for every module of the package."""
    modules = module_files()
    return {m: imported_modules(m, f, modules) for m, f in modules.items()}


def layer_of(module: str) -> int:
    best = (-1, -1)
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best[1]:
                best = (i, len(p))
    assert best[0] >= 0, f"{module} is in no layer: add it to LAYERS here and in docs/DESIGN.md"
    return best[0]


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


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_from_a_layer_above_its_own():
    wrong = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
             for m, deps in import_graph().items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not wrong, "\n".join(wrong)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("speaker_neurons.analysis.clusters") < layer_of("speaker_neurons.catalogue")
    assert layer_of("speaker_neurons.pr_data") == layer_of("speaker_neurons.pr")  # the longest prefix decides


def test_the_layer_table_is_the_one_in_design_md():
    lines = (ROOT / "docs" / "DESIGN.md").read_text().splitlines()
    for i, (name, prefixes) in enumerate(LAYERS, start=1):
        line = next((l for l in lines if l.startswith(f"{i}. **{name}**")), None)
        assert line is not None, f"docs/DESIGN.md lists no layer {i}. **{name}**"
        for p in prefixes:
            short = p if p == "speaker_neurons" else p.removeprefix("speaker_neurons.")
            assert f"`{short}`" in line, f"docs/DESIGN.md: layer {name} does not name `{short}`"


def _source_branches(path: Path, sources: set[str]) -> list[int]:
    """Lines of `path` that compare something named *source* with a corpus source's name."""
    def names_source(node) -> bool:
        return any("source" in (n.attr if isinstance(n, ast.Attribute) else n.id)
                   for n in ast.walk(node) if isinstance(n, (ast.Name, ast.Attribute)))

    def literals(node) -> set[str]:
        return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}

    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(names_source(s) for s in sides) and any(literals(s) & sources for s in sides):
                lines.append(node.lineno)
    return lines


def test_no_module_outside_the_recipes_branches_on_a_corpus_source():
    from speaker_neurons.config import choices

    sources = set(choices("corpus.source"))
    recipes = ROOT / PACKAGE / "data" / "recipes"
    found = {str(p.relative_to(ROOT)): lines for p in sorted((ROOT / PACKAGE).rglob("*.py"))
             if recipes not in p.parents and (lines := _source_branches(p, sources))}
    assert not found, f"ask the corpus' recipe (speaker_neurons.data.recipes) instead: {found}"


def test_the_source_branch_check_sees_one(tmp_path):
    p = tmp_path / "m.py"
    p.write_text('def f(c):\n    if c.source == "tsv":\n        return 1\n    return c.source in ("demo", "x")\n')
    assert _source_branches(p, {"demo", "tsv"}) == [2, 4]
