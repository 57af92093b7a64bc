"""Demo corpus synthesis: phone classes, frame labels, speaker design, and small real corpora."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from speaker_neurons.config import defaults
from speaker_neurons.data import phones as ph
from speaker_neurons.data import synth
from speaker_neurons.data.text import SentenceGenerator, generate_sentences, vocabulary

# the synthesis settings of the demo source (eval_corpus says what its evaluation twin changes of them)
DEMO = {k: v for k, v in defaults("corpus.demo").items() if k != "eval_corpus"}

# ---- pure units -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone,cls",
    [("_", "S"), ("#", "S"), ("i", "V"), ("@U", "V"), ("r=", "V"), ("3:", "V"), ("{", "V"), ("O2", "V"),
     ("b", "D"), ("dZ", "D"), ("4", "D"), ("5", "D"), ("l=", "D"), ("N", "D"), ("w", "D"),
     ("p", "U"), ("tS", "U"), ("k_h", "U"), ("h", "U"), ("T", "U"), ("S", "U")],
)
def test_phone_class(phone, cls):
    assert ph.phone_class(phone) == cls


def test_phone_class_unknown_is_an_error():
    with pytest.raises(ph.UnknownPhoneError, match="'xyz'"):
        ph.phone_class("xyz")


def test_class_sets_do_not_overlap():
    sets = [ph.SILENCE, ph.VOWELS, ph.VOICED_CONSONANTS, ph.UNVOICED_CONSONANTS]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not (sets[i] & sets[j])


def test_num_frames_kaldi():
    assert [ph.num_frames(n) for n in (0, 399, 400, 559, 560, 16000)] == [0, 0, 1, 1, 2, 98]


def test_frame_labels_hand_computed():
    # 0.1 s at 16 kHz -> 1 + (1600 - 400) // 160 = 8 frames, centres 12.5, 22.5, ..., 82.5 ms
    segs = [(0.0, 0.020, "S"), (0.030, 0.0525, "V"), (0.0525, 0.070, "D"), (0.070, 0.0825, "U")]
    # 12.5 S | 22.5 gap -> S | 32.5 V | 42.5 V | 52.5 D (start inclusive) | 62.5 D | 72.5 U | 82.5 end exclusive -> S
    assert ph.frame_labels(segs, 1600) == "SSVVDDUS"
    assert ph.frame_labels([], 1600) == "S" * 8
    assert ph.frame_labels(segs, 399) == ""


def test_pho_roundtrip_and_segments():
    text = "; comment\n_ 100\nh 70\n@ 20 0 179 100 191\n\nl 65 50 200\n_ 1\n"
    lines = ph.parse_pho(text)
    assert [p.phone for p in lines] == ["_", "h", "@", "l", "_"]
    assert lines[2].pitch == [(0.0, 179.0), (100.0, 191.0)]
    assert ph.parse_pho(ph.format_pho(lines)) == lines
    segs = ph.pho_segments(lines, time_scale=2.0)
    assert segs[1] == (0.2, 0.34, "h", "U")
    assert segs[-1][1] == pytest.approx(2 * 0.256)


def test_scale_pho():
    lines = ph.parse_pho("h 70\n@ 20 0 100 100 200\n_ 1\n")
    out = synth._scale_pho(lines, f0_ratio=1.5, dur_factor=0.5)
    assert [(p.phone, p.duration_ms) for p in out] == [("_", 60.0), ("h", 35.0), ("@", 10.0), ("_", 1.0)]
    assert out[2].pitch == [(0.0, 150.0), (100.0, 300.0)]


@pytest.mark.parametrize("n,split,expect", [(24, (16, 4, 4), [16, 4, 4]), (3, (16, 4, 4), [1, 1, 1]),
                                            (20, (16, 4, 4), [14, 3, 3]), (2, (16, 4, 4), [1, 1, 0])])
def test_split_counts(n, split, expect):
    got = synth._split_counts(n, split)
    assert sum(got) == n
    assert got == expect


def test_plan_speakers_default():
    specs = synth.plan_speakers(48, None, seed=0)
    ids = [s.speaker for s in specs]
    assert ids == sorted(ids) and len(set(ids)) == 48
    assert sum(s.gender == "F" for s in specs) == 24
    assert {s.voice for s in specs} == set(synth.DEFAULT_VOICES)
    assert ids[0] == "f01_us1" and all(s.speaker.split("_", 1)[1] == s.voice for s in specs)
    for s in specs:
        assert synth.VOICES[s.voice].gender == s.gender
        assert synth.PITCH_RANGE[0] <= s.pitch_semitones <= synth.PITCH_RANGE[1]
        assert synth.VTL_RANGE[0] <= s.vtl_factor <= synth.VTL_RANGE[1]
        assert synth.TEMPO_RANGE[0] <= s.tempo <= synth.TEMPO_RANGE[1]
        assert synth.GAIN_RANGE[0] <= s.gain_db <= synth.GAIN_RANGE[1]
        assert s.vtl_factor * synth.VTL_STEP == pytest.approx(round(s.vtl_factor * synth.VTL_STEP))
    # pseudo-speakers of one voice are spread: distinct levels of every parameter, well apart overall
    for v in synth.DEFAULT_VOICES:
        group = [s for s in specs if s.voice == v]
        k = len(group)
        for attr, (lo, hi) in [("vtl_factor", synth.VTL_RANGE), ("tempo", synth.TEMPO_RANGE)]:
            vals = sorted(getattr(s, attr) for s in group)
            assert min(np.diff(vals)) > 0.4 * (hi - lo) / k, (v, attr, vals)
        u = np.array([[(s.pitch_semitones + 2.5) / 5, (s.vtl_factor - 0.9) / 0.2, (s.tempo - 0.88) / 0.24,
                       (s.gain_db + 6) / 6] for s in group])
        d = np.sqrt(((u[:, None] - u[None]) ** 2).sum(-1))[np.triu_indices(k, 1)]
        assert d.min() > 0.3, (v, d.min())
    # rms has no F0 control: its pitch follows the resampling
    for s in specs:
        if s.voice == "rms":
            assert s.pitch_semitones == pytest.approx(-12 * np.log2(s.vtl_factor), abs=1e-3)
    assert synth.plan_speakers(48, None, seed=0) == specs
    assert synth.plan_speakers(48, None, seed=1) != specs


def test_plan_speakers_subset_and_errors():
    specs = synth.plan_speakers(6, ["us1", "slt", "picous", "us2", "awb", "ked"], seed=3)
    assert [s.speaker for s in specs] == ["f01_us1", "f02_slt", "f03_picous", "m01_us2", "m02_awb", "m03_ked"]
    assert [s.gender for s in synth.plan_speakers(3, ["us2", "awb"], seed=0)] == ["M", "M", "M"]
    with pytest.raises(ValueError, match="unknown voice"):
        synth.plan_speakers(4, ["us1", "nope"], seed=0)


def test_sentence_generator():
    a = generate_sentences(7, 300, 6, 12)
    assert a == generate_sentences(7, 300, 6, 12)
    assert a != generate_sentences(8, 300, 6, 12)
    assert len({s.lower() for s in a}) == 300
    for s in a:
        assert 6 <= len(s.split()) <= 12
        assert s[0].isupper() and s[-1] in ".?"
        assert set(s) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ,.?")
    assert len(vocabulary()) >= 300
    rng = np.random.default_rng(0)
    assert len(SentenceGenerator().sentence(rng, 15, 20).split()) >= 15


def test_missing_programs_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(synth.SynthesizerMissingError) as e:
        synth.check_requirements(["us1", "awb", "ked", "picous"])
    msg = str(e.value)
    for prog, pkg in [("espeak-ng", "espeak-ng"), ("mbrola", "mbrola"), ("flite", "flite"),
                      ("festival", "festival"), ("pico2wave", "libttspico-utils")]:
        assert f"program `{prog}` (Debian package {pkg})" in msg
    assert "make setup" in msg


def test_missing_voices_named(monkeypatch, tmp_path):
    monkeypatch.setattr(synth, "MBROLA_DIR", tmp_path / "mbrola")
    monkeypatch.setattr(synth, "FESTIVAL_VOICE_DIR", tmp_path / "festival")
    monkeypatch.setattr(synth, "PICO_LANG_DIR", tmp_path / "pico")
    with pytest.raises(synth.SynthesizerMissingError) as e:
        synth.synthesize_corpus(tmp_path / "out", **{**DEMO, "n_speakers": 3, "utterances_per_speaker": 1},
                                voices=["us2", "rab", "picogb"])
    msg = str(e.value)
    assert "MBROLA voice us2" in msg and "mbrola-us2" in msg
    assert "festival voice rab_diphone" in msg and "festvox-rablpc16k" in msg
    assert "pico language en-GB" in msg and "libttspico-data" in msg
    assert "make setup" in msg
    assert not (tmp_path / "out").exists()  # nothing written before the check


# ---- real synthesizers -----------------------------------------------------------------------------

NEEDED = ["espeak-ng", "mbrola", "flite", "festival", "pico2wave"]
missing = [p for p in NEEDED if shutil.which(p) is None]
needs_synth = pytest.mark.skipif(bool(missing), reason=f"synthesizers not installed: {missing} (make setup)")
slow = pytest.mark.slow  # synthesizes a corpus

SMALL = dict(seed=5, n_speakers=6, utterances_per_speaker=3, min_duration=2.0, max_duration=8.0,
             split=(16, 4, 4), channel=None, voices=["us1", "slt", "picous", "us2", "awb", "ked"])


def _tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def small_corpora(tmp_path_factory):
    if missing:
        pytest.skip(f"synthesizers not installed: {missing}")
    base = tmp_path_factory.mktemp("synth")
    s2 = synth.synthesize_corpus(base / "a", workers=2, **SMALL)
    s1 = synth.synthesize_corpus(base / "b", workers=1, **SMALL)
    return base / "a", base / "b", s2, s1


@slow
@needs_synth
def test_small_corpus_layout(small_corpora):
    a, _, summary, _ = small_corpora
    assert {p.name for p in a.iterdir()} == {"wav", "speakers.tsv", "utterances.tsv", "phones.tsv",
                                             "frame_classes.tsv", "channels.tsv", "corpus.json"}
    spk = _tsv(a / "speakers.tsv")
    assert list(spk[0]) == ["speaker", "gender", "voice", "engine", "pitch_semitones", "vtl_factor", "tempo",
                            "gain_db"]
    assert [r["gender"] for r in spk] == ["F", "F", "F", "M", "M", "M"]
    assert {r["engine"] for r in spk} == {"mbrola", "flite", "festival", "pico"}
    utts = _tsv(a / "utterances.tsv")
    assert list(utts[0]) == ["utt_id", "speaker", "path", "split", "duration", "text"]
    assert len(utts) == 18 and len({u["text"] for u in utts}) == 18
    for u in utts:
        assert u["utt_id"].startswith(u["speaker"] + "-") and len(u["utt_id"].rsplit("-", 1)[1]) == 4
        info = sf.info(str(a / u["path"]))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert 2.0 <= info.frames / 16000 <= 8.0
        assert float(u["duration"]) == pytest.approx(info.frames / 16000, abs=6e-4)
        x, _ = sf.read(str(a / u["path"]), dtype="float32")
        rms = float(np.sqrt(np.mean(x ** 2)))
        assert 0.02 < rms < 0.2 and np.abs(x).max() < 0.96
    for s in {u["speaker"] for u in utts}:
        assert sorted(u["split"] for u in utts if u["speaker"] == s) == ["dev", "test", "train"]
    meta = json.loads((a / "corpus.json").read_text())
    assert meta["seed"] == 5 and meta["counts"]["speakers"] == 6 and meta["counts"]["utterances"] == 18
    assert meta["counts"]["genders"] == {"F": 3, "M": 3}
    assert set(meta["voices"]) == set(SMALL["voices"])
    assert meta["package_versions"]["mbrola"] != "not installed"
    assert summary["counts"] == meta["counts"]


@slow
@needs_synth
def test_small_corpus_phone_labels(small_corpora):
    a = small_corpora[0]
    utts = {u["utt_id"]: u for u in _tsv(a / "utterances.tsv")}
    engine = {r["speaker"]: r["engine"] for r in _tsv(a / "speakers.tsv")}
    frames = {r["utt_id"]: r["labels"] for r in _tsv(a / "frame_classes.tsv")}
    assert set(frames) == {u for u, r in utts.items() if engine[r["speaker"]] == "mbrola"}
    try:
        import torch
        from torchaudio.compliance import kaldi
    except ImportError:  # pragma: no cover
        kaldi = None
    phones = _tsv(a / "phones.tsv")
    for utt_id, labels in frames.items():
        x, sr = sf.read(str(a / utts[utt_id]["path"]), dtype="float32")
        assert len(labels) == ph.num_frames(len(x))
        if kaldi is not None:
            n = kaldi.fbank(torch.from_numpy(x)[None], sample_frequency=sr, snip_edges=True).shape[0]
            assert len(labels) == n
        assert set(labels) <= set("VDUS") and {"V", "D", "U"} <= set(labels)
        rows = [r for r in phones if r["utt_id"] == utt_id]
        starts, ends = [float(r["start"]) for r in rows], [float(r["end"]) for r in rows]
        assert starts[0] == 0.0 and all(abs(e - s) < 1e-9 for e, s in zip(ends, starts[1:]))
        assert ends[-1] <= len(x) / sr + 1e-6 and ends[-1] > len(x) / sr - 0.012  # MBROLA ends within ~10 ms
        assert all(ph.phone_class(r["phone"]) == r["class"] for r in rows)
        segs = [(s, e, r["class"]) for s, e, r in zip(starts, ends, rows)]
        assert ph.frame_labels(segs, len(x)) == labels


@slow
@needs_synth
def test_same_seed_same_bytes(small_corpora):
    a, b, _, _ = small_corpora
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert fa == fb and len(fa) == 18 + 6
    for rel in fa:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@needs_synth
def test_vowels_give_vowel_frames():
    pcm, segs = synth.render("us1", "Ah, oh, I owe you.")
    labels = ph.frame_labels([(s, e, c) for s, e, _, c in segs], len(pcm))
    speech = labels.replace("S", "")
    assert speech.count("V") / len(speech) > 0.7
    pcm, segs = synth.render("us2", "Sss, shush, fist, six.")
    labels = ph.frame_labels([(s, e, c) for s, e, _, c in segs], len(pcm))
    speech = labels.replace("S", "")
    assert speech.count("U") / len(speech) > 0.5


@needs_synth
def test_vtl_scales_mbrola_timings_exactly():
    pcm1, seg1 = synth.render("us2", "Hello there.", vtl_factor=1.0)
    pcm2, seg2 = synth.render("us2", "Hello there.", vtl_factor=1.1)
    assert [s[2] for s in seg1] == [s[2] for s in seg2]
    # the .pho durations are divided by 1.1 (whole ms) and the waveform stretched by exactly 1.1
    assert len(pcm2) / 16000 == pytest.approx(seg2[-1][1], abs=0.012)
    assert len(pcm2) == pytest.approx(len(pcm1), rel=0.02)
    assert synth.render("rms", "Hello.")[1] is None


@slow
@needs_synth
def test_adapter(run_adapter, tmp_path):
    demo = dict(DEMO, seed=1, n_speakers=2, utterances_per_speaker=2, min_duration=1.0, max_duration=8.0,
                split=[1, 1, 0], voices=["us1", "kal16"])
    run_adapter("synthesize_demo_corpus", log=[str(tmp_path / "log.txt")],
                output={"corpus_dir": str(tmp_path / "demo")}, params={"demo": demo}, threads=1)
    assert len(_tsv(tmp_path / "demo" / "utterances.tsv")) == 4
    assert "demo corpus written" in (tmp_path / "log.txt").read_text()


def test_an_id_prefix_with_whitespace_or_a_slash_is_refused(tmp_path):
    for bad in ("a b-", "a/b-"):
        with pytest.raises(ValueError, match="id_prefix"):
            synth.synthesize_corpus(tmp_path / "out", **{**DEMO, "n_speakers": 2, "utterances_per_speaker": 3},
                                    id_prefix=bad)
    assert not (tmp_path / "out").exists()


@slow
@needs_synth
def test_an_id_prefix_renames_speakers_and_utterances_and_changes_no_audio(tmp_path):
    """A second corpus of a run (the demo's demo_eval) prefixes every speaker name and utterance id, in
    every table and file name; the audio, the splits and the channels are those of the unprefixed corpus."""
    args = {**DEMO, "seed": 3, "n_speakers": 2, "utterances_per_speaker": 3, "split": (1, 1, 1),
            "voices": ["us1", "us2"], "workers": 1}
    synth.synthesize_corpus(tmp_path / "plain", **args)
    synth.synthesize_corpus(tmp_path / "ev", **args, id_prefix="ev-")
    for table in ("utterances.tsv", "speakers.tsv", "phones.tsv", "frame_classes.tsv", "channels.tsv"):
        plain, ev = _tsv(tmp_path / "plain" / table), _tsv(tmp_path / "ev" / table)
        key = "speaker" if table == "speakers.tsv" else "utt_id"
        assert len(ev) == len(plain) > 0 and all(r[key].startswith("ev-") for r in ev)
        renamed = [{k: (f"ev-{v}" if k in ("utt_id", "speaker") else v.replace("wav/", "wav/ev-").replace("/f", "/ev-f")
                        .replace("/m", "/ev-m") if k in ("path", "clean_path") and v else v) for k, v in r.items()}
                   for r in plain]
        assert ev == renamed, table
    for u in _tsv(tmp_path / "plain" / "utterances.tsv"):
        ev_path = tmp_path / "ev" / "wav" / f"ev-{u['speaker']}" / f"ev-{u['utt_id']}.wav"
        assert ev_path.read_bytes() == (tmp_path / "plain" / u["path"]).read_bytes()
    assert json.loads((tmp_path / "ev" / "corpus.json").read_text())["parameters"]["id_prefix"] == "ev-"
