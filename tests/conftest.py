"""Shared test helpers: small audio files written with soundfile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def _write_audio(path, seconds=1.0, sr=16000, channels=1, subtype="PCM_16", data=None, freq=220.0, amp=0.3):
    """Write a tone (or `data`, shape (frames,) or (frames, channels)) to `path`; return its absolute path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        n = int(round(seconds * sr))
        t = np.arange(n) / sr
        mono = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    sf.write(str(path), np.asarray(data), sr, subtype=subtype)
    return str(path.resolve())


@pytest.fixture
def write_audio():
    """Factory fixture: write_audio(path, seconds=1.0, sr=16000, channels=1, subtype="PCM_16", data=None)."""
    return _write_audio


@pytest.fixture
def package_logs(caplog, monkeypatch):
    """caplog that also sees the package's records after setup_logging() turned propagation off."""
    import logging

    monkeypatch.setattr(logging.getLogger("speaker_neurons"), "propagate", True)
    return caplog


@pytest.fixture
def run_adapter():
    """run_adapter(rule, **fields): run workflow_scripts/run_stage.py (every rule's script) with a fake
    `snakemake` object for `rule`, as Snakemake would.

    The package logger's state (changed by setup_logging) is restored afterwards.
    """
    import logging
    import runpy
    from types import SimpleNamespace

    logger = logging.getLogger("speaker_neurons")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    root = Path(__file__).resolve().parents[1]

    class IO(SimpleNamespace):  # like snakemake's input/output: named fields that also iterate
        def __iter__(self):
            return iter(vars(self).values())

        def items(self):
            return vars(self).items()

    def run(rule, **fields):
        fields.setdefault("config", {})
        for key in ("input", "output", "params", "wildcards"):
            fields.setdefault(key, {})
        smk = SimpleNamespace(rule=rule, **{k: IO(**v) if isinstance(v, dict) and k != "config" else v
                                            for k, v in fields.items()})
        runpy.run_path(str(root / "workflow_scripts" / "run_stage.py"), init_globals={"snakemake": smk},
                       run_name="__main__")

    yield run
    for h in list(logger.handlers):
        if h not in saved[0]:
            logger.removeHandler(h)
            h.close()
    for h in saved[0]:
        if h not in logger.handlers:
            logger.addHandler(h)
    logger.propagate, logger.level = saved[1], saved[2]
