"""Kaldi archive (ark) / script (scp) reading and writing of float vectors, through `kaldi_io`.

`kaldi_io` prints a warning and edits ``PATH`` when it is imported without ``KALDI_ROOT``; the import
here is lazy and leaves the environment exactly as it was.

Accepted read specifiers (what a Kaldi user has on disk):
  * ``path.ark`` / ``ark:path.ark`` / ``ark,t:path.txt``: binary or text archive (``utt  [ 0.1 0.2 ]``);
  * ``path.scp`` / ``scp:path.scp``: one ``utt_id rxfilename`` per line, rxfilename may carry a byte
    offset (``foo.ark:1234``). A relative rxfilename is resolved against the working directory first
    (Kaldi's rule) and, failing that, against the scp's own directory.
Pipes (``... |``) are refused: a specifier must name files.
"""

from __future__ import annotations

import io
import os
import re
import sys
from contextlib import redirect_stderr
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

_KALDI_IO = None
_SPEC_PREFIX = re.compile(r"^(ark|scp)((,[a-z]+)*):(.*)$")


class KaldiIOError(ValueError):
    """A Kaldi archive / script file could not be read or written."""


def kaldi_io_module():
    """Import `kaldi_io` without its KALDI_ROOT warning and without a lasting change to the environment."""
    global _KALDI_IO
    if _KALDI_IO is None:
        saved = {k: os.environ.get(k) for k in ("KALDI_ROOT", "PATH")}
        try:
            with redirect_stderr(io.StringIO()):
                import kaldi_io  # noqa: F401  (third-party)
            _KALDI_IO = sys.modules["kaldi_io"]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return _KALDI_IO


def _parse_spec(spec: str | os.PathLike) -> tuple[str, Path]:
    """-> (kind 'ark'|'scp', path). The kind comes from a prefix, else from the suffix (.scp = scp)."""
    s = str(spec).strip()
    if s.endswith("|") or s.startswith("|"):
        raise KaldiIOError(f"pipes are not accepted as Kaldi specifiers: {s!r}")
    m = _SPEC_PREFIX.match(s)
    if m:
        return m.group(1), Path(m.group(4))
    return ("scp" if s.endswith(".scp") else "ark"), Path(s)


def _resolve_rx(rx: str, scp_dir: Path) -> str:
    """Resolve an scp rxfilename (optionally `path:offset`) to an openable one."""
    m = re.match(r"^(.*?)(:[0-9]+)?$", rx)
    fname, offset = m.group(1), m.group(2) or ""
    if fname.endswith("|") or fname.startswith("|"):
        raise KaldiIOError(f"pipes are not accepted in scp files: {rx!r}")
    p = Path(fname)
    if not p.is_absolute() and not p.exists() and (scp_dir / p).exists():
        p = scp_dir / p
    if not p.exists():
        raise KaldiIOError(f"scp entry points to a missing file: {fname!r}")
    return f"{p}{offset}"


def read_vectors(spec: str | os.PathLike) -> tuple[list[str], list[np.ndarray]]:
    """Read every (key, float vector) from a Kaldi ark or scp. Keys keep their order; duplicates raise."""
    kio = kaldi_io_module()
    kind, path = _parse_spec(spec)
    if not path.exists():
        raise KaldiIOError(f"no such file: {path}")
    keys: list[str] = []
    vecs: list[np.ndarray] = []
    try:
        if kind == "ark":
            with open(path, "rb") as fd:
                for key, vec in kio.read_vec_flt_ark(fd):
                    keys.append(key)
                    vecs.append(np.asarray(vec))
        else:
            with open(path, "r", encoding="utf-8") as fd:
                for lineno, line in enumerate(fd, 1):
                    line = line.strip()
                    if not line:
                        continue
                    parts = line.split(None, 1)
                    if len(parts) != 2:
                        raise KaldiIOError(f"{path}:{lineno}: expected 'utt_id rxfilename', got {line!r}")
                    rx = _resolve_rx(parts[1].strip(), path.parent)
                    keys.append(parts[0])
                    vecs.append(np.asarray(kio.read_vec_flt(rx)))
    except KaldiIOError:
        raise
    except Exception as e:  # kaldi_io raises assorted exceptions on bad input
        raise KaldiIOError(f"cannot read Kaldi vectors from {spec}: {type(e).__name__}: {e}") from e
    seen: set[str] = set()
    for k in keys:
        if k in seen:
            raise KaldiIOError(f"duplicate key {k!r} in {spec}")
        seen.add(k)
    return keys, vecs


def write_vectors(
    keys: Sequence[str],
    vectors: Iterable[np.ndarray],
    ark_path: str | os.PathLike,
    scp_path: str | os.PathLike | None = None,
) -> None:
    """Write float32 vectors as a binary Kaldi ark (and an scp with byte offsets, absolute ark path)."""
    kio = kaldi_io_module()
    ark_path = Path(ark_path)
    ark_path.parent.mkdir(parents=True, exist_ok=True)
    scp_lines = []
    with open(ark_path, "wb") as fd:
        for key, vec in zip(keys, vectors, strict=True):
            if not key or re.search(r"\s", key):
                raise KaldiIOError(f"Kaldi keys must be non-empty without whitespace: {key!r}")
            vec = np.ascontiguousarray(np.asarray(vec, dtype=np.float32).reshape(-1))
            fd.write((key + " ").encode("latin1"))
            offset = fd.tell()
            kio.write_vec_flt(fd, vec)
            scp_lines.append(f"{key} {ark_path.resolve()}:{offset}\n")
    if scp_path is not None:
        scp_path = Path(scp_path)
        scp_path.parent.mkdir(parents=True, exist_ok=True)
        scp_path.write_text("".join(scp_lines))
