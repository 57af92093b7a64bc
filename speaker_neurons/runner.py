"""Running a stage: the log, the threads, the provenance, in one place for every workflow rule.

A stage is a function `fn(ctx) -> dict` registered under its rule's name (`speaker_neurons.stages`
holds them all). `ctx` carries the rule's named `inputs`, `outputs` (every file the stage writes, named
by the rule: the package never chooses a result's name), `params`, `threads`, the resolved `device` and
the inputs' `checksums`. `run_stage` sets up the log (the job, its device, threads and the time of every
stage), holds torch and the BLAS pools to the rule's threads, runs the stage and writes its provenance
(`outputs["provenance"]`: parameters, the resolved config, the inputs' sha256 and the package versions).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from speaker_neurons.utils import get_logger, setup_logging, sha256_paths, write_json, write_provenance

log = get_logger("stages")

STAGES: dict[str, Callable[["StageContext"], dict]] = {}


def stage(fn: Callable[["StageContext"], dict]) -> Callable[["StageContext"], dict]:
    STAGES[fn.__name__] = fn
    return fn


@dataclass
class StageContext:
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    params: dict[str, Any]
    threads: int = 1
    device: str = "cpu"
    checksums: dict[str, str] = field(default_factory=dict)
    wildcards: dict[str, str] = field(default_factory=dict)

    def out(self, key: str) -> Path:
        """An output path (its folder created)."""
        if key not in self.outputs:
            raise KeyError(f"stage {self.name}: the rule declares no output {key!r}")
        p = Path(self.outputs[key])
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def outs(self, *keys: str) -> list[Path]:
        return [self.out(k) for k in keys]

    def write_json(self, key: str, obj: Any) -> Any:
        """Write `obj` as the output `key` (sorted keys, one trailing newline); returns `obj`."""
        write_json(self.out(key), obj)
        return obj

    def model(self, key: str = "model", device: str | None = None, spec: Mapping | None = None,
              mean_std_key: str = "mean_std"):
        """The model of the declared input `key` (a checkpoint file or a native folder), built as
        `spec` (default `params["upstream"]`) says (kind, format), with the input `mean_std_key` where the
        rule declares one."""
        from speaker_neurons.models import load_upstream

        spec = {**(spec or self.params["upstream"]), "path": str(self.inputs[key])}
        if self.inputs.get(mean_std_key):
            spec["mean_std"] = str(self.inputs[mean_std_key])
        return load_upstream(spec, device=device or self.device)

    def sha(self, key: str) -> str | None:
        """The sha256 of the input `key` (of a folder: of its files, hashed together; None when absent)."""
        return self.checksums.get(str(self.inputs[key]))

    def keyed(self, prefix: str) -> dict[str, Any]:
        """The inputs the rule names `<prefix>/<key>`, by key: how a stage joins inputs (never by position)."""
        head = prefix + "/"
        return {k[len(head):]: v for k, v in self.inputs.items() if k.startswith(head)}


def _flat(paths: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for v in paths.values():
        out += [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
    return [p for p in out if p]


class _Tee:
    """A text stream that writes to two: the job's stderr and the rule's log, so that progress bars
    (tqdm writes to sys.stderr) land in the log of a batch job, which has no terminal."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def write(self, text):
        self.second.write(text)
        self.second.flush()
        return self.first.write(text)

    def flush(self):
        self.first.flush()
        self.second.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self.first, name)


#: The thread counts torch and the BLAS libraries read when they load.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class DiskFull(OSError):
    """A stage ran out of disk space; the message names the folder, its free space and what the job asked for."""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space(exc: BaseException | None) -> BaseException | None:
    """The 'no space left' error in `exc`'s chain, if any (libraries wrap it: torch's and safetensors' writers
    raise their own errors with the operating system's message)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return exc
        if any(m in str(exc) for m in ("No space left on device", "Disk quota exceeded")):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _existing(path: str | os.PathLike) -> Path:
    """`path` or its nearest existing ancestor."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _space_report(exc: BaseException, outputs: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[str, str]:
    """(the folder that ran out of space, a sentence on the free space of every disk the job writes to): the
    file the error names if it names one, else the job's folder on the disk with the least space free."""
    import tempfile

    named = getattr(exc, "filename", None)
    folders = [Path(named).parent] if named else []
    folders += [Path(p).parent for p in _flat(outputs)]
    folders += [Path(os.path.expandvars(str(params[k]))) for k in ("scratch_dir", "resume_dir") if params.get(k)]
    folders.append(Path(tempfile.gettempdir()))
    free: dict[int, tuple[Path, int]] = {}
    for f in folders:
        e = _existing(f)
        try:
            dev, left = os.stat(e).st_dev, shutil.disk_usage(e).free
        except OSError:
            continue
        free.setdefault(dev, (f, left))
    ranked = sorted(free.values(), key=lambda fl: fl[1])
    where = Path(named).parent if named else (ranked[0][0] if ranked else Path("."))
    return str(where), "; ".join(f"{f}: {left / 1e6:.1f} MB free" for f, left in ranked)


def _remove_partial(outputs: Mapping[str, Any]) -> list[str]:
    """Remove what a failed stage left of its declared outputs (a later run must never take a partial file
    as complete); returns what was removed. What a resumed run needs (partial stores, checkpoints) is not
    an output and stays."""
    removed = []
    for p in map(Path, _flat(outputs)):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink(missing_ok=True)
        else:
            continue
        removed.append(str(p))
    return removed


def _resolve_device(wanted: str) -> str:
    from speaker_neurons.models import resolve_device

    return str(resolve_device(wanted))


def run_stage(name: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any], params: Mapping[str, Any] | None = None,
              log_path: str | None = None, threads: int = 1, config: Mapping[str, Any] | None = None,
              wildcards: Mapping[str, str] | None = None, disk_mb: float | None = None) -> dict:
    """Run stage `name` (a rule's name) and write its provenance; returns the stage's summary.

    A stage that fails leaves none of its declared outputs behind (`_remove_partial`). One that runs out of
    disk space raises `DiskFull`, naming the folder, the free space of every disk the job writes to, and
    `disk_mb`, what the rule asked for (its `resources.disk_mb`).

    torch is imported only by the stages that use it (a stage that runs no model starts in a fraction of
    the time): its threads are set directly when it is loaded, else through the environment it reads
    when it loads. The device is resolved only for a rule that names one (`params.device`)."""
    from threadpoolctl import threadpool_limits

    if name not in STAGES:
        raise KeyError(f"no stage {name!r}; known: {sorted(STAGES)}")
    setup_logging(log_path)
    params = dict(params or {})
    wanted = params.get("device")
    device = "cpu" if wanted is None else _resolve_device(wanted)
    threads = max(1, int(threads))
    if "compute_threads" in params:  # a config value: results depend on it bit for bit, not on the machine
        compute = int(params["compute_threads"])
        if compute > threads:
            log.warning("Snakemake gave this job %d thread(s); computing with upstream.threads=%d all the same, so "
                        "that the results do not depend on the cores of this run", threads, compute)
        threads = compute
    job = ", ".join(f"{k}={v}" for k, v in (wildcards or {}).items())
    where = f"host {socket.gethostname()}"
    if os.environ.get("SLURM_JOB_ID"):  # a batch job: name it, so that the log and squeue/sacct meet
        where += f", SLURM job {os.environ['SLURM_JOB_ID']}"
    if wanted is None:
        on = "no device (it runs no model)"
    else:
        gpu = f" ({sys.modules['torch'].cuda.get_device_name(device)})" if device.startswith("cuda") else ""
        on = f"device {device}{gpu} (asked {wanted})"
    log.info("stage %s%s: %s, %d thread(s), %s", name, f" [{job}]" if job else "", on, threads, where)
    t0 = time.monotonic()
    checksums = sha256_paths(_flat(inputs))
    log.info("inputs hashed in %.1f s", time.monotonic() - t0)
    ctx = StageContext(name, dict(inputs), dict(outputs), params, threads, device, checksums, dict(wildcards or {}))
    torch = sys.modules.get("torch")
    saved_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    saved_env = {k: os.environ.get(k) for k in _THREAD_VARIABLES}
    os.environ.update({k: str(threads) for k in _THREAD_VARIABLES})  # read by torch and BLAS when they load
    t1 = time.monotonic()
    saved_stderr = sys.stderr
    log_file = open(log_path, "a") if log_path else None
    if log_file is not None:
        sys.stderr = _Tee(saved_stderr, log_file)
    try:
        with threadpool_limits(limits=threads):
            result = STAGES[name](ctx) or {}
    except BaseException as exc:  # the rule's log must say why it failed (a batch job has no terminal)
        log.exception("stage %s FAILED after %.1f s", name, time.monotonic() - t1)
        removed = _remove_partial(outputs)
        if removed:
            log.info("removed the partial output(s) of stage %s: %s", name, ", ".join(removed))
        full = _no_space(exc)
        if full is None:
            raise
        folder, disks = _space_report(full, outputs, params)
        asked = f"it asks for {disk_mb:g} MB of disk (resources.disk_mb)" if disk_mb else "it states no disk need"
        msg = (f"stage {name} ran out of disk space in {folder} ({full}). {disks}; {asked}. Its partial outputs "
               "were removed; what a resumed run needs (a partial store, checkpoints) is kept. Free space there, "
               "or point the folder to a larger disk (results, TMPDIR, pr.scratch_dir), and rerun.")
        log.error(msg)
        raise DiskFull(errno.ENOSPC, msg) from exc
    finally:
        if torch is not None:
            torch.set_num_threads(saved_threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.stderr = saved_stderr
        if log_file is not None:
            log_file.close()
    log.info("stage %s done in %.1f s", name, time.monotonic() - t1)
    if "provenance" in outputs:
        write_provenance(ctx.out("provenance"), stage=name, params=params, config=config, checksums=checksums,
                         wildcards=ctx.wildcards)
    return result


