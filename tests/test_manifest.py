import logging
import math

import numpy as np
import pandas as pd
import pytest

from speaker_neurons.data.manifest import COLUMNS, ManifestError, read_manifest, write_manifest
from speaker_neurons.data.recipes import build_manifest
from speaker_neurons.data.recipes.demo import demo_manifest
from speaker_neurons.data.recipes.librispeech import librispeech_manifest
from speaker_neurons.data.recipes.tsv import tsv_manifest
from speaker_neurons.data.recipes.voxceleb1 import voxceleb1_manifest


def _rows(df):
    """utt_id -> dict of the other columns (sample_rate as int or None, duration as float)."""
    out = {}
    for r in df.to_dict("records"):
        rate = r["sample_rate"]
        r["sample_rate"] = None if rate is None or rate is pd.NA else int(rate)
        out[r["utt_id"]] = r
    return out


def _check_schema(df):
    assert list(df.columns) == list(COLUMNS)
    assert str(df["sample_rate"].dtype) == "Int64"
    assert df["duration"].dtype == np.float64


# ------------------------------------------------------------------------------- LibriSpeech

SPEAKERS_TXT = """\
; Some comment lines, as in the real file
;ID    |SEX| SUBSET           |MINUTES| NAME
84     | F | dev-clean        |  8.02 | Christie Nowak
174    | M | dev-clean        |  8.04 | Peter Eastman
60     | M | train-clean-100  | 20.18 | |CBW|Simon
"""


def _librispeech(tmp_path, write_audio):
    root = tmp_path / "LibriSpeech"
    split = root / "dev-clean"
    write_audio(split / "84/121123/84-121123-0000.flac", seconds=1.0)
    write_audio(split / "84/121123/84-121123-0001.flac", seconds=0.75)
    write_audio(split / "174/50561/174-50561-0000.flac", seconds=1.25)
    write_audio(split / "999/12/999-12-0003.flac", seconds=0.5)  # speaker not in SPEAKERS.TXT
    (split / "84/121123/84-121123.trans.txt").write_text("84-121123-0000 HELLO\n")
    (root / "SPEAKERS.TXT").write_text(SPEAKERS_TXT)
    return split, root / "SPEAKERS.TXT"


def test_librispeech_manifest(tmp_path, write_audio, package_logs):
    split, spk = _librispeech(tmp_path, write_audio)
    with package_logs.at_level(logging.WARNING, logger="speaker_neurons"):
        df = librispeech_manifest(split, spk)
    _check_schema(df)
    assert list(df["utt_id"]) == sorted(df["utt_id"])
    rows = _rows(df)
    assert rows == {
        "174-50561-0000": dict(utt_id="174-50561-0000", path=str(split / "174/50561/174-50561-0000.flac"),
                               speaker="174", gender="M", split="", duration=1.25, sample_rate=16000),
        "84-121123-0000": dict(utt_id="84-121123-0000", path=str(split / "84/121123/84-121123-0000.flac"),
                               speaker="84", gender="F", split="", duration=1.0, sample_rate=16000),
        "84-121123-0001": dict(utt_id="84-121123-0001", path=str(split / "84/121123/84-121123-0001.flac"),
                               speaker="84", gender="F", split="", duration=0.75, sample_rate=16000),
        "999-12-0003": dict(utt_id="999-12-0003", path=str(split / "999/12/999-12-0003.flac"),
                            speaker="999", gender="", split="", duration=0.5, sample_rate=16000),
    }
    msgs = " ".join(r.getMessage() for r in package_logs.records)
    assert "1 speaker(s) (1 utterances) not in" in msgs and "999" in msgs


def test_librispeech_default_speakers_txt(tmp_path, write_audio):
    split, _ = _librispeech(tmp_path, write_audio)
    for arg in (None, ""):
        df = librispeech_manifest(split, arg)
        assert dict(zip(df["speaker"], df["gender"]))["84"] == "F"


def test_librispeech_errors(tmp_path, write_audio):
    split, spk = _librispeech(tmp_path, write_audio)
    with pytest.raises(FileNotFoundError, match="test-other"):
        librispeech_manifest(tmp_path / "LibriSpeech/test-other", spk)
    with pytest.raises(FileNotFoundError, match="NOPE.TXT"):
        librispeech_manifest(split, tmp_path / "NOPE.TXT")
    empty = tmp_path / "empty_split"
    empty.mkdir()
    with pytest.raises(ManifestError, match="no <speaker>/<chapter>/\\*.flac"):
        librispeech_manifest(empty, spk)
    write_audio(split / "84/121123/85-121123-0002.flac", seconds=0.5)  # speaker id does not match folder
    with pytest.raises(ManifestError, match="85-121123-0002.flac"):
        librispeech_manifest(split, spk)


def test_librispeech_bad_sex_names_line(tmp_path, write_audio):
    split, spk = _librispeech(tmp_path, write_audio)
    spk.write_text(SPEAKERS_TXT + "200 | X | dev-clean | 1.0 | Someone\n")
    with pytest.raises(ManifestError) as ei:
        librispeech_manifest(split, spk)
    assert str(spk) in str(ei.value) and "line 6" in str(ei.value)


def test_unreadable_file_does_not_crash_builder(tmp_path, write_audio, package_logs):
    split, spk = _librispeech(tmp_path, write_audio)
    (split / "84/121123/84-121123-0002.flac").write_text("not audio")
    with package_logs.at_level(logging.WARNING, logger="speaker_neurons"):
        df = librispeech_manifest(split, spk)
    r = _rows(df)["84-121123-0002"]
    assert math.isnan(r["duration"]) and r["sample_rate"] is None
    assert r["gender"] == "F"
    assert "1 of 5 files have no readable audio header" in package_logs.text
    out = write_manifest(df, tmp_path / "m.tsv")  # still a valid manifest
    line = [ln for ln in out.read_text().splitlines() if ln.startswith("84-121123-0002")][0]
    assert line.endswith("\tF\t\t\t")


# --------------------------------------------------------------------------------- VoxCeleb1

META = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n" \
       "id10001\tA.J._Buckley\tm\tIreland\tdev\n" \
       "id10002\tA.R._Rahman\tf\tIndia\ttest\n"


def _voxceleb(tmp_path, write_audio):
    root = tmp_path / "vox1"
    write_audio(root / "wav/id10001/1zcIwhmdeo4/00001.wav", seconds=1.0)
    write_audio(root / "wav/id10001/1zcIwhmdeo4/00002.wav", seconds=0.5)
    write_audio(root / "wav/id10002/-a_B-c/00001.wav", seconds=0.75, sr=8000)
    write_audio(root / "wav/id10003/xyz/00007.wav", seconds=0.5)  # no metadata, not in iden_split
    (tmp_path / "iden_split.txt").write_text(
        "1 id10001/1zcIwhmdeo4/00001.wav\n"
        "2 id10001/1zcIwhmdeo4/00002.wav\n"
        "3 id10002/-a_B-c/00001.wav\n"
        "1 id10009/absent/00001.wav\n"
    )
    (tmp_path / "vox1_meta.csv").write_text(META)
    return root, tmp_path / "iden_split.txt", tmp_path / "vox1_meta.csv"


def test_voxceleb1_manifest(tmp_path, write_audio, package_logs):
    root, iden, meta = _voxceleb(tmp_path, write_audio)
    with pytest.raises(ManifestError) as ei:  # iden_split lists a file that is on no disk: named, by default
        voxceleb1_manifest(root, iden, meta, skip_missing=False)
    assert str(iden) in str(ei.value) and "id10009/absent/00001.wav" in str(ei.value) and "skip_missing" in str(ei.value)
    with package_logs.at_level(logging.WARNING, logger="speaker_neurons"):
        df = voxceleb1_manifest(root, iden, meta, skip_missing=True)
    assert "1 utterance(s) listed in" in package_logs.text and "left out" in package_logs.text
    _check_schema(df)
    w = root / "wav"
    assert _rows(df) == {
        "id10001-1zcIwhmdeo4-00001": dict(utt_id="id10001-1zcIwhmdeo4-00001",
                                          path=str(w / "id10001/1zcIwhmdeo4/00001.wav"), speaker="id10001",
                                          gender="M", split="train", duration=1.0, sample_rate=16000),
        "id10001-1zcIwhmdeo4-00002": dict(utt_id="id10001-1zcIwhmdeo4-00002",
                                          path=str(w / "id10001/1zcIwhmdeo4/00002.wav"), speaker="id10001",
                                          gender="M", split="dev", duration=0.5, sample_rate=16000),
        "id10002--a_B-c-00001": dict(utt_id="id10002--a_B-c-00001", path=str(w / "id10002/-a_B-c/00001.wav"),
                                     speaker="id10002", gender="F", split="test", duration=0.75, sample_rate=8000),
        "id10003-xyz-00007": dict(utt_id="id10003-xyz-00007", path=str(w / "id10003/xyz/00007.wav"),
                                  speaker="id10003", gender="", split="", duration=0.5, sample_rate=16000),
    }
    assert "1 wav file(s)" in package_logs.text and "not in" in package_logs.text
    assert "1 speaker(s) (1 utterances) not in" in package_logs.text


def test_voxceleb1_two_archive_layout(tmp_path, write_audio):
    """s3prl's layout: each released archive in its own folder, <root>/dev/wav and <root>/test/wav."""
    root = tmp_path / "vox1"
    write_audio(root / "dev/wav/id10001/1zcIwhmdeo4/00001.wav", seconds=1.0)
    write_audio(root / "dev/wav/id10001/1zcIwhmdeo4/00002.wav", seconds=0.5)
    write_audio(root / "test/wav/id10002/-a_B-c/00001.wav", seconds=0.75)
    (tmp_path / "iden_split.txt").write_text("1 id10001/1zcIwhmdeo4/00001.wav\n2 id10001/1zcIwhmdeo4/00002.wav\n"
                                             "3 id10002/-a_B-c/00001.wav\n")
    (tmp_path / "vox1_meta.csv").write_text(META)
    df = voxceleb1_manifest(root, tmp_path / "iden_split.txt", tmp_path / "vox1_meta.csv", skip_missing=False)
    _check_schema(df)
    got = {r.utt_id: (r.path, r.split) for r in df.itertuples()}
    assert got == {"id10001-1zcIwhmdeo4-00001": (str(root / "dev/wav/id10001/1zcIwhmdeo4/00001.wav"), "train"),
                   "id10001-1zcIwhmdeo4-00002": (str(root / "dev/wav/id10001/1zcIwhmdeo4/00002.wav"), "dev"),
                   "id10002--a_B-c-00001": (str(root / "test/wav/id10002/-a_B-c/00001.wav"), "test")}
    write_audio(root / "test/wav/id10001/1zcIwhmdeo4/00001.wav", seconds=1.0)  # the same file in both archives
    with pytest.raises(ManifestError, match="is in two folders"):
        voxceleb1_manifest(root, tmp_path / "iden_split.txt", tmp_path / "vox1_meta.csv", skip_missing=False)


def test_voxceleb1_errors(tmp_path, write_audio):
    root, iden, meta = _voxceleb(tmp_path, write_audio)
    with pytest.raises(FileNotFoundError, match="dev/wav/... and test/wav/..."):
        voxceleb1_manifest(root / "wav", iden, meta, skip_missing=False)  # root must hold wav/ (or dev/wav, test/wav)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        voxceleb1_manifest(tmp_path / "nowhere", iden, meta, skip_missing=False)
    iden.write_text("1 id10001/1zcIwhmdeo4/00001.wav\n4 id10001/1zcIwhmdeo4/00002.wav\n")
    with pytest.raises(ManifestError) as ei:
        voxceleb1_manifest(root, iden, meta, skip_missing=False)
    assert str(iden) in str(ei.value) and "line 2" in str(ei.value)
    iden.write_text("1 id10001/1zcIwhmdeo4/00001.wav\n")
    meta.write_text(META.replace("\t", ","))  # comma separated: not the real format
    with pytest.raises(ManifestError, match="TAB separated"):
        voxceleb1_manifest(root, iden, meta, skip_missing=False)


# --------------------------------------------------------------------------------------- TSV


def test_tsv_manifest_relative_and_absolute_paths(tmp_path, write_audio):
    a = write_audio(tmp_path / "data/audio/a1.wav", seconds=1.0)
    write_audio(tmp_path / "data/audio/b1.wav", seconds=0.5, sr=22050)
    c = write_audio(tmp_path / "elsewhere/c1.flac", seconds=0.75)
    tsv = tmp_path / "data/list.tsv"
    tsv.write_text(
        "path\tspeaker\tgender\tsplit\tnotes\n"
        "audio/a1.wav\talice\tfemale\ttrain\tx\n"
        f"audio/b1.wav\tbob\tM\tdev\ty\n"
        f"{c}\tcarol\t\t\tz\n"
    )
    df = tsv_manifest(tsv)
    _check_schema(df)
    assert _rows(df) == {
        "a1": dict(utt_id="a1", path=a, speaker="alice", gender="F", split="train", duration=1.0,
                   sample_rate=16000),
        "b1": dict(utt_id="b1", path=str(tmp_path / "data/audio/b1.wav"), speaker="bob", gender="M",
                   split="dev", duration=0.5, sample_rate=22050),
        "c1": dict(utt_id="c1", path=c, speaker="carol", gender="", split="", duration=0.75,
                   sample_rate=16000),
    }


def test_tsv_manifest_ids_and_minimal_header(tmp_path, write_audio):
    write_audio(tmp_path / "s1/x.wav", seconds=0.5)
    write_audio(tmp_path / "s2/x.wav", seconds=0.5)
    tsv = tmp_path / "list.tsv"
    tsv.write_text("path\ns1/x.wav\ns2/x.wav\n")
    df = tsv_manifest(tsv)  # stems collide: ids from the path below the common folder
    assert list(df["utt_id"]) == ["s1-x", "s2-x"]
    assert list(df["speaker"]) == ["", ""] and list(df["gender"]) == ["", ""]
    tsv.write_text("utt_id\tpath\tspeaker\nu1\ts1/x.wav\tp\nu2\ts2/x.wav\tq\n")
    df = tsv_manifest(tsv)
    assert list(df["utt_id"]) == ["u1", "u2"] and list(df["speaker"]) == ["p", "q"]


def test_tsv_manifest_errors(tmp_path, write_audio):
    write_audio(tmp_path / "a.wav", seconds=0.5)
    write_audio(tmp_path / "b.wav", seconds=0.5)
    tsv = tmp_path / "list.tsv"
    tsv.write_text("file\tspeaker\na.wav\ts\n")
    with pytest.raises(ManifestError) as ei:
        tsv_manifest(tsv)
    assert str(tsv) in str(ei.value) and "'path'" in str(ei.value)
    tsv.write_text("path\tgender\na.wav\tF\nb.wav\tunknown-thing\n")
    with pytest.raises(ManifestError) as ei:
        tsv_manifest(tsv)
    assert str(tsv) in str(ei.value) and "line 3" in str(ei.value)
    tsv.write_text("path\tutt_id\na.wav\tsame\nb.wav\tsame\n")
    with pytest.raises(ManifestError) as ei:
        tsv_manifest(tsv)
    assert str(tmp_path / "a.wav") in str(ei.value) and str(tmp_path / "b.wav") in str(ei.value)
    tsv.write_text("path\tsplit\na.wav\tvalidation\n")
    with pytest.raises(ManifestError, match="validation"):
        tsv_manifest(tsv)
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        tsv_manifest(tmp_path / "missing.tsv")


# -------------------------------------------------------------------------------------- demo


def _demo(tmp_path, write_audio):
    d = tmp_path / "corpus"
    write_audio(d / "wav/spk00/spk00_000.wav", seconds=1.0)
    write_audio(d / "wav/spk00/spk00_001.wav", seconds=0.5)
    write_audio(d / "wav/spk01/spk01_000.wav", seconds=0.75)
    (d / "speakers.tsv").write_text(
        "speaker\tgender\tvoice\tengine\tpitch_semitones\tvtl_factor\ttempo\tgain_db\n"
        "spk00\tF\tslt\tflite\t0.0\t1.0\t1.0\t0.0\n"
        "spk01\tM\trms\tflite\t-1.5\t1.05\t0.95\t-3.0\n"
    )
    (d / "utterances.tsv").write_text(
        "utt_id\tspeaker\tpath\tsplit\tduration\ttext\n"
        'spk00_000\tspk00\twav/spk00/spk00_000.wav\ttrain\t1.000\tShe said "hello", didn\'t she?\n'
        "spk00_001\tspk00\twav/spk00/spk00_001.wav\ttest\t0.500\tNo.\n"
        "spk01_000\tspk01\twav/spk01/spk01_000.wav\tdev\t0.750\tYes, #1.\n"
    )
    return d


def test_demo_manifest(tmp_path, write_audio):
    d = _demo(tmp_path, write_audio)
    df = demo_manifest(d)
    _check_schema(df)
    assert _rows(df) == {
        "spk00_000": dict(utt_id="spk00_000", path=str(d / "wav/spk00/spk00_000.wav"), speaker="spk00",
                          gender="F", split="train", duration=1.0, sample_rate=16000),
        "spk00_001": dict(utt_id="spk00_001", path=str(d / "wav/spk00/spk00_001.wav"), speaker="spk00",
                          gender="F", split="test", duration=0.5, sample_rate=16000),
        "spk01_000": dict(utt_id="spk01_000", path=str(d / "wav/spk01/spk01_000.wav"), speaker="spk01",
                          gender="M", split="dev", duration=0.75, sample_rate=16000),
    }


def test_demo_manifest_errors(tmp_path, write_audio):
    with pytest.raises(FileNotFoundError, match="no_corpus"):
        demo_manifest(tmp_path / "no_corpus")
    d = _demo(tmp_path, write_audio)
    utt = d / "utterances.tsv"
    utt.write_text(utt.read_text() + "spk02_000\tspk02\twav/spk02/spk02_000.wav\ttrain\t1.0\tHi.\n")
    with pytest.raises(ManifestError) as ei:
        demo_manifest(d)
    assert str(utt) in str(ei.value) and "line 5" in str(ei.value) and "spk02" in str(ei.value)
    (d / "speakers.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="speakers.tsv"):
        demo_manifest(d)


# ---------------------------------------------------------------------------- read / write


def test_write_read_roundtrip_and_exact_format(tmp_path, write_audio):
    d = _demo(tmp_path, write_audio)
    df = demo_manifest(d)
    df.loc[1, "duration"] = 0.12345
    df["sample_rate"] = df["sample_rate"].astype("Int64")
    df.loc[2, "duration"] = np.nan
    df.loc[2, "sample_rate"] = pd.NA
    out = write_manifest(df, tmp_path / "sub/manifest.tsv")
    lines = out.read_text().splitlines()
    assert lines[0] == "utt_id\tpath\tspeaker\tgender\tsplit\tduration\tsample_rate"
    assert lines[1] == f"spk00_000\t{d}/wav/spk00/spk00_000.wav\tspk00\tF\ttrain\t1.000\t16000"
    assert lines[2].endswith("\ttest\t0.123\t16000")
    assert lines[3].endswith("\tdev\t\t")
    back = read_manifest(out)
    _check_schema(back)
    assert list(back["utt_id"]) == list(df["utt_id"])
    assert back["duration"].iloc[1] == 0.123 and math.isnan(back["duration"].iloc[2])
    assert back["sample_rate"].iloc[0] == 16000 and back["sample_rate"].iloc[2] is pd.NA


def test_utt_ids_that_look_like_numbers_stay_strings(tmp_path):
    df = pd.DataFrame([dict(utt_id="007", path="/a/007.wav", speaker="0012", gender="", split="",
                            duration=1.0, sample_rate=16000)])
    back = read_manifest(write_manifest(df, tmp_path / "m.tsv"))
    assert back["utt_id"].iloc[0] == "007" and back["speaker"].iloc[0] == "0012"


HEADER = "utt_id\tpath\tspeaker\tgender\tsplit\tduration\tsample_rate\n"


@pytest.mark.parametrize(
    "body,fragment",
    [
        ("a\t/x/a.wav\ts\tF\ttrain\t1.0\t16000\nb\t/x/b.wav\ts\tX\ttrain\t1.0\t16000\n", "line 3"),
        ("a\trel/a.wav\ts\tF\ttrain\t1.0\t16000\n", "not absolute"),
        ("a\t/x/a.wav\ts\tF\tvalid\t1.0\t16000\n", "split 'valid'"),
        ("a\t/x/a.wav\ts\tF\ttrain\tlong\t16000\n", "duration 'long'"),
        ("a\t/x/a.wav\ts\tF\ttrain\t1.0\t16k\n", "sample_rate '16k'"),
        ("a b\t/x/a.wav\ts\tF\ttrain\t1.0\t16000\n", "whitespace"),
        ("a\t/x/a.wav\ts\tF\ttrain\t1.0\t16000\na\t/y/a.wav\ts\tF\ttrain\t1.0\t16000\n", "/x/a.wav and /y/a.wav"),
    ],
)
def test_read_manifest_rejects_bad_rows(tmp_path, body, fragment):
    p = tmp_path / "m.tsv"
    p.write_text(HEADER + body)
    with pytest.raises(ManifestError) as ei:
        read_manifest(p)
    assert str(p) in str(ei.value) and fragment in str(ei.value)


def test_read_manifest_rejects_wrong_header(tmp_path):
    p = tmp_path / "m.tsv"
    p.write_text("utt_id\tpath\tspeaker\tgender\tsplit\tsample_rate\tduration\n")
    with pytest.raises(ManifestError, match="line 1"):
        read_manifest(p)
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "none.tsv")


def test_write_manifest_validates(tmp_path):
    df = pd.DataFrame([dict(utt_id="a", path="/x/a.wav", speaker="s", gender="female", split="",
                            duration=1.0, sample_rate=16000)])
    with pytest.raises(ManifestError, match="gender 'female'"):
        write_manifest(df, tmp_path / "m.tsv")
    assert not (tmp_path / "m.tsv").exists()
    with pytest.raises(ManifestError, match="missing column"):
        write_manifest(df.drop(columns=["split"]), tmp_path / "m.tsv")


# ------------------------------------------------------------------------------- dispatcher


def test_build_manifest_dispatch(tmp_path, write_audio):
    d = _demo(tmp_path, write_audio)
    assert list(build_manifest("demo", corpus_dir=str(d))["utt_id"]) == ["spk00_000", "spk00_001", "spk01_000"]
    write_audio(tmp_path / "t/a.wav", seconds=0.5)
    (tmp_path / "t/l.tsv").write_text("path\na.wav\n")
    assert list(build_manifest("tsv", path=str(tmp_path / "t/l.tsv"))["utt_id"]) == ["a"]  # config key
    assert list(build_manifest("tsv", tsv=str(tmp_path / "t/l.tsv"))["utt_id"]) == ["a"]
    split, spk = _librispeech(tmp_path, write_audio)
    assert len(build_manifest("librispeech", split_dir=str(split), speakers_txt="")) == 4
    with pytest.raises(ValueError, match="unknown corpus source 'libri'"):
        build_manifest("libri", split_dir=str(split))
    with pytest.raises(TypeError, match="missing \\['iden_split', 'meta_csv', 'skip_missing'\\]"):
        build_manifest("voxceleb1", root=str(tmp_path))
    with pytest.raises(TypeError, match="unexpected \\['seed'\\]"):
        build_manifest("demo", corpus_dir=str(d), seed=0)


def test_build_manifest_adapter(tmp_path, write_audio, run_adapter):
    d = _demo(tmp_path, write_audio)
    out = tmp_path / "results/manifest/manifest.raw.tsv"
    log = tmp_path / "results/logs/build_manifest.log"
    run_adapter(
        "build_manifest",
        params={"corpus": {"source": "demo", "corpus_dir": str(d)}, "split": {"fractions": [0.8, 0.1, 0.1], "seed": 0}},
        output={"manifest": str(out), "transcripts": str(tmp_path / "results/manifest/transcripts.tsv")},
        log=[str(log)],
        threads=1,
    )
    df = read_manifest(out)
    assert list(df["utt_id"]) == ["spk00_000", "spk00_001", "spk01_000"]
    assert "3 utterances, 2 speakers" in log.read_text()
    assert (tmp_path / "results/manifest/transcripts.tsv").read_text().startswith("utt_id\ttext")


def test_assign_splits_per_speaker_seeded():
    from speaker_neurons.data.manifest import assign_splits

    rows = [dict(utt_id=f"{s}-{i:02d}", path=f"/a/{s}-{i}.wav", speaker=s, gender="F", split="", duration=1.0,
                 sample_rate=16000) for s, n in (("a", 10), ("b", 7), ("c", 3)) for i in range(n)]
    rows.append(dict(utt_id="kept", path="/a/k.wav", speaker="a", gender="F", split="test", duration=1.0,
                     sample_rate=16000))
    rows.append(dict(utt_id="anon", path="/a/n.wav", speaker="", gender="", split="", duration=1.0, sample_rate=16000))
    df = pd.DataFrame(rows)
    out = assign_splits(df, [0.8, 0.1, 0.1], seed=0)
    assert df["split"].tolist().count("") == 21  # a copy: the input is untouched
    by = out[out["speaker"] != ""].groupby("speaker")["split"].apply(lambda s: s.value_counts().to_dict()).unstack()
    assert by.loc["a"].to_dict() == {"train": 8, "dev": 1, "test": 2}  # 8/1/1 of its 10, plus the one it had
    assert by.loc["b"].to_dict() == {"train": 5, "dev": 1, "test": 1}  # 5.6/0.7/0.7: largest remainders, one each
    assert by.loc["c"].to_dict() == {"train": 1, "dev": 1, "test": 1}
    assert out.set_index("utt_id").loc["kept", "split"] == "test" and out.set_index("utt_id").loc["anon", "split"] == ""
    again = assign_splits(df.sample(frac=1, random_state=3), [0.8, 0.1, 0.1], seed=0)  # row order does not matter
    assert again.set_index("utt_id")["split"].to_dict() == out.set_index("utt_id")["split"].to_dict()
    other = assign_splits(df, [0.8, 0.1, 0.1], seed=1)
    assert other["split"].tolist() != out["split"].tolist()
    with pytest.raises(ValueError, match="three non-negative shares"):
        assign_splits(df, [0.8, 0.2], seed=0)


def test_tsv_transcripts_are_keyed_like_the_manifest_without_reading_audio(tmp_path, monkeypatch):
    """read_transcripts of a TSV takes the manifest's utt_ids (given or derived) and opens no audio file."""
    from speaker_neurons.data import manifest
    from speaker_neurons.data.recipes import read_transcripts

    def no_audio(path):
        raise AssertionError(f"read the audio header of {path}")

    monkeypatch.setattr(manifest, "_audio_header", no_audio)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "l.tsv").write_text("path\ttext\na/x.wav\thello world\nb/x.wav\tgood morning\n")  # not even files
    t = read_transcripts("tsv", path=str(tmp_path / "l.tsv"))
    assert t.values.tolist() == [["a-x", "hello world"], ["b-x", "good morning"]]
