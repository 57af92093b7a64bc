"""The catalogue: every corpus and every model a configuration asks for, as typed entries.

`build_catalogue(config)` is a pure function of the resolved configuration (the schema's defaults
filled in): it expands the config into

- **corpora**: the corpus of key `corpus` (named `corpus.name`, or after its source), every entry of
  `corpora`, and, where `stages.sid` / `stages.pr` is `auto` and the analysis corpus is the synthesized
  demo, a second synthesized corpus `<name>_eval` with other pseudo-speakers (seed + `EVAL_SEED_OFFSET`),
  so that the neurons are found on one corpus and evaluated on another (docs/METHOD.md section 12); every
  synthesized corpus but the first prefixes its speaker names and utterance ids with its name
  (`demo_eval-f01_us1-0000`), so no two corpora of a run share an id;
- **stages**: the corpus each stage uses (analysis, pretrain, sid, pr; the erase ablation scores with the
  SID heads, so it uses the SID corpus);
- **models**: the models of `models`, the one-shot pruned models (`<parent>-<strategy>-<pset|keep<f>>`),
  the no-FFN controls (`<model>-noffn`), the continued ones (`<pruned>-cpt`) and the iterative steps
  (`<parent>-<strategy>-iter<i>`), each with its parent and the root of its chain.

Every inconsistency is a `ConfigError` that names the key and the fix, raised before any job. The
workflow (rules/common.smk) turns it into Snakemake's error; nothing here imports Snakemake.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from speaker_neurons.config import ConfigError, PlaceholderError, expand_paths

EVAL_SEED_OFFSET = 1000
# what each source can give a stage: speakers (SID), splits (SID; a seeded split makes them where the
# corpus has none), transcripts (PR)


# ------------------------------------------------------------------------------------------- corpora
@dataclass(frozen=True)
class Corpus:
    """A named corpus: its source and that source's settings (`settings`), the split rule for
    utterances without one (`split`), and the demo's synthesis settings (`demo`, demo source only)."""

    name: str
    source: str
    settings: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    split: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    derived_from: str | None = None  # the corpus an `auto` evaluation corpus was made from
    # demo only: what the `auto` evaluation corpus changes of these settings (corpus.demo.eval_corpus)
    eval_overrides: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def recipe(self):
        """The corpus layout's recipe (speaker_neurons.data.recipes): what the layout has and needs."""
        from speaker_neurons.data.recipes import recipe

        return recipe(self.source)

    @property
    def synthesized(self) -> bool:
        return self.recipe.synthesized

    @property
    def has_clean(self) -> bool:
        """The demo with its channels keeps each utterance's clean copy (denoising targets)."""
        return bool(self.synthesized and self.settings["channel"]["enabled"] and self.settings["channel"]["keep_clean"])

    @property
    def has_transcripts(self) -> bool:
        return self.recipe.has_transcripts(self.settings)

    @property
    def has_own_splits(self) -> bool:
        return self.recipe.has_own_splits(self.settings)

    def builder_kwargs(self, corpus_dir: str | None = None) -> dict[str, Any]:
        """Keyword arguments of speaker_neurons.data.recipes.build_manifest."""
        return {"source": self.source, **self.recipe.builder_kwargs(self.settings, corpus_dir)}


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def _corpus(entry: Mapping[str, Any], key: str) -> Corpus:
    from speaker_neurons.config import defaults

    full = _merge(defaults("corpus"), entry)  # entries of `corpora` get the defaults of `corpus`
    from speaker_neurons.data.recipes import RecipeError, recipe

    source = full["source"]
    name = full["name"] or source
    settings = full[source]
    try:
        recipe(source).check(settings, name)
    except RecipeError as e:
        raise ConfigError(f"{key}.{e.key}", str(e)) from None
    overrides = {}
    if recipe(source).synthesized:
        settings = dict(settings)
        overrides = {k: v for k, v in (settings.pop("eval_corpus", None) or {}).items() if v is not None}
    return Corpus(name=name, source=source, settings=settings, split=full["split"], eval_overrides=overrides)


def _eval_corpus(analysis: Corpus) -> Corpus:
    demo = {**copy.deepcopy(analysis.settings), **copy.deepcopy(analysis.eval_overrides)}
    demo["seed"] = int(demo["seed"]) + EVAL_SEED_OFFSET
    name = f"{analysis.name}_eval"
    demo["id_prefix"] = id_prefix(name)
    return Corpus(name=name, source=analysis.source, settings=demo, split=analysis.split, derived_from=analysis.name)


def id_prefix(name: str) -> str:
    """What a synthesized corpus other than the first puts before its speaker names and utterance ids
    (`synthesize_corpus(id_prefix=...)`): its name, so no two corpora of a run share an id or a speaker
    (the demo's ids do not depend on its seed)."""
    return f"{name}-"


# ------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Model:
    """One model of the run. `source`: pretrain | checkpoint (models of the config) or prune | continue
    | iterative (derived); `parent` and `root` name the chain it comes from."""

    name: str
    kind: str = "auto"
    source: str = "checkpoint"
    path: str = ""
    format: str = "native"
    mean_std: str = ""
    parent: str | None = None
    root: str | None = None
    strategy: str | None = None
    target: Any = None
    k_ssl: int | None = None
    index: int | None = None
    control: bool = False
    evaluated: bool = True  # scored by SID and PR (an iterative step between prune.iterative.evaluate_every: not)

    @property
    def derived(self) -> bool:
        return self.parent is not None

    @property
    def trained_here(self) -> bool:
        """Its weights come out of masked-prediction training in this workflow (it has a head)."""
        return self.source in ("pretrain", "continue", "iterative")


def target_tag(target: Any) -> str:
    return "pset" if target == "protected_size" else f"keep{float(target):g}"


@dataclass
class Catalogue:
    corpora: dict[str, Corpus]
    stages: dict[str, str]  # stage -> corpus name
    models: dict[str, Model]
    analysed: list[str]  # models that get the label-free analysis
    sets_k: int  # the k_ssl whose neuron sets pruning and the erase ablation use
    targets_audio: str = "input"  # pretrain.train.targets_audio resolved: input | clean
    notes: list[str] = field(default_factory=list)  # what the run leaves out, and why (said before any job)
    pr_runs: bool = True  # pr.enabled, unless its corpus was not named and has no transcripts
    used: list[str] = field(default_factory=list)  # the corpora a stage of this run reads, in stage order

    def corpus(self, stage: str) -> Corpus:
        return self.corpora[self.stages[stage]]

    def root_of(self, name: str) -> str:
        """The model at the root of `name`'s chain of derived models (itself for a model of the config)."""
        while self.models[name].parent:
            name = self.models[name].parent
        return name

    def head_of(self, name: str) -> str | None:
        """The model whose prediction head continues `name`'s training: itself if trained, else its
        parent's; None for a chain from a released checkpoint with no trained model yet (a new head)."""
        m = self.models[name]
        if m.trained_here:
            return name
        return self.head_of(m.parent) if m.parent else None

    def teacher_of(self, name: str) -> str | None:
        """The released MelHuBERT at the root of a continued or iterative model's chain, whose hidden states
        give its targets (`pretrain.teacher_centers`); None when the root was pre-trained by the workflow."""
        root = self.models[self.root_of(name)]
        return root.name if root.source == "checkpoint" else None

    def of_source(self, *sources: str) -> list[str]:
        return [n for n, m in self.models.items() if m.source in sources]



def _check_models(entries: list[Mapping[str, Any]]) -> dict[str, Model]:
    names = [m["name"] for m in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError("models", f"name {dupes[0]!r} is listed twice.")
    out = {}
    for m in entries:
        where = f"models.{names.index(m['name'])}"
        if m["source"] == "checkpoint" and not m["path"]:
            raise ConfigError(where, f"model {m['name']!r}: source checkpoint needs 'path' (or use source: pretrain).")
        if m["source"] == "pretrain" and m["kind"] not in ("melhubert", "auto"):
            raise ConfigError(where, f"model {m['name']!r}: the workflow pre-trains MelHuBERT only, not {m['kind']!r}.")
        if m["source"] == "pretrain" and (m["path"] or m["mean_std"]):
            raise ConfigError(where, f"model {m['name']!r}: a pre-trained model is made by the workflow (section "
                                     "'pretrain'); 'path' and 'mean_std' belong to source: checkpoint.")
        released = m["format"] == "melhubert" or (m["kind"] == "melhubert" and m["source"] == "checkpoint"
                                                  and m["path"] and Path(m["path"]).is_file())
        if released and not m["mean_std"]:
            raise ConfigError(where, f"model {m['name']!r}: a released MelHuBERT checkpoint ({m['path']}) stores no "
                                     "fbank normalisation; set 'mean_std' to its mean-std.npy in this entry. Without "
                                     "it every feature would be silently wrong.")
        out[m["name"]] = Model(name=m["name"], kind=m["kind"], source=m["source"], path=m["path"],
                               format=m["format"], mean_std=m["mean_std"])
    return out


def _add(models: dict[str, Model], new: Model, what: str) -> None:
    if new.name in models:
        raise ConfigError("models", f"{new.name!r} is the name of {what}; rename the entry of 'models'.")
    models[new.name] = new


def _pretrained_root(models: dict[str, Model], name: str, key: str) -> str:
    root = name
    while models[root].parent:
        root = models[root].parent
    r = models[root]
    if r.source != "pretrain" and not (r.source == "checkpoint" and r.kind == "melhubert"):
        raise ConfigError(key, f"continued pre-training trains a MelHuBERT (one pre-trained by the workflow, or a "
                               f"released MelHuBERT checkpoint: kind melhubert), but {name!r} comes from {root!r} "
                               f"(kind {r.kind}, source {r.source}). Set {key} off for it.")
    return root


def _expand_models(config: Mapping[str, Any], k_ssl: list[int]) -> tuple[dict[str, Model], int]:
    models = _check_models(config["models"])
    base = list(models)
    pr = config["prune"]
    parents = base if pr["parents"] is None else list(pr["parents"])
    for p in parents:
        if p not in models:
            raise ConfigError("prune.parents", f"{p!r} is not the name of an entry of 'models' ({', '.join(base)}).")
    k = pr["k_ssl"] if pr["k_ssl"] is not None else k_ssl[0]
    if k not in k_ssl:
        raise ConfigError("prune.k_ssl", f"{k} is not one of analysis.k_ssl {k_ssl}.")
    for parent in parents:  # one-shot pruning
        for strategy in pr["strategies"]:
            for target in pr["targets"]:
                _add(models, Model(name=f"{parent}-{strategy}-{target_tag(target)}", source="prune", parent=parent,
                                   root=parent, strategy=strategy, target=target, k_ssl=k), "a pruned model")
    c = config["controls"]
    if c["enabled"] and config["sid"]["enabled"]:  # the no-FFN controls
        for parent in base:
            _add(models, Model(name=f"{parent}-noffn", source="prune", parent=parent, root=parent, strategy="random",
                               target=c["ffn_keep"], control=True), "a control model")
    if pr["continue"]["steps"] > 0:  # continued pre-training of every one-shot pruned model
        for name, m in list(models.items()):
            if m.source == "prune" and not m.control:
                root = _pretrained_root(models, name, "prune.continue.steps")
                _add(models, Model(name=f"{name}-cpt", source="continue", parent=name, root=root, strategy=m.strategy,
                                   target=f"{m.target}+cpt", k_ssl=m.k_ssl), "a continued model")
    it = pr["iterative"]
    if it["enabled"]:
        if pr["protected_file"] and "protected" in it["strategies"]:
            raise ConfigError("prune.protected_file", "iterative pruning recomputes the protected set on every step's "
                                                      "model (prune.protected_sets); a fixed file would name the wrong "
                                                      "neurons after the first step.")
        from speaker_neurons.pruning import iterative_steps

        for parent in (base if pr["parents"] is None else parents):
            root = _pretrained_root(models, parent, "prune.iterative.enabled")
            width = config["pretrain"]["model"]["ffn_dim"] if models[root].source == "pretrain" else it["start_width"]
            if width is None:
                raise ConfigError("prune.iterative.start_width", f"the chain of {parent!r} starts from a released "
                                  "checkpoint, whose FFN width the plan cannot read: set it (MelHuBERT base: 3072).")
            n = iterative_steps(width, it["rows_per_step"], it["final_width"])
            for strategy in it["strategies"]:
                prev = parent
                for i in range(1, n + 1):
                    name = f"{parent}-{strategy}-iter{i}"
                    _add(models, Model(name=name, source="iterative", parent=prev, root=parent, strategy=strategy,
                                       target=f"iter{i}", index=i, k_ssl=k,
                                       evaluated=i % int(it["evaluate_every"]) == 0 or i == n), "an iterative step")
                    prev = name
    return models, k


# ------------------------------------------------------------------------------------------- the whole
def build_catalogue(config: Mapping[str, Any]) -> Catalogue:
    """The corpora, the corpus of every stage and the models of a resolved configuration."""
    first = _corpus(config["corpus"], "corpus")
    corpora = {first.name: first}
    for i, entry in enumerate(config["corpora"]):
        if not entry["name"]:
            raise ConfigError(f"corpora.{i}.name", "every entry of corpora needs a name (its folder under results/corpora/).")
        c = _corpus(entry, f"corpora.{i}")
        if c.synthesized:
            c.settings["id_prefix"] = id_prefix(c.name)
        if c.name in corpora:
            raise ConfigError(f"corpora.{i}.name", f"corpus name {c.name!r} is used twice (corpus.name defaults to its "
                                                   "source); give each corpus its own name.")
        corpora[c.name] = c

    st = config["stages"]

    def pick(stage: str, value: str) -> str:
        if value not in corpora:
            raise ConfigError(f"stages.{stage}", f"no corpus is named {value!r}; the corpora are "
                                                 f"{', '.join(corpora)} (key corpus.name and the entries of corpora).")
        return value

    stages: dict[str, str] = {}
    stages["analysis"] = pick("analysis", st["analysis"] or first.name)
    stages["pretrain"] = pick("pretrain", st["pretrain"] or stages["analysis"])
    analysis = corpora[stages["analysis"]]
    for stage in ("sid", "pr"):
        value = st[stage]
        if value == "auto":
            if analysis.synthesized:  # the demo follows the paper's protocol: other pseudo-speakers
                ev = _eval_corpus(analysis)
                if ev.name in corpora and corpora[ev.name].derived_from != analysis.name:
                    raise ConfigError(f"stages.{stage}", f"auto would add the evaluation corpus {ev.name!r}, but a "
                                                         "corpus of that name is configured; name the corpus of "
                                                         f"stages.{stage} explicitly.")
                corpora.setdefault(ev.name, ev)
                value = ev.name
            else:
                value = analysis.name
        elif value == "":
            value = stages["sid"] if stage == "pr" else analysis.name
        stages[stage] = pick(stage, value)
    stages["ivector_extractor"] = pick("ivector_extractor", st["ivector_extractor"] or stages["analysis"])

    k_ssl = list(config["analysis"]["k_ssl"])
    models, sets_k = _expand_models(config, k_ssl)
    analyse_derived = config["prune"]["analyse"]
    analysed = [n for n, m in models.items()
                if not m.control and (m.source not in ("prune", "continue") or analyse_derived)]
    targets = config["pretrain"]["train"]["targets_audio"]
    if targets == "auto":  # denoising targets where the pre-training corpus keeps clean copies
        targets = "clean" if corpora[stages["pretrain"]].has_clean else "input"
    cat = Catalogue(corpora=corpora, stages=stages, models=models, analysed=analysed, sets_k=sets_k,
                    targets_audio=targets, pr_runs=bool(config["pr"]["enabled"]))
    check_stage_needs(cat, config)
    sid_on = config["sid"]["enabled"]
    cat.used = list(dict.fromkeys([stages["analysis"]]
                                  + ([stages["pretrain"]] if cat.of_source("pretrain") else [])
                                  + ([stages["ivector_extractor"]] if not config["ivector"]["kaldi_ivectors"] else [])
                                  + ([stages["sid"]] if sid_on else []) + ([stages["pr"]] if cat.pr_runs else [])))
    for name in cat.used:
        _check_paths(corpora[name], "corpus" if name == first.name else f"corpora.{_entry_index(config, name)}")
    return cat


def _entry_index(config: Mapping[str, Any], name: str) -> int:
    return next((i for i, e in enumerate(config["corpora"]) if e["name"] == name), 0)


def _check_paths(c: Corpus, key: str) -> None:
    """Before any job: every folder and file a used corpus names exists."""
    if c.synthesized or c.derived_from:
        return
    for k, v in c.recipe.named_paths(c.settings):
        if v and not Path(v).exists():
            raise ConfigError(f"{key}.{c.source}.{k}", f"corpus {c.name!r}: {v} does not exist; fix the path "
                                                       "(every path of a corpus is checked before any job).")


def _check_given_centers(path: str, pretrain: Mapping[str, Any]) -> None:
    """Before any job: the given k-means centres (pretrain.train.kmeans_centers) exist and fit the model."""
    import numpy as np

    key = "pretrain.train.kmeans_centers"
    if not Path(path).is_file():
        raise ConfigError(key, f"{path} does not exist; name a .npy of k-means centres (a pre-trained model's "
                               "pretrain/kmeans_centers.npy), or null to fit them.")
    try:
        shape = np.load(path, mmap_mode="r").shape
    except ValueError as e:
        raise ConfigError(key, f"{path} is not a .npy array ({e}); name a pre-trained model's "
                               "pretrain/kmeans_centers.npy.") from None
    model = pretrain["model"]  # a frame of the model's input stacks frame_period / 10 log-Mel frames
    want = (int(pretrain["train"]["n_clusters"]), int(model["n_mels"]) * (int(model["frame_period"]) // 10))
    if tuple(shape) != want:
        raise ConfigError(key, f"{path} holds centres of shape {tuple(shape)}, the model needs (n_clusters, "
                               f"n_mels x frame_period / 10) = {want} from pretrain.train and pretrain.model; "
                               "set those keys to the centres' model, or name other centres.")


def check_stage_needs(cat: Catalogue, config: Mapping[str, Any]) -> None:
    """Before any job: each stage's corpus has what the stage needs."""
    if config["erase"]["enabled"] and not config["sid"]["enabled"]:
        raise ConfigError("erase.enabled", "the erase ablation scores erased models with the SID heads of the "
                                           "unerased one; set sid.enabled: true, or erase.enabled: false.")
    if (config["erase"]["enabled"] and config["ivector"]["kaldi_ivectors"]
            and cat.stages["sid"] != cat.stages["analysis"]):
        raise ConfigError("ivector.kaldi_ivectors",
                          f"the erase ablation scores corpus {cat.stages['sid']!r} per i-vector cluster of the analysis "
                          f"corpus {cat.stages['analysis']!r}, assigning each evaluation utterance from its own audio "
                          "with the workflow's i-vector extractor, which your own Kaldi i-vectors do not come with; "
                          "leave kaldi_ivectors empty, or set erase.enabled: false.")
    pretrain_corpus = cat.corpus("pretrain")
    if cat.targets_audio == "clean" and not pretrain_corpus.has_clean:
        raise ConfigError("pretrain.train.targets_audio",
                          f"clean takes the targets from the clean copy of every utterance, which only the demo corpus "
                          f"with its channels has (source demo, demo.channel.enabled and keep_clean: true); the "
                          f"pre-training corpus {pretrain_corpus.name!r} has none: use targets_audio: input.")
    given = config["pretrain"]["train"]["kmeans_centers"]
    if given and cat.of_source("pretrain"):
        _check_given_centers(given, config["pretrain"])
    if config["sid"]["enabled"]:
        c = cat.corpus("sid")
        fractions = c.split["fractions"]
        if not c.recipe.has_speakers(c.settings):
            raise ConfigError("stages.sid", f"SID needs speakers, but corpus {c.name!r} (source {c.source}) names none "
                                            "(a TSV: no `speaker` column); add them, choose another corpus for "
                                            "stages.sid, or set sid.enabled: false.")
        if fractions is None and not c.has_own_splits:
            raise ConfigError(f"corpus {c.name!r} split.fractions",
                              f"SID needs a train/dev/test split, but corpus {c.name!r} has none and its "
                              "split.fractions is null; set fractions (e.g. [0.8, 0.1, 0.1]) for a seeded "
                              "per-speaker split, choose another corpus for stages.sid, or set sid.enabled: false.")
        if config["sid"]["veri_list"] and not Path(config["sid"]["veri_list"]).is_file():
            raise ConfigError("sid.veri_list", f"{config['sid']['veri_list']} does not exist; fix the path (VoxCeleb1's "
                                               "veri_test2.txt), or set it to '' to score sampled test pairs.")
    if config["pr"]["enabled"]:
        c = cat.corpus("pr")
        named = config["stages"]["pr"] not in ("", "auto") or config["stages"]["sid"] not in ("", "auto")
        if not c.has_transcripts and not named:  # a one-corpus config of a corpus without transcripts
            cat.pr_runs = False
            cat.notes.append(f"phoneme recognition is left out: corpus {c.name!r} (source {c.source}) has no "
                             "transcripts; name a transcribed corpus in stages.pr to run it.")
            return
        if not c.has_transcripts:
            raise ConfigError("stages.pr", f"phoneme recognition needs transcripts, but corpus {c.name!r} (source "
                                           f"{c.source}) has none; choose a transcribed corpus for stages.pr (demo, "
                                           "LibriSpeech, or a TSV with a `text` column), or set pr.enabled: false.")
        if c.split["fractions"] is None and not c.has_own_splits:
            raise ConfigError(f"corpus {c.name!r} split.fractions",
                              f"phoneme recognition needs a train/dev/test split, but corpus {c.name!r} has none and "
                              "its split.fractions is null; set fractions or (LibriSpeech) split_dirs.")


# ------------------------------------------------------------------------------------ the whole check
RETIRED_UPSTREAM_KEYS = ("kind", "path", "format")  # upstream's keys from before `models`


def _schema_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError naming the key of the jsonschema error inside `exc` (None when there is none)."""
    import jsonschema

    candidates = [exc, *exc.args, exc.__cause__, exc.__context__]
    err = next((a for a in candidates if isinstance(a, jsonschema.ValidationError)), None)
    if err is None:
        return None
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    return ConfigError(key, f"{err.message}. Allowed keys, types and defaults: speaker_neurons/config.schema.yaml")


def checked_catalogue(config: dict[str, Any], validate, disk_checks: bool = True,
                      cache_dir: str | os.PathLike | None = None) -> tuple[Catalogue, list[str]]:
    """Every check a configuration gets before any job, in order, and its catalogue with the warnings to
    print: a retired key, the schema (`validate(config)` checks it and fills the defaults in place:
    Snakemake's validation in the workflow), the `{name}` placeholders of `paths` (`config.expand_paths`),
    then the catalogue's own checks and the leak check. Each
    failure is a ConfigError naming the key (the workflow and the tests call this one function).

    The leak check reads the corpora's files; it runs in the main process only (`disk_checks`: false in
    a job, whose run already passed it) and, with `cache_dir`, once per configuration and state of the
    corpora's folders (`cached_leak_check`)."""
    retired = sorted(set(RETIRED_UPSTREAM_KEYS) & set(config.get("upstream") or {}))
    if retired:
        raise ConfigError(f"upstream.{retired[0]}", "a model is now an entry of 'models', e.g. models: [{name: "
                                                    "hubert_base, kind: hubert, path: /models/hubert_base_ls960.pt}]; "
                                                    "'upstream' keeps only 'device'.")
    try:
        validate(config)
    except Exception as exc:
        err = _schema_error(exc)
        if err is None:
            raise
        raise err from None
    try:
        expand_paths(config)
    except PlaceholderError as exc:
        raise ConfigError(exc.key, exc.message) from None
    from speaker_neurons.leaks import cached_leak_check

    cat = build_catalogue(config)
    if not disk_checks:  # a job of a run whose main process made these checks (e.g. on a SLURM node)
        return cat, list(cat.notes)
    return cat, cached_leak_check(cat, config, cache_dir)


