"""MelHuBERT (METHOD §7): a HuBERT Transformer on normalised Kaldi log-Mel features.

Input pipeline (`extract_features`): per utterance, Kaldi-compatible fbank (torchaudio.compliance.kaldi,
`n_mels` bins, 25 ms Hamming windows every 10 ms, snip_edges, dither 0) of the waveform scaled by 2**15;
the 20 ms variant stacks frames (2i, 2i+1) into one 2 * n_mels vector (an odd last frame gets a zero
partner, as the released code does); normalisation by the stored mean / std buffers (`feature_mean`,
`feature_std`, dimension n_mels * stack, saved with the model). The zero partner of an odd last 20 ms frame
is zero *after* normalisation (released behaviour).

Model (`encode`): frames marked by `frame_mask` set to zero (pre-training masking), linear projection to
d (`encoder.feature_projection.projection`), convolutional positional embedding, post-LN Transformer.

Config keys (defaults = base): n_mels 40, frame_period 10 (or 20), hidden_dim 768, num_layers 12,
num_heads 12, ffn_dim 3072 (int or one per layer), pos_conv_kernel 128, pos_conv_groups 16,
layer_norm_first False, dropout / attention_dropout / activation_dropout 0.1 (training mode only).

Released checkpoints (nervjack2/MelHuBERT, Speech-SSL-Compression): a torch pickle with `Upstream_Config`
(`melhubert` or `hubert`: the hyper-parameters) and `model` (fairseq-style names); `load_released` maps them.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from speaker_neurons.models.base import Upstream, UpstreamOutput
from speaker_neurons.models.components import (
    Encoder,
    FeatureProjection,
    FFNHook,
    build_transformer,
    compact_widths,
    expand_widths,
)
from speaker_neurons.models.errors import CheckpointError, listing
from speaker_neurons.models.names import POS_CONV_WEIGHT_G, POS_CONV_WEIGHT_V
from speaker_neurons.models.unpickler import safe_torch_load

log = logging.getLogger("speaker_neurons.models.melhubert")

MELHUBERT_DEFAULTS: dict[str, Any] = {
    "n_mels": 40,
    "frame_period": 10,
    "hidden_dim": 768,
    "num_layers": 12,
    "num_heads": 12,
    "ffn_dim": 3072,
    "pos_conv_kernel": 128,
    "pos_conv_groups": 16,
    "layer_norm_first": False,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
}

WINDOW = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(MELHUBERT_DEFAULTS)
    unknown = sorted(k for k in config if k not in cfg)
    if unknown:
        raise ValueError(f"unknown MelHuBERT config key(s): {', '.join(unknown)}")
    cfg.update(config)
    if int(cfg["frame_period"]) not in (10, 20):
        raise ValueError(f"frame_period must be 10 or 20 (ms), got {cfg['frame_period']!r}")
    for k in ("n_mels", "frame_period", "hidden_dim", "num_layers", "num_heads", "pos_conv_kernel", "pos_conv_groups"):
        cfg[k] = int(cfg[k])
    for k in ("dropout", "attention_dropout", "activation_dropout"):
        cfg[k] = float(cfg[k])
    cfg["layer_norm_first"] = bool(cfg["layer_norm_first"])
    cfg["ffn_dim"] = compact_widths(expand_widths(cfg["ffn_dim"], cfg["num_layers"], "ffn_dim"))
    return cfg


def fbank_frames(num_samples: int) -> int:
    """Kaldi fbank frame count with snip_edges: 1 + (N - 400) // 160, 0 below one window."""
    from speaker_neurons.audio import kaldi_num_frames

    return kaldi_num_frames(int(num_samples), WINDOW, HOP)


class MelHuBERT(Upstream):
    kind = "melhubert"
    width_key = "ffn_dim"

    def __init__(self, config: Optional[dict[str, Any]] = None):
        super().__init__()
        cfg = normalize_config(config or {})
        self._cfg = cfg
        self.n_mels = cfg["n_mels"]
        self.stack = cfg["frame_period"] // 10
        self.feature_dim = self.n_mels * self.stack
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feature_std", torch.ones(self.feature_dim))
        d = cfg["hidden_dim"]
        projection = FeatureProjection(self.feature_dim, d, layer_norm=False)
        transformer = build_transformer(
            d, cfg["num_heads"], expand_widths(cfg["ffn_dim"], cfg["num_layers"], "ffn_dim"), cfg["layer_norm_first"],
            cfg["pos_conv_kernel"], cfg["pos_conv_groups"], dropout=cfg["dropout"],
            attention_dropout=cfg["attention_dropout"], activation_dropout=cfg["activation_dropout"],
        )
        torch.nn.init.normal_(projection.projection.weight, 0.0, 0.02)
        torch.nn.init.zeros_(projection.projection.bias)
        self.encoder = Encoder(projection, transformer)
        self.eval()

    # ---- interface
    def _config_with_widths(self) -> dict[str, Any]:
        cfg = dict(self._cfg)
        cfg["ffn_dim"] = compact_widths(self.ffn_widths)
        return cfg

    def frames_for(self, num_samples: int) -> int:
        n = fbank_frames(num_samples)
        return (n + 1) // 2 if self.stack == 2 else n

    def set_feature_stats(self, mean, std) -> None:
        """Corpus mean / std of the features: n_mels values (tiled for 20 ms) or feature_dim values."""
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32).reshape(-1))
        std = torch.as_tensor(np.asarray(std, dtype=np.float32).reshape(-1))
        for name, t in (("mean", mean), ("std", std)):
            if t.numel() == self.n_mels and self.stack > 1:
                t = t.repeat(self.stack)
            if t.numel() != self.feature_dim:
                raise ValueError(f"feature {name} has {t.numel()} values; expected {self.n_mels} or {self.feature_dim}")
            if not torch.isfinite(t).all():
                raise ValueError(f"feature {name} has non-finite values")
            if name == "std" and bool((t <= 0).any()):
                raise ValueError("feature std must be > 0")
            getattr(self, f"feature_{name}").copy_(t.to(self.feature_mean.device))

    # ---- features
    @torch.no_grad()
    def extract_features(self, wavs: Tensor, wav_lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """wavs (B, S) float in [-1, 1] at 16 kHz -> (normalised features (B, T, F), frame_lengths (B,)).

        Padded frames are zero.
        """
        import torchaudio.compliance.kaldi as kaldi

        if wavs.ndim != 2:
            raise ValueError(f"expected waveforms (batch, samples), got shape {tuple(wavs.shape)}")
        B = wavs.shape[0]
        if wav_lengths is None:
            wav_lengths = torch.full((B,), wavs.shape[1], dtype=torch.long)
        lens = [int(n) for n in wav_lengths.tolist()]
        n10 = [fbank_frames(n) for n in lens]
        frame_lengths = torch.tensor([self.frames_for(n) for n in lens], dtype=torch.long)
        T = int(frame_lengths.max()) if B else 0
        out = torch.zeros(B, T, self.feature_dim, device=wavs.device, dtype=torch.float32)
        mean = self.feature_mean.to(wavs.device, torch.float32)
        std = self.feature_std.to(wavs.device, torch.float32)
        for b in range(B):
            if n10[b] == 0:
                continue
            w = wavs[b, : lens[b]].to(torch.float32)[None] * 32768.0
            y = kaldi.fbank(w, num_mel_bins=self.n_mels, frame_length=25.0, frame_shift=10.0, window_type="hamming",
                            dither=0.0, sample_frequency=16000.0, snip_edges=True)  # (n10, n_mels)
            if self.stack == 2:
                odd = n10[b] % 2 == 1
                if odd:
                    y = torch.cat([y, y.new_zeros(1, self.n_mels)], 0)
                y = y.reshape(-1, self.feature_dim)  # row i = [frame 2i, frame 2i+1]
                y = (y - mean) / std
                if odd:
                    y[-1, self.n_mels:] = 0.0
            else:
                y = (y - mean) / std
            out[b, : y.shape[0]] = y
        return out, frame_lengths.to(wavs.device)

    @torch.no_grad()
    def segment_features(self, wav: Tensor, bounds) -> Optional[list[Tensor]]:
        """Features of the segments [start, end) (samples) of one waveform, sliced from the whole
        waveform's features instead of computed per segment. Kaldi frames depend only on their own
        samples and the normalisation is global, so the slice equals `extract_features` of the cut-out
        segment exactly when every start is a multiple of the frame period (160 or 320 samples) and,
        at 20 ms, every segment that stops before the waveform's end has an even number of 10 ms frames
        (else its last stacked frame would be half padding). Returns None when a segment breaks that."""
        hop = 160 * self.stack
        n = int(wav.shape[-1])
        for s, e in bounds:
            if s % hop or not 0 <= s < e <= n or (self.stack == 2 and e != n and fbank_frames(e - s) % 2):
                return None
        feats, _ = self.extract_features(wav.reshape(1, -1), torch.tensor([n]))
        out = []
        for s, e in bounds:
            T = self.frames_for(e - s)
            seg = feats[0, s // hop : s // hop + T]
            if seg.shape[0] != T:
                return None
            out.append(seg.clone())
        return out

    # ---- model
    def encode(self, feats: Tensor, frame_lengths: Optional[Tensor] = None, frame_mask: Optional[Tensor] = None,
               return_ffn: bool = True, ffn_hook: Optional[FFNHook] = None) -> UpstreamOutput:
        """feats (B, T, F) normalised; frame_lengths (B,); frame_mask (B, T) bool: frames set to zero first."""
        if feats.ndim != 3 or feats.shape[-1] != self.feature_dim:
            raise ValueError(f"expected features (batch, frames, {self.feature_dim}), got {tuple(feats.shape)}")
        B, T, _ = feats.shape
        if frame_lengths is None:
            frame_lengths = torch.full((B,), T, dtype=torch.long, device=feats.device)
        frame_lengths = frame_lengths.to(device=feats.device, dtype=torch.long)
        if frame_mask is not None:
            feats = feats.masked_fill(frame_mask.to(feats.device, torch.bool)[..., None], 0.0)
        x = self.encoder.feature_projection(feats)
        hidden, ffn = self.encoder.transformer(x, frame_lengths, return_ffn=return_ffn, ffn_hook=ffn_hook)
        return UpstreamOutput(hidden=hidden, ffn=ffn, lengths=frame_lengths)

    def forward(self, wavs: Tensor, wav_lengths: Optional[Tensor] = None, return_ffn: bool = True,
                ffn_hook: Optional[FFNHook] = None) -> UpstreamOutput:
        feats, lengths = self.extract_features(wavs, wav_lengths)
        return self.encode(feats, lengths, return_ffn=return_ffn, ffn_hook=ffn_hook)


# --------------------------------------------------------------------------------------------------
# released checkpoints
# --------------------------------------------------------------------------------------------------
#: keys of a released state dict that are deliberately not used (pre-training heads)
RELEASED_DROPPED = re.compile(r"^(final_proj\.|label_embs_concat$|mask_emb$)")

_RELEASED_LAYER_MAP = {
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.out_proj": "attention.out_proj",
    "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}
_T = "encoder.transformer."
_RELEASED_TOP_MAP = {
    "pre_extract_proj.weight": "encoder.feature_projection.projection.weight",
    "pre_extract_proj.bias": "encoder.feature_projection.projection.bias",
    "encoder.pos_conv.0.weight_g": POS_CONV_WEIGHT_G,
    "encoder.pos_conv.0.weight_v": POS_CONV_WEIGHT_V,
    "encoder.pos_conv.0.parametrizations.weight.original0": POS_CONV_WEIGHT_G,
    "encoder.pos_conv.0.parametrizations.weight.original1": POS_CONV_WEIGHT_V,
    "encoder.pos_conv.0.bias": _T + "pos_conv_embed.conv.bias",
    "encoder.layer_norm.weight": _T + "layer_norm.weight",
    "encoder.layer_norm.bias": _T + "layer_norm.bias",
}
_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def map_released_key(key: str) -> Optional[str]:
    """Released (fairseq-style) name -> our name; None when the key is not part of the encoder."""
    if key in _RELEASED_TOP_MAP:
        return _RELEASED_TOP_MAP[key]
    m = _LAYER_RE.match(key)
    if m and m.group(2) in _RELEASED_LAYER_MAP:
        return f"{_T}layers.{m.group(1)}.{_RELEASED_LAYER_MAP[m.group(2)]}.{m.group(3)}"
    return None


def convert_released_state_dict(state: dict[str, Tensor], source=None) -> tuple[dict[str, Tensor], list[str]]:
    """Map every tensor of a released state dict; returns (our state dict, dropped keys).

    Weight-pruned tensors (`X_orig` with `X_mask`) are folded (orig * mask). Any key that is neither mapped
    nor a known pre-training head raises CheckpointError naming it.
    """
    state = dict(state)
    for k in [k for k in state if k.endswith("_orig")]:
        base = k[: -len("_orig")]
        if base + "_mask" in state:
            state[base] = state.pop(k) * state.pop(base + "_mask")
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for k, v in state.items():
        if RELEASED_DROPPED.match(k):
            dropped.append(k)
            continue
        new = map_released_key(k)
        if new is None:
            unknown.append(k)
            continue
        if new in out:
            raise CheckpointError(source, f"key {k!r} maps onto {new!r}, which another key already filled")
        out[new] = v
    if unknown:
        raise CheckpointError(source, "MelHuBERT checkpoint has tensor(s) that map to nothing: " + listing(unknown))
    return out, dropped


def released_config(hp: dict[str, Any], state: dict[str, Tensor], source=None) -> dict[str, Any]:
    """Our config from the released hyper-parameters (`Upstream_Config.melhubert|hubert`) and tensor shapes."""
    def get(k, default):
        return hp.get(k, default) if isinstance(hp, dict) else default

    for k, allowed in (("pos_emb_type", "conv"), ("attention_type", "original"), ("activation_fn", "gelu")):
        if str(get(k, allowed)) != allowed:
            raise CheckpointError(source, f"unsupported MelHuBERT setting {k}={get(k, None)!r} (only {allowed!r})")
    if int(get("pos_conv_depth", 1)) != 1:
        raise CheckpointError(source, f"unsupported MelHuBERT setting pos_conv_depth={get('pos_conv_depth', 1)}")
    if "pre_extract_proj.weight" not in state:
        raise CheckpointError(source, "MelHuBERT checkpoint has no 'pre_extract_proj.weight'")
    feat_dim = int(state["pre_extract_proj.weight"].shape[1])
    if feat_dim not in (40, 80):
        raise CheckpointError(source, f"input dimension {feat_dim} is neither 40 (10 ms) nor 80 (20 ms)")
    if int(get("feat_emb_dim", feat_dim)) != feat_dim:
        raise CheckpointError(source, f"Upstream_Config feat_emb_dim={get('feat_emb_dim', None)} but "
                              f"pre_extract_proj.weight has {feat_dim} inputs")
    layer_ids = sorted({int(m.group(1)) for m in (_LAYER_RE.match(k) for k in state) if m})
    num_layers = int(get("encoder_layers", len(layer_ids)))
    if layer_ids != list(range(num_layers)):
        raise CheckpointError(source, f"Upstream_Config says {num_layers} layers but the weights hold layers {layer_ids}")
    widths = []
    for i in range(num_layers):
        k = f"encoder.layers.{i}.fc1.weight"
        if k not in state and k + "_orig" not in state:
            raise CheckpointError(source, f"missing key {k!r}")
        widths.append(int(state[k if k in state else k + "_orig"].shape[0]))
    hidden = int(state["pre_extract_proj.weight"].shape[0])
    if int(get("encoder_embed_dim", hidden)) != hidden:
        raise CheckpointError(source, f"encoder_embed_dim={get('encoder_embed_dim', None)} but the projection gives {hidden}")
    return {
        "n_mels": 40,
        "frame_period": 20 if feat_dim == 80 else 10,
        "hidden_dim": hidden,
        "num_layers": num_layers,
        "num_heads": int(get("encoder_attention_heads", 12)),
        "ffn_dim": compact_widths(widths),
        "pos_conv_kernel": int(get("conv_pos", 128)),
        "pos_conv_groups": int(get("conv_pos_groups", 16)),
        "layer_norm_first": bool(get("layer_norm_first", False)),
        "dropout": float(get("dropout", 0.1)),
        "attention_dropout": float(get("attention_dropout", 0.1)),
        "activation_dropout": float(get("activation_dropout", 0.1)),
    }


def load_mean_std(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A released `mean-std.npy`: array (2, n) = [mean, std] (as the MelHuBERT repository ships them)."""
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(path, f"not a numpy .npy file ({e})") from None
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < 1 or a.shape[0] != 2:
        raise CheckpointError(path, f"expected an array of shape (2, n_mels) = [mean, std], got {a.shape}")
    return a[0].reshape(-1), a[1].reshape(-1)


#: why a released checkpoint cannot compute features without its mean-std.npy, and where to give it
MISSING_MEAN_STD = (
    "a released MelHuBERT checkpoint stores no fbank normalisation; set `mean_std` (the checkpoint's "
    "mean-std.npy) in this model's entry of `models` in the config (CLI: --mean-std)"
)


def load_released(path_or_obj, mean_std: str | os.PathLike | None = None, source=None,
                  require_mean_std: bool = True) -> MelHuBERT:
    """Build a MelHuBERT from a released checkpoint (a path, or the already-loaded dict).

    Every tensor of `model` is used or deliberately dropped (final_proj, label embeddings, mask embedding) and
    every parameter of our model is loaded. Feature statistics come from `mean_std` (the released `.npy`):
    the checkpoint itself has none, so without it a CheckpointError (naming the checkpoint and `mean_std`) is
    raised after the structure has been checked. `require_mean_std=False` (describing the structure only)
    leaves them identity (mean 0, std 1) with a warning: such a model must not compute features.
    """
    if isinstance(path_or_obj, (str, os.PathLike)):
        source = path_or_obj
        obj = safe_torch_load(path_or_obj)
    else:
        obj = path_or_obj
    if not isinstance(obj, dict) or "Upstream_Config" not in obj or "model" not in obj:
        raise CheckpointError(source, "not a MelHuBERT checkpoint (needs the keys 'Upstream_Config' and 'model')")
    ucfg = obj["Upstream_Config"]
    hp = None
    if isinstance(ucfg, dict):
        hp = ucfg.get("melhubert", ucfg.get("hubert"))
    if not isinstance(hp, dict):
        raise CheckpointError(source, "Upstream_Config has no 'melhubert' or 'hubert' hyper-parameter dict")
    if obj.get("Pruned_heads"):
        raise CheckpointError(source, "head-pruned MelHuBERT checkpoints are not supported")
    state = obj["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(source, "'model' is not a state dict of tensors")
    folded = dict(state)
    cfg = released_config(hp, folded, source)
    sd, dropped = convert_released_state_dict(folded, source)
    model = MelHuBERT(cfg)
    model.load_state_dict_checked(sd, source, allow_missing=("feature_mean", "feature_std"))
    if dropped:
        log.info("%s: dropped pre-training tensors %s", source, ", ".join(dropped))
    if mean_std is not None:
        mean, std = load_mean_std(mean_std)
        try:
            model.set_feature_stats(mean, std)
        except ValueError as e:
            raise CheckpointError(mean_std, str(e)) from None
    elif require_mean_std:
        raise CheckpointError(source, MISSING_MEAN_STD, key="mean_std")
    else:
        log.warning("%s: no mean/std file given; MelHuBERT features are left unnormalised (mean 0, std 1)", source)
    return model.eval()
