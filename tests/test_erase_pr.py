"""The erase ablation in phoneme recognition: PR heads saved and loaded unchanged, edits of a streamed
decode equal to decoding the model's hidden states directly, and on a tiny model an empty erase that
changes nothing, the unerased rows at zero, and the random controls beside each set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speaker_neurons import erase, pr
from test_models import tiny
from test_sid import _manifest


def _heads(model, vocab: int):
    L, d = model.num_layers, model.hidden_dim
    out = {}
    for name, layers in (("all", list(range(L + 1))), ("last", [L])):
        hs = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            hs.append(pr.PRHead(layers, d, vocab, 8).eval())
        out[name] = hs
    return out


@pytest.fixture
def setup(tmp_path):
    model = tiny("melhubert").eval()
    man = _manifest(tmp_path, [1.0, 1.2, 0.9, 1.1, 1.3, 1.0])
    rng = np.random.default_rng(0)
    targets = {u: rng.integers(1, 6, size=int(rng.integers(2, 6))) for u in man["utt_id"]}
    return model, man, targets, _heads(model, 6)


def test_heads_round_trip_and_streamed_edits_equal_a_direct_decode(setup, tmp_path):
    model, man, targets, heads = setup
    vocab = ["<blank>", "A", "B", "C", "D", "E"]
    pr.save_heads(tmp_path / "h.safetensors", {k: list(zip((0, 1), v)) for k, v in heads.items()}, vocab)
    loaded, v2 = pr.load_heads(tmp_path / "h.safetensors")
    assert v2 == vocab and list(loaded) == ["all", "last"] and len(loaded["all"]) == 2
    for k in heads:
        for a, b in zip(heads[k], loaded[k]):
            assert a.layers == b.layers
            for (n1, t1), (n2, t2) in zip(a.state_dict().items(), b.state_dict().items()):
                assert n1 == n2 and torch.equal(t1, t2)
    edits = pr.utterance_edits(model, man, targets, loaded, max_batch_seconds=2.0)
    assert edits["all"].shape == (2, len(man))
    from speaker_neurons.batching import audio_batches

    with torch.no_grad():
        for i, u in enumerate(man["utt_id"]):  # one utterance at a time: no padding at all
            b = next(iter(audio_batches(man.iloc[[i]], 10.0, model.sample_rate)))
            o = model(b.wavs, b.lengths, return_ffn=False)
            x = torch.stack(o.hidden, 2)
            for s, h in enumerate(heads["last"]):
                hyp = pr.greedy_decode(h(x).argmax(-1)[0, : int(o.lengths[0])].numpy())
                assert edits["last"][s, i] == pr.edit_distance(targets[u], hyp)


def test_pr_ablation_on_a_tiny_model(setup):
    model, man, targets, heads = setup
    W = model.ffn_widths
    sets = {"some": {1: list(range(W[0] // 2)), 2: list(range(W[1] // 2))}, "empty": {1: [], 2: []}}
    table = erase.run_pr_ablation(model, man, targets, heads, sets, random_seeds=[0, 1], resamples=100, seed=0,
                                  max_batch_seconds=2.0, amp="auto")
    assert len(table) == (1 + 2 * 3) * 2  # (unerased + per set: itself + 2 random) x 2 layer sets
    assert (table[table["kind"] == "unerased"]["delta"] == 0).all()
    empty = table[table["erased"] == "empty"]
    assert (empty["delta"] == 0).all() and (empty["neurons"] == 0).all()
    base = pr.utterance_edits(model, man, targets, heads, max_batch_seconds=2.0)
    ref = sum(len(t) for t in targets.values())
    row = table[(table["kind"] == "unerased") & (table["layer_set"] == "all")].iloc[0]
    assert row["per"] == pytest.approx(base["all"].mean(0).sum() / ref) and row["phones"] == ref
    some = table[(table["erased"] == "some") & (table["kind"] == "set") & (table["layer_set"] == "all")].iloc[0]
    assert some["neurons"] == W[0] // 2 + W[1] // 2 and some["delta_ci_low"] <= some["delta"] <= some["delta_ci_high"]
    assert some["per"] == pytest.approx(row["per"] + some["delta"])
    summary = erase.summarize_pr(table)
    ctrl = table[(table["kind"] == "random") & (table["erased"] == "some") & (table["layer_set"] == "all")]["delta"]
    assert summary["some"]["all"]["random_delta_mean"] == pytest.approx(float(ctrl.mean()))
    assert summary["some"]["all"]["delta_per"] == some["delta"] and set(summary) == {"some", "empty", "unerased"}


def test_saved_heads_are_byte_identical_across_processes(setup, tmp_path):
    """Two processes (other hash seeds) write the same file: one metadata key, sorted JSON."""
    import subprocess
    import sys

    model, _, _, heads = setup
    torch.save({k: [h.state_dict() for h in v] for k, v in heads.items()}, tmp_path / "h.pt")
    code = ("import sys, torch; from speaker_neurons import pr\n"
            "sd = torch.load(sys.argv[1])\n"
            "hs = {}\n"
            "for k, v in sd.items():\n"
            "    hs[k] = []\n"
            "    for i, s in enumerate(v):\n"
            "        h = pr.PRHead([0] if k == 'last' else list(range(len(s['layer_logits']))), s['projector.weight'].shape[1], "
            "s['classifier.weight'].shape[0], s['projector.weight'].shape[0]); h.load_state_dict(s); hs[k].append((i, h))\n"
            "pr.save_heads(sys.argv[2], hs, ['<blank>', 'A', 'B', 'C', 'D', 'E'])\n")
    outs = []
    for i, seed in enumerate(("1", "2", "3", "4")):
        out = tmp_path / f"h{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "h.pt"), str(out)], check=True,
                       env={**__import__("os").environ, "PYTHONHASHSEED": seed})
        outs.append(out.read_bytes())
    assert all(o == outs[0] for o in outs)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "h0.safetensors"), framework="pt") as f:
        assert list(f.metadata()) == ["heads"]  # a single key: no map order to vary
