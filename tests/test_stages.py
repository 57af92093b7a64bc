"""The stage layer every rule goes through: thread policy, provenance in one place, declared outputs."""

from __future__ import annotations

import hashlib
import json

import pytest

from speaker_neurons import stages


@pytest.fixture
def probe_stage():
    seen = {}

    def probe(ctx):
        import torch

        seen["torch_threads"] = torch.get_num_threads()
        seen["ctx_threads"] = ctx.threads
        ctx.out("result").write_text("ok\n")
        if ctx.params.get("undeclared"):
            ctx.out("not_declared")
        return {"done": True}

    stages.STAGES["probe"] = probe
    yield seen
    del stages.STAGES["probe"]


def test_compute_threads_come_from_the_config_not_the_cores(tmp_path, probe_stage, package_logs):
    src = tmp_path / "in.txt"
    src.write_text("input\n")
    outs = {"result": str(tmp_path / "out/result.txt"), "provenance": str(tmp_path / "out/provenance/probe.json")}
    res = stages.run_stage("probe", {"src": str(src)}, outs, {"compute_threads": 2, "device": "cpu"},
                           log_path=str(tmp_path / "probe.log"), threads=1, config={"results": "r"},
                           wildcards={"model": "m"})
    assert res == {"done": True}
    assert probe_stage == {"torch_threads": 2, "ctx_threads": 2}
    log = (tmp_path / "probe.log").read_text()
    assert "stage probe [model=m]: device cpu" in log and "computing with upstream.threads=2" in log
    prov = json.loads((tmp_path / "out/provenance/probe.json").read_text())
    assert prov["stage"] == "probe" and prov["wildcards"] == {"model": "m"} and prov["config"] == {"results": "r"}
    assert prov["params"]["compute_threads"] == 2
    assert prov["inputs"] == {str(src): hashlib.sha256(b"input\n").hexdigest()}


def test_without_compute_threads_the_rule_threads_apply(tmp_path, probe_stage, package_logs):
    outs = {"result": str(tmp_path / "r.txt")}
    stages.run_stage("probe", {}, outs, {"device": "cpu"}, log_path=str(tmp_path / "l.log"), threads=1)
    assert probe_stage["torch_threads"] == 1
    assert "computing with" not in (tmp_path / "l.log").read_text()


def test_a_stage_writes_only_what_the_rule_declares(tmp_path, probe_stage, package_logs):
    with pytest.raises(KeyError, match="declares no output 'not_declared'"):
        stages.run_stage("probe", {}, {"result": str(tmp_path / "r.txt")}, {"device": "cpu", "undeclared": True},
                         log_path=str(tmp_path / "l.log"))
    with pytest.raises(KeyError, match="no stage 'nope'"):
        stages.run_stage("nope", {}, {}, {}, log_path=str(tmp_path / "l.log"))


def test_every_rule_has_a_stage_and_declares_its_provenance():
    """Each rule of the workflow runs the stage of its own name and names its provenance file."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = "\n".join(p.read_text() for p in sorted((root / "rules").glob("*.smk")))
    rules = re.findall(r"^rule (\w+):", text, flags=re.M)
    assert len(rules) >= 14
    blocks = re.split(r"^rule ", text, flags=re.M)[1:]
    for name, block in zip(rules, blocks):
        assert name in stages.STAGES, f"rule {name} has no stage"
        assert "run_stage.py" in block and "provenance=" in block, name


def test_progress_bars_go_to_the_rule_log(tmp_path, package_logs):
    """A batch job has no terminal: what a stage writes to stderr (tqdm's bars) lands in its log too."""
    import sys

    def bars(ctx):
        from tqdm import tqdm

        for _ in tqdm(range(3), desc="counting frames", mininterval=0):
            pass
        ctx.out("result").write_text("ok\n")
        return {}

    stages.STAGES["bars"] = bars
    try:
        before = sys.stderr
        stages.run_stage("bars", {}, {"result": str(tmp_path / "r.txt")}, {"device": "cpu"},
                         log_path=str(tmp_path / "bars.log"))
        assert sys.stderr is before
    finally:
        del stages.STAGES["bars"]
    log = (tmp_path / "bars.log").read_text()
    assert "stage bars" in log and "counting frames: 100%" in log and "3/3" in log


def test_every_stage_is_one_call_into_the_package():
    """No stage holds domain logic: each is a short adapter (at most 12 lines of body)."""
    import inspect

    long = {}
    for name, fn in stages.STAGES.items():
        body = [ln for ln in inspect.getsource(fn).splitlines() if ln.strip()]
        body = body[body.index(next(ln for ln in body if ln.startswith("def "))) + 1:]
        if len(body) > 12:
            long[name] = len(body)
    assert not long, f"stages longer than 12 lines: {long}"


def test_inputs_are_joined_by_name_and_the_model_comes_from_its_input(tmp_path):
    """`ctx.keyed` gives the inputs named <prefix>/<key> whatever their order; `ctx.model` loads the
    weights of the declared input (not a path in the params)."""
    import torch

    from test_models import tiny

    from speaker_neurons.models import load_upstream, save_upstream

    ctx = stages.StageContext("x", {"evidence/b/k3": "3.json", "table/a": "a.tsv", "evidence/a/k5": "5.json",
                                    "table/b": "b.tsv", "manifest": "m.tsv"}, {}, {})
    assert ctx.keyed("table") == {"a": "a.tsv", "b": "b.tsv"}
    assert ctx.keyed("evidence") == {"b/k3": "3.json", "a/k5": "5.json"}
    assert ctx.keyed("manifest") == {}

    a = tiny("melhubert")
    save_upstream(a, tmp_path / "a")
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    save_upstream(a, tmp_path / "b")
    ctx = stages.StageContext("x", {"model": str(tmp_path / "b")}, {},
                              {"upstream": {"kind": "melhubert", "format": "native"}}, device="cpu")
    got = ctx.model()
    want = load_upstream({"kind": "melhubert", "format": "native", "path": str(tmp_path / "b")}, device="cpu")
    other = load_upstream({"kind": "melhubert", "format": "native", "path": str(tmp_path / "a")}, device="cpu")
    w = dict(got.named_parameters())
    assert all(torch.equal(v, dict(want.named_parameters())[k]) for k, v in w.items())
    assert not all(torch.equal(v, dict(other.named_parameters())[k]) for k, v in w.items())


def _in_a_fresh_process(code: str) -> None:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_a_stage_that_runs_no_model_starts_without_torch(tmp_path):
    """A job's start-up is mostly importing torch: the stages that run no model (tables, sets, reports)
    never load it; and their inputs are joined by key (table/k5 first, the table still in k order)."""
    for k, n in ((3, 7), (5, 2)):
        (tmp_path / f"k{k}.tsv").write_text(f"layer\tssl_cluster\n1\t{n}\ntotal\t{n}\n")
    outs = {"table": str(tmp_path / "all.tsv"), "provenance": str(tmp_path / "prov.json")}
    _in_a_fresh_process(f"""
import sys
from speaker_neurons.stages import run_stage
run_stage("neuron_counts_summary", {{"table/k5": {str(tmp_path / "k5.tsv")!r}, "table/k3": {str(tmp_path / "k3.tsv")!r}}},
          {outs!r}, {{}}, log_path={str(tmp_path / "l.log")!r}, threads=1, config={{"upstream": {{"device": "auto"}}}})
assert "torch" not in sys.modules, "torch was loaded"
""")
    rows = (tmp_path / "all.tsv").read_text().splitlines()
    assert rows == ["k_ssl\tlayer\tssl_cluster", "3\t1\t7", "3\ttotal\t7", "5\t1\t2", "5\ttotal\t2"]
    assert "no device (it runs no model)" in (tmp_path / "l.log").read_text()


def test_a_stage_that_loads_torch_itself_gets_the_configured_threads(tmp_path):
    """torch not loaded when the stage starts: it reads the thread count from the environment when the
    stage imports it (1 here, not the machine's default)."""
    _in_a_fresh_process(f"""
import sys
from speaker_neurons import stages

def probe(ctx):
    import torch
    ctx.out("result").write_text(str(torch.get_num_threads()))
    return {{}}

stages.STAGES["probe"] = probe
assert "torch" not in sys.modules
stages.run_stage("probe", {{}}, {{"result": {str(tmp_path / "n.txt")!r}}}, {{"compute_threads": 1}},
                 log_path={str(tmp_path / "l.log")!r}, threads=2)
""")
    assert (tmp_path / "n.txt").read_text() == "1"


def test_the_functions_the_stages_call_take_config_values_without_defaults():
    """The schema is the one home of defaults: a parameter of a function a stage calls that is named
    like a config key has no default of its own (the rule passes the resolved value)."""
    import ast
    import importlib
    import inspect

    from speaker_neurons.config import schema

    def leaves(node, out):
        for name, sub in (node.get("properties") or {}).items():
            if sub.get("type") != "object":  # a value, not a section (pr, corpora, ...)
                out.add(name)
            leaves(sub, out)
        return out

    # names that are also the package's own switches, not these config values (a progress bar)
    keys = leaves(schema(), set()) - {"enabled", "device", "threads", "name", "path",
                                                                 "progress", "corpora"}
    called = set()
    for fn in stages.STAGES.values():
        tree = ast.parse(inspect.getsource(fn).lstrip())
        modules = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("speaker_neurons"):
                for a in node.names:
                    obj = getattr(importlib.import_module(node.module), a.name, None)
                    if obj is None or inspect.ismodule(obj):  # `from speaker_neurons import sid`
                        modules[a.asname or a.name] = importlib.import_module(f"{node.module}.{a.name}")
                    else:
                        called.add((node.module, a.name, obj))
        for node in ast.walk(tree):  # sid.run_sid(...), pruning.prune(...)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                mod = modules[node.value.id]
                called.add((mod.__name__, node.attr, getattr(mod, node.attr)))
    assert len(called) > 20
    repeated = []
    for module, name, obj in called:
        if not callable(obj) or inspect.ismodule(obj):
            continue
        for p in inspect.signature(obj).parameters.values():
            if p.name in keys and p.default is not inspect.Parameter.empty:
                repeated.append(f"{module}.{name}({p.name}={p.default!r})")
    assert not repeated, repeated
