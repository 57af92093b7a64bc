"""Corpus folders laid out like the released corpora, from audio given by the caller: for the tests and
the benchmarks that run the workflow on real layouts without the real corpora.

* LibriSpeech (`librispeech_split`, `librispeech_speakers`): `<root>/<split>/<spk>/<chapter>/
  <spk>-<chapter>-<nnnn>.flac`, one `<spk>-<chapter>.trans.txt` per chapter, `<root>/SPEAKERS.TXT`.
* VoxCeleb1 (`voxceleb1`): `<root>/wav/<id>/<youtube id>/<nnnnn>.wav`, or s3prl's two archives
  `<root>/dev/wav/...` and `<root>/test/wav/...`; `iden_split.txt`, `vox1_meta.csv` (TAB separated) and
  a `veri_test2.txt` of trials between test utterances.

An utterance's audio is either samples (written: FLAC for LibriSpeech, 16-bit WAV for VoxCeleb1) or the
path of an existing file of the right format, which is linked (a symbolic link to its resolved path), so
that one set of files can be laid out many times under other names without copying it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

Audio = Union[np.ndarray, str, os.PathLike]
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Utterance:
    """One utterance to lay out: its speaker, audio (samples or a file to link) and transcript."""

    speaker: str
    audio: Audio
    text: str = ""


def place(dst: Path, audio: Audio, subtype: str | None = None) -> Path:
    """Write `audio` (samples at 16 kHz) to `dst`, or link `dst` to the file `audio` names."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(audio, np.ndarray):
        import soundfile as sf

        sf.write(dst, audio, SAMPLE_RATE, subtype=subtype)
    else:
        src = Path(audio).resolve()
        if not src.is_file():
            raise FileNotFoundError(f"{src}: no audio file to link to {dst}")
        dst.symlink_to(src)
    return dst


def librispeech_split(root: str | os.PathLike, split: str, utterances: Sequence[Utterance],
                      chapter: str = "100") -> Path:
    """`<root>/<split>/`: each speaker's utterances, in the given order, in one chapter folder with its
    `.trans.txt`; returns the split folder."""
    d = Path(root) / split
    by_speaker: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker, []).append(u)
    for spk, utts in by_speaker.items():
        ch = d / spk / chapter
        lines = []
        for n, u in enumerate(utts):
            uid = f"{spk}-{chapter}-{n:04d}"
            place(ch / f"{uid}.flac", u.audio)
            lines.append(f"{uid} {u.text}")
        (ch / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return d


def librispeech_speakers(root: str | os.PathLike, genders: Mapping[str, str]) -> Path:
    """`<root>/SPEAKERS.TXT` for the speakers `genders` names (F or M)."""
    p = Path(root) / "SPEAKERS.TXT"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(";ID | SEX | SUBSET | MINUTES | NAME\n"
                 + "".join(f"{s} | {g.upper()} | x | 1.0 | Reader {s}\n" for s, g in genders.items()))
    return p


def voxceleb1(root: str | os.PathLike, utterances: Sequence[tuple[str, Utterance]], genders: Mapping[str, str],
              archives: bool = False, trials_per_utterance: int = 2) -> dict[str, str]:
    """A VoxCeleb1-shaped folder from (split, utterance) pairs, split `train`, `dev` or `test`: each
    speaker's utterances under one YouTube id per speaker, numbered in order. `archives`: test
    utterances under `<root>/test/wav`, the others under `<root>/dev/wav` (s3prl's layout), else all
    under `<root>/wav`. `veri_test2.txt` pairs each test utterance with the next test utterances of the
    same speaker (label 1) and of the next speakers (label 0), `trials_per_utterance` of each at most.
    Returns the paths as corpus.voxceleb1 takes them (root, iden_split, meta_csv) and `trials`."""
    root = Path(root)
    code = {"train": "1", "dev": "2", "test": "3"}
    lines, meta = [], ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    numbers: dict[str, int] = {}
    yt_of = {spk: f"yt{i}" for i, spk in enumerate(dict.fromkeys(u.speaker for _, u in utterances))}
    tests: dict[str, list[str]] = {}
    for split, u in utterances:
        n = numbers.get(u.speaker, 0)
        numbers[u.speaker] = n + 1
        rel = f"{u.speaker}/{yt_of[u.speaker]}/{n:05d}.wav"
        folder = root / (("test" if split == "test" else "dev") if archives else "") / "wav"
        place(folder / rel, u.audio, subtype="PCM_16")
        lines.append(f"{code[split]} {rel}")
        if split == "test":
            tests.setdefault(u.speaker, []).append(rel)
    for i, spk in enumerate(yt_of):
        meta.append(f"{spk}\tName_{i}\t{genders[spk].lower()}\tUSA\tdev")
    trials = []
    speakers = list(tests)
    for s, spk in enumerate(speakers):
        others = speakers[s + 1:] + speakers[:s]
        for j, rel in enumerate(tests[spk]):
            trials += [f"1 {rel} {t}" for t in tests[spk][j + 1:j + 1 + trials_per_utterance]]
            trials += [f"0 {rel} {tests[o][j % len(tests[o])]}" for o in others[:trials_per_utterance]]
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    (root / "vox1_meta.csv").write_text("\n".join(meta) + "\n")
    (root / "veri_test2.txt").write_text("\n".join(trials) + "\n")
    return {"root": str(root), "iden_split": str(root / "iden_split.txt"), "meta_csv": str(root / "vox1_meta.csv"),
            "trials": str(root / "veri_test2.txt")}
