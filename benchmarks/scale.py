"""Proof of scale: do SID pooling, SID, PR and the erase ablation stay bounded in memory and
disk, and linear in time, when the evaluation corpora grow 4x (or 16x: --scales 1 4 16)?

    .venv/bin/python benchmarks/scale.py                        # 1x and 4x on CPU, about 4 min on 2 cores
    .venv/bin/python benchmarks/scale.py --out /tmp/scale       # another output folder
    .venv/bin/python benchmarks/scale.py --tiny                 # a smoke run: a few utterances, minutes
    .venv/bin/python benchmarks/scale.py --device cuda          # the same on a GPU (bf16: upstream.amp auto)
    .venv/bin/python benchmarks/scale.py --scales 1 --tiny      # one size only (no ratios)

What it does, in order:
1. Synthesizes one pool of audio with the project's demo synthesizer (speaker_neurons.data.synth, the
   code of rule synthesize_demo_corpus), once per output folder (`--pool DIR` reuses a pool).
2. Lays it out (speaker_neurons.data.layouts, symbolic links, no copies) as a LibriSpeech dev-clean
   analysis corpus (its own speakers, the same at every size) and, per size s, a LibriSpeech PR corpus
   (train-clean-100 / dev-clean / test-clean) and a VoxCeleb1 SID corpus (wav/, iden_split.txt,
   vox1_meta.csv, veri_test2.txt) in which every evaluation speaker of the pool appears s times under
   other ids: s x the speakers, utterances and hours, the same audio.
3. Saves a small MelHuBERT with random weights in the native format (a checkpoint model: nothing is
   pre-trained) and writes one config per size (`scale_x<s>.yaml` in the output folder).
4. Per size: one Snakemake run (`--cores`, default 2) for everything the measured stages need
   (`--omit-from` them), then one run per stage, `--until <rule>`, in the order pool_layers, sid_eval,
   pr_eval, erase_ablation, while a thread polls the size of the results folder every 0.2 s.

Per stage and size it prints the job's wall time and peak RSS (Snakemake's benchmark file, `s` and
`max_rss`), the peak transient disk under results/ during the run (the peak minus what was there before)
and what the run left there, each job's scratch (its peak transient disk under results/ and its TMPDIR beyond
what it kept) beside the plan's mem_mb and disk_mb for it; then the largest/smallest ratios against the
targets (peak RSS <= 1.2; transient disk of pr_eval <= 1.5x the PR corpus' audio bytes; time <= 4.5 per 4x);
each stage's growth in peak RSS and scratch per 1,000 utterances of its corpus, extrapolated to VoxCeleb1
and LibriSpeech train-clean-100 beside the plan's requests for a base model there; and an ESTIMATE of
each stage at the paper's corpus sizes on one GPU with base-size models (FLOPs measured with
torch.utils.flop_counter on the models of speaker_neurons.models; the CPU-side work at this machine's
measured rate; the assumed sustained GPU rate is `--gpu-tflops`). Tables go to stdout and to
<out>/<full|tiny>-<size>/scale.md (and .txt, .tsv). The default --out, benchmarks/out/scale, is gitignored; the
pool, layouts and model stay there between runs, each size's results/ is made again at every run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common import ROOT, DiskPoll, cpu_model  # noqa: E402  (and the project on sys.path)

# the measured rules, in this order; assign_ivector_clusters (the SID corpus' i-vector clusters from each
# utterance's own audio, for the erase ablation) where the workflow has it
STAGES = tuple(r for r in ("pool_layers", "sid_eval", "pr_eval", "assign_ivector_clusters", "erase_ablation")
               if re.search(rf"^rule {r}:", "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk")), re.M))
MODEL = "tiny"
K_SSL = 3
# a small MelHuBERT (random weights): its hidden states (4 x 192 float16 at 50 frames/s, 77 kB per second of
# audio) outweigh the audio (32 kB/s), as a base model's do (1 MB/s), so a frame cache would show on disk
TINY_MODEL = {"num_layers": 3, "hidden_dim": 192, "num_heads": 4, "ffn_dim": 768, "frame_period": 20,
              "pos_conv_kernel": 16, "pos_conv_groups": 4}
# base-size shapes for the estimate: MelHuBERT base (fbank, 20 ms frames); wav2vec2/HuBERT base are the defaults
MELHUBERT_BASE = {"hidden_dim": 768, "num_layers": 12, "num_heads": 12, "ffn_dim": 3072, "frame_period": 20}
# the paper's corpora (/work/shared/SCALE.md): hours and utterances
PAPER = {"vox1": {"hours": 352.0, "utterances": 153_516, "test_hours": 8_251 * 8.2 / 3600, "test_utterances": 8_251},
         "libri_test_hours": 5.4, "libri_dev_hours": 5.4, "pr_steps": 100_000, "pr_batch": 32,
         "pr_utt_seconds": 12.3, "pr_eval_every": 1_000}


@dataclass(frozen=True)
class Size:
    """The pool's share of the corpora: speakers per role and utterances per speaker."""

    analysis_speakers: int
    eval_speakers: int
    utterances: int  # per speaker: split train / dev / test by the synthesizer
    split: tuple[int, int, int]


FULL = Size(analysis_speakers=8, eval_speakers=24, utterances=20, split=(14, 3, 3))
TINY = Size(analysis_speakers=6, eval_speakers=4, utterances=6, split=(4, 1, 1))


# ------------------------------------------------------------------------------------------- corpora
def synthesize_pool(pool: Path, size: Size) -> pd.DataFrame:
    """The demo synthesizer's corpus (its default voices, durations and channels), with a FLAC copy of every
    utterance for the LibriSpeech layouts; made once (pool/.made)."""
    from speaker_neurons.config import defaults
    from speaker_neurons.data.synth import synthesize_corpus

    if not (pool / ".made").exists():
        demo = defaults("corpus")["demo"]
        demo.update(seed=2023, n_speakers=size.analysis_speakers + size.eval_speakers,
                    utterances_per_speaker=size.utterances, split=list(size.split))
        demo["channel"]["keep_clean"] = False
        import inspect

        takes = inspect.signature(synthesize_corpus).parameters  # the corpus settings the synthesizer reads
        synthesize_corpus(pool, **{k: v for k, v in demo.items() if k in takes}, workers=2)
        import soundfile as sf

        for wav in sorted((pool / "wav").glob("*/*.wav")):
            flac = pool / "flac" / wav.relative_to(pool / "wav").with_suffix(".flac")
            flac.parent.mkdir(parents=True, exist_ok=True)
            x, sr = sf.read(wav, dtype="int16")
            sf.write(flac, x, sr, subtype="PCM_16")
        (pool / ".made").touch()
    utts = pd.read_csv(pool / "utterances.tsv", sep="\t", keep_default_na=False)
    genders = pd.read_csv(pool / "speakers.tsv", sep="\t").set_index("speaker")["gender"]
    utts["gender"] = utts["speaker"].map(genders)
    utts["wav"] = [str(pool / p) for p in utts["path"]]
    utts["flac"] = [str(pool / "flac" / Path(p).relative_to("wav").with_suffix(".flac")) for p in utts["path"]]
    # LibriSpeech transcripts: upper case, letters and apostrophes
    utts["words"] = [" ".join(re.sub(r"[^A-Za-z' ]+", " ", t).upper().split()) for t in utts["text"]]
    return utts


def lay_out(out: Path, utts: pd.DataFrame, size: Size, scale: int) -> dict[str, dict]:
    """The analysis corpus (made once) and the size's SID and PR corpora; returns their config entries."""
    from speaker_neurons.data import layouts

    speakers = list(dict.fromkeys(utts["speaker"]))
    analysis, evaluation = speakers[:size.analysis_speakers], speakers[size.analysis_speakers:]
    gender = dict(zip(utts["speaker"], utts["gender"]))
    ana = out / "analysis" / "LibriSpeech"
    if not (ana / "SPEAKERS.TXT").exists():
        ids = {s: f"{9001 + i}" for i, s in enumerate(analysis)}
        rows = utts[utts["speaker"].isin(analysis)]
        layouts.librispeech_split(ana, "dev-clean", [layouts.Utterance(ids[r.speaker], r.flac, r.words)
                                                     for r in rows.itertuples()])
        layouts.librispeech_speakers(ana, {ids[s]: gender[s] for s in analysis})
    root = out / f"x{scale}"
    ls, vox = root / "LibriSpeech", root / "VoxCeleb1"
    if not (ls / "SPEAKERS.TXT").exists():
        shutil.rmtree(root, ignore_errors=True)
        rows = utts[utts["speaker"].isin(evaluation)]
        # copy r of evaluation speaker k: LibriSpeech reader (r+1)kkk, VoxCeleb1 id1rkkk
        libri = {r: {s: f"{r + 1}{k:03d}" for k, s in enumerate(evaluation)} for r in range(scale)}
        vox_id = {r: {s: f"id1{r}{k:03d}" for k, s in enumerate(evaluation)} for r in range(scale)}
        folders = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
        for chapter, (split, folder) in enumerate(folders.items(), start=1):  # a chapter per split: unique ids
            part = rows[rows["split"] == split]
            layouts.librispeech_split(ls, folder, [layouts.Utterance(libri[r][u.speaker], u.flac, u.words)
                                                   for r in range(scale) for u in part.itertuples()],
                                      chapter=f"{chapter}00")
        layouts.librispeech_speakers(ls, {libri[r][s]: gender[s] for r in range(scale) for s in evaluation})
        layouts.voxceleb1(vox, [(u.split, layouts.Utterance(vox_id[r][u.speaker], u.wav))
                                for r in range(scale) for u in rows.itertuples()],
                          {vox_id[r][s]: gender[s] for r in range(scale) for s in evaluation})
    return {
        "analysis": {"split_dir": str(ana / "dev-clean")},
        "pr": {"split_dirs": {"train": str(ls / "train-clean-100"), "dev": str(ls / "dev-clean"),
                              "test": str(ls / "test-clean")}},
        "sid": {"root": str(vox), "iden_split": str(vox / "iden_split.txt"), "meta_csv": str(vox / "vox1_meta.csv")},
    }


def save_model(folder: Path) -> Path:
    import torch

    from speaker_neurons.models import build_upstream, save_upstream

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        save_upstream(build_upstream("melhubert", TINY_MODEL).eval(), folder)
    return folder


def write_config(path: Path, results: Path, corpora: dict, model: Path, device: str, extra: str) -> Path:
    a, p, s = corpora["analysis"], corpora["pr"]["split_dirs"], corpora["sid"]
    from speaker_neurons.config import defaults

    # the features never fit the budget: the upstream on the fly, as at the paper's size (where the key exists)
    pr_extra = ", feature_cache_gb: 0" if "feature_cache_gb" in defaults("pr") else ""
    path.write_text(f"""# benchmarks/scale.py: the analysis corpus, the SID and PR corpora of one size, a tiny checkpoint model
results: {results}
corpus: {{name: dev_clean, source: librispeech, librispeech: {{split_dir: {a['split_dir']}}}}}
corpora:
  - {{name: vox1, source: voxceleb1, voxceleb1: {{root: {s['root']}, iden_split: {s['iden_split']}, meta_csv: {s['meta_csv']}}}}}
  - name: libriphone
    source: librispeech
    librispeech: {{split_dirs: {{train: {p['train']}, dev: {p['dev']}, test: {p['test']}}}}}
stages: {{analysis: dev_clean, sid: vox1, pr: libriphone}}
models:
  - {{name: {MODEL}, kind: melhubert, source: checkpoint, path: {model}, format: native}}
upstream: {{device: {device}}}
analysis: {{k_ssl: [{K_SSL}], max_frames: 20000}}
ivector: {{ubm_components: 4, ivector_dim: 4, ubm_iters: 2, tv_iters: 2}}
prune: {{parents: []}}
controls: {{enabled: false}}
sid: {{learning_rates: [0.01], seeds: [0], epochs: 5}}
pr: {{learning_rates: [0.01], seeds: [0], steps: 20, eval_every: 10, batch_size: 8, bootstrap: 100{pr_extra}}}
erase: {{random_seeds: [0]}}
{extra}""")
    return path


# ------------------------------------------------------------------------------------------- runs
def snakemake(log: Path, config: Path, cores: int, *args, tmpdir: Path | None = None) -> tuple[int, float]:
    cmd = [sys.executable, "-m", "snakemake", "--scheduler", "greedy", "--cores", str(cores),
           "--configfile", str(config), *map(str, args)]
    env = {**os.environ, **({"TMPDIR": str(tmpdir)} if tmpdir else {})}
    t0 = time.monotonic()
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    return rc, time.monotonic() - t0


def targets(results: Path) -> list[str]:
    m = results / "models" / MODEL
    return [str(m / "sid/vox1/sid.json"), str(m / "pr/libriphone/pr.json"),
            str(m / f"analysis/ssl_k{K_SSL}/erase/erase.json")]


def job_benchmark(results: Path, rule: str) -> tuple[float, float]:
    """(seconds, max_rss MB) of the rule's job, from Snakemake's benchmark file."""
    files = sorted((results / "benchmarks").glob(f"**/{rule}*.tsv"))
    if not files:
        return float("nan"), float("nan")
    df = pd.read_csv(files[0], sep="\t")
    return float(df["s"].iloc[-1]), float(df["max_rss"].iloc[-1])


def corpus_figures(results: Path, name: str) -> dict:
    man = pd.read_csv(results / "corpora" / name / "manifest.tsv", sep="\t", keep_default_na=False)
    audio = sum(Path(p).resolve().stat().st_size for p in man["path"])  # as if each utterance were a file
    seconds = float(man["duration"].sum())
    return {"utterances": len(man), "hours": seconds / 3600, "audio_bytes": audio, "int16_bytes": int(seconds * 32000)}


def run_size(out: Path, scale: int, config: Path, cores: int) -> tuple[list[dict], dict]:
    results = Path(re.search(r"^results: (.*)$", config.read_text(), re.M).group(1))
    logs = out / "logs" / f"x{scale}"
    logs.mkdir(parents=True, exist_ok=True)
    tmp = results.parent / "tmp"  # every job's TMPDIR: its scratch there is measured with results/
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"[x{scale}] preparing (corpora, analysis, i-vectors, neuron sets) ...", flush=True)
    with DiskPoll(results, tmp) as prep:
        rc, wall = snakemake(logs / "prepare.log", config, cores, "--omit-from", *STAGES, "--", *targets(results),
                             tmpdir=tmp)
    if rc != 0:
        sys.exit(f"[x{scale}] the preparation failed (exit {rc}): see {logs / 'prepare.log'}\n"
                 + (logs / "prepare.log").read_text()[-3000:])
    print(f"[x{scale}] prepared in {wall:.0f} s; peak transient disk {(prep.peak - prep.after) / 1e6:.1f} MB",
          flush=True)
    corpora = {"vox1": corpus_figures(results, "vox1"), "libriphone": corpus_figures(results, "libriphone")}
    rows = []
    for rule in STAGES:
        with DiskPoll(results, tmp) as disk:
            rc, wall = snakemake(logs / f"{rule}.log", config, cores, "--until", rule, "--", *targets(results),
                                 tmpdir=tmp)
        seconds, rss = job_benchmark(results, rule)
        rows.append({"scale": scale, "stage": rule, "ok": rc == 0, "job_s": seconds, "run_s": wall,
                     "max_rss_mb": rss, "peak_disk_mb": (disk.peak - disk.before) / 1e6,
                     "kept_disk_mb": (disk.after - disk.before) / 1e6,
                     "scratch_mb": (disk.peak - disk.after) / 1e6,
                     "tmp_left_mb": sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 1e6})
        r = rows[-1]
        status = "ok" if rc == 0 else f"FAILED (exit {rc}, {logs / rule}.log)"
        print(f"[x{scale}] {rule}: {status}, "
              f"job {seconds:.1f} s, max_rss {rss:.0f} MB, peak transient disk {r['peak_disk_mb']:.1f} MB", flush=True)
    requested = planned(config, results)
    for r in rows:
        r["plan_mem_mb"], r["plan_disk_mb"] = requested.get(r["stage"], (float("nan"), float("nan")))
    return rows, corpora


def planned(config: Path, results: Path, corpora: dict | None = None) -> dict[str, tuple[float, float]]:
    """{stage: (mem_mb, disk_mb)} that the plan requests for the measured stages' jobs of `config` (its
    corpora as their manifests say; with `corpora` {name: (hours, utterances)}, as those sizes instead, and a
    base-size model)."""
    import yaml

    from speaker_neurons import costs
    from speaker_neurons.catalogue import checked_catalogue
    from speaker_neurons.config import complete

    cfg = complete(yaml.safe_load(config.read_text()))
    cat, _ = checked_catalogue(cfg, lambda c: None, disk_checks=False)
    gpu = costs.model_jobs_want_gpu(cat, cfg["upstream"]["device"])
    out = {}
    for stage in STAGES:
        name = costs.rule_corpus(cat, stage, {"model": MODEL})
        if corpora and name in corpora:
            work, model = costs.CorpusSize(*corpora[name]), costs.BASE
        else:
            work = costs.corpus_size(cat, name, f"{results}/corpora/{name}/manifest.tsv") if name else None
            model = costs.model_size(cat, cfg, MODEL)
        c = costs.rule_costs(stage, work, model, cfg, gpu and stage in costs.MODEL_RULES, cfg["upstream"]["threads"])
        out[stage] = (c["mem_mb"], c["disk_mb"])
    return out


#: the corpus each measured stage's work grows with, and the paper's size of it (name, hours, utterances)
STAGE_CORPUS = {"pool_layers": "vox1", "sid_eval": "vox1", "pr_eval": "libriphone",
                "assign_ivector_clusters": "vox1", "erase_ablation": "vox1"}
PAPER_CORPORA = {"vox1": ("VoxCeleb1", 352.0, 153_516),
                 "libriphone": ("train-clean-100 + dev-clean + test-clean", 100.6 + 5.4 + 5.4, 28_539 + 2_703 + 2_620)}


def growth(table: pd.DataFrame, corpora: dict, config: Path, results: Path) -> pd.DataFrame:
    """Per stage: peak RSS and scratch at every size, their growth per 1,000 utterances of the stage's corpus
    (least squares over the sizes), the RSS growth extrapolated to the paper's corpus (added to the smallest
    size's peak: the tiny model's, not a base model's), and what the plan requests for a base model there."""
    t = table.set_index(["scale", "stage"])
    paper = planned(config, results, {k: v[1:] for k, v in PAPER_CORPORA.items()})
    rows = []
    for stage in STAGES:
        c = STAGE_CORPUS[stage]
        sizes = sorted(corpora)
        n = np.array([corpora[s][c]["utterances"] for s in sizes], dtype=float)
        rss = np.array([t.loc[(s, stage), "max_rss_mb"] for s in sizes], dtype=float)
        scratch = np.array([t.loc[(s, stage), "scratch_mb"] for s in sizes], dtype=float)
        name, _, big = PAPER_CORPORA[c]
        slope = np.polyfit(n, rss, 1)[0] * 1000
        rows.append({"stage": stage, "corpus": c, "utterances": " / ".join(f"{x:.0f}" for x in n),
                     "max_rss_mb": " / ".join(f"{x:.0f}" for x in rss), "rss_mb_per_1k_utts": slope,
                     "scratch_mb": " / ".join(f"{x:.1f}" for x in scratch),
                     "scratch_mb_per_1k_utts": np.polyfit(n, scratch, 1)[0] * 1000,
                     "paper_corpus": name, "paper_utterances": big,
                     "rss_extrapolated_mb": rss[0] + slope / 1000 * (big - n[0]),
                     "plan_mem_mb_base": paper[stage][0], "plan_disk_mb_base": paper[stage][1]})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- estimate
def flops_per_audio_second(kind: str, config: dict, seconds: float = 4.0) -> float:
    """FLOPs of one forward over `seconds` of audio (torch.utils.flop_counter), per second of audio."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from speaker_neurons.models import build_upstream

    torch.manual_seed(0)
    model = build_upstream(kind, config).eval()
    wav = torch.randn(1, int(seconds * 16000)) * 0.1
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(wav, torch.tensor([wav.shape[1]]), return_ffn=False)
    return counter.get_total_flops() / seconds


def cpu_forward_seconds_per_hour(threads: int, seconds: float = 8.0, reps: int = 3) -> float:
    """This CPU's time for the tiny model's forward over one hour of audio (batches of one 8 s utterance)."""
    import torch

    from speaker_neurons.models import build_upstream

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_upstream("melhubert", TINY_MODEL).eval()
    wav = torch.randn(1, int(seconds * 16000)) * 0.1
    lengths = torch.tensor([wav.shape[1]])
    with torch.inference_mode():
        model(wav, lengths, return_ffn=False)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(wav, lengths, return_ffn=False)
    return (time.perf_counter() - t0) / reps * 3600 / seconds


def estimate(table: pd.DataFrame, corpora: dict, gpu_tflops: float, threads: int, config: dict,
             pr_runs: int) -> pd.DataFrame:
    """The paper's corpora on one GPU with base-size models, from the measured marginal CPU cost per hour of
    audio (4x minus 1x) split into the tiny model's forward (measured here) and the rest (audio, features,
    heads: kept at this machine's rate), and the base models' forward FLOPs at `gpu_tflops`."""
    lo, hi = min(corpora), max(corpora)
    fwd_tiny = cpu_forward_seconds_per_hour(threads)
    base = {"melhubert": flops_per_audio_second("melhubert", MELHUBERT_BASE),
            "wav2vec2": flops_per_audio_second("wav2vec2", {})}  # its defaults are the base shape
    rate = gpu_tflops * 1e12
    gpu_h_per_audio_h = {k: f * 3600 / rate / 3600 for k, f in base.items()}  # GPU hours per hour of audio

    def marginal(stage: str, corpus: str) -> float:
        """CPU seconds per extra hour of the corpus (4x minus 1x)."""
        t = table.set_index(["scale", "stage"])["job_s"]
        dh = corpora[hi][corpus]["hours"] - corpora[lo][corpus]["hours"]
        return (t[(hi, stage)] - t[(lo, stage)]) / dh

    rows = []
    p = PAPER
    # pooling: one forward over VoxCeleb1
    other = max(marginal("pool_layers", "vox1") - fwd_tiny, 0.0)
    for kind, g in gpu_h_per_audio_h.items():
        h = p["vox1"]["hours"]
        rows.append({"stage": "pool_layers", "model": f"{kind} base", "audio_h": h, "forward_gpu_h": h * g,
                     "cpu_side_h": h * other / 3600, "target": "< 0.5 h"})
    # PR: the upstream on the fly at every step of every head run, dev every eval_every steps, then test
    runs = pr_runs
    train_h = p["pr_steps"] * p["pr_batch"] * p["pr_utt_seconds"] / 3600
    audio_h = runs * (train_h + p["pr_steps"] / p["pr_eval_every"] * p["libri_dev_hours"]) + p["libri_test_hours"]
    for kind, g in gpu_h_per_audio_h.items():
        rows.append({"stage": "pr_eval", "model": f"{kind} base", "audio_h": audio_h, "forward_gpu_h": audio_h * g,
                     "cpu_side_h": audio_h * other / 3600, "target": "< 2 h"})
    # erase: the unerased and every erased model over the SID test split, and over the PR test split
    n_sets = 1 + config["analysis"]["k_ivector"]
    passes = 1 + n_sets * (1 + len(config["erase"]["random_seeds"]))
    audio_h = passes * (p["vox1"]["test_hours"] + p["libri_test_hours"])
    for kind, g in gpu_h_per_audio_h.items():
        rows.append({"stage": "erase_ablation", "model": f"{kind} base", "audio_h": audio_h,
                     "forward_gpu_h": audio_h * g, "cpu_side_h": audio_h * other / 3600, "target": ""})
    # SID heads: CPU, linear in utterances (no upstream)
    t = table.set_index(["scale", "stage"])["job_s"]
    per_utt = max(t[(hi, "sid_eval")] - t[(lo, "sid_eval")], 0.0) / (  # below zero: noise, counted as none
        corpora[hi]["vox1"]["utterances"] - corpora[lo]["vox1"]["utterances"])
    rows.append({"stage": "sid_eval", "model": "heads (CPU)", "audio_h": p["vox1"]["hours"], "forward_gpu_h": 0.0,
                 "cpu_side_h": per_utt * p["vox1"]["utterances"] / 3600, "target": ""})
    est = pd.DataFrame(rows)
    est["total_h"] = est["forward_gpu_h"] + est["cpu_side_h"]
    limit = est["target"].str.extract(r"< ([\d.]+)")[0].astype(float)
    est["meets"] = np.where(limit.isna(), "", np.where(est["total_h"] < limit, "yes", "NO"))
    est.attrs["notes"] = (
        f"ESTIMATE, not measured on a GPU. Forward FLOPs per second of audio (torch.utils.flop_counter): "
        f"MelHuBERT base {base['melhubert'] / 1e9:.1f} G, wav2vec2/HuBERT base {base['wav2vec2'] / 1e9:.1f} G; "
        f"assumed sustained GPU rate {gpu_tflops:g} TFLOP/s (bf16). CPU-side work (audio reading, features, "
        f"heads) at this machine's measured marginal rate: {other:.2f} CPU-s per hour of audio beyond the tiny "
        f"model's forward ({fwd_tiny:.1f} s/h with {threads} threads), not overlapped with the GPU and not "
        f"spread over more cores (an upper bound). PR: {runs} training run(s) of the upstream per model "
        f"(--pr-runs; s3prl trains one), {p['pr_steps']:,} steps x {p['pr_batch']} utterances x "
        f"{p['pr_utt_seconds']} s, dev every {p['pr_eval_every']:,} steps. A marginal cost below zero (4x faster "
        f"than 1x: noise of a shared machine) counts as zero. Erase: {passes} passes (unerased, "
        f"{n_sets} sets x (1 + {len(config['erase']['random_seeds'])} random)) over the SID and PR test splits. "
        f"sid_eval: the measured CPU seconds per utterance x 153,516 (this config's epochs, tiny dims).")
    return est


# ------------------------------------------------------------------------------------------- report
def ratios(table: pd.DataFrame, corpora: dict) -> pd.DataFrame:
    lo, hi = min(corpora), max(corpora)
    t = table.set_index(["scale", "stage"])
    rows = []
    for stage in STAGES:
        a, b = t.loc[(lo, stage)], t.loc[(hi, stage)]
        rss, time_ = b["max_rss_mb"] / a["max_rss_mb"], b["job_s"] / a["job_s"]
        row = {"stage": stage, "rss_ratio": rss, "time_ratio": time_,
               "disk_ratio": b["peak_disk_mb"] / a["peak_disk_mb"] if a["peak_disk_mb"] > 0 else float("nan")}
        checks = [f"time {'ok' if time_ <= 4.5 * (hi / lo) / 4 else 'OVER'} (<= {4.5 * (hi / lo) / 4:g})",
                  f"rss {'ok' if rss <= 1.2 else 'OVER'} (<= 1.2)"]
        if stage == "pr_eval":
            for s in (lo, hi):  # against the corpus' files (FLAC) and against the same audio in int16 PCM
                c, got = corpora[s]["libriphone"], t.loc[(s, stage), "peak_disk_mb"]
                files, pcm = 1.5 * c["audio_bytes"] / 1e6, 1.5 * c["int16_bytes"] / 1e6
                checks.append(f"x{s} disk {got:.1f} MB: {'ok' if got <= files else 'OVER'} vs 1.5 x FLAC files "
                              f"({files:.1f} MB), {'ok' if got <= pcm else 'OVER'} vs 1.5 x int16 ({pcm:.1f} MB)")
        row["verdict"] = "; ".join(checks) if a["ok"] and b["ok"] else "a run FAILED"
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "scale",
                    help="output folder (pool, corpora, results, logs, scale.md); kept between runs")
    ap.add_argument("--pool", type=Path, help="a synthesized pool to reuse (default <out>/pool)")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--tiny", action="store_true", help="a few utterances: a smoke run of the harness")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="upstream.device of the runs")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--gpu-tflops", type=float, default=100.0,
                    help="assumed sustained bf16 rate of one GPU for the estimate (TFLOP/s)")
    ap.add_argument("--pr-runs", type=int, default=1,
                    help="PR training runs per model for the estimate, each the upstream on the fly (s3prl: one)")
    ap.add_argument("--config-extra", default="", help="YAML appended to every size's config (e.g. pr: {...})")
    args = ap.parse_args()
    size = TINY if args.tiny else FULL
    # the pool and layouts of one Size (kept between runs under a name that changes with it)
    out = args.out.resolve() / (f"{'tiny' if args.tiny else 'full'}-{size.analysis_speakers}a{size.eval_speakers}e"
                                f"{size.utterances}u")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    utts = synthesize_pool((args.pool or out / "pool").resolve(), size)
    model = save_model(out / "model")
    table, corpora = [], {}
    for scale in args.scales:
        results = out / f"x{scale}" / "results"
        shutil.rmtree(results, ignore_errors=True)  # every run measures every job
        cfg = write_config(out / f"scale_x{scale}.yaml", results, lay_out(out, utts, size, scale), model,
                           args.device, args.config_extra)
        rows, corpora[scale] = run_size(out, scale, cfg, args.cores)
        table += rows
    table = pd.DataFrame(table)
    from speaker_neurons.config import complete
    import yaml

    config = complete(yaml.safe_load((out / f"scale_x{args.scales[0]}.yaml").read_text()))
    head = [f"CPU: {cpu_model()}; {os.cpu_count()} cores; snakemake --cores {args.cores}; upstream.device "
            f"{args.device}; model: MelHuBERT {TINY_MODEL['num_layers']} x {TINY_MODEL['hidden_dim']} x "
            f"{TINY_MODEL['ffn_dim']} (random weights); git {git_head()}"]
    sizes = pd.DataFrame([{"scale": s, **{f"{c}_{k}": v for c, f in corpora[s].items() for k, v in f.items()}}
                          for s in corpora])
    fmt = {"float_format": lambda x: f"{x:.2f}", "index": False}
    parts = ["## Corpora per size", sizes.to_string(**fmt), "## Stages (job_s, max_rss_mb: Snakemake benchmark; "
             "peak_disk_mb: peak transient growth of results/ during the run; kept_disk_mb: what stayed)",
             table.to_string(**fmt)]
    est = None
    if len(corpora) > 1:
        parts += [f"## Ratios x{max(corpora)}/x{min(corpora)}", ratios(table, corpora).to_string(**fmt)]
        grown = growth(table, corpora, out / f"scale_x{args.scales[0]}.yaml", out / f"x{args.scales[0]}" / "results")
        parts += ["## Growth per 1,000 utterances of each stage's corpus, extrapolated to the paper's corpora "
                  "(the tiny model's peak plus the measured growth), beside the plan's requests for a base model "
                  "there", grown.to_string(**fmt)]
        grown.to_csv(out / "scale_growth.tsv", sep="\t", index=False)
        try:
            est = estimate(table, corpora, args.gpu_tflops, config["upstream"]["threads"], config, args.pr_runs)
            parts += ["## ESTIMATE: the paper's corpora on one GPU, per model (hours)", est.to_string(**fmt),
                      est.attrs["notes"]]
        except Exception as exc:  # noqa: BLE001 - a failed stage leaves no marginal cost
            parts += [f"(no estimate: {exc!r})"]
    parts.append(f"benchmark wall time: {(time.monotonic() - t_start) / 60:.1f} min")
    text = "\n".join(head + [""] + [p + "\n" for p in parts])
    print(text)
    (out / "scale.txt").write_text(text)
    md = ["# benchmarks/scale.py", ""] + head + [""]
    for p in parts:  # headings as they are, tables fenced
        md += [p.replace("## ", "### ", 1), ""] if p.startswith("## ") else ["```", p, "```", ""]
    (out / "scale.md").write_text("\n".join(md))
    table.to_csv(out / "scale.tsv", sep="\t", index=False)
    sizes.to_csv(out / "scale_corpora.tsv", sep="\t", index=False)
    if est is not None:
        est.to_csv(out / "scale_estimate.tsv", sep="\t", index=False)


def git_head() -> str:
    return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


if __name__ == "__main__":
    main()
