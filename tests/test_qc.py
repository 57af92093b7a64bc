import json
import logging

import numpy as np
import pandas as pd
import pytest
import soundfile

from speaker_neurons.config import complete
from speaker_neurons.data import qc as qc_mod
from speaker_neurons.data.manifest import COLUMNS, ManifestError, read_manifest, write_manifest
from speaker_neurons.data.qc import QCError

QC = complete({})["qc"]
QC_ARGS = {"min_duration": QC["min_duration"], "max_bad_fraction": QC["max_bad_fraction"], "target_sr": QC["sample_rate"],
           "keep_truncated": QC["keep_truncated"], "silence_peak": QC["silence_peak"]}


def run_qc(df, report, **kw):
    """`qc.run_qc` with the config's qc section, `kw` overriding it."""
    return qc_mod.run_qc(df, report, **{**QC_ARGS, **kw})


def check_file(path, **kw):
    """`qc.check_file` with the config's qc section, `kw` overriding it."""
    args = {**QC_ARGS, **kw}
    args.pop("max_bad_fraction")
    return qc_mod.check_file(path, **args)


def _manifest(paths, ids=None):
    ids = ids or [f"u{i}" for i in range(len(paths))]
    return pd.DataFrame(
        dict(
            utt_id=ids,
            path=[str(p) for p in paths],
            speaker=[f"s{i % 2}" for i in range(len(paths))],
            gender=["F" if i % 2 else "M" for i in range(len(paths))],
            split=["train"] * len(paths),
            duration=[np.nan] * len(paths),
            sample_rate=pd.array([pd.NA] * len(paths), dtype="Int64"),
        )
    )


def _report(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "utt_id\tpath\treason"
    return [ln.split("\t") for ln in lines[1:]]


def _bad_file(kind, tmp_path, write_audio):
    p = tmp_path / f"{kind}.wav"
    if kind == "text":
        p.write_text("RIFF? no, just text pretending to be a wav file\n")
        return str(p)
    if kind == "missing":
        return str(p)
    if kind == "empty":
        return write_audio(p, data=np.zeros(0, np.float32))
    if kind == "short":
        return write_audio(p, seconds=0.2)
    if kind == "nan":
        data = (0.1 * np.ones(16000)).astype(np.float32)
        data[100] = np.nan
        return write_audio(p, data=data, subtype="FLOAT")
    if kind == "zeros":
        return write_audio(p, data=np.zeros(16000, np.float32))
    if kind == "tiny_float":
        return write_audio(p, data=np.full(16000, 1e-7, np.float32), subtype="FLOAT")
    if kind == "antiphase":  # stereo whose channels cancel: silent after the mean downmix
        mono = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)
        return write_audio(p, data=np.stack([mono, -mono], axis=1).astype(np.float32), subtype="FLOAT")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind,code,detail",
    [
        ("text", "unreadable", "not a readable audio file"),
        ("missing", "missing", "file not found"),
        ("empty", "empty", "0 frames"),
        ("short", "too_short", "0.200 s < min_duration 0.5 s"),
        ("nan", "non_finite", "1 of 16000"),
        ("zeros", "silent", "digital silence"),
        ("tiny_float", "silent", "digital silence"),
        ("antiphase", "silent", "digital silence"),
    ],
)
def test_each_bad_case_is_rejected_with_reason(tmp_path, write_audio, kind, code, detail):
    good = write_audio(tmp_path / "good.wav", seconds=1.0)
    bad = _bad_file(kind, tmp_path, write_audio)
    report = tmp_path / "qc" / "qc.tsv"
    out = run_qc(_manifest([good, bad], ["good", "bad"]), report, max_bad_fraction=0.5)
    assert list(out["utt_id"]) == ["good"]
    rows = _report(report)
    assert len(rows) == 1
    utt, path, reason = rows[0]
    assert (utt, path) == ("bad", bad)
    assert reason.startswith(code + ":") and detail in reason


def test_one_lsb_pcm16_is_not_silent(tmp_path, write_audio):
    data = np.zeros(16000, np.float32)
    data[500] = 1 / 32768  # one 16-bit LSB: quiet, but not digital silence
    p = write_audio(tmp_path / "lsb.wav", data=data)
    out = run_qc(_manifest([p]), tmp_path / "qc.tsv")
    assert len(out) == 1 and _report(tmp_path / "qc.tsv") == []


def test_stereo_44k_accepted_and_reported_at_16k_mono_length(tmp_path, write_audio):
    n = 30316  # 0.68744 s at 44.1 kHz; ceil(n * 16000 / 44100) = 11000 samples = 0.6875 s at 16 kHz
    t = np.arange(n) / 44100
    data = np.stack([0.3 * np.sin(2 * np.pi * 300 * t), 0.2 * np.sin(2 * np.pi * 500 * t)], axis=1)
    p = write_audio(tmp_path / "st44.wav", data=data.astype(np.float32), sr=44100)
    df = _manifest([p])
    df.loc[0, "duration"] = 99.0  # a stale value from the builder must be replaced
    df.loc[0, "sample_rate"] = 8000
    out = run_qc(df, tmp_path / "qc.tsv")
    assert len(out) == 1
    assert out.loc[0, "sample_rate"] == 44100  # the native rate
    assert out.loc[0, "duration"] == round(11000 / 16000, 3) == 0.688  # not round(n / 44100, 3) = 0.687
    assert _report(tmp_path / "qc.tsv") == []


def test_duplicate_ids_error_names_both_paths_before_decoding(tmp_path, write_audio, monkeypatch):
    a = write_audio(tmp_path / "a/x.wav", seconds=1.0)
    b = write_audio(tmp_path / "b/x.wav", seconds=1.0)
    c = write_audio(tmp_path / "c.wav", seconds=1.0)
    calls = []

    def no_decode(path, *args, **kwargs):
        calls.append(path)
        raise AssertionError("decoded before the duplicate check")

    monkeypatch.setattr(qc_mod, "load_audio", no_decode)
    with pytest.raises(ManifestError) as ei:
        run_qc(_manifest([c, a, b], ["c", "x", "x"]), tmp_path / "qc.tsv")
    assert a in str(ei.value) and b in str(ei.value) and "'x'" in str(ei.value)
    assert calls == []


def test_too_many_rejects_raise_naming_report(tmp_path, write_audio):
    good = [write_audio(tmp_path / f"g{i}.wav", seconds=0.6) for i in range(2)]
    bad = _bad_file("zeros", tmp_path, write_audio)
    report = tmp_path / "results" / "qc.tsv"
    with pytest.raises(QCError) as ei:
        run_qc(_manifest(good + [bad]), report, max_bad_fraction=0.05)
    msg = str(ei.value)
    assert str(report) in msg and "1 of 3" in msg and "max_bad_fraction=0.05" in msg
    assert [r[0] for r in _report(report)] == ["u2"]  # the report is written before raising


def test_max_bad_fraction_boundary_is_inclusive(tmp_path, write_audio):
    paths = [write_audio(tmp_path / f"g{i}.wav", seconds=0.5) for i in range(19)]
    paths.append(_bad_file("short", tmp_path, write_audio))
    out = run_qc(_manifest(paths), tmp_path / "qc.tsv", max_bad_fraction=0.05)  # 1/20 == 0.05: allowed
    assert len(out) == 19
    with pytest.raises(QCError):
        run_qc(_manifest(paths), tmp_path / "qc.tsv", max_bad_fraction=0.049)


def test_mix_good_ones_go_on(tmp_path, write_audio, package_logs, monkeypatch):
    goods = {
        "g0": write_audio(tmp_path / "g0.wav", seconds=1.0),
        "g1": write_audio(tmp_path / "g1.flac", seconds=0.5, sr=22050, channels=2),
        "g2": write_audio(tmp_path / "g2.wav", seconds=2.0, sr=8000),
        "g3": write_audio(tmp_path / "g3.wav", seconds=0.75, subtype="FLOAT"),
    }
    bads = {k: _bad_file(k, tmp_path, write_audio) for k in ("text", "empty", "short", "nan", "zeros")}
    order = ["text", "g0", "empty", "g1", "short", "g2", "nan", "zeros", "g3"]
    paths = [goods.get(k) or bads[k] for k in order]
    df = _manifest(paths, order)
    reads = []
    real_read = soundfile.read
    monkeypatch.setattr(soundfile, "read", lambda f, *a, **k: reads.append(str(f)) or real_read(f, *a, **k))
    with package_logs.at_level(logging.WARNING, logger="speaker_neurons.qc"):
        out = run_qc(df, tmp_path / "qc.tsv", max_bad_fraction=0.6, workers=2)
    assert sorted(reads) == sorted(paths)  # each file decoded exactly once
    assert list(out.columns) == list(COLUMNS)
    assert list(out["utt_id"]) == ["g0", "g1", "g2", "g3"]  # manifest order kept
    exp = {"g0": (1.0, 16000), "g1": (0.5, 22050), "g2": (2.0, 8000), "g3": (0.75, 16000)}
    for r in out.itertuples():
        assert (r.duration, int(r.sample_rate)) == exp[r.utt_id]
        src = df.set_index("utt_id").loc[r.utt_id]
        assert (r.path, r.speaker, r.gender, r.split) == (src.path, src.speaker, src.gender, src.split)
    rows = _report(tmp_path / "qc.tsv")
    assert [r[0] for r in rows] == ["text", "empty", "short", "nan", "zeros"]
    assert [r[2].split(":")[0] for r in rows] == ["unreadable", "empty", "too_short", "non_finite", "silent"]
    assert [r[1] for r in rows] == [bads[k] for k in ("text", "empty", "short", "nan", "zeros")]
    assert "rejected 5 of 9" in package_logs.text
    # the accepted rows form a valid manifest
    back = read_manifest(write_manifest(out, tmp_path / "manifest.tsv"))
    assert list(back["utt_id"]) == ["g0", "g1", "g2", "g3"]


def test_workers_do_not_change_results(tmp_path, write_audio):
    paths = [write_audio(tmp_path / f"g{i}.wav", seconds=0.5 + 0.25 * i) for i in range(4)]
    paths.append(_bad_file("short", tmp_path, write_audio))
    a = run_qc(_manifest(paths), tmp_path / "a.tsv", max_bad_fraction=0.5, workers=1)
    b = run_qc(_manifest(paths), tmp_path / "b.tsv", max_bad_fraction=0.5, workers=3)
    pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "a.tsv").read_text() == (tmp_path / "b.tsv").read_text()


def test_all_good_writes_header_only_report(tmp_path, write_audio):
    report = tmp_path / "qc.tsv"
    report.write_text("stale\n")
    p = write_audio(tmp_path / "g.wav", seconds=0.5)
    out = run_qc(_manifest([p]), report)
    assert report.read_text() == "utt_id\tpath\treason\n"
    assert out.loc[0, "duration"] == 0.5 and out.loc[0, "sample_rate"] == 16000


def test_min_duration_parameter(tmp_path, write_audio):
    p = write_audio(tmp_path / "g.wav", seconds=0.3)
    assert len(run_qc(_manifest([p]), tmp_path / "qc.tsv", min_duration=0.25)) == 1
    with pytest.raises(QCError):
        run_qc(_manifest([p]), tmp_path / "qc.tsv", min_duration=0.5)


def test_empty_manifest_and_missing_columns(tmp_path):
    with pytest.raises(QCError, match="empty manifest"):
        run_qc(_manifest([]), tmp_path / "qc.tsv")
    with pytest.raises(ManifestError, match="'path'"):
        run_qc(pd.DataFrame({"utt_id": ["a"]}), tmp_path / "qc.tsv")


def test_audio_qc_adapter(tmp_path, write_audio, run_adapter):
    paths = [write_audio(tmp_path / f"g{i}.wav", seconds=1.0, sr=8000) for i in range(3)]
    paths.append(_bad_file("zeros", tmp_path, write_audio))
    raw = write_manifest(_manifest(paths), tmp_path / "manifest.raw.tsv")
    out, report, log = tmp_path / "m/manifest.tsv", tmp_path / "qc/qc.tsv", tmp_path / "logs/audio_qc.log"
    run_adapter(
        "audio_qc",
        input={"manifest": str(raw)},
        output={"manifest": str(out), "report": str(report), "provenance": str(tmp_path / "qc/provenance/audio_qc.json")},
        params={"qc": {**QC, "min_duration": 0.5, "max_bad_fraction": 0.3}},
        log=[str(log)],
        threads=2,
    )
    df = read_manifest(out)
    assert list(df["utt_id"]) == ["u0", "u1", "u2"]
    assert list(df["sample_rate"]) == [8000] * 3 and list(df["duration"]) == [1.0] * 3
    assert [r[0] for r in _report(report)] == ["u3"]
    assert "rejected 1 of 4" in log.read_text()
    prov = json.loads((tmp_path / "qc/provenance/audio_qc.json").read_text())
    assert prov["stage"] == "audio_qc" and prov["params"]["qc"]["max_bad_fraction"] == 0.3
    assert set(prov["inputs"]) == {str(raw)} and len(prov["inputs"][str(raw)]) == 64


def _wav_with_short_data(path, declared_s, present_s, sr=16000):
    """A PCM_16 WAV whose header declares `declared_s` seconds while the file holds `present_s`."""
    import soundfile as sf

    x = (0.1 * np.random.default_rng(0).standard_normal(int(declared_s * sr))).astype(np.float32)
    sf.write(path, x, sr, subtype="PCM_16")
    data = path.read_bytes()
    head = data.index(b"data") + 8
    path.write_bytes(data[: head + int(present_s * sr) * 2])


def test_truncated_wav_is_named_and_rejected_or_kept_on_request(tmp_path):
    from speaker_neurons.data.qc import container_problem

    bad = tmp_path / "trunc.wav"
    _wav_with_short_data(bad, 4.0, 1.0)
    good = tmp_path / "good.wav"
    _wav_with_short_data(good, 2.0, 2.0)
    assert container_problem(good) is None
    assert container_problem(bad) == "truncated: the WAV header declares 4.000 s of audio, the file holds 1.000 s"
    reason, dur, _ = check_file(bad)
    assert reason.startswith("truncated:") and dur is None
    reason, dur, _ = check_file(bad, keep_truncated=True)
    assert reason is None and dur == pytest.approx(1.0)
    df = pd.DataFrame({"utt_id": ["a", "b"], "path": [str(good), str(bad)]})
    out = run_qc(df, tmp_path / "qc.tsv", max_bad_fraction=0.5)
    report = pd.read_csv(tmp_path / "qc.tsv", sep="\t")
    assert out["utt_id"].tolist() == ["a"] and report["utt_id"].tolist() == ["b"]
    assert report["reason"].iloc[0].startswith("truncated: the WAV header declares 4.000 s")
    kept = run_qc(df, tmp_path / "qc2.tsv", max_bad_fraction=0.5, keep_truncated=True)
    assert kept["duration"].tolist() == [2.0, 1.0]


def test_truncated_flac_is_not_silently_accepted(tmp_path):
    """A FLAC cut short: libsndfile stops at the broken frame, so the file is rejected, never read as
    the shorter part."""
    import soundfile as sf

    x = (0.1 * np.random.default_rng(1).standard_normal(48000)).astype(np.float32)
    p = tmp_path / "a.flac"
    sf.write(p, x, 16000)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    reason, dur, _ = check_file(p)
    assert dur is None and reason.startswith("unreadable: not a readable audio file (libsndfile:")
