"""Building blocks of the upstream Transformers, with torchaudio's state-dict names.

Every module here is our own, but its parameter names follow torchaudio's `wav2vec2` components, so a
torchaudio `Wav2Vec2Model` state dict loads into the matching model with `strict=True` (the parity
reference). Differences from torchaudio, all of them no-ops for an unpadded batch:

* padding never leaks: the first conv block's group norm takes its statistics over the valid frames of
  each utterance only; attention ignores padded keys; padded frames are zeroed before the positional
  convolution;
* FFN widths may differ per layer (structured pruning);
* the encoder returns every hidden state and every FFN activation (GELU(W1 x + b1), the input of W2) in one
  pass, and can stream the activations to a hook;
* dropout exists only for training (`self.training`); there is no layer drop.

Hidden-state convention (`Transformer.forward`): `hidden[0]` is the input of layer 1, i.e. the projected
features plus the convolutional positional embedding, followed by the encoder-level layer norm for
post-LN models (`layer_norm_first=False`: wav2vec2/HuBERT base, MelHuBERT); pre-LN models (large
variants) apply that layer norm only at the very end, so their `hidden[0]` has no layer norm.
`hidden[l]` (l >= 1) is the output of layer l, exactly torchaudio's `extract_features()[l - 1]`; for pre-LN
models `hidden[L]` is therefore *before* the final encoder layer norm (as in torchaudio, unlike the last
hidden state of Hugging Face models).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ffn_hook(layer_index_1_based, activations (B, T, W), frame_mask (B, T) bool True = valid frame)
FFNHook = Callable[[int, Tensor, Tensor], None]


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) valid lengths -> (B, max_len) bool, True at valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


# --------------------------------------------------------------------------------------------------
# convolutional feature extractor (wav2vec2 / HuBERT / WavLM)
# --------------------------------------------------------------------------------------------------
class ChannelGroupNorm(nn.Module):
    """GroupNorm with one group per channel (wav2vec2 base's first conv block), padding-aware.

    Statistics are taken over time; with `lengths`, over each utterance's valid frames only, so an
    utterance gives the same output alone or inside a padded batch. Parameter names `weight`, `bias`
    (as `nn.GroupNorm`).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:  # x (B, C, T)
        T = x.shape[-1]
        if lengths is None or bool((lengths >= T).all()):
            return F.group_norm(x, self.num_channels, self.weight, self.bias, self.eps)
        m = lengths_to_mask(lengths, T)[:, None, :].to(x.dtype)  # (B, 1, T)
        n = lengths.clamp_min(1).to(x.dtype)[:, None, None]
        mean = (x * m).sum(-1, keepdim=True) / n
        xc = x - mean
        var = (xc * xc * m).sum(-1, keepdim=True) / n
        return xc * torch.rsqrt(var + self.eps) * self.weight[None, :, None] + self.bias[None, :, None]


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over channels of a (B, C, T) tensor (wav2vec2 large's conv blocks)."""

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        return F.layer_norm(x.transpose(-2, -1), self.normalized_shape, self.weight, self.bias, self.eps).transpose(-2, -1)


class ConvLayerBlock(nn.Module):
    """Conv1d (no padding) -> optional norm -> GELU. Keys: `conv`, `layer_norm`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool,
                 norm: Optional[str]):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        if norm is None:
            self.layer_norm = None
        elif norm == "group":
            self.layer_norm = ChannelGroupNorm(out_channels)
        elif norm == "layer":
            self.layer_norm = ChannelLayerNorm(out_channels)
        else:
            raise ValueError(f"unknown conv norm {norm!r}")

    def output_lengths(self, lengths: Tensor) -> Tensor:
        out = torch.div(lengths - self.kernel_size, self.stride, rounding_mode="floor") + 1
        return out.clamp_min(0)

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        x = self.conv(x)
        if lengths is not None:
            lengths = self.output_lengths(lengths)
        if self.layer_norm is not None:
            x = self.layer_norm(x, lengths)
        return F.gelu(x), lengths


class FeatureExtractor(nn.Module):
    """Waveform CNN. `mode`: `group_norm` (norm in block 0 only) or `layer_norm` (every block).

    `shapes`: [(out_channels, kernel, stride), ...]. Key: `conv_layers.{i}`.
    """

    def __init__(self, mode: str, shapes: Sequence[Sequence[int]], bias: bool):
        super().__init__()
        if mode not in ("group_norm", "layer_norm"):
            raise ValueError(f"extractor_mode must be 'group_norm' or 'layer_norm', got {mode!r}")
        blocks = []
        in_ch = 1
        for i, (out_ch, k, s) in enumerate(shapes):
            norm = ("group" if i == 0 else None) if mode == "group_norm" else "layer"
            blocks.append(ConvLayerBlock(in_ch, int(out_ch), int(k), int(s), bias, norm))
            in_ch = int(out_ch)
        self.conv_layers = nn.ModuleList(blocks)
        self.out_channels = in_ch

    def frames_for(self, num_samples: int) -> int:
        n = int(num_samples)
        for b in self.conv_layers:
            n = max(0, (n - b.kernel_size) // b.stride + 1)
        return n

    def forward(self, wavs: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        if wavs.ndim != 2:
            raise ValueError(f"expected waveforms (batch, samples), got shape {tuple(wavs.shape)}")
        x = wavs.unsqueeze(1)
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x.transpose(1, 2), lengths


class FeatureProjection(nn.Module):
    """(LayerNorm ->) Linear. Keys `layer_norm` (optional), `projection`."""

    def __init__(self, in_features: int, out_features: int, layer_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_features) if layer_norm else None
        self.projection = nn.Linear(in_features, out_features)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = self.projection(x)
        return F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x


# --------------------------------------------------------------------------------------------------
# convolutional positional embedding with weight norm
# --------------------------------------------------------------------------------------------------
def weight_norm_g(v: Tensor, dim: int = 2) -> Tensor:
    """Norm of `v` over every dimension except `dim` (keepdim), the `g` of a fresh weight norm."""
    dims = [d for d in range(v.ndim) if d != dim]
    return torch.linalg.vector_norm(v, dim=dims, keepdim=True)


class _WeightNormParams(nn.Module):
    """Holds `original0` (g, magnitude) and `original1` (v, direction), torch-parametrization names."""

    def __init__(self, g: Tensor, v: Tensor):
        super().__init__()
        self.original0 = nn.Parameter(g)
        self.original1 = nn.Parameter(v)


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d whose weight is `g * v / ||v||` with the norm over all dims but the kernel dim (2).

    State-dict keys are those of `torch.nn.utils.parametrizations.weight_norm` (torchaudio's model):
    `parametrizations.weight.original0` (g, shape (1, 1, K)), `parametrizations.weight.original1`
    (v, shape (C, C / G, K)) and `bias`. Loading also accepts the older `weight_g` / `weight_v` pair
    (`torch.nn.utils.weight_norm`, fairseq, older torchaudio/HF) and a plain `weight` (weight norm
    already folded in).
    """

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        if channels % groups:
            raise ValueError(f"pos-conv channels {channels} not divisible by groups {groups}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.groups = groups
        self.padding = kernel_size // 2
        std = math.sqrt(4.0 / (kernel_size * channels))
        v = torch.randn(channels, channels // groups, kernel_size) * std
        self.parametrizations = nn.ModuleDict({"weight": _WeightNormParams(weight_norm_g(v), v)})
        self.bias = nn.Parameter(torch.zeros(channels))

    @property
    def weight_g(self) -> Tensor:
        return self.parametrizations["weight"].original0

    @property
    def weight_v(self) -> Tensor:
        return self.parametrizations["weight"].original1

    def weight(self) -> Tensor:
        v, g = self.weight_v, self.weight_g
        return v * (g / weight_norm_g(v))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T)
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)

    @staticmethod
    def canonicalize(state_dict: dict, prefix: str) -> None:
        """Rename `weight_g`/`weight_v` (or split a plain `weight`) under `prefix` to our keys, in place."""
        g_key, v_key = prefix + "parametrizations.weight.original0", prefix + "parametrizations.weight.original1"
        if prefix + "weight_g" in state_dict or prefix + "weight_v" in state_dict:
            if prefix + "weight_g" in state_dict:
                state_dict[g_key] = state_dict.pop(prefix + "weight_g")
            if prefix + "weight_v" in state_dict:
                state_dict[v_key] = state_dict.pop(prefix + "weight_v")
        elif prefix + "weight" in state_dict and g_key not in state_dict and v_key not in state_dict:
            w = state_dict.pop(prefix + "weight")
            state_dict[v_key] = w
            state_dict[g_key] = weight_norm_g(w)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.canonicalize(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ConvolutionalPositionalEmbedding(nn.Module):
    """x -> GELU(weight-norm conv(x)) with 'same' length (drop the last frame for even kernels). Key `conv`."""

    def __init__(self, embed_dim: int, kernel_size: int, groups: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.kernel_size = kernel_size
        self.conv = WeightNormConv1d(embed_dim, kernel_size, groups)
        self.num_remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C)
        y = self.conv(x.transpose(1, 2))
        if self.num_remove:
            y = y[..., : -self.num_remove]
        return F.gelu(y).transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Multi-head self-attention. Keys `q_proj`, `k_proj`, `v_proj`, `out_proj`.

    `attn_mask`: None or bool (B, 1, 1, T), True = key may be attended (padding excluded).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, position_bias: Optional[Tensor] = None
                ) -> tuple[Tensor, Optional[Tensor]]:
        B, T, _ = x.shape
        shape = (B, T, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, T, self.embed_dim)
        return self.out_proj(out), None


class _PackedProjection(nn.Module):
    """`in_proj_weight` (3E, E), `in_proj_bias` (3E,), `out_proj`: names of `nn.MultiheadAttention`."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)


class WavLMSelfAttention(nn.Module):
    """WavLM attention with a gated, bucketed relative position bias (torchaudio's names).

    Keys: `rel_attn_embed` (first layer only; Embedding(num_buckets, num_heads)), `attention.in_proj_weight`,
    `attention.in_proj_bias`, `attention.out_proj`, `gru_rel_pos_linear` (Linear(head_dim, 8)),
    `gru_rel_pos_const` (1, H, 1, 1). The ungated bias (1, H, T, T) is computed in layer 1 and passed on to
    every later layer, each gating it with its own query.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_buckets: int = 320, max_distance: int = 800,
                 has_relative_attention_bias: bool = False, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.dropout = dropout
        self.rel_attn_embed = nn.Embedding(num_buckets, num_heads) if has_relative_attention_bias else None
        self.attention = _PackedProjection(embed_dim)
        self.gru_rel_pos_linear = nn.Linear(self.head_dim, 8)
        self.gru_rel_pos_const = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def _buckets(self, rel: Tensor) -> Tensor:
        """Bidirectional log-spaced buckets of relative offsets (key - query)."""
        half = self.num_buckets // 2
        out = (rel > 0).long() * half
        rel = rel.abs()
        max_exact = half // 2
        large = max_exact + (
            torch.log(rel.float().clamp_min(1e-20) / max_exact) / math.log(self.max_distance / max_exact)
            * (half - max_exact)
        ).long()
        large = large.clamp_max(half - 1)
        return out + torch.where(rel < max_exact, rel, large)

    def compute_bias(self, T: int, device) -> Tensor:
        pos = torch.arange(T, dtype=torch.long, device=device)
        buckets = self._buckets(pos[None, :] - pos[:, None])  # (Tq, Tk)
        return self.rel_attn_embed(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, H, T, T)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, position_bias: Optional[Tensor] = None
                ) -> tuple[Tensor, Optional[Tensor]]:
        B, T, E = x.shape
        if self.rel_attn_embed is not None and position_bias is None:
            position_bias = self.compute_bias(T, x.device)
        bias = None
        if position_bias is not None:
            ql = x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
            gates = torch.sigmoid(self.gru_rel_pos_linear(ql).view(B, self.num_heads, T, 2, 4).sum(-1))
            gate_a, gate_b = gates[..., 0:1], gates[..., 1:2]  # (B, H, T, 1)
            gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0
            bias = gate * position_bias  # (B, H, T, T)
            if attn_mask is not None:
                bias = bias.masked_fill(~attn_mask, float("-inf"))
        elif attn_mask is not None:
            bias = attn_mask
        qkv = F.linear(x, self.attention.in_proj_weight, self.attention.in_proj_bias)
        q, k, v = (t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        if bias is not None and bias.dtype != torch.bool:
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, T, E)
        return self.attention.out_proj(out), position_bias


# --------------------------------------------------------------------------------------------------
# feed-forward, encoder layer, transformer
# --------------------------------------------------------------------------------------------------
class FeedForward(nn.Module):
    """y = W2 GELU(W1 x + b1) + b2 with `intermediate_dense` (W1, b1) and `output_dense` (W2, b2).

    `forward` returns `(y, a)` where `a = GELU(W1 x + b1)` is the very tensor fed to W2 (no copy).
    Neuron j = row j of W1, entry j of b1, column j of W2.
    """

    def __init__(self, io_features: int, width: int, activation_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        if width < 1:
            raise ValueError(f"FFN width must be >= 1, got {width}")
        self.intermediate_dense = nn.Linear(io_features, width)
        self.output_dense = nn.Linear(width, io_features)
        self.activation_dropout = activation_dropout
        self.dropout = dropout

    @property
    def width(self) -> int:
        return self.intermediate_dense.out_features

    # ---- surgery (docs/METHOD.md section 5): the neurons of this layer, by current index
    @torch.no_grad()
    def importance(self) -> Tensor:
        """float64 (width,): ||W1[j,:]||_1 + |b1[j]| + ||W2[:,j]||_1 of every neuron j."""
        w1 = self.intermediate_dense.weight.detach().double().cpu()
        b1 = self.intermediate_dense.bias.detach().double().cpu()
        w2 = self.output_dense.weight.detach().double().cpu()
        return w1.abs().sum(1) + b1.abs() + w2.abs().sum(0)

    def _check(self, idx) -> list[int]:
        idx = sorted({int(j) for j in idx})
        if idx and (idx[0] < 0 or idx[-1] >= self.width):
            raise ValueError(f"neuron indices must lie in 0..{self.width - 1}")
        return idx

    def keep_(self, idx) -> "FeedForward":
        """Keep only neurons `idx` (sorted, unique current indices), in place: rows of W1 and b1, columns of
        W2; b2 stays. Parameters keep their device, dtype and requires_grad."""
        idx = [int(i) for i in idx]
        if not idx:
            raise ValueError("cannot keep zero neurons")
        if any(b <= a for a, b in zip(idx, idx[1:])):
            raise ValueError("kept indices must be sorted and unique")
        self._check(idx)
        w1, b1, w2, b2 = (self.intermediate_dense.weight, self.intermediate_dense.bias, self.output_dense.weight,
                          self.output_dense.bias)
        i = torch.tensor(idx, dtype=torch.long, device=w1.device)
        new1 = nn.Linear(w1.shape[1], len(idx), device=w1.device, dtype=w1.dtype)
        new2 = nn.Linear(len(idx), w2.shape[0], device=w2.device, dtype=w2.dtype)
        with torch.no_grad():
            new1.weight.copy_(w1.index_select(0, i))
            new1.bias.copy_(b1.index_select(0, i))
            new2.weight.copy_(w2.index_select(1, i))
            new2.bias.copy_(b2)
        for new, old in ((new1.weight, w1), (new1.bias, b1), (new2.weight, w2), (new2.bias, b2)):
            new.requires_grad_(old.requires_grad)
        self.intermediate_dense, self.output_dense = new1, new2
        return self

    @torch.no_grad()
    def zero_out_(self, idx) -> "FeedForward":
        """Silence neurons `idx` without changing the shape: their W2 columns set to zero, in place."""
        self.output_dense.weight[:, self._check(idx)] = 0.0
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = F.gelu(self.intermediate_dense(x))
        h = F.dropout(a, self.activation_dropout, True) if (self.training and self.activation_dropout > 0) else a
        y = self.output_dense(h)
        if self.training and self.dropout > 0:
            y = F.dropout(y, self.dropout, True)
        return y, a


class EncoderLayer(nn.Module):
    """Attention + FFN with post-LN (`layer_norm_first=False`) or pre-LN. Keys `attention`, `layer_norm`,
    `feed_forward`, `final_layer_norm` (torchaudio)."""

    def __init__(self, attention: nn.Module, feed_forward: FeedForward, layer_norm_first: bool, dropout: float = 0.0):
        super().__init__()
        self.attention = attention
        self.layer_norm = nn.LayerNorm(attention.embed_dim)
        self.layer_norm_first = layer_norm_first
        self.feed_forward = feed_forward
        self.final_layer_norm = nn.LayerNorm(attention.embed_dim)
        self.dropout = dropout

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, True) if (self.training and self.dropout > 0) else x

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, position_bias: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        residual = x
        if self.layer_norm_first:
            x = self.layer_norm(x)
        x, position_bias = self.attention(x, attn_mask=attn_mask, position_bias=position_bias)
        x = residual + self._drop(x)
        if self.layer_norm_first:
            y, act = self.feed_forward(self.final_layer_norm(x))
            x = x + y
        else:
            x = self.layer_norm(x)
            y, act = self.feed_forward(x)
            x = self.final_layer_norm(x + y)
        return x, act, position_bias


class Transformer(nn.Module):
    """Positional conv + encoder layers. Keys `pos_conv_embed`, `layer_norm`, `layers.{i}`.

    `layer_norm_first` is the *layers'* convention (fairseq / torchaudio `encoder_layer_norm_first`): False
    (post-LN) applies `layer_norm` after the positional embedding, before layer 1; True (pre-LN) applies it
    only after the last layer (which `forward` does not return; see the module docstring).
    """

    def __init__(self, embed_dim: int, pos_conv_kernel: int, pos_conv_groups: int, layers: Sequence[EncoderLayer],
                 layer_norm_first: bool, dropout: float = 0.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.pos_conv_embed = ConvolutionalPositionalEmbedding(embed_dim, pos_conv_kernel, pos_conv_groups)
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.layer_norm_first = layer_norm_first
        self.layers = nn.ModuleList(layers)
        self.dropout = dropout

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None, return_ffn: bool = True,
                ffn_hook: Optional[FFNHook] = None) -> tuple[list[Tensor], list[Tensor]]:
        """x (B, T, d) projected features; lengths (B,) valid frames or None (all valid).

        Returns (hidden: L + 1 tensors (B, T, d), ffn: L tensors (B, T, width_l) or [] when not asked).
        """
        B, T, _ = x.shape
        if lengths is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=x.device)
            attn_mask = None
        else:
            valid = lengths_to_mask(lengths.to(x.device), T)
            if bool(valid.all()):
                attn_mask = None
            else:
                x = x.masked_fill(~valid[..., None], 0.0)
                # an utterance with no valid frame attends everywhere (avoids NaN; its frames are all padding)
                attn_mask = (valid | ~valid.any(dim=1, keepdim=True))[:, None, None, :]
        x = x + self.pos_conv_embed(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        if self.training and self.dropout > 0:
            x = F.dropout(x, self.dropout, True)
        hidden = [x]
        ffn: list[Tensor] = []
        position_bias = None
        for i, layer in enumerate(self.layers):
            x, act, position_bias = layer(x, attn_mask, position_bias)
            if ffn_hook is not None:
                ffn_hook(i + 1, act, valid)
            if return_ffn:
                ffn.append(act)
            hidden.append(x)
        return hidden, ffn


class Encoder(nn.Module):
    """Keys `feature_projection`, `transformer` (torchaudio's `encoder`)."""

    def __init__(self, feature_projection: FeatureProjection, transformer: Transformer):
        super().__init__()
        self.feature_projection = feature_projection
        self.transformer = transformer


def build_transformer(embed_dim: int, num_heads: int, ffn_widths: Sequence[int], layer_norm_first: bool,
                      pos_conv_kernel: int, pos_conv_groups: int, *, attention: str = "mha",
                      num_buckets: int = 320, max_distance: int = 800, dropout: float = 0.0,
                      attention_dropout: float = 0.0, activation_dropout: float = 0.0) -> Transformer:
    """A Transformer with one layer per entry of `ffn_widths` (`attention`: `mha` or `wavlm`)."""
    layers = []
    for i, w in enumerate(ffn_widths):
        if attention == "wavlm":
            att: nn.Module = WavLMSelfAttention(embed_dim, num_heads, num_buckets, max_distance,
                                                has_relative_attention_bias=(i == 0), dropout=attention_dropout)
        elif attention == "mha":
            att = SelfAttention(embed_dim, num_heads, dropout=attention_dropout)
        else:
            raise ValueError(f"unknown attention type {attention!r}")
        ff = FeedForward(embed_dim, int(w), activation_dropout=activation_dropout, dropout=dropout)
        layers.append(EncoderLayer(att, ff, layer_norm_first, dropout=dropout))
    t = Transformer(embed_dim, pos_conv_kernel, pos_conv_groups, layers, layer_norm_first, dropout=dropout)
    _init_bert(t)
    return t


def _init_bert(module: nn.Module) -> None:
    """fairseq's init_bert_params for Linear / Embedding (normal 0.02, zero bias). Random weights only."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, _PackedProjection):
            nn.init.normal_(m.in_proj_weight, 0.0, 0.02)
            nn.init.zeros_(m.in_proj_bias)


def expand_widths(widths, num_layers: int, key: str) -> list[int]:
    """An int or a per-layer list -> per-layer list of ints (validated)."""
    if isinstance(widths, (int,)) and not isinstance(widths, bool):
        out = [int(widths)] * int(num_layers)
    elif isinstance(widths, (list, tuple)):
        out = [int(w) for w in widths]
        if len(out) != int(num_layers):
            raise ValueError(f"{key} has {len(out)} entries but the model has {num_layers} layers")
    else:
        raise ValueError(f"{key} must be an int or a list of ints, got {widths!r}")
    if any(w < 1 for w in out):
        raise ValueError(f"{key}: every FFN width must be >= 1, got {out}")
    return out


def compact_widths(widths: Sequence[int]):
    """Per-layer widths -> an int when all equal, else the list (config form)."""
    widths = [int(w) for w in widths]
    return widths[0] if widths and all(w == widths[0] for w in widths) else widths
