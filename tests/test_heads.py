"""What SID and PR share (`speaker_neurons.heads`): one layer-mixing head, one rate rule, one file format."""

from __future__ import annotations

import json

import pytest
import torch

from speaker_neurons import heads, pr, sid


def test_rate_picking_takes_the_best_dev_figure_and_the_smaller_rate_on_ties():
    assert heads.pick_rate({1e-2: 0.5, 1e-3: 0.7, 1e-4: 0.6}, higher_is_better=True) == 1e-3
    assert heads.pick_rate({1e-2: 0.7, 1e-3: 0.7}, higher_is_better=True) == 1e-3
    assert heads.pick_rate({1e-2: 0.2, 1e-3: 0.3}, higher_is_better=False) == 1e-2
    assert heads.pick_rate({1e-1: 0.2, 1e-2: 0.2}, higher_is_better=False) == 1e-2


@pytest.mark.parametrize("kind", ["sid", "pr"])
def test_both_heads_are_layer_mixing_heads_saved_and_loaded_alike(tmp_path, kind):
    torch.manual_seed(0)
    make = sid.SIDHead if kind == "sid" else pr.PRHead
    hs = {"all": [(0, make([0, 1, 2], 8, 5, 4)), (3, make([0, 1, 2], 8, 5, 4))], "last": [(0, make([2], 8, 5, 4))]}
    for _, h in hs["all"] + hs["last"]:
        assert isinstance(h, heads.LayerMixHead) and list(h.state_dict()) == [
            "layer_logits", "projector.weight", "projector.bias", "classifier.weight", "classifier.bias"]
        with torch.no_grad():
            h.layer_logits.normal_()
    heads.save_heads(tmp_path / "h.safetensors", hs, vocabulary=["<blank>", "a"])
    back, extra = heads.load_heads(tmp_path / "h.safetensors", make)
    assert extra == {"vocabulary": ["<blank>", "a"]}
    assert {nm: [sd for sd, _ in v] for nm, v in back.items()} == {"all": [0, 3], "last": [0]}
    for nm in hs:
        for (_, a), (_, b) in zip(hs[nm], back[nm]):
            assert type(b) is make and b.layers == a.layers and not b.training
            for k, v in a.state_dict().items():
                assert torch.equal(v, b.state_dict()[k])


def test_sid_heads_written_by_older_versions_still_load(tmp_path):
    """Older SID head files keep the sets at the top of the metadata, not under "sets"."""
    from safetensors.torch import save_file

    h = sid.SIDHead([1, 2], 6, 3, proj_dim=4)
    save_file({f"last/7/{k}": v.contiguous() for k, v in h.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"heads": json.dumps({"last": {"layers": [1, 2], "seeds": [7]}})})
    [(seed, back)] = sid.load_heads(tmp_path / "old.safetensors")["last"]
    assert seed == 7 and back.layers == [1, 2] and torch.equal(back.projector.weight, h.projector.weight)
