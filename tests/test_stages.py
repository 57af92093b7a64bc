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


def test_the_rules_declare_exactly_the_package_neuron_sets():
    import re
    from pathlib import Path

    from speaker_neurons.analysis.neuron_sets import SET_NAMES

    text = (Path(__file__).resolve().parents[1] / "rules" / "common.smk").read_text()
    block = re.search(r"^NEURON_SETS = \[(.*?)\]", text, flags=re.M | re.S).group(1)
    assert tuple(re.findall(r'"(\w+)"', block)) == SET_NAMES


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
