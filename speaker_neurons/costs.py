"""What a job will cost, from the work it does: the resources every rule asks the scheduler for
(`mem_mb`, `runtime` in minutes, `disk_mb`) and the plan's estimates (`python -m speaker_neurons plan`).

A job's work is the audio it runs a model over (hours, utterances: from the corpus' manifest once it
exists, before that from the corpus' settings or its audio files' sizes) and the model's size (layers,
width, FFN width, frames per second: a workflow-trained MelHuBERT's config, a released checkpoint's
kind at base size; a derived model counts as its root). Seconds of compute are FLOPs over a measured
rate:

* CPU: a base MelHuBERT's statistics pass ran 0.141 h of audio per minute on 2 threads
  (benchmarks/throughput.py, docs/benchmarks.md): 8.5 GFLOP per second of audio, so about 36 GFLOP/s
  per thread in the forward pass, the rate used, scaled by the job's threads; a job's start and its
  resident memory are added from the demo's benchmark files (`benchmarks/plan_vs_run.py` compares every
  estimate with a finished run's; at the demo's scale they are within 2x).
* GPU: no GPU measurement yet: 60 TFLOP/s of bf16 (a fraction of an H100's peak), an ESTIMATE to be
  replaced by `benchmarks/gpu_check.py`'s throughput table.

Every figure is first order (the plan says "estimate"); the config's `resources.<rule>` overrides any
of them. Nothing here imports torch or Snakemake.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from speaker_neurons.catalogue import Catalogue

CPU_GFLOPS_PER_THREAD = 36.0  # see above: the forward pass; job starts are counted apart (JOB_START_SECONDS)
GPU_GFLOPS = 60000.0  # estimate, see above
DEMO_SECONDS_PER_UTTERANCE = 3.44  # the demo corpus: 1,152 utterances, 1.1 h
#: The demo's measured seconds per rule (docs/benchmarks.md, commit 4cbf815, 2-core Xeon, Snakemake's benchmark
#: files summed) that the head-training constants of sid_eval and pr_eval are calibrated to.
DEMO_MEASURED = {"pretrain_melhubert": 258, "pool_layers": 303, "sid_eval": 484, "pr_eval": 900, "erase_ablation": 179,
                 "synthesize_demo_corpus": 82}
#: a job's start (Python, the package, torch and the model's load), in the estimate: measured in the demo's
#: benchmark files (benchmarks/plan_vs_run.py); the runtime request adds its headroom and MIN_RUNTIME over it
JOB_START_SECONDS = {"torch": 1.5, "other": 0.7}
#: a job's resident memory before its work (the demo's benchmark files: a torch job's process 550-650 MB, one of
#: pandas alone 60-170 MB); the memory request is the estimate with 50% headroom, never below REQUEST_FLOOR_MB
#: (the SLURM test cluster killed an i-vector clustering job at 793 MB when it asked for 750)
BASE_RSS_MB = {"torch": 550.0, "other": 120.0}
REQUEST_FLOOR_MB = {"torch": 1500, "other": 1200}
MIN_RUNTIME = 15  # minutes: no job asks for less (a busy node starts Python slowly)
TORCH_RULES = ("pretrain_melhubert", "teacher_targets", "continue_pretraining", "iterative_step", "extract_features",
               "activation_stats", "pool_layers", "pr_eval", "erase_ablation", "ivectors", "assign_ivector_clusters",
               "ivector_clusters", "sid_eval", "prune_model", "describe_model", "frame_kmeans")
#: i-vector features and extraction, hours of audio per minute on 2 threads (benchmarks/throughput.py)
IVECTOR_HOURS_PER_MINUTE = 37.9
#: the rules whose jobs ask for a GPU when the run's models go on one (rules/*.smk: gpu=GPU)
MODEL_RULES = ("pretrain_melhubert", "teacher_targets", "continue_pretraining", "iterative_step", "extract_features",
               "activation_stats", "pool_layers", "sid_eval", "pr_eval", "erase_ablation", "ivectors",
               "assign_ivector_clusters")


@dataclass(frozen=True)
class ModelSize:
    layers: int = 12
    dim: int = 768
    ffn: int = 3072
    frames_per_second: float = 50.0

    @property
    def params(self) -> int:
        return self.layers * (4 * self.dim * self.dim + 2 * self.dim * self.ffn) + 5_000_000  # + front end

    @property
    def gflop_per_audio_second(self) -> float:
        """Forward FLOPs per second of audio (projections and FFN; attention scores are minor at these lengths)."""
        return 2.0 * self.layers * (4 * self.dim ** 2 + 2 * self.dim * self.ffn) * self.frames_per_second / 1e9


@dataclass(frozen=True)
class CorpusSize:
    hours: float
    utterances: int
    test_fraction: float = 0.1

    @property
    def mean_seconds(self) -> float:
        return self.hours * 3600 / max(1, self.utterances)


BASE = ModelSize()


def model_size(cat, config: Mapping[str, Any], name: str) -> ModelSize:
    """A model's size: a workflow-trained MelHuBERT's config; a native checkpoint's own config.json (the
    shipped demo model); any other checkpoint at base size; a derived model as its root (an upper bound:
    pruning only makes it cheaper)."""
    m = cat.models[name]
    while m.parent:
        m = cat.models[m.parent]
    if m.source == "pretrain":
        pm = config["pretrain"]["model"]
        return ModelSize(int(pm["num_layers"]), int(pm["hidden_dim"]), int(pm["ffn_dim"]),
                         1000.0 / float(pm["frame_period"]))
    native = _native_size(m.path) if m.format == "native" and m.path else None
    return native or BASE


def _native_size(folder: str) -> ModelSize | None:
    """The size a native checkpoint folder's config.json states (the shipped demo model), None if unreadable."""
    import json

    try:
        c = json.loads((Path(folder) / "config.json").read_text())["config"]
        return ModelSize(int(c["num_layers"]), int(c["hidden_dim"]), int(c["ffn_dim"]),
                         1000.0 / float(c.get("frame_period", 20)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


_AUDIO_BYTES_PER_SECOND = {".wav": 32000.0, ".flac": 32000.0 * 0.55}


@lru_cache(maxsize=64)
def _files_estimate(folders: tuple[str, ...]) -> tuple[float, int]:
    seconds, n = 0.0, 0
    for folder in folders:
        for dirpath, _, files in os.walk(folder, followlinks=True):
            for f in files:
                rate = _AUDIO_BYTES_PER_SECOND.get(os.path.splitext(f)[1].lower())
                if rate:
                    n += 1
                    try:
                        seconds += os.path.getsize(os.path.join(dirpath, f)) / rate
                    except OSError:
                        pass
    return seconds / 3600, n


@lru_cache(maxsize=64)
def _manifest_size(path: str, mtime_ns: int) -> CorpusSize:
    import csv

    total, n, test = 0.0, 0, 0
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            n += 1
            total += float(row.get("duration") or 0)
            test += row.get("split") == "test"
    return CorpusSize(total / 3600, n, test / max(1, n))


def corpus_size(cat, name: str, manifest: str | os.PathLike | None,
                assume: Mapping[str, CorpusSize] | None = None) -> CorpusSize:
    """The corpus' hours and utterances: `assume[name]` when given (a plan for corpora not at hand), from
    its manifest when it exists (exact), else from the demo's settings, else from its audio files' sizes
    (16 kHz int16; FLAC at about 55%)."""
    if assume and name in assume:
        return assume[name]
    if manifest is not None and Path(manifest).is_file():
        return _manifest_size(str(manifest), Path(manifest).stat().st_mtime_ns)
    c = cat.corpora[name]
    s = c.settings
    if c.synthesized:
        n = int(s["n_speakers"]) * int(s["utterances_per_speaker"])
        split = [float(x) for x in s["split"]]
        return CorpusSize(n * DEMO_SECONDS_PER_UTTERANCE / 3600, n, split[2] / max(1e-9, sum(split)))
    hours, n = _files_estimate(tuple(sorted(c.recipe.size_folders(s))))
    return CorpusSize(hours, n)


def cpu_hours(hours: float, model: ModelSize, threads: int) -> float:
    """Hours of one CPU pass of `model` over `hours` of audio at `threads` threads (the calibrated rate)."""
    return hours * model.gflop_per_audio_second / (CPU_GFLOPS_PER_THREAD * max(1, int(threads)))


#: the corpus each rule's jobs read (rules with a {corpus} wildcard read that one): a stage of the catalogue
RULE_STAGE = {**dict.fromkeys(("ivectors", "ivector_clusters", "extract_features", "frame_kmeans", "activation_stats"),
                              "analysis"),
              **dict.fromkeys(("pool_layers", "sid_eval", "erase_ablation"), "sid"), "pr_eval": "pr",
              **dict.fromkeys(("pretrain_melhubert", "continue_pretraining", "iterative_step", "teacher_targets"),
                              "pretrain")}


def rule_corpus(cat, rule: str, wildcards: Mapping[str, str]) -> str | None:
    """The corpus one job of `rule` reads: its {corpus} wildcard, else its stage's corpus, else none."""
    if wildcards.get("corpus"):
        return wildcards["corpus"]
    return cat.stages[RULE_STAGE[rule]] if rule in RULE_STAGE else None


def extractor_corpus(cat, rule: str) -> str | None:
    """The corpus an `ivectors` job trains its extractor on (stages.ivector_extractor) when it is not the
    analysis corpus; None for every other rule."""
    if rule != "ivectors" or cat.stages.get("ivector_extractor", cat.stages["analysis"]) == cat.stages["analysis"]:
        return None
    return cat.stages["ivector_extractor"]


def _round_mb(mb: float) -> int:
    return int(max(500, math.ceil(mb * 1.5 / 250) * 250))  # 50% headroom, in 250 MB steps


def rule_costs(rule: str, work: CorpusSize | None, model: ModelSize | None, config: Mapping[str, Any],
               gpu: bool, threads: int, extractor: CorpusSize | None = None) -> dict[str, float]:
    """{mem_mb, runtime (minutes), disk_mb: the job's requests; peak_mb, seconds, compute_hours,
    audio_hours: the estimates they come from} of one job of `rule` over `work` with `model` (None for
    rules that run none); `gpu`: the job runs its model on a GPU; `extractor`: the corpus an `ivectors` job
    trains its extractor on, when it is another (`extractor_corpus`)."""
    rate = GPU_GFLOPS if gpu else CPU_GFLOPS_PER_THREAD * max(1, int(threads))
    hours = work.hours if work else 0.0
    utts = work.utterances if work else 0
    kind = "torch" if rule in TORCH_RULES else "other"
    mem = BASE_RSS_MB[kind]
    disk, audio_h = 100.0, 0.0
    flop = 0.0  # GFLOP of model compute
    extra_min = 0.0
    if model is not None and rule in MODEL_RULES + ("prune_model", "describe_model"):
        per_s = model.gflop_per_audio_second
        weights = model.params * 4 / 2**20
        batch_s = float(config["analysis"]["max_batch_seconds"])
        frames = batch_s * model.frames_per_second
        act = frames * (model.layers + 1) * model.dim * 4 * 3 / 2**20 + frames ** 2 * 12 * 4 / 2**20 / 4
        mem += weights + act
    if rule == "teacher_targets":  # one pass over the pre-training corpus, then k-means of one layer's frames
        audio_h = hours
        flop = hours * 3600 * per_s
        # streamed (pretrain.teacher): the teacher's layer and the input features of every frame on disk, float32,
        # in the job's resume folder; in memory only the k-means sample and one chunk
        frames = hours * 3600 * model.frames_per_second
        mem += min(frames, int(config["pretrain"]["train"]["kmeans_max_frames"])) * model.dim * 4 * 2 / 2**20
        disk += frames * (model.dim + 80) * 4 / 2**20
    elif rule in ("extract_features", "activation_stats", "pool_layers", "assign_ivector_clusters"):
        audio_h = hours
        if model is not None and rule != "assign_ivector_clusters":
            flop = hours * 3600 * per_s * (1.1 if rule == "activation_stats" else 1.0)
        if rule == "extract_features":
            disk += hours * 3600 * model.frames_per_second * model.dim * 2 / 2**20
        if rule == "pool_layers":  # the float16 store, and the npz it is streamed into beside it for a moment
            disk += 2 * utts * (model.layers + 1) * model.dim * 2 / 2**20
        if rule == "assign_ivector_clusters":
            extra_min = hours / IVECTOR_HOURS_PER_MINUTE * (2 / max(1, threads))
    elif rule == "erase_ablation":
        e = config["erase"]
        variants = 1 + (1 + int(config["analysis"]["k_ivector"])) * (1 + len(e["random_seeds"]))
        audio_h = hours * work.test_fraction * variants
        flop = audio_h * 3600 * per_s * (2 if config["pr"]["enabled"] else 1)
    elif rule == "sid_eval":
        s = config["sid"]
        heads = len(s["layer_sets"]) * (len(s["learning_rates"]) + len(s["seeds"]) - 1)
        steps = int(s["steps"]) if s["steps"] else int(s["epochs"]) * max(1, utts) / int(s["batch_size"])
        flop = steps * int(s["batch_size"]) * heads * 13 * 768 * 256 * 1.2 / 1e9  # calibrated: see DEMO_MEASURED
        store = utts * 13 * 768 * 2 / 2**20
        mem += store + 500
    elif rule == "pr_eval":
        p = config["pr"]
        steps = 100000 if p["schedule"] == "libriphone" else int(p["steps"])
        batch = 32 if p["schedule"] == "libriphone" else int(p["batch_size"])
        heads = len(p["layer_sets"] if "layer_sets" in p else config["sid"]["layer_sets"]) * len(p["learning_rates"]) \
            * len(p["seeds"])
        feat_bytes = hours * 3600 * model.frames_per_second * (model.layers + 1) * model.dim * 2
        cached = feat_bytes <= float(p["feature_cache_gb"]) * 1e9
        through = steps * batch * (work.mean_seconds if work else 0) / 3600
        audio_h = hours if cached else through
        flop = audio_h * 3600 * per_s
        head_frames = steps * batch * (work.mean_seconds if work else 0) * model.frames_per_second
        # each head's composed linear to ~80 symbols and its CTC loss, calibrated: see DEMO_MEASURED
        flop += head_frames * heads * model.dim * 80 * 15 / 1e9
        disk += feat_bytes / 2**20 if cached else hours * 3600 * 32000 / 2**20
        # the loader's worker processes hold a torch process each, and every process reading the frame cache
        # keeps its pages resident (the demo: 3.0 GB for a 0.51 GB cache and one worker)
        workers = int(p["loader_workers"])
        mem += workers * BASE_RSS_MB["torch"] + (feat_bytes / 2**20 * (1 + workers) * 1.5 if cached else 0.0)
    elif rule in ("pretrain_melhubert", "continue_pretraining", "iterative_step"):
        t = config["pretrain"]["train"]
        steps = int(t["max_steps"]) if rule == "pretrain_melhubert" else int(
            config["prune"]["continue"]["steps"] if rule == "continue_pretraining"
            else config["prune"]["iterative"]["steps_between"])
        frames = steps * int(t["max_frames_per_batch"])
        audio_h = frames / model.frames_per_second / 3600
        flop = audio_h * 3600 * per_s * 3  # forward and backward
        mem += 1000 + model.params * 16 / 2**20
        if rule != "pretrain_melhubert":  # a released root's targets: its layer of every frame, streamed from disk
            disk += hours * 3600 * model.frames_per_second * model.dim * 4 / 2**20
        keep = t["keep_checkpoints"] or max(1, steps // max(1, int(t["checkpoint_every"])))
        # the file-backed training data (pretrain.store, in the resume folder): float32 fbank rows of the input
        # and of a clean copy, int16 targets; not in memory
        disk += keep * model.params * 16 / 2**20 + hours * 3600 * model.frames_per_second * (80 * 4 * 2 + 2) / 2**20
    elif rule == "ivectors":
        iv = config["ivector"]
        train_h, train_u = hours, utts
        cap = int(iv["tv_max_train_utts"] or 0)
        if extractor is not None:  # another corpus, its longest `cap` utterances (about cap / utts of its hours)
            train_u = min(extractor.utterances, cap) if cap > 0 else extractor.utterances
            train_h = extractor.hours * train_u / max(1, extractor.utterances)
        elif cap > 0:
            train_u = min(utts, cap)
        audio_h = hours + (train_h if extractor is not None else 0.0)
        extra_min = (audio_h + train_h * int(config["analysis"]["stability_extractors"])) \
            / IVECTOR_HOURS_PER_MINUTE * (2 / max(1, threads))
        extra_min += (1 + int(config["analysis"]["stability_extractors"])) * int(iv["tv_iters"]) * train_u \
            * int(iv["ubm_components"]) * int(iv["ivector_dim"]) ** 2 * 60 \
            / (CPU_GFLOPS_PER_THREAD * max(1, threads) * 1e9) / 60
        # the features of both corpora stay in memory (100 frames/s x 60 float32 at most), the training
        # corpus' statistics, the UBM's frame sample
        mem += audio_h * 3600 * 100 * 60 * 4 / 2**20 + train_u * int(iv["ubm_components"]) * 61 * 4 / 2**20 \
            + int(iv["ubm_max_frames"]) * 60 * 4 * 3 / 2**20
    elif rule == "summarize":  # matplotlib's import and the run's plots
        extra_min = 1.5 / 60
    elif rule == "ivector_clusters":  # k-means of each extractor's i-vectors, the consensus and its stability
        n_ext = 1 + int(config["analysis"]["stability_extractors"])
        extra_min = (2.0 + utts * (n_ext * int(config["ivector"]["ivector_dim"]) + 3 * n_ext * n_ext) * 1e-5) / 60
    elif rule == "frame_kmeans":
        dim = model.dim if model else 768
        frames = min(int(config["analysis"]["max_frames"]), hours * 3600 * (model.frames_per_second if model else 50))
        mem += frames * dim * 4 / 2**20
        # Lloyd iterations over the sampled frames (2 x frames x dim x k each; about 100 in all, restarts
        # included), after reading the features and scikit-learn's import (the demo: 3 s in all)
        extra_min = (3.0 + 2 * frames * dim * max(int(k) for k in config["analysis"]["k_ssl"]) * 100
                     / (CPU_GFLOPS_PER_THREAD * max(1, threads) * 1e9)) / 60
    elif rule in ("audio_qc", "build_manifest", "phone_targets"):
        audio_h = hours if rule == "audio_qc" else 0.0
        # reading headers and decoding: the demo's 0.55 h in under a second of each job
        extra_min = 0.0 if rule == "phone_targets" else hours * 3600 / 2000.0 / 60
        mem += utts * 0.002
    elif rule == "synthesize_demo_corpus":
        extra_min = utts / 28.0 / 60  # 28 utterances per second on 2 cores (DEMO_MEASURED)
        mem += 230  # the synthesizers' own processes (the demo's benchmark files: 350 MB in all)
        disk += hours * 3600 * 32000 * 2 / 2**20
    compute_min = flop / rate / 60 + extra_min
    seconds = JOB_START_SECONDS[kind] + compute_min * 60
    return {"mem_mb": max(REQUEST_FLOOR_MB[kind], _round_mb(mem)),
            "runtime": int(max(MIN_RUNTIME, math.ceil(seconds / 60 * 2 / 5) * 5)),  # 2x headroom
            "disk_mb": _round_mb(disk), "peak_mb": mem, "seconds": seconds, "compute_hours": compute_min / 60,
            "audio_hours": audio_h}


# ------------------------------------------------------------------------------------------- devices
def model_jobs_want_gpu(cat: Catalogue, device: str) -> bool:
    """Whether the rules that run a model ask the scheduler for a GPU: always with upstream.device cuda;
    with auto whenever a stage that runs models reads a corpus other than the synthesized demo (real
    speech at scale belongs on a GPU; the demo stays on the CPU); never with cpu."""
    if device == "cuda":
        return True
    return device == "auto" and any(not cat.corpus(s).synthesized for s in ("analysis", "sid", "pr"))


def cpu_warning(cat: Catalogue, device: str, threads: int, n_models: int) -> str | None:
    """With upstream.device cpu and a real corpus: a warning, before any job, with the estimated hours of
    one pass of every model over the corpora the model stages read (`costs.corpus_size` from the files'
    sizes, `costs.cpu_hours` for a base model); None otherwise."""
    if device != "cpu":
        return None
    real = {c.name: c for c in (cat.corpus(s) for s in ("analysis", "sid", "pr")) if not c.synthesized}
    if not real:
        return None
    hours = sum(corpus_size(cat, name, None).hours for name in real)
    per_pass = cpu_hours(hours, BASE, threads)
    return (f"upstream.device is cpu and the model stages read real speech ({', '.join(sorted(real))}: about "
            f"{hours:.1f} h of audio): one pass of a base-size model over it takes about {per_pass:.1f} CPU hours "
            f"at {threads} thread(s), and every one of the {n_models} model(s) makes several (features, statistics, "
            "SID pooling, PR training, the erase ablation). Set upstream.device: auto or cuda to run them on a GPU.")
