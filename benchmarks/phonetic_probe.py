"""How phonetic a model's layers are, and how phonetic its pre-training targets could be: the measurements
behind PR's positive control on the demo (docs/demo.md, "Phoneme recognition on the demo").

Per model folder (native format), on a synthesized corpus with phone timings (`audio/phones.tsv`, the
synthesizers' own phones: 336 of the demo corpus' utterances):
- a linear frame classifier of the phones (20 ms frames, 70/30 split by utterance, seeded; Adam on the
  standardized hidden state, 300 full-batch steps): test accuracy from hidden_0 and from each layer;
- with `--pr`, SUPERB PR exactly as the workflow scores it (`speaker_neurons.pr.run_pr`, `pr` defaults
  with `--pr-rate`) on a corpus with phone targets: test PER from all layers and from hidden_0.

With `--log-mel AUDIO:K ...` (AUDIO recorded or clean, K frames each side), SUPERB PR of the log-Mel
features themselves (the demo model's normalised input, 20 ms frames, spliced over K frames each side)
of the recorded audio or of its clean copy: what a front end that only removed the channel, with K
frames of context, could give (`--model-for-features`: whose feature statistics; test PER).

With `--targets`, the k-means targets instead (no model): the phone purity (PNMI: mutual information of
cluster and phone over the phone entropy, as in the HuBERT paper), the speaker NMI and the accuracy of the
majority phone of each cluster, for the log-Mel features of the recorded or the clean audio, with or
without per-utterance mean and variance normalisation, at `--clusters` clusters.

    .venv/bin/python benchmarks/phonetic_probe.py --corpus results/corpora/demo_eval models/melhubert_demo/model
    .venv/bin/python benchmarks/phonetic_probe.py --corpus results/corpora/demo --targets --clusters 100 500
    .venv/bin/python benchmarks/phonetic_probe.py --corpus results/corpora/demo_eval --pr MODEL_DIR ...
    .venv/bin/python benchmarks/phonetic_probe.py --corpus results/corpora/demo_eval --log-mel recorded:0 clean:2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speaker_neurons.audio import load_audio  # noqa: E402


def _timed_phones(corpus: Path):
    ph = pd.read_csv(corpus / "audio" / "phones.tsv", sep="\t", keep_default_na=False)
    man = pd.read_csv(corpus / "manifest.tsv", sep="\t").set_index("utt_id")
    vocab = {p: i for i, p in enumerate(sorted(ph["phone"].unique()))}
    return ph, man, vocab


def _frame_labels(g: pd.DataFrame, n: int, vocab: dict) -> np.ndarray:
    """The phone of each 20 ms frame (its centre), -1 outside every phone."""
    t = (np.arange(n) + 0.5) * 0.02
    lab = np.full(n, -1)
    for s, e, p in zip(g["start"], g["end"], g["phone"]):
        lab[(t >= s) & (t < e)] = vocab[p]
    return lab


def _linear_accuracy(a: torch.Tensor, ya: torch.Tensor, b: torch.Tensor, yb: torch.Tensor, n_out: int) -> float:
    mu, sd = a.mean(0), a.std(0) + 1e-5
    a, b = (a - mu) / sd, (b - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(a.shape[1], n_out)
    opt = torch.optim.Adam(lin.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(a), ya).backward()
        opt.step()
    with torch.no_grad():
        return 100 * (lin(b).argmax(1) == yb).float().mean().item()


def frame_probe(model_dir: Path, corpus: Path) -> list[float]:
    """Test accuracy (%) of a linear frame phone classifier from hidden_0, layer 1, ..., layer L."""
    from speaker_neurons.models.native import load_native

    ph, man, vocab = _timed_phones(corpus)
    utts = sorted(ph["utt_id"].unique())
    np.random.default_rng(0).shuffle(utts)
    train = set(utts[: int(0.7 * len(utts))])
    up = load_native(model_dir).eval()
    xs, ys = {True: [], False: []}, {True: [], False: []}
    with torch.no_grad():
        for u, g in ph.groupby("utt_id"):
            w, _ = load_audio(man.loc[u, "path"], target_sr=16000)
            out = up(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))[None], torch.tensor([len(w)]),
                     return_ffn=False)
            hs = torch.stack([h[0].float() for h in out.hidden], 1)  # (T, L+1, d)
            lab = _frame_labels(g, hs.shape[0], vocab)
            keep = lab >= 0
            xs[u in train].append(hs[keep])
            ys[u in train].append(torch.from_numpy(lab[keep]))
    a, b = torch.cat(xs[True]), torch.cat(xs[False])
    ya, yb = torch.cat(ys[True]), torch.cat(ys[False])
    return [_linear_accuracy(a[:, k], ya, b[:, k], yb, len(vocab)) for k in range(a.shape[1])]


def pr_gap(model_dir: Path, corpus: Path, rate: float) -> dict[str, float]:
    """SUPERB PR test PER (%) from all layers and from hidden_0, as rule pr_eval scores it."""
    from speaker_neurons.models.native import load_native
    from speaker_neurons.pr import run_pr

    up = load_native(model_dir).eval()
    with tempfile.TemporaryDirectory(prefix="phonetic-probe-") as d:
        run_pr(up, corpus / "phone_targets.tsv", corpus / "manifest.tsv", ["all", "hidden_0"],
               {"learning_rates": [rate]}, None, corpus.name, None, f"{d}/pr.json", f"{d}/heads.pt", amp=False,
               resume_dir=f"{d}/resume", max_batch_seconds=60, device=torch.device("cpu"))
        res = json.loads(Path(f"{d}/pr.json").read_text())
    return {k: 100 * v["test_per"] for k, v in res["layer_sets"].items()}


class _SplicedLogMel(torch.nn.Module):
    """An upstream whose hidden states (hidden_0 and one layer, the same) are `model`'s normalised input
    features spliced over `k` frames each side."""

    def __init__(self, model, k: int):
        super().__init__()
        self.model, self.k = model, k
        self.sample_rate, self.num_layers = model.sample_rate, 1
        self.hidden_dim = model.feature_dim * (2 * k + 1)

    def frames_for(self, num_samples: int) -> int:
        return self.model.frames_for(num_samples)

    def forward(self, wavs, lengths, return_ffn: bool = False):
        from types import SimpleNamespace

        f, n = self.model.extract_features(wavs, lengths)
        t = f.shape[1]
        idx = (torch.arange(t)[:, None] + torch.arange(-self.k, self.k + 1)[None]).clamp(0, t - 1)
        x = f[:, idx].reshape(f.shape[0], t, -1)
        return SimpleNamespace(hidden=[x, x], lengths=n, ffn=None)


def log_mel_per(model_dir: Path, corpus: Path, audio: str, k: int, rate: float) -> float:
    """SUPERB PR test PER (%) of the spliced log-Mel features of the recorded audio or of its clean copy."""
    from speaker_neurons.models.native import load_native
    from speaker_neurons.pr import run_pr

    front = _SplicedLogMel(load_native(model_dir).eval(), k)
    corpus = corpus.resolve()
    man = pd.read_csv(corpus / "manifest.tsv", sep="\t")
    if audio == "clean":
        channels = pd.read_csv(corpus / "audio" / "channels.tsv", sep="\t").set_index("utt_id")
        man["path"] = [str(corpus / "audio" / channels.loc[u, "clean_path"]) for u in man["utt_id"]]
    with tempfile.TemporaryDirectory(prefix="phonetic-probe-") as d:
        man.to_csv(f"{d}/manifest.tsv", sep="\t", index=False)
        run_pr(front, corpus / "phone_targets.tsv", f"{d}/manifest.tsv", ["hidden_0"], {"learning_rates": [rate]},
               None, corpus.name, None, f"{d}/pr.json", f"{d}/heads.pt", amp=False, resume_dir=f"{d}/resume",
               max_batch_seconds=60, device=torch.device("cpu"))
        res = json.loads(Path(f"{d}/pr.json").read_text())
    return 100 * res["layer_sets"]["hidden_0"]["test_per"]


def _nmi(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) / H(a) of two label arrays."""
    j = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(j, (a, b), 1)
    j /= j.sum()
    pa, pb = j.sum(1), j.sum(0)
    nz = j > 0
    return float((j[nz] * np.log(j[nz] / np.outer(pa, pb)[nz])).sum() / -(pa[pa > 0] * np.log(pa[pa > 0])).sum())


def target_purity(corpus: Path, clusters: list[int]) -> list[tuple]:
    """(audio, normalisation, K, PNMI, speaker NMI, majority-phone accuracy %) of k-means on the 20 ms
    stacked 40-bin log-Mel frames (the demo model's input) of the utterances with phone timings."""
    import torchaudio.compliance.kaldi as kaldi
    from sklearn.cluster import MiniBatchKMeans

    ph, man, vocab = _timed_phones(corpus)
    channels = pd.read_csv(corpus / "audio" / "channels.tsv", sep="\t").set_index("utt_id")
    speakers = {s: i for i, s in enumerate(sorted(man["speaker"].unique()))}
    rows = []
    for audio in ("recorded", "clean"):
        for cmvn in (False, True):
            xs, ps, ss = [], [], []
            for u, g in ph.groupby("utt_id"):
                path = man.loc[u, "path"] if audio == "recorded" else corpus / "audio" / channels.loc[u, "clean_path"]
                w, _ = load_audio(path, target_sr=16000)
                y = kaldi.fbank(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))[None] * 32768,
                                num_mel_bins=40, frame_length=25.0, frame_shift=10.0, window_type="hamming",
                                dither=0.0)
                if cmvn:
                    y = (y - y.mean(0)) / (y.std(0) + 1e-5)
                n = y.shape[0] // 2
                f = y[: 2 * n].reshape(n, -1).numpy()
                lab = _frame_labels(g, n, vocab)
                xs.append(f[lab >= 0])
                ps.append(lab[lab >= 0])
                ss.append(np.full(int((lab >= 0).sum()), speakers[man.loc[u, "speaker"]]))
            x, p, s = np.concatenate(xs), np.concatenate(ps), np.concatenate(ss)
            x = (x - x.mean(0)) / (x.std(0) + 1e-5)
            for k in clusters:
                c = MiniBatchKMeans(k, random_state=0, batch_size=10000, n_init=3).fit_predict(x)
                joint = np.zeros((k, len(vocab)))
                np.add.at(joint, (c, p), 1)
                rows.append((audio, "per utterance" if cmvn else "corpus", k, _nmi(p, c), _nmi(s, c),
                             100 * joint.max(1).sum() / joint.sum()))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", type=Path, help="native model folders")
    ap.add_argument("--corpus", type=Path, required=True, help="a synthesized corpus folder (results/corpora/NAME)")
    ap.add_argument("--pr", action="store_true", help="also score SUPERB PR (all layers, hidden_0)")
    ap.add_argument("--pr-rate", type=float, default=0.01)
    ap.add_argument("--targets", action="store_true", help="the k-means targets' phone purity instead")
    ap.add_argument("--clusters", type=int, nargs="+", default=[100])
    ap.add_argument("--log-mel", nargs="+", metavar="AUDIO:K", help="PR of spliced log-Mel features instead")
    ap.add_argument("--model-for-features", type=Path, default=ROOT / "models" / "melhubert_demo" / "model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.log_mel:
        print("| log-Mel features of | frames of context each side | PER (%) |")
        print("|---|---|---|")
        for spec in args.log_mel:
            audio, k = spec.split(":")
            if audio not in ("recorded", "clean"):
                ap.error(f"--log-mel {spec}: AUDIO is recorded or clean")
            per = log_mel_per(args.model_for_features, args.corpus, audio, int(k), args.pr_rate)
            print(f"| {audio} audio | {k} | {per:.1f} |", flush=True)
        return
    if args.targets:
        print("| audio | normalisation | clusters | PNMI | speaker NMI | majority phone (%) |")
        print("|---|---|---|---|---|---|")
        for r in target_purity(args.corpus, args.clusters):
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.1f} |", flush=True)
        return
    print("| model | frame phone accuracy (%): hidden_0, layers 1..L | best layer minus hidden_0 |"
          + (" PER all (%) | PER hidden_0 (%) | PR input-only gap |" if args.pr else ""))
    print("|---|---|---|" + ("---|---|---|" if args.pr else ""))
    for m in args.models:
        acc = frame_probe(m, args.corpus)
        line = f"| {m} | {' / '.join(f'{a:.1f}' for a in acc)} | {max(acc[1:]) - acc[0]:+.1f} |"
        if args.pr:
            per = pr_gap(m, args.corpus, args.pr_rate)
            line += f" {per['all']:.1f} | {per['hidden_0']:.1f} | {per['hidden_0'] - per['all']:+.1f} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()
