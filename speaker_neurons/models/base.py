"""Common interface of every upstream model (DESIGN.md, "Upstream models")."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from speaker_neurons.models.components import FeedForward, FFNHook, Transformer, WeightNormConv1d, lengths_to_mask
from speaker_neurons.models.errors import CheckpointError, listing


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:N` or a torch.device."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def layer_index(k) -> int:
    """A 1-based layer key of a `keep` / `kept_indices` mapping (int or its string, as in JSON) as an int."""
    try:
        return int(k)
    except (TypeError, ValueError):
        raise ValueError(f"layer keys must be 1-based integers, got {k!r}") from None


def current_kept_indices(model: "Upstream") -> dict[int, list[int]]:
    """Original indices of the current neurons, per 1-based layer (identity for a never-pruned model)."""
    if model.kept_indices is not None:
        return {int(k): list(v) for k, v in model.kept_indices.items()}
    return {l + 1: list(range(w)) for l, w in enumerate(model.ffn_widths)}


@dataclass
class UpstreamOutput:
    """What one forward pass gives.

    hidden: L + 1 tensors (B, T, d); hidden[0] is the input of layer 1 (after the positional convolution and,
        for post-LN models, the encoder layer norm), hidden[l] the output of layer l.
    ffn: L tensors (B, T, width_l): GELU(W1 x + b1), the input of W2 ([] when not asked).
    lengths: (B,) int64 valid frames per utterance.
    """

    hidden: list[Tensor]
    ffn: list[Tensor] = field(default_factory=list)
    lengths: Optional[Tensor] = None

    def frame_mask(self) -> Tensor:
        """(B, T) bool, True at valid frames."""
        return lengths_to_mask(self.lengths, self.hidden[0].shape[1])


class Upstream(nn.Module):
    """Base of MelHuBERT and the wav2vec2 family. Subclasses define `encoder` (with `.transformer`),
    `forward`, `frames_for`, `_config_with_widths` and the class attribute `kind`."""

    kind: str = ""
    sample_rate: int = 16000
    #: config key that holds the FFN width(s)
    width_key: str = ""

    def __init__(self) -> None:
        super().__init__()
        #: original (parent-model) neuron indices kept, per 1-based layer; None = never pruned
        self.kept_indices: Optional[dict[int, list[int]]] = None
        #: sha256 of the model this one was derived from (native models), else None
        self.parent_sha256: Optional[str] = None
        #: FFN widths of the never-pruned ancestor (set by prune_ffn / load_native), else None
        self.original_ffn_widths: Optional[list[int]] = None

    # ---- structure
    @property
    def transformer(self) -> Transformer:
        return self.encoder.transformer

    @property
    def num_layers(self) -> int:
        return len(self.transformer.layers)

    @property
    def hidden_dim(self) -> int:
        return self.transformer.embed_dim

    @property
    def ffn_widths(self) -> list[int]:
        return [ff.width for ff in self.feed_forwards()]

    def feed_forwards(self) -> list[FeedForward]:
        return [layer.feed_forward for layer in self.transformer.layers]

    # ---- FFN surgery (docs/METHOD.md section 5), per 1-based layer, by current neuron index
    def _ffn(self, layer) -> FeedForward:
        ffs, l = self.feed_forwards(), layer_index(layer)
        if not 1 <= l <= len(ffs):
            raise ValueError(f"layer {l} out of range 1..{len(ffs)}")
        return ffs[l - 1]

    def ffn_importance(self) -> dict[int, Any]:
        """Per 1-based layer, float64 (width,): each neuron's ||W1[j,:]||_1 + |b1[j]| + ||W2[:,j]||_1."""
        return {l: ff.importance().numpy() for l, ff in enumerate(self.feed_forwards(), start=1)}

    def prune_ffn(self, keep: Mapping[Any, Sequence[int]]) -> "Upstream":
        """Keep only the listed neurons (current indices, sorted, unique) of the given layers, in place;
        `kept_indices` follows them back to the never-pruned model. Returns the model."""
        plan = {layer_index(k): [int(i) for i in v] for k, v in keep.items()}
        for l, idx in plan.items():  # every layer checked before any is cut
            ff = self._ffn(l)
            if not idx:
                raise ValueError(f"layer {l}: cannot keep zero neurons")
            if any(b <= a for a, b in zip(idx, idx[1:])):
                raise ValueError(f"layer {l}: kept indices must be sorted and unique")
            if idx[0] < 0 or idx[-1] >= ff.width:
                raise ValueError(f"layer {l}: kept indices must lie in 0..{ff.width - 1}")
        if self.kept_indices is None and self.original_ffn_widths is None:
            self.original_ffn_widths = list(self.ffn_widths)
        kept = current_kept_indices(self)
        for l, idx in plan.items():
            self._ffn(l).keep_(idx)
            kept[l] = [kept[l][j] for j in idx]
        self.kept_indices = kept
        return self

    def erase_ffn(self, neurons: Mapping[Any, Sequence[int]]) -> "Upstream":
        """Silence the given neurons (their W2 columns zeroed), in place, keeping every shape; returns the model."""
        for l, idx in neurons.items():
            try:
                self._ffn(l).zero_out_(idx)
            except ValueError as exc:
                raise ValueError(f"layer {l}: {exc}") from None
        return self

    @property
    def config(self) -> dict[str, Any]:
        """The full constructor config (a copy), FFN widths as they are now."""
        return copy.deepcopy(self._config_with_widths())

    def _config_with_widths(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def param_counts(self) -> dict[str, Any]:
        """Parameter counts: `total`, `ffn` (W1, b1, W2, b2 of every layer), `ffn_per_layer`."""
        per_layer = [sum(p.numel() for p in ff.parameters()) for ff in self.feed_forwards()]
        return {
            "total": int(sum(p.numel() for p in self.parameters())),
            "ffn": int(sum(per_layer)),
            "ffn_per_layer": [int(n) for n in per_layer],
        }

    def frames_for(self, num_samples: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def frame_lengths(self, wav_lengths: Tensor) -> Tensor:
        return torch.tensor([self.frames_for(int(n)) for n in wav_lengths.tolist()], dtype=torch.long)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, wavs: Tensor, wav_lengths: Optional[Tensor] = None, return_ffn: bool = True,
                ffn_hook: Optional[FFNHook] = None) -> UpstreamOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- state dicts
    def load_state_dict_checked(self, state_dict: Mapping[str, Tensor], source: str | os.PathLike | None = None,
                                allow_missing: tuple[str, ...] = ()) -> None:
        """Load with strict key and shape checking; errors name the file and the key.

        Weight-norm aliases (`weight_g`/`weight_v`) of the positional convolution are accepted.
        `allow_missing`: key prefixes that may be absent (they keep their current value).
        """
        sd = dict(state_dict)
        for name, mod in self.named_modules():
            if isinstance(mod, WeightNormConv1d):
                WeightNormConv1d.canonicalize(sd, name + "." if name else "")
        own = self.state_dict()
        missing = [k for k in own if k not in sd and not k.startswith(allow_missing or ("\0",))]
        unexpected = [k for k in sd if k not in own]
        problems = []
        if unexpected:
            problems.append("unexpected key(s) not in the model: " + listing(sorted(unexpected)))
        if missing:
            problems.append("missing key(s): " + listing(missing))
        for k, v in sd.items():
            if k in own and tuple(v.shape) != tuple(own[k].shape):
                problems.append(f"key {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
        if problems:
            raise CheckpointError(source, "state dict does not match the model: " + "; ".join(problems))
        for k, v in sd.items():
            if not isinstance(v, Tensor):
                raise CheckpointError(source, f"key {k!r} is not a tensor ({type(v).__name__})")
            if not v.is_floating_point() and own[k].is_floating_point():
                raise CheckpointError(source, f"key {k!r} has dtype {v.dtype}, expected a floating-point tensor")
        self.load_state_dict(sd, strict=not allow_missing)

