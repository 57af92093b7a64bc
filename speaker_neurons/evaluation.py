"""Speaker identification and verification metrics, shared by every embedding (i-vectors, SID heads'
pooled embeddings).

* `speaker_id_accuracy`: closed-set identification by cosine to per-speaker mean embeddings;
* `build_trials` / `equal_error_rate`: verification trials by cosine scoring and their EER;
* `embedding_quality`: both, from a manifest's speaker labels and train/test split (labels are used
  only to score, never to make the embeddings);
* `read_veri_list` / `veri_trials` / `verification_eer`: the SID heads' verification EER, on a verification
  list (VoxCeleb1's veri_test2.txt) or on sampled test pairs.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from speaker_neurons.statistics import eer_interval, wilson_interval
from speaker_neurons.utils import get_logger

log = get_logger("evaluation")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def speaker_id_accuracy(
    train_vecs: np.ndarray, train_spk: Sequence, test_vecs: np.ndarray, test_spk: Sequence
) -> float:
    """Closed-set speaker identification: cosine between each (normalised) test vector and each
    speaker's normalised mean of normalised training vectors; accuracy of the arg max. Test
    utterances of speakers absent from training count as errors (`embedding_quality` leaves them out)."""
    train_spk = np.asarray(train_spk)
    test_spk = np.asarray(test_spk)
    if len(test_spk) == 0:
        raise ValueError("no test vectors")
    tr = _unit(train_vecs)
    speakers = np.unique(train_spk)
    means = _unit(np.stack([tr[train_spk == s].mean(0) for s in speakers]))
    pred = speakers[np.argmax(_unit(test_vecs) @ means.T, axis=1)]
    return float(np.mean(pred == test_spk))


def _triangle_pair(k: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The pair (i, j), i < j < n, at row-major position `k` of the strict upper triangle of n x n
    (the order of np.triu_indices(n, 1)); exact in integers for any k < n (n - 1) / 2."""
    k = np.asarray(k, dtype=np.int64)
    # rows before row i hold i n - i (i + 1) / 2 pairs; solve for i, then correct the float estimate
    i = np.floor(((2 * n - 1) - np.sqrt((2.0 * n - 1) ** 2 - 8.0 * k)) / 2).astype(np.int64)
    i = np.clip(i, 0, n - 2)
    before = lambda r: r * n - r * (r + 1) // 2  # noqa: E731
    i -= (before(i) > k).astype(np.int64)
    i += (before(i + 1) <= k).astype(np.int64)
    return i, k - before(i) + i + 1


def trial_pairs(speakers: Sequence, max_trials: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, of verification trials among len(speakers) items, sorted.

    Every pair when there are at most `max_trials` (or `max_trials` is None); else a seeded sample of
    `max_trials` distinct pairs, half of them same-speaker (all of those when fewer) and the rest
    different-speaker, each half uniform among its kind. Memory and time grow with the trial count,
    never with the square of the items (VoxCeleb1 at 0.5 s crops: 1e10 pairs)."""
    spk = np.asarray(speakers)
    n = len(spk)
    total = n * (n - 1) // 2
    if max_trials is None or total <= max_trials:
        iu, ju = np.triu_indices(n, k=1)
        return iu.astype(np.int64), ju.astype(np.int64)
    rng = np.random.default_rng(seed)
    _, code = np.unique(spk, return_inverse=True)
    order = np.argsort(code, kind="stable")  # items grouped by speaker
    counts = np.bincount(code)
    within = counts * (counts - 1) // 2  # target pairs per speaker
    n_target_all = int(within.sum())
    n_non_all = total - n_target_all
    n_non = min(n_non_all, max_trials - min(n_target_all, max_trials // 2))
    n_target = min(n_target_all, max_trials - n_non)
    # targets: a uniform sample of positions among all same-speaker pairs, mapped to (speaker, pair)
    k = np.sort(rng.choice(n_target_all, size=n_target, replace=False)) if n_target else np.zeros(0, np.int64)
    ends = np.cumsum(within)
    g = np.searchsorted(ends, k, side="right")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    a, b = _triangle_pair(k - (ends[g] - within[g]), counts[g]) if n_target else (k, k)
    ti, tj = order[starts[g] + a], order[starts[g] + b]
    # non-targets: uniform pairs, drawn in seeded rounds, different speakers kept, duplicates dropped
    got = np.zeros(0, np.int64)
    while len(got) < n_non:
        want = n_non - len(got)
        i = rng.integers(0, n, size=2 * want + 16)
        j = rng.integers(0, n, size=2 * want + 16)
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        keep = code[lo] != code[hi]
        new = lo[keep] * n + hi[keep]
        new = new[np.sort(np.unique(new, return_index=True)[1])]  # first draws win, in draw order
        new = new[~np.isin(new, got)][:want]
        got = np.r_[got, new]
    ni, nj = got // n, got % n
    i = np.r_[np.minimum(ti, tj), ni]
    j = np.r_[np.maximum(ti, tj), nj]
    o = np.lexsort((j, i))
    return i[o].astype(np.int64), j[o].astype(np.int64)


def cosine_scores(vectors: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine of vectors[i] and vectors[j] per pair, gathered in chunks (memory: the vectors, the scores
    and about 16 MB)."""
    x = _unit(vectors)
    out = np.empty(len(i), dtype=np.float64)
    chunk = max(1, (1 << 24) // (16 * max(1, x.shape[1])))  # two gathered float64 rows per pair
    for s in range(0, len(i), chunk):
        out[s : s + chunk] = np.einsum("nd,nd->n", x[i[s : s + chunk]], x[j[s : s + chunk]])
    return out


def build_trials(
    vectors: np.ndarray, speakers: Sequence, max_trials: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Verification trials of `trial_pairs` (every pair i < j, or with `max_trials` a seeded sample of
    that many, half same-speaker where there are enough): (cosine scores, labels 1 = same speaker)."""
    spk = np.asarray(speakers)
    iu, ju = trial_pairs(spk, max_trials, seed)
    if max_trials is None and len(spk) <= 4096:  # every pair of a small set: one matrix product
        x = _unit(vectors)
        scores = (x @ x.T)[iu, ju]
    else:
        scores = cosine_scores(vectors, iu, ju)
    return scores, (spk[iu] == spk[ju]).astype(np.int8)


def equal_error_rate(scores: Sequence[float], labels: Sequence[int]) -> float:
    """EER (fraction) of target (label 1) vs non-target (label 0) scores, higher = more target-like.
    Tied scores move together; the rate is interpolated linearly where miss and false-alarm cross."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_t, n_n = int(y.sum()), int((~y).sum())
    if n_t == 0 or n_n == 0:
        raise ValueError("EER needs both target and non-target trials")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each group of tied scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    # threshold above every score: nothing accepted
    fa = np.r_[0.0, fp / n_n]
    miss = np.r_[1.0, 1.0 - tp / n_t]
    d = miss - fa  # decreasing from 1 to -1 (non-increasing)
    k = int(np.argmax(d <= 0))
    if d[k] == 0:
        return float(fa[k])
    # crossing between k-1 and k
    t = d[k - 1] / (d[k - 1] - d[k])
    return float(fa[k - 1] + t * (fa[k] - fa[k - 1]))


def embedding_quality(utt_ids: Sequence[str], vectors: np.ndarray, manifest: pd.DataFrame, what: str = "embedding") -> dict[str, Any]:
    """Speaker ID (train -> test) and test-pair EER of per-utterance vectors, where the manifest has
    speakers and a train/test split; else only the counts. Identification is closed-set: test
    utterances of speakers with no training utterance are counted apart (`sid_unenrolled`), not as
    errors; they stay in the verification trials. `eer` is None when the test split has no target
    pair (one utterance per speaker). Intervals are 95%."""
    vectors = np.asarray(vectors)
    out: dict[str, Any] = {"utterances": len(utt_ids), "dim": int(vectors.shape[1])}
    spk = manifest.set_index("utt_id").loc[list(utt_ids), ["speaker", "split"]].fillna("")
    train, test = (spk["split"] == "train").to_numpy(), (spk["split"] == "test").to_numpy()
    if not (train.any() and test.any() and (spk["speaker"] != "").all()):
        log.info("no speaker labels with a train/test split: %s quality not scored", what)
        return out
    enrolled = test & spk["speaker"].isin(set(spk["speaker"][train])).to_numpy()
    unenrolled = int(test.sum() - enrolled.sum())
    if unenrolled:
        log.warning("%d test utterances belong to speakers with no training utterance: left out of closed-set "
                    "identification (sid_unenrolled), kept in the verification trials", unenrolled)
    acc = (speaker_id_accuracy(vectors[train], spk["speaker"][train], vectors[enrolled], spk["speaker"][enrolled])
           if enrolled.any() else None)
    n_id = int(enrolled.sum())
    scores, labels = build_trials(vectors[test], spk["speaker"][test].to_numpy())
    n_t = int(labels.sum())
    eer = equal_error_rate(scores, labels) if 0 < n_t < len(labels) else None
    out.update({"sid_accuracy": acc, "sid_ci95": list(wilson_interval(int(round((acc or 0) * n_id)), n_id)),
                "sid_train": int(train.sum()), "sid_test": n_id, "sid_unenrolled": unenrolled,
                "speakers": int(spk["speaker"].nunique()), "eer": eer,
                "eer_ci95": list(eer_interval(eer, n_t)) if eer is not None else None,
                "trials": int(len(labels)), "target_trials": n_t, "nontarget_trials": int(len(labels) - n_t)})
    log.info("%s quality: speaker ID %s%% [%s] of %d test utterances of enrolled speakers (%d speakers; %d "
             "unenrolled apart), EER %s over %d target + %d non-target trials", what,
             "n/a" if acc is None else f"{100 * acc:.2f}", ", ".join(f"{100 * v:.2f}" for v in out["sid_ci95"]), n_id,
             spk["speaker"].nunique(), unenrolled, "n/a" if eer is None else f"{100 * eer:.2f}%", n_t, len(labels) - n_t)
    return out


# ------------------------------------------------------------------------------------------- verification
def read_veri_list(path: str | os.PathLike) -> pd.DataFrame:
    """A VoxCeleb1 verification list (veri_test2.txt: lines `<1|0> <enrol> <test>`, paths relative to wav/,
    `id10270/5r0dWxy17C8/00001.wav`) as columns label, enrol, test, the paths mapped to the manifest's
    utt_ids (`<id>-<youtube id>-<n>`, as `data.manifest.voxceleb1_manifest` names them)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1") or any(p.count("/") != 2 for p in parts[1:]):
                raise ValueError(f"{path}, line {n}: expected `<1|0> <id>/<youtube-id>/<n>.wav "
                                 "<id>/<youtube-id>/<n>.wav` "
                                 f"(VoxCeleb1's veri_test2.txt), got {line.strip()!r}; fix sid.veri_list")
            utt = [p.rsplit(".", 1)[0].replace("/", "-") for p in parts[1:]]
            rows.append((int(parts[0]), *utt))
    if not rows:
        raise ValueError(f"{path} holds no trials; fix sid.veri_list (or set it to '' for sampled trials)")
    return pd.DataFrame(rows, columns=["label", "enrol", "test"])


def veri_trials(veri: pd.DataFrame, data, max_absent: float, path: str | os.PathLike = "the verification list"
                ) -> tuple[pd.DataFrame, int]:
    """(the trials whose two utterances the pooled store holds, the number left out; `data`: its segments,
    `sid_pool.SIDData`). More than `max_absent` (a fraction, sid.max_veri_absent) of the trials left out is an
    error naming the list."""
    if data.utt_id is None:
        raise ValueError("the pooled file has no utt_id column (written by an older version); re-run rule pool_layers")
    have = set(data.utt_id.tolist())
    ok = veri["enrol"].isin(have) & veri["test"].isin(have)
    absent = int((~ok).sum())
    if absent > max_absent * len(veri):
        missing = sorted(set(veri.loc[~ok, ["enrol", "test"]].to_numpy().ravel()) - have)
        raise ValueError(f"{path}: {absent} of {len(veri)} trials name utterances the SID corpus lacks (more than "
                         f"sid.max_veri_absent = {max_absent:g}), e.g. {', '.join(missing[:5])}. Use the list of "
                         "this corpus (VoxCeleb1's veri_test2.txt with its test archive), raise sid.max_veri_absent, "
                         "or set sid.veri_list: '' to score a sample of test pairs")
    if absent:
        log.warning("%d of %d trials of %s name utterances the SID corpus lacks: left out", absent, len(veri), path)
    return veri[ok].reset_index(drop=True), absent


def verification_eer(embed: Callable[[np.ndarray], np.ndarray], data, split: str = "test",
                     max_trials: int | None = None, seed: int = 0, trials: pd.DataFrame | None = None) -> dict[str, Any]:
    """EER of cosine scores of embeddings, with the trial counts. `embed(rows)` gives the (len(rows), dim)
    embeddings of those segments (e.g. a SID head's 256-d pooled projection); `data` holds the segments'
    utt_id, split and speakers (`sid_pool.SIDData`). With `trials` (label, enrol, test utt_ids: `veri_trials`)
    on those, each utterance embedded as the mean of its segments' embeddings (any split); else on pairs of
    the split's segments (enrolled or not: verification needs no enrolment): every pair, or a seeded sample
    of `max_trials` (`trial_pairs`)."""
    if trials is not None:
        names = np.unique(np.r_[trials["enrol"].to_numpy(str), trials["test"].to_numpy(str)])
        rows = np.flatnonzero(np.isin(data.utt_id, names))
        which = np.searchsorted(names, data.utt_id[rows])
        vectors = embed(rows)
        emb = np.zeros((len(names), vectors.shape[1]), dtype=np.float64)
        np.add.at(emb, which, vectors)
        emb /= np.bincount(which, minlength=len(names))[:, None]
        i = np.searchsorted(names, trials["enrol"].to_numpy(str))
        j = np.searchsorted(names, trials["test"].to_numpy(str))
        scores, labels = cosine_scores(emb, i, j), trials["label"].to_numpy(np.int8)
    else:
        sel = np.flatnonzero(data.split == split)
        spk = data.trial_speakers()[sel]
        i, j = trial_pairs(spk, max_trials, seed)
        scores = cosine_scores(embed(sel), i, j)
        labels = (spk[i] == spk[j]).astype(np.int8)
    n_t = int(labels.sum())
    eer = equal_error_rate(scores, labels) if 0 < n_t < len(labels) else None
    ci = list(eer_interval(eer, n_t)) if eer is not None else None
    return {"eer": eer, "eer_ci95": ci, "target_trials": n_t, "nontarget_trials": int(len(labels) - n_t)}
