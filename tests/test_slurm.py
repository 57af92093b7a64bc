"""Scale-out on a real SLURM cluster: a one-node cluster (munged, slurmctld, slurmd started by
scripts/slurm_cluster.sh without systemd) runs a tiny configuration of the whole workflow through
`snakemake --profile profiles/slurm-test` (the production profile with this cluster's quirks), and every output equals the same configuration run locally,
byte for byte (files that hold wall times or absolute paths aside, as scripts/compare_runs.py names
them). Skipped, with the reason, where the daemons cannot be installed or started (not root, no
Debian packages)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (RESUME_PRETRAIN, ROOT, TINY, TINY_CORPORA, missing_synthesizers, run_snakemake, seed_corpora,
                      start_snakemake, stop, wait_or_kill)

pytestmark = pytest.mark.slow
# the tiny chain, smaller still: one k, one pruned model, SID and the erase ablation with one seed; no PR
# (pr_eval through SLURM, with its time-limit resume, is the next test's)
EXTRA = ("analysis: {k_ssl: [3]}\n"
         "pr: {enabled: false}\n"
         "prune: {strategies: [protected], targets: [protected_size]}\n"
         "sid: {crop_seconds: 1.0, learning_rates: [0.01], seeds: [0], epochs: 5}\n"
         "erase: {random_seeds: [0]}\n"
         "controls: {enabled: false}\n")
# The profile, with the first status check after 2 s instead of its 10 (a test cluster answers squeue at
# once; most of a tiny job's time through SLURM is the wait for that check)
PROFILE = ("--profile", "profiles/slurm-test", "--slurm-init-seconds-before-status-checks", "2")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "starting SLURM daemons needs root"
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue")
               if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"SLURM packages missing ({', '.join(missing)}): run `make test` as root on Debian"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (make setup)"
    missing = missing_synthesizers()
    if missing:
        return f"speech synthesizers missing ({', '.join(missing)}): run `make setup` as root"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = _why_not()
    if why:
        pytest.skip(why)
    state = tmp_path_factory.mktemp("slurm")
    # 6 CPUs on the node: the time-limit test's paced jobs (mostly asleep) run beside the twin's jobs
    res = subprocess.run(["bash", str(ROOT / "scripts/slurm_cluster.sh"), "start", str(state)], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, SLURM_CPUS="6"))
    if res.returncode != 0:
        pytest.skip(f"the SLURM daemons did not start: {res.stderr.strip()[-500:]}")
    # the executor plugin's waits for a production controller capped at 1 s (tests/site_hooks)
    env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"),
               PATH=f"{Path(sys.executable).parent}:/usr/sbin:{os.environ.get('PATH', '')}",
               PYTHONPATH=str(ROOT / "tests/site_hooks"), TEST_SLURM_WAIT_SECONDS="1")
    yield env
    subprocess.run(["bash", str(ROOT / "scripts/slurm_cluster.sh"), "stop", str(state)], capture_output=True,
                   timeout=120)


def test_dry_run_prints_the_submission_plan_with_resources(cluster, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(EXTRA)
    res = run_snakemake("--profile", "profiles/slurm-test", "-n", "--configfile", str(TINY), str(extra),
                        "--config", f"results={tmp_path / 'r'}", env=cluster, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "rule pretrain_melhubert" in out
    block = out.split("rule pretrain_melhubert", 1)[1].split("rule ", 1)[0]
    # resources from the work (speaker_neurons.costs): present on the job, --mem / --time of its sbatch
    assert re.search(r"mem_mb=\d+", block) and re.search(r"runtime=\d+", block) and re.search(r"disk_mb=\d+", block)
    assert "gpu=0" in block  # device cpu: the plugin adds no --gpus for 0
    extra.write_text(EXTRA + "upstream: {device: cuda, gpu_model: h200}\n"
                     "resources: {pretrain_melhubert: {mem_mb: 12000, runtime: 90}}\n")
    res = run_snakemake("--profile", "profiles/slurm-test", "-n", "--configfile", str(TINY), str(extra),
                        "--config", f"results={tmp_path / 'r'}", env=cluster, timeout=300)
    out = res.stdout + res.stderr
    block = out.split("rule pretrain_melhubert", 1)[1].split("rule ", 1)[0]
    assert "gpu=1" in block and "gpu_model=h200" in block and "mem_mb=12000" in block and "runtime=90" in block
    block = out.split("rule synthesize_demo_corpus", 1)[1].split("rule ", 1)[0]
    assert "gpu" not in block  # rules that run no model never ask for one


@pytest.fixture(scope="module")
def cancelled_and_resumed(cluster, tiny_corpora, tmp_path_factory, time_limited):
    """The tiny chain run twice side by side (beside the time-limit test's runs, started first):
    locally into `local` (the session's shared corpora,
    synthesized by the workflow) and through SLURM into `slurm`, which synthesizes its own (the
    comparison covers the corpora too). The SLURM run's pre-training job is `scancel`led once its
    step-10 checkpoint exists; the next run through the profile resumes it and finishes the chain.
    Returns (local, slurm, the exit status of the cancelled run)."""
    import time

    base = tmp_path_factory.mktemp("slurm_runs")
    extra = base / "extra.yaml"
    # one thread per job: the local run and the SLURM run share the 2 cores (two 2-thread jobs on 2 cores
    # wait on each other's threads at every parallel region); the resume tests' pre-training (40 steps,
    # a checkpoint every 5)
    extra.write_text(EXTRA + "upstream: {threads: 1}\n" + RESUME_PRETRAIN)
    local, slurm = base / "local", base / "slurm"
    seed_corpora(tiny_corpora, local, TINY_CORPORA)
    config = ["--configfile", str(TINY), str(extra), "--config"]
    proc = start_snakemake(base / "local.log", "--cores", "2", *config, f"results={local}")
    # --retries 0: the profile would resubmit the cancelled job at once; this run must fail instead
    cancelled = start_snakemake(base / "cancelled.log", *PROFILE, "--retries", "0", *config, f"results={slurm}",
                                env=cluster)
    scratch = slurm / "resume/melhubert_demo/pretrain_melhubert"
    deadline = time.monotonic() + 900
    try:
        while not (scratch / "step_10").exists():
            assert cancelled.poll() is None and time.monotonic() < deadline, \
                "the run ended before it could be cancelled:\n" + (base / "cancelled.log").read_text()[-3000:]
            time.sleep(0.05)
        # this run's pre-training job (the time-limit test's jobs share the cluster)
        jobs = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/rule_pretrain_melhubert/",
                          (base / "cancelled.log").read_text())
        assert len(jobs) == 1, (base / "cancelled.log").read_text()[-3000:]
        subprocess.run(["scancel", *jobs], env=cluster, check=True)
        status = wait_or_kill(cancelled, 300)
    finally:
        stop(cancelled)
    try:
        assert not (slurm / "models/melhubert_demo/pretrain/summary.json").exists()
        res = run_snakemake(*PROFILE, *config, f"results={slurm}", env=cluster, timeout=1800)
        assert wait_or_kill(proc, 1800) == 0, (base / "local.log").read_text()[-6000:]
    finally:
        stop(proc)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "slurm" in (res.stdout + res.stderr).lower()
    return local, slurm, status


def _same_outputs(local: Path, slurm: Path) -> set[str]:
    """The two runs wrote the same files, byte for byte but those scripts/compare_runs.py names as holding
    wall times or paths; returns the files (relative paths)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import compare_runs

    files_local = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    files_slurm = {str(p.relative_to(slurm)) for p in slurm.rglob("*") if p.is_file()}
    assert files_local == files_slurm, sorted(files_local ^ files_slurm)
    differ = [rel for rel in sorted(files_local)
              if (local / rel).read_bytes() != (slurm / rel).read_bytes() and compare_runs.kind(rel) is None]
    assert differ == [], differ
    return files_local


def test_tiny_workflow_through_slurm_equals_the_local_run(cancelled_and_resumed):
    local, slurm, _ = cancelled_and_resumed
    files_local = _same_outputs(local, slurm)
    for must in ("summary.tsv", "models/melhubert_demo/model/model.safetensors",
                 "models/melhubert_demo-protected-pset/sid/demo_eval/sid.json",
                 "models/melhubert_demo/analysis/ssl_k3/erase/erase.tsv"):
        assert must in files_local
    # each rule's log says what ran where
    log = (slurm / "logs/melhubert_demo/pretrain_melhubert.log").read_text()
    assert "stage pretrain_melhubert [model=melhubert_demo]" in log and "device cpu" in log
    assert re.search(r"thread\(s\), host \S+, SLURM job \d+", log), log[:400]
    assert "SLURM job" not in (local / "logs/melhubert_demo/pretrain_melhubert.log").read_text()


def test_scancelled_pretraining_resumes_through_slurm(cancelled_and_resumed):
    """`scancel` of the pre-training job mid-training: that run fails, the next run through the profile
    resumes from the last checkpoint, and the model ends byte-identical to the uninterrupted local run
    (and so does every result after it: the test above)."""
    from test_resume import _losses

    local, slurm, status = cancelled_and_resumed
    assert status != 0  # snakemake reports the job CANCELLED and fails
    log = (slurm / "logs/melhubert_demo/pretrain_melhubert.log").read_text()
    assert "RESUMING from" in log and re.search(r"SLURM job \d+", log)
    assert "RESUMING from" not in (local / "logs/melhubert_demo/pretrain_melhubert.log").read_text()
    a, b = local / "models/melhubert_demo", slurm / "models/melhubert_demo"
    for rel in ("model/model.safetensors", "pretrain/head.pt", "pretrain/kmeans_centers.npy"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert _losses(a / "pretrain/train_log.tsv") == _losses(b / "pretrain/train_log.tsv")
    assert len(_losses(a / "pretrain/train_log.tsv")) == 41


# Jobs past their time limit: pre-training of the tiny model and pr_eval of the shipped demo model (a
# second model, so that the two jobs run side by side), each given `runtime: 1` (--time=1), SLURM's
# shortest, with every training step slowed by TEST_STEP_SECONDS (tests/site_hooks: a sleep, which changes
# no result) so that each job needs about 100 s: more than the first limit however late slurmctld's
# time-limit check (every 30 s) catches it, and less than the rerun's 2 minutes after the resume.
TIME_LIMIT_EXTRA = ("upstream: {threads: 1}\n"
                    "models:\n"
                    "  - {name: melhubert_demo, kind: melhubert, source: pretrain}\n"
                    "  - {name: shipped, kind: melhubert, source: checkpoint, path: models/melhubert_demo/model, "
                    "format: native}\n"
                    + RESUME_PRETRAIN
                    + "pr: {steps: 40, eval_every: 20, checkpoint_every: 5, learning_rates: [0.01], seeds: [0]}\n"
                    "resources: {pretrain_melhubert: {runtime: 1}, pr_eval: {runtime: 1}}\n")
STEP_SECONDS = 2.5


@pytest.fixture(scope="module")
def time_limited(cluster, tiny_corpora, tmp_path_factory):
    """The time-limit scenario, started in the background (its jobs mostly sleep: the twin's run beside
    them) and awaited by its test: the local run and the run through SLURM of TIME_LIMIT_EXTRA. A thread
    asks SLURM for the state of every job every 2 s until the SLURM run ends (squeue forgets a job
    MinJobAge after it ended). Yields (local, slurm, local process, {status, out, state} once the thread is done, the thread)."""
    import threading
    import time

    base = tmp_path_factory.mktemp("time_limit")
    extra = base / "extra.yaml"
    extra.write_text(TIME_LIMIT_EXTRA)
    local, slurm = base / "local", base / "slurm"
    for results in (local, slurm):
        seed_corpora(tiny_corpora, results, TINY_CORPORA)
    config = ["--configfile", str(TINY), str(extra), "--config"]

    def targets(results):
        return ["--", results / "models/melhubert_demo/pretrain/summary.json",
                results / "models/shipped/pr/demo_eval/pr.json"]

    proc = start_snakemake(base / "local.log", "--cores", "2", *config, f"results={local}", *targets(local))
    paced = dict(cluster, TEST_STEP_SECONDS=str(STEP_SECONDS))
    # up to 2 retries: a loaded machine may need a third attempt (the profile's retries: 1 is production's)
    run = start_snakemake(base / "slurm.log", *PROFILE, "--retries", "2", *config, f"results={slurm}",
                          *targets(slurm), env=paced)
    ended: dict = {"state": {}}

    def poll_states():
        ids = ",".join(re.findall(r"submitted with SLURM jobid (\d+)", (base / "slurm.log").read_text()))
        if ids:
            ended["state"].update(line.split(" ", 1) for line in subprocess.run(
                ["squeue", "-h", "-t", "all", "-j", ids, "-o", "%i %T %l"], env=cluster, capture_output=True,
                text=True).stdout.split("\n") if line)

    def watch():
        deadline = time.monotonic() + 1200
        try:
            while run.poll() is None and time.monotonic() < deadline:
                poll_states()
                time.sleep(2)
            ended["status"] = run.poll()
        finally:
            poll_states()
            ended["out"] = (base / "slurm.log").read_text()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield local, slurm, proc, ended, thread
    finally:
        stop(proc)
        stop(run)


def test_jobs_past_their_time_limit_are_rerun_with_more_time_and_resume(time_limited):
    """A pre-training job and a pr_eval job submitted with a `--time` too short: SLURM stops each at its
    limit (state TIMEOUT; SIGTERM, on which the stage saves a checkpoint of that step), `retries`
    resubmits it with runtime x attempt, the rerun resumes from that step (a second attempt on a quiet
    machine, a third on a loaded one), and the outputs equal an uninterrupted local run of the same
    configuration byte for byte."""
    local, slurm, proc, ended, thread = time_limited
    thread.join(1200)
    assert wait_or_kill(proc, 600) == 0, (local.parent / "local.log").read_text()[-6000:]
    out = ended["out"]
    assert ended["status"] == 0, out[-6000:]

    # each rule's jobs in submission order, and what SLURM says of them
    jobs: dict[str, list[tuple[str, Path]]] = {}
    for job, log in re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)", out):
        jobs.setdefault(Path(log).parts[-3].removeprefix("rule_"), []).append((job, Path(log)))
    state = ended["state"]
    for rule, log, saved, resumed in (
            ("pretrain_melhubert", "melhubert_demo/pretrain_melhubert.log", r"checkpoint of step (\d+)/40 saved",
             r"RESUMING from \S+/step_(\d+) "),
            ("pr_eval", "shipped/pr_eval.log", r"PR heads checkpoint of step (\d+)/40 saved",
             r"RESUMING the PR heads at step (\d+)/40")):
        attempts = jobs.get(rule, [])
        # the first attempt runs out of its minute; each retry asks for one minute more (runtime x attempt)
        # and resumes; on a quiet machine the second finishes, on a loaded one a third may be needed
        assert len(attempts) in (2, 3), (rule, jobs)
        for n, (job, _) in enumerate(attempts, start=1):
            want = "COMPLETED" if n == len(attempts) else "TIMEOUT"
            assert state[job] == f"{want} {n}:00", (rule, n, state)
        # a job stopped at its limit may have cut a progress bar's multi-byte character in half
        text = (slurm / "logs" / log).read_text(errors="replace")
        for (before, before_log), (after, _) in zip(attempts, attempts[1:]):
            # an attempt saved the step it was at on SIGTERM; the next resumed there, in its own job
            job_out = before_log.read_text(errors="replace")
            step = re.findall(saved, job_out)
            assert step and "DUE TO TIME LIMIT" in job_out, job_out[-3000:]
            part = text.split(f"SLURM job {after}", 1)
            assert len(part) == 2 and re.search(resumed, part[1]).group(1) == step[-1], text[-3000:]
            assert 0 < int(step[-1]) < 40

    files_local = _same_outputs(local, slurm)
    for must in ("models/melhubert_demo/model/model.safetensors", "models/melhubert_demo/pretrain/head.pt",
                 "models/shipped/pr/demo_eval/pr.json", "models/shipped/pr/demo_eval/heads.safetensors"):
        assert must in files_local and (local / must).read_bytes() == (slurm / must).read_bytes(), must
