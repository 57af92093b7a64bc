"""speaker_neurons.models' own structure: no import cycle inside it, the checkpoint readers share the name
mapping rather than each other, one CheckpointError. The import graph is tests/test_layers.py's (the whole
package's), restricted to models."""

from __future__ import annotations

import ast

import pytest
from test_layers import find_cycle, imported_modules, module_files

SUBPACKAGE = "speaker_neurons.models"


def in_models(m: str) -> bool:
    return m == SUBPACKAGE or m.startswith(SUBPACKAGE + ".")


def models_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph = {m: imported_modules(m, f, modules) for m, f in modules.items()}
    return {m: {d for d in deps if in_models(d)} for m, deps in graph.items() if in_models(m)}


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
