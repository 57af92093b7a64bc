"""Upstream models: torchaudio parity, padding invariance, MelHuBERT features, per-layer widths, pruning,
the native format, released MelHuBERT checkpoints. Tiny random configs only."""

from __future__ import annotations

import os
import json
import math

import numpy as np
import pytest
import torch

from speaker_neurons.config import complete
from speaker_neurons.models import (
    CheckpointError,
    build_upstream,
    describe,
    load_native,
    load_upstream,
    save_upstream,
)
from speaker_neurons.models.base import resolve_device
from speaker_neurons.utils import sha256_file
from speaker_neurons.models.melhubert import MelHuBERT, fbank_frames
from speaker_neurons.models.wav2vec2 import Wav2Vec2Upstream

#: a `models` entry with the schema's defaults (kind auto, format auto, ...): what load_upstream reads
ENTRY = complete({"models": [{"name": "m"}]})["models"][0]

TOL = 1e-4
CONV = [(16, 10, 5), (16, 3, 2), (16, 2, 2)]

MEL_TINY = {"num_layers": 2, "hidden_dim": 32, "num_heads": 4, "ffn_dim": 48, "pos_conv_kernel": 8,
            "pos_conv_groups": 4, "frame_period": 10}


def w2v_kwargs(mode="group_norm", lnf=False, layers=2):
    return dict(extractor_mode=mode, extractor_conv_layer_config=CONV, extractor_conv_bias=mode == "layer_norm",
                encoder_embed_dim=32, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=8,
                encoder_pos_conv_groups=4, encoder_num_layers=layers, encoder_num_heads=4,
                encoder_attention_dropout=0.0, encoder_ff_interm_features=48, encoder_ff_interm_dropout=0.0,
                encoder_dropout=0.0, encoder_layer_norm_first=lnf, encoder_layer_drop=0.0, aux_num_out=None)


def jitter(model, scale=0.1, seed=0):
    """Perturb every parameter and buffer-free weight so that norms/biases are not trivially 1/0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def max_err(a, b):
    return float((a - b).detach().abs().max()) if a.numel() else 0.0


def tiny(kind, **over):
    torch.manual_seed(0)
    if kind.startswith("melhubert"):
        cfg = dict(MEL_TINY, frame_period=20 if kind == "melhubert20" else 10, **over)
        m = MelHuBERT(cfg)
        m.set_feature_stats(torch.full((40,), 5.0), torch.full((40,), 3.0))
    else:
        mode = "layer_norm" if kind.endswith("_ln") else "group_norm"
        mtype = kind.split("_")[0]
        cfg = {k: v for k, v in w2v_kwargs(mode, lnf=kind.endswith("_ln")).items() if k != "aux_num_out"}
        cfg.update(model_type=mtype, encoder_num_buckets=16, encoder_max_distance=40, **over)
        m = Wav2Vec2Upstream(cfg)
    return jitter(m).eval()


# ------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("mtype,mode,lnf", [("wav2vec2", "group_norm", False), ("hubert", "layer_norm", True),
                                            ("wavlm", "group_norm", False), ("wavlm", "layer_norm", True)])
def test_torchaudio_parity(mtype, mode, lnf):
    torchaudio = pytest.importorskip("torchaudio")
    torch.manual_seed(1)
    kw = w2v_kwargs(mode, lnf, layers=3)
    if mtype == "wavlm":
        ref = torchaudio.models.wavlm_model(encoder_num_buckets=16, encoder_max_distance=40, **kw)
        cfg = dict(kw, model_type="wavlm", encoder_num_buckets=16, encoder_max_distance=40)
    else:
        ref = torchaudio.models.wav2vec2_model(**kw)
        cfg = dict(kw, model_type=mtype)
    jitter(ref).eval()
    model = Wav2Vec2Upstream(cfg)
    model.load_state_dict(ref.state_dict(), strict=True)  # key-for-key torchaudio names
    assert set(model.state_dict()) == set(ref.state_dict())

    acts = []
    hooks = [l.feed_forward.intermediate_dense.register_forward_hook(
        lambda mod, inp, out: acts.append(torch.nn.functional.gelu(out))) for l in ref.encoder.transformer.layers]
    x = torch.randn(2, 3000)
    with torch.no_grad():
        ref_layers, ref_len = ref.extract_features(x)
        feats, _ = ref.feature_extractor(x, None)
        ref_h0 = ref.encoder.transformer._preprocess(ref.encoder.feature_projection(feats))
        out = model(x)
    for h in hooks:
        h.remove()
    assert len(out.hidden) == 4 and len(out.ffn) == 3
    assert max_err(out.hidden[0], ref_h0) <= TOL
    for a, b in zip(out.hidden[1:], ref_layers):
        assert max_err(a, b) <= TOL
    for a, b in zip(out.ffn, acts):
        assert max_err(a, b) <= TOL
    assert out.lengths.tolist() == [model.frames_for(3000)] * 2 == [ref_layers[0].shape[1]] * 2


def test_weight_norm_aliases_load():
    """`weight_g`/`weight_v` (old torch / fairseq) and a folded `weight` load into the pos conv."""
    m = tiny("wav2vec2")
    sd = m.state_dict()
    pre = "encoder.transformer.pos_conv_embed.conv."
    g, v = sd[pre + "parametrizations.weight.original0"], sd[pre + "parametrizations.weight.original1"]
    ref = m.encoder.transformer.pos_conv_embed.conv.weight().detach()
    old = {k: t for k, t in sd.items() if "parametrizations" not in k}
    old[pre + "weight_g"], old[pre + "weight_v"] = g.clone(), v.clone()
    m2 = tiny("wav2vec2")
    jitter(m2, seed=5)
    m2.load_state_dict(old, strict=True)
    assert max_err(m2.encoder.transformer.pos_conv_embed.conv.weight(), ref) <= 1e-6
    folded = {k: t for k, t in sd.items() if "parametrizations" not in k}
    folded[pre + "weight"] = ref.clone()
    m3 = tiny("wav2vec2")
    jitter(m3, seed=6)
    m3.load_state_dict_checked(folded, "folded")
    assert max_err(m3.encoder.transformer.pos_conv_embed.conv.weight(), ref) <= 1e-5


# ------------------------------------------------------------------------------------- padding
@pytest.mark.parametrize("kind", ["melhubert10", "melhubert20", "wav2vec2", "wav2vec2_ln", "wavlm", "hubert_norm"])
def test_padding_invariance(kind):
    over = {"normalize_waveform": True} if kind == "hubert_norm" else {}
    model = tiny("hubert" if kind == "hubert_norm" else kind, **over)
    torch.manual_seed(3)
    lens = [4800, 2730, 3561]
    S = max(lens)
    batch = torch.zeros(len(lens), S)
    utts = [torch.randn(n) * 0.1 for n in lens]
    for i, u in enumerate(utts):
        batch[i, : len(u)] = u
    batch[1, lens[1]:] = 0.7  # garbage in the padding must not matter either
    seen = {}

    def hook(layer, acts, mask):
        seen[layer] = (acts.shape, mask.sum(1).tolist())

    with torch.no_grad():
        out = model(batch, torch.tensor(lens), ffn_hook=hook)
        assert out.lengths.tolist() == [model.frames_for(n) for n in lens]
        assert set(seen) == set(range(1, model.num_layers + 1))
        assert all(v[1] == out.lengths.tolist() for v in seen.values())
        for i, u in enumerate(utts):
            solo = model(u[None])
            n = int(out.lengths[i])
            assert solo.hidden[0].shape[1] == n
            for a, b in zip(solo.hidden, out.hidden):
                assert max_err(a[0], b[i, :n]) <= TOL, (kind, i)
            for a, b in zip(solo.ffn, out.ffn):
                assert max_err(a[0], b[i, :n]) <= TOL, (kind, i)


def test_return_ffn_false_and_hook_only():
    model = tiny("melhubert10")
    x = torch.randn(1, 3200) * 0.1
    got = []
    with torch.no_grad():
        out = model(x, return_ffn=False, ffn_hook=lambda l, a, m: got.append(a.shape))
        full = model(x)
    assert out.ffn == [] and len(out.hidden) == model.num_layers + 1
    assert got == [a.shape for a in full.ffn]
    for a, b in zip(out.hidden, full.hidden):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------- MelHuBERT features
@pytest.mark.parametrize("n", [0, 399, 400, 559, 560, 719, 720, 16000, 16161])
def test_melhubert_frame_counts(n):
    m10, m20 = MelHuBERT(dict(MEL_TINY, frame_period=10)), MelHuBERT(dict(MEL_TINY, frame_period=20))
    n10 = 0 if n < 400 else 1 + (n - 400) // 160
    assert fbank_frames(n) == m10.frames_for(n) == n10
    assert m20.frames_for(n) == math.ceil(n10 / 2)
    if n:
        wav = torch.randn(1, n) * 0.1
        f10, l10 = m10.extract_features(wav)
        f20, l20 = m20.extract_features(wav)
        assert l10.tolist() == [n10] and f10.shape == (1, n10, 40)
        assert l20.tolist() == [math.ceil(n10 / 2)] and f20.shape == (1, math.ceil(n10 / 2), 80)


def test_melhubert_features_match_kaldi_and_stacking():
    import torchaudio.compliance.kaldi as kaldi

    torch.manual_seed(0)
    wav = torch.randn(1, 400 + 160 * 6) * 0.2  # 7 frames of 10 ms (odd)
    ref = kaldi.fbank(wav * 32768, num_mel_bins=40, frame_length=25, frame_shift=10, window_type="hamming",
                      dither=0.0, sample_frequency=16000)
    mean, std = ref.mean(0), ref.std(0)
    m10, m20 = MelHuBERT(dict(MEL_TINY, frame_period=10)), MelHuBERT(dict(MEL_TINY, frame_period=20))
    m10.set_feature_stats(mean, std)
    m20.set_feature_stats(mean, std)  # 40 values are tiled for 20 ms
    f10, _ = m10.extract_features(wav)
    f20, _ = m20.extract_features(wav)
    norm = (ref - mean) / std
    assert max_err(f10[0], norm) <= 1e-4
    assert f20.shape == (1, 4, 80)
    for i in range(3):
        assert max_err(f20[0, i], torch.cat([norm[2 * i], norm[2 * i + 1]])) <= 1e-4
    assert max_err(f20[0, 3, :40], norm[6]) <= 1e-4 and torch.all(f20[0, 3, 40:] == 0)
    # statistics travel with the model
    assert torch.allclose(m20.state_dict()["feature_mean"], mean.repeat(2))


def test_melhubert_encode_frame_mask():
    model = tiny("melhubert10")
    feats, lens = model.extract_features(torch.randn(2, 4000) * 0.1, torch.tensor([4000, 3000]))
    mask = torch.zeros(feats.shape[:2], dtype=torch.bool)
    mask[:, 3:8] = True
    with torch.no_grad():
        a = model.encode(feats, lens, frame_mask=mask)
        z = feats.clone()
        z[mask] = 0
        b = model.encode(z, lens)
        c = model.encode(feats, lens)
    assert torch.equal(a.hidden[-1], b.hidden[-1])
    assert not torch.allclose(a.hidden[-1], c.hidden[-1])
    # gradients through encode (pre-training), in float64: the projection's gradient is the derivative that a
    # central finite difference along a random direction measures, and a masked input frame gets none (its
    # features are replaced before the projection), a visible one does
    model = model.double().eval()  # eval: no dropout, so that the loss is a function of the weights
    x = feats.double().requires_grad_(True)
    weight = model.encoder.feature_projection.projection.weight

    def loss(inp):
        return model.encode(inp, lens, frame_mask=mask, return_ffn=False).hidden[-1][mask].pow(2).sum()

    loss(x).backward()
    grad = weight.grad.clone()
    direction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        weight += eps * direction
        up = loss(x)
        weight -= 2 * eps * direction
        down = loss(x)
        weight += eps * direction
    numeric = float((up - down) / (2 * eps))
    analytic = float((grad * direction).sum())
    assert abs(analytic) > 1e-3 and analytic == pytest.approx(numeric, rel=1e-5)
    frames_grad = x.grad.abs().sum(-1)  # (batch, frames)
    visible = ~mask & (torch.arange(mask.shape[1])[None, :] < lens[:, None])
    assert torch.all(frames_grad[mask] == 0) and torch.all(frames_grad[visible] > 0)
    assert torch.all(frames_grad[~mask & ~visible] == 0)  # the shorter utterance's padding is not attended


# ------------------------------------------------------------------------------------- widths, pruning, native
def test_per_layer_widths():
    m = MelHuBERT(dict(MEL_TINY, num_layers=3, ffn_dim=[8, 16, 4]))
    assert m.ffn_widths == [8, 16, 4] and m.config["ffn_dim"] == [8, 16, 4]
    with torch.no_grad():
        out = m(torch.randn(1, 2000) * 0.1)
    assert [a.shape[-1] for a in out.ffn] == [8, 16, 4]
    d = m.hidden_dim
    pc = m.param_counts()
    assert pc["ffn_per_layer"] == [2 * d * w + w + d for w in (8, 16, 4)] and pc["ffn"] == sum(pc["ffn_per_layer"])
    assert pc["total"] == sum(p.numel() for p in m.parameters())
    w = Wav2Vec2Upstream({**{k: v for k, v in w2v_kwargs().items() if k != "aux_num_out"},
                          "encoder_ff_interm_features": [5, 7]})
    assert w.ffn_widths == [5, 7] and w.config["encoder_ff_interm_features"] == [5, 7]
    with pytest.raises(ValueError, match="entries"):
        MelHuBERT(dict(MEL_TINY, ffn_dim=[8, 16, 4]))
    with pytest.raises(ValueError, match="unknown"):
        MelHuBERT(dict(MEL_TINY, ffn_widht=3))


@pytest.mark.parametrize("kind", ["melhubert20", "wavlm"])
def test_prune_save_reload(kind, tmp_path):
    model = tiny(kind)
    rng = np.random.default_rng(0)
    keep = {l: sorted(rng.choice(48, size=s, replace=False).tolist()) for l, s in ((1, 20), (2, 33))}
    # reference: removing a neuron == zeroing its W2 column
    ref = tiny(kind)
    with torch.no_grad():
        for l, idx in keep.items():
            drop = sorted(set(range(48)) - set(idx))
            ref.feed_forwards()[l - 1].output_dense.weight[:, drop] = 0
    model.prune_ffn(keep)
    assert model.ffn_widths == [20, 33]
    x = torch.randn(2, 4000) * 0.1
    lens = torch.tensor([4000, 3100])
    with torch.no_grad():
        a, r = model(x, lens), ref(x, lens)
    for h1, h2 in zip(a.hidden, r.hidden):
        assert max_err(h1, h2) <= TOL
    for l, (f1, f2) in enumerate(zip(a.ffn, r.ffn), start=1):
        assert max_err(f1, f2[..., keep[l]]) <= TOL

    out = save_upstream(model, tmp_path / "pruned", parent_sha256="ab" * 32)
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == model.kind and meta["ffn_widths"] == [20, 33]
    assert meta["kept_indices"] == {"1": keep[1], "2": keep[2]} and meta["original_ffn_widths"] == [48, 48]
    assert meta["parent_sha256"] == "ab" * 32
    assert meta["param_counts"] == {"total": model.param_counts()["total"], "ffn": model.param_counts()["ffn"]}
    back = load_native(out)
    assert back.ffn_widths == [20, 33] and back.kind == model.kind
    with torch.no_grad():
        b = back(x, lens)
    for h1, h2 in zip(a.hidden, b.hidden):
        assert torch.equal(h1, h2)
    for f1, f2 in zip(a.ffn, b.ffn):
        assert torch.equal(f1, f2)

    # pruning again composes the original indices
    back.prune_ffn({2: [0, 5, 32]})
    assert back.kept_indices[2] == [keep[2][0], keep[2][5], keep[2][32]] and back.kept_indices[1] == keep[1]
    again = load_native(save_upstream(back, tmp_path / "again"))
    assert again.kept_indices[2] == back.kept_indices[2] and again.parent_sha256 == "ab" * 32
    assert again.ffn_widths == [20, 3]
    # through the generic loader and describe
    m2 = load_upstream({**ENTRY, "kind": "auto", "path": str(tmp_path / "again"), "format": "auto"}, device="cpu")
    assert m2.ffn_widths == [20, 3]
    info = describe(tmp_path / "again", "auto")
    assert info["format"] == "native" and info["ffn_widths"] == [20, 3] and info["original_ffn_widths"] == [48, 48]


def test_prune_rejects_bad_indices():
    m = tiny("melhubert10")
    for keep, msg in (({1: [3, 2]}, "sorted"), ({1: [0, 48]}, "0..47"), ({3: [1]}, "out of range"), ({1: []}, "zero")):
        with pytest.raises(ValueError, match=msg):
            m.prune_ffn(keep)


def test_a_truncated_or_altered_native_checkpoint_is_refused_naming_it(tmp_path):
    """config.json records the weights' size and sha256; a checkpoint whose weights were cut short or altered
    after it was written is refused with an error naming the file, never loaded; a folder written before the
    record existed still loads."""
    model = tiny("melhubert")
    out = save_upstream(model, tmp_path / "m")
    rec = json.loads((out / "config.json").read_text())["weights"]
    weights = out / "model.safetensors"
    assert rec == {"file": "model.safetensors", "bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    load_native(out)
    good = weights.read_bytes()
    weights.write_bytes(good[:-10])
    with pytest.raises(CheckpointError, match=r"model.safetensors.*where \d+ bytes were recorded .*truncated"):
        load_native(out)
    altered = bytearray(good)
    altered[-5] ^= 0x01
    weights.write_bytes(bytes(altered))
    with pytest.raises(CheckpointError, match=r"model.safetensors.*does not hold the bytes recorded"):
        load_native(out)
    weights.write_bytes(good)
    meta = json.loads((out / "config.json").read_text())
    del meta["weights"]
    (out / "config.json").write_text(json.dumps(meta))
    assert load_native(out).ffn_widths == model.ffn_widths


def test_native_strict_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny("melhubert10")
    d = save_upstream(model, tmp_path / "m")
    sd = load_file(str(d / "model.safetensors"))
    meta = json.loads((d / "config.json").read_text())  # the weights below are replaced by hand: what the
    del meta["weights"]  # strict reader says of each, not the checksum (test_a_truncated_or_altered_native...)
    (d / "config.json").write_text(json.dumps(meta))

    bad = dict(sd)
    bad["encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"] = torch.zeros(47, 32)
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"intermediate_dense\.weight.*\(47, 32\).*\(48, 32\)"):
        load_native(d)

    bad = dict(sd)
    bad["encoder.extra.weight"] = torch.zeros(2)
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected.*encoder\.extra\.weight"):
        load_native(d)

    bad = dict(sd)
    del bad["encoder.transformer.layer_norm.bias"]
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing.*encoder\.transformer\.layer_norm\.bias"):
        load_native(d)

    save_file(sd, str(d / "model.safetensors"))
    load_native(d)
    (d / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_native(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_native(d)


# ------------------------------------------------------------------------------------- released MelHuBERT
_INV_LAYER = {"attention.q_proj": "self_attn.q_proj", "attention.k_proj": "self_attn.k_proj",
              "attention.v_proj": "self_attn.v_proj", "attention.out_proj": "self_attn.out_proj",
              "layer_norm": "self_attn_layer_norm", "feed_forward.intermediate_dense": "fc1",
              "feed_forward.output_dense": "fc2", "final_layer_norm": "final_layer_norm"}


def to_released(model: MelHuBERT) -> dict:
    """Write our weights with the published MelHuBERT code's names (the format of its checkpoints)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("feature_"):
            continue
        k2 = (k.replace("encoder.feature_projection.projection.", "pre_extract_proj.")
               .replace("encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0",
                        "encoder.pos_conv.0.weight_g")
               .replace("encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1",
                        "encoder.pos_conv.0.weight_v")
               .replace("encoder.transformer.pos_conv_embed.conv.bias", "encoder.pos_conv.0.bias")
               .replace("encoder.transformer.layer_norm.", "encoder.layer_norm."))
        if k2.startswith("encoder.transformer.layers."):
            rest = k2[len("encoder.transformer.layers."):]
            i, name = rest.split(".", 1)
            mod, leaf = name.rsplit(".", 1)
            k2 = f"encoder.layers.{i}.{_INV_LAYER[mod]}.{leaf}"
        out[k2] = v.clone()
    out["final_proj.weight"] = torch.randn(7, model.hidden_dim)
    out["final_proj.bias"] = torch.randn(7)
    return out


@pytest.mark.parametrize("fp", [10, 20])
def test_melhubert_released_format(fp, tmp_path):
    model = tiny(f"melhubert{fp}")
    mean, std = torch.randn(40), torch.rand(40) + 0.5
    model.set_feature_stats(mean, std)
    hp = {"feat_emb_dim": 40 * fp // 10, "encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 48,
          "encoder_attention_heads": 4, "conv_pos": 8, "conv_pos_groups": 4, "layer_norm_first": False,
          "pos_emb_type": "conv", "pos_conv_depth": 1, "activation_fn": "gelu", "attention_type": "original",
          "num_cluster": 7, "mask_prob": 0.7}
    import argparse

    ckpt = {"Upstream_Config": {"hubert": hp}, "model": to_released(model), "Step": 10, "Runner": {"lr": 1e-4},
            "Args": argparse.Namespace(expdir="x", device="cuda")}  # released files pickle the run's argparse args
    path = tmp_path / "melhubert.ckpt"
    torch.save(ckpt, path)
    ms = tmp_path / "mean-std.npy"
    np.save(ms, np.stack([mean.numpy(), std.numpy()]))
    loaded = load_upstream({**ENTRY, "kind": "melhubert", "path": str(path), "format": "auto", "mean_std": str(ms)},
                           device="cpu")
    assert loaded.config["frame_period"] == fp and loaded.ffn_widths == [48, 48]
    x = torch.randn(2, 5000) * 0.1
    with torch.no_grad():
        a, b = model(x, torch.tensor([5000, 4100])), loaded(x, torch.tensor([5000, 4100]))
    for h1, h2 in zip(a.hidden + a.ffn, b.hidden + b.ffn):
        assert max_err(h1, h2) <= 1e-5
    # format sniffing without a kind, and the "melhubert" config key
    ckpt["Upstream_Config"] = {"melhubert": hp}
    torch.save(ckpt, path)
    assert describe(path, "auto")["kind"] == "melhubert"

    # a tensor that maps to nothing is named
    bad = dict(ckpt, model=dict(ckpt["model"], **{"encoder.layers.0.self_attn.bias_k": torch.zeros(1, 1, 32)}))
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match="bias_k"):
        load_upstream({**ENTRY, "kind": "melhubert", "path": str(path)}, device="cpu")
    # a missing tensor is named
    sd = dict(ckpt["model"])
    del sd["encoder.layers.1.fc2.bias"]
    torch.save(dict(ckpt, model=sd), path)
    with pytest.raises(CheckpointError, match=r"missing.*layers\.1\.feed_forward\.output_dense\.bias"):
        load_upstream({**ENTRY, "kind": "melhubert", "path": str(path)}, device="cpu")


def test_melhubert_released_row_pruned(tmp_path):
    """Row-pruned released checkpoints: widths come from the tensors, not Upstream_Config."""
    model = tiny("melhubert10")
    model.prune_ffn({1: list(range(0, 48, 2)), 2: list(range(30))})
    hp = {"feat_emb_dim": 40, "encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 48,
          "encoder_attention_heads": 4, "conv_pos": 8, "conv_pos_groups": 4}
    torch.save({"Upstream_Config": {"melhubert": hp}, "model": to_released(model)}, tmp_path / "p.ckpt")
    np.save(tmp_path / "mean-std.npy", np.stack([np.zeros(40), np.ones(40)]))
    loaded = load_upstream({**ENTRY, "kind": "melhubert", "path": str(tmp_path / "p.ckpt"),
                            "mean_std": str(tmp_path / "mean-std.npy")}, device="cpu")
    assert loaded.ffn_widths == [24, 30]


# ------------------------------------------------------------------------------------- loader misc
def test_loader_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_upstream({**ENTRY, "path": str(tmp_path / "nope.pt")}, device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_upstream({**ENTRY, "path": str(junk)}, device="cpu")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        describe(tmp_path / "other.pt", "auto")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        describe(tmp_path / "emptydir", "auto")
    d = save_upstream(tiny("melhubert10"), tmp_path / "m")
    with pytest.raises(CheckpointError, match="kind 'wavlm'"):
        load_upstream({**ENTRY, "kind": "wavlm", "path": str(d), "format": "native"}, device="cpu")
    with pytest.raises(ValueError, match="unknown model kind"):
        build_upstream("bert", {})


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")


# ------------------------------------------------------------------------------------- reader dispatch
def _torchaudio_reference(mtype):
    torchaudio = pytest.importorskip("torchaudio")
    torch.manual_seed(2)
    kw = w2v_kwargs("group_norm", False, layers=2)
    if mtype == "wavlm":
        ref = torchaudio.models.wavlm_model(encoder_num_buckets=16, encoder_max_distance=40, **kw)
        cfg = dict(kw, encoder_num_buckets=16, encoder_max_distance=40)
    else:
        ref = torchaudio.models.wav2vec2_model(**kw)
        cfg = dict(kw)
    return jitter(ref).eval(), cfg


@pytest.mark.parametrize("mtype", ["hubert", "wavlm"])
def test_fairseq_dispatch(mtype, tmp_path, monkeypatch):
    """A fairseq-looking file is sniffed and handed to read_fairseq_checkpoint; its (config, state dict[,
    dropped]) builds the model. The reader itself is tested with its own module."""
    import speaker_neurons.models.fairseq_ckpt as fc

    ref, cfg = _torchaudio_reference(mtype)
    calls = []

    def fake_reader(path):
        calls.append(str(path))
        c = dict(cfg, normalize_waveform=False)
        if mtype != "wavlm":
            c["model_type"] = mtype  # a WavLM config without model_type is recognised by its tensors
        return c, {k: v.clone() for k, v in ref.state_dict().items()}, ["final_proj.weight"]

    monkeypatch.setattr(fc, "read_fairseq_checkpoint", fake_reader)
    path = tmp_path / "model.pt"
    torch.save({"model": {}, "cfg": {"model": {}}}, path)
    model = load_upstream({**ENTRY, "kind": "auto", "path": str(path)}, device="cpu")
    assert calls == [str(path)] and model.kind == mtype
    x = torch.randn(1, 2500)
    with torch.no_grad():
        want, _ = ref.extract_features(x)
        got = model(x)
    for a, b in zip(got.hidden[1:], want):
        assert max_err(a, b) <= TOL
    with pytest.raises(CheckpointError, match="kind 'melhubert'"):
        load_upstream({**ENTRY, "kind": "melhubert", "path": str(path), "format": "fairseq"}, device="cpu")


def test_hf_dispatch(tmp_path, monkeypatch):
    import sys
    import types

    ref, cfg = _torchaudio_reference("wav2vec2")
    fake = types.ModuleType("speaker_neurons.models.hf")
    fake.read_hf_folder = lambda path: (dict(cfg, model_type="wav2vec2"), dict(ref.state_dict()))
    monkeypatch.setitem(sys.modules, "speaker_neurons.models.hf", fake)
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "wav2vec2", "architectures": ["Wav2Vec2Model"]}))
    (d / "model.safetensors").write_bytes(b"")
    info = describe(d, "auto")
    assert info["format"] == "hf" and info["kind"] == "wav2vec2" and info["ffn_widths"] == [48, 48]
    # a state dict that does not fit is reported with the folder's name and the key
    sd = dict(ref.state_dict())
    sd.pop("encoder.transformer.layers.1.final_layer_norm.bias")
    fake.read_hf_folder = lambda path: (dict(cfg, model_type="wav2vec2"), sd)
    with pytest.raises(CheckpointError, match=r"hf: .*missing.*layers\.1\.final_layer_norm\.bias"):
        load_upstream({**ENTRY, "kind": "wav2vec2", "path": str(d), "format": "hf"}, device="cpu")


def test_native_save_is_byte_identical_across_processes(tmp_path):
    """safetensors writes metadata maps in hash order (random per process): the save must not depend on it."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from speaker_neurons.models.melhubert import MelHuBERT\n"
        "from speaker_neurons.models.native import save_upstream\n"
        "torch.manual_seed(0)\n"
        "m = MelHuBERT({'num_layers': 1, 'hidden_dim': 16, 'num_heads': 2, 'ffn_dim': 32, 'pos_conv_kernel': 4, 'pos_conv_groups': 2})\n"
        "save_upstream(m, sys.argv[1])\n"
    )
    # five processes, each with its own hash seed, started side by side (each is mostly torch's import)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"m{i}")],
                              env={**os.environ, "PYTHONHASHSEED": str(i)}) for i in range(5)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 5
    outs = [(tmp_path / f"m{i}" / "model.safetensors").read_bytes() for i in range(5)]
    assert all(o == outs[0] for o in outs)
