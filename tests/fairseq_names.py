"""torchaudio state-dict names -> fairseq names, to write fairseq-style test checkpoints (shared by
tests/test_fairseq_ckpt.py and tests/fixtures/make_fairseq_omegaconf_fixtures.py)."""

from __future__ import annotations


def to_fairseq(ta_state: dict, extractor_mode: str) -> dict:
    """torchaudio names -> fairseq names (independent of the reader; checked against torchaudio's importer)."""
    out = {}
    for k, v in ta_state.items():
        parts = k.split(".")
        if k.startswith("feature_extractor.conv_layers."):
            i, module, wb = parts[2], parts[3], parts[-1]
            if module == "conv":
                out[f"feature_extractor.conv_layers.{i}.0.{wb}"] = v
            elif extractor_mode == "layer_norm":
                out[f"feature_extractor.conv_layers.{i}.2.1.{wb}"] = v
            else:
                out[f"feature_extractor.conv_layers.{i}.2.{wb}"] = v
        elif k.startswith("encoder.feature_projection.layer_norm."):
            out[f"layer_norm.{parts[-1]}"] = v
        elif k.startswith("encoder.feature_projection.projection."):
            out[f"post_extract_proj.{parts[-1]}"] = v
        elif k.startswith("encoder.transformer.pos_conv_embed.conv."):
            tail = {"bias": "bias", "original0": "weight_g", "original1": "weight_v"}[parts[-1]]
            out[f"encoder.pos_conv.0.{tail}"] = v
        elif k.startswith("encoder.transformer.layer_norm."):
            out[f"encoder.layer_norm.{parts[-1]}"] = v
        else:
            assert k.startswith("encoder.transformer.layers."), k
            i, rest = parts[3], ".".join(parts[4:])
            rest = rest.replace("attention.", "self_attn.")
            rest = rest.replace("feed_forward.intermediate_dense", "fc1").replace("feed_forward.output_dense", "fc2")
            if rest.startswith("layer_norm."):
                rest = "self_attn_" + rest
            out[f"encoder.layers.{i}.{rest}"] = v
    return {k: v.detach().clone() for k, v in out.items()}
