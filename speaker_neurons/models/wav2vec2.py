"""wav2vec 2.0 / HuBERT / WavLM upstream from a plain config dict (METHOD §8).

Config keys mirror torchaudio's `wav2vec2_model` / `wavlm_model` keyword arguments, plus:

* `model_type`: `wav2vec2` | `hubert` | `wavlm` (WavLM uses gated relative-position attention);
* `encoder_ff_interm_features`: an int or one width per layer (structured pruning);
* `encoder_num_buckets`, `encoder_max_distance` (WavLM; `num_buckets` / `max_distance` accepted as aliases);
* `normalize_waveform`: layer-norm each waveform over its valid samples first (fairseq `task.normalize`).

The state dict is key-for-key torchaudio's, so `Wav2Vec2Upstream(cfg).load_state_dict(torchaudio_model.state_dict())`
works. Dropout keys only matter in training mode; `encoder_layer_drop` is accepted and ignored (no layer drop).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from speaker_neurons.models.base import Upstream, UpstreamOutput
from speaker_neurons.models.components import (
    Encoder,
    FeatureExtractor,
    FeatureProjection,
    FFNHook,
    build_transformer,
    compact_widths,
    expand_widths,
    lengths_to_mask,
)

MODEL_TYPES = ("wav2vec2", "hubert", "wavlm")

DEFAULT_CONV_LAYERS = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2

#: defaults = the base architecture (wav2vec2 / HuBERT base)
WAV2VEC2_DEFAULTS: dict[str, Any] = {
    "model_type": "wav2vec2",
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": None,
    "extractor_conv_bias": False,
    "encoder_embed_dim": 768,
    "encoder_projection_dropout": 0.0,
    "encoder_pos_conv_kernel": 128,
    "encoder_pos_conv_groups": 16,
    "encoder_num_layers": 12,
    "encoder_num_heads": 12,
    "encoder_attention_dropout": 0.0,
    "encoder_ff_interm_features": 3072,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.0,
    "encoder_layer_norm_first": False,
    "encoder_layer_drop": 0.0,
    "encoder_num_buckets": 320,
    "encoder_max_distance": 800,
    "normalize_waveform": False,
}
_ALIASES = {"num_buckets": "encoder_num_buckets", "max_distance": "encoder_max_distance"}


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled, aliases resolved, values typed; unknown keys are an error."""
    cfg = dict(WAV2VEC2_DEFAULTS)
    unknown = []
    for k, v in config.items():
        k = _ALIASES.get(k, k)
        if k == "aux_num_out":
            if v is not None:
                raise ValueError("aux_num_out (a CTC head) is not supported: load the pre-trained encoder only")
            continue
        if k not in cfg:
            unknown.append(k)
            continue
        cfg[k] = v
    if unknown:
        raise ValueError(f"unknown wav2vec2 config key(s): {', '.join(sorted(unknown))}")
    if cfg["model_type"] not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {cfg['model_type']!r}")
    conv = cfg["extractor_conv_layer_config"]
    conv = DEFAULT_CONV_LAYERS if conv is None else conv
    cfg["extractor_conv_layer_config"] = [[int(a) for a in t] for t in conv]
    for k in ("extractor_conv_bias", "encoder_layer_norm_first", "normalize_waveform"):
        cfg[k] = bool(cfg[k])
    for k in ("encoder_embed_dim", "encoder_pos_conv_kernel", "encoder_pos_conv_groups", "encoder_num_layers",
              "encoder_num_heads", "encoder_num_buckets", "encoder_max_distance"):
        cfg[k] = int(cfg[k])
    widths = expand_widths(cfg["encoder_ff_interm_features"], cfg["encoder_num_layers"], "encoder_ff_interm_features")
    cfg["encoder_ff_interm_features"] = compact_widths(widths)
    return cfg


class Wav2Vec2Upstream(Upstream):
    """wav2vec2 / HuBERT / WavLM encoder (no quantizer, no prediction head)."""

    width_key = "encoder_ff_interm_features"

    def __init__(self, config: Optional[dict[str, Any]] = None):
        super().__init__()
        cfg = normalize_config(config or {})
        self._cfg = cfg
        self.kind = cfg["model_type"]
        conv = cfg["extractor_conv_layer_config"]
        self.feature_extractor = FeatureExtractor(cfg["extractor_mode"], conv, cfg["extractor_conv_bias"])
        d = cfg["encoder_embed_dim"]
        projection = FeatureProjection(conv[-1][0], d, layer_norm=True, dropout=float(cfg["encoder_projection_dropout"]))
        transformer = build_transformer(
            d, cfg["encoder_num_heads"],
            expand_widths(cfg["encoder_ff_interm_features"], cfg["encoder_num_layers"], self.width_key),
            cfg["encoder_layer_norm_first"], cfg["encoder_pos_conv_kernel"], cfg["encoder_pos_conv_groups"],
            attention="wavlm" if self.kind == "wavlm" else "mha",
            num_buckets=cfg["encoder_num_buckets"], max_distance=cfg["encoder_max_distance"],
            dropout=float(cfg["encoder_dropout"]), attention_dropout=float(cfg["encoder_attention_dropout"]),
            activation_dropout=float(cfg["encoder_ff_interm_dropout"]),
        )
        self.encoder = Encoder(projection, transformer)
        self.eval()

    def _config_with_widths(self) -> dict[str, Any]:
        cfg = dict(self._cfg)
        cfg[self.width_key] = compact_widths(self.ffn_widths)
        return cfg

    def frames_for(self, num_samples: int) -> int:
        return self.feature_extractor.frames_for(num_samples)

    def _normalize(self, wavs: Tensor, lengths: Tensor) -> Tensor:
        """Per-utterance layer norm over the valid samples (eps 1e-5); padding stays zero."""
        m = lengths_to_mask(lengths, wavs.shape[1]).to(wavs.dtype)
        n = lengths.clamp_min(1).to(wavs.dtype)[:, None]
        mean = (wavs * m).sum(1, keepdim=True) / n
        xc = (wavs - mean) * m
        var = (xc * xc).sum(1, keepdim=True) / n
        return xc * torch.rsqrt(var + 1e-5)

    def forward(self, wavs: Tensor, wav_lengths: Optional[Tensor] = None, return_ffn: bool = True,
                ffn_hook: Optional[FFNHook] = None) -> UpstreamOutput:
        """wavs (B, S) float at 16 kHz; wav_lengths (B,) samples (None: all full length)."""
        if wavs.ndim != 2:
            raise ValueError(f"expected waveforms (batch, samples), got shape {tuple(wavs.shape)}")
        if wav_lengths is None:
            wav_lengths = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long)
        wav_lengths = wav_lengths.to(device=wavs.device, dtype=torch.long)
        if self._cfg["normalize_waveform"]:
            wavs = self._normalize(wavs, wav_lengths)
        x, lengths = self.feature_extractor(wavs, wav_lengths)
        x = self.encoder.feature_projection(x)
        hidden, ffn = self.encoder.transformer(x, lengths, return_ffn=return_ffn, ffn_hook=ffn_hook)
        return UpstreamOutput(hidden=hidden, ffn=ffn, lengths=lengths)
