"""Command line: `python -m speaker_neurons describe PATH`, `python -m speaker_neurons dump PATH AUDIO OUT.npz`
and `python -m speaker_neurons plan --configfile X.yaml` (every job of a run with its estimated costs).

Errors (missing file, not audio, unknown checkpoint format, ...) print one line naming the file and exit with
status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from speaker_neurons.config import key as config_key

EXIT_USAGE = 2
#: a model file's format: the schema's `models[].format`, its choices and default (read without importing torch)
FORMAT = config_key("models[].format")
MEAN_STD_HELP = "MelHuBERT mean-std.npy (required to compute features of a released MelHuBERT checkpoint)"


class CLIError(Exception):
    pass


def _fmt_count(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f} M)"


def cmd_describe(args: argparse.Namespace) -> int:
    from speaker_neurons.models.loader import describe

    info = describe(args.path, format=args.format, mean_std=args.mean_std)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    pc = info["param_counts"]
    lines = [
        f"path:        {info['path']}",
        f"format:      {info['format']}",
        f"kind:        {info['kind']}",
        f"layers:      {info['num_layers']}",
        f"hidden dim:  {info['hidden_dim']}",
        f"frame shift: {info['frame_shift_ms']:g} ms",
        f"parameters:  total {_fmt_count(pc['total'])}, FFN {_fmt_count(pc['ffn'])}"
        f" = {100.0 * pc['ffn'] / max(1, pc['total']):.1f}%",
    ]
    if info.get("original_ffn_widths"):
        lines.append(f"original FFN widths: {' '.join(str(w) for w in info['original_ffn_widths'])}")
    if info.get("parent_sha256"):
        lines.append(f"parent sha256: {info['parent_sha256']}")
    if info.get("note"):
        lines.append(f"note: {info['note']}")
    lines.append("layer  ffn_width  ffn_params")
    for i, (w, n) in enumerate(zip(info["ffn_widths"], pc["ffn_per_layer"]), start=1):
        lines.append(f"{i:>5}  {w:>9}  {n:>10}")
    print("\n".join(lines))
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from speaker_neurons.audio import load_audio
    from speaker_neurons.models.loader import load_upstream

    audio = Path(args.audio)
    if not audio.exists():
        raise CLIError(f"{audio}: no such file")
    model = load_upstream({"path": args.path, "format": args.format, "kind": "auto", "mean_std": args.mean_std},
                          device=args.device)
    wav, _ = load_audio(str(audio), target_sr=model.sample_rate)
    w = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None].to(model.device)
    with torch.inference_mode():
        out = model(w, torch.tensor([w.shape[1]]), return_ffn=True)
    n = int(out.lengths[0])
    arrays = {f"hidden_{i}": h[0, :n].float().cpu().numpy() for i, h in enumerate(out.hidden)}
    arrays.update({f"ffn_{i}": a[0, :n].float().cpu().numpy() for i, a in enumerate(out.ffn, start=1)})
    dest = Path(args.out)
    if dest.parent and not dest.parent.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as f:
        np.savez(f, **arrays)
    print(f"{dest}: {n} frames, {len(out.hidden)} hidden states (d={model.hidden_dim}), "
          f"{len(out.ffn)} FFN activations (widths {' '.join(str(a.shape[-1]) for a in out.ffn)})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from speaker_neurons.plan import main as plan_main

    return plan_main([*(["--configfile", *args.configfile] if args.configfile else []),
                      *(["--config", *args.config] if args.config else []),
                      *(["--assume", *args.assume] if args.assume else [])])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m speaker_neurons",
                                description="Inspect upstream models and dump their hidden states / FFN activations.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("describe", help="kind, layers, per-layer FFN widths and parameter counts of a model")
    d.add_argument("path", help="native folder, MelHuBERT / fairseq checkpoint or Hugging Face folder")
    d.add_argument("--format", default=FORMAT["default"], choices=FORMAT["enum"])
    d.add_argument("--mean-std", default=None, help=MEAN_STD_HELP)
    d.add_argument("--json", action="store_true", help="print JSON")
    d.set_defaults(func=cmd_describe)

    u = sub.add_parser("dump", help="hidden states and FFN activations of one audio file to an .npz")
    u.add_argument("path", help="model (as for describe)")
    u.add_argument("audio", help="audio file (any sample rate; resampled to 16 kHz, downmixed to mono)")
    u.add_argument("out", help="output .npz: hidden_0..hidden_L (frames x d), ffn_1..ffn_L (frames x width)")
    u.add_argument("--format", default=FORMAT["default"], choices=FORMAT["enum"])
    u.add_argument("--mean-std", default=None, help=MEAN_STD_HELP)
    u.add_argument("--device", default="cpu", help="auto | cpu | cuda (default cpu)")
    u.set_defaults(func=cmd_dump)

    pl = sub.add_parser("plan", help="every job of a run with its audio hours, device, estimated hours, RAM and disk")
    pl.add_argument("--configfile", nargs="*", default=[], help="config files over config.yaml, as Snakemake takes them")
    pl.add_argument("--config", nargs="*", default=[], help="KEY=VALUE overrides, as Snakemake takes them")
    pl.add_argument("--assume", nargs="*", default=[], metavar="CORPUS=HOURS:UTTERANCES[:TEST_FRACTION]",
                    help="size a corpus as given instead of from its files (a plan for corpora not at hand)")
    pl.set_defaults(func=cmd_plan)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from speaker_neurons.models.errors import CheckpointError

    expected: tuple[type[BaseException], ...] = (CLIError, CheckpointError, FileNotFoundError)
    try:
        from speaker_neurons.audio import AudioError

        expected = expected + (AudioError,)
    except ImportError:
        pass
    try:
        return int(args.func(args) or 0)
    except expected as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
