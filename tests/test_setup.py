"""The setup script, without touching the machine: fake dpkg-query / id / apt-get on PATH."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup_system.sh"


def _fake_bin(tmp_path: Path, installed: set[str], uid: int) -> dict:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.txt"
    scripts = {
        "dpkg-query": "#!/bin/sh\npkg=\"$3\"\ncase \" %s \" in *\" $pkg \"*) printf 'install ok installed';; *) exit 1;; esac\n"
        % " ".join(sorted(installed)),
        "id": f"#!/bin/sh\necho {uid}\n",
        "apt-get": f"#!/bin/sh\necho apt-get \"$@\" >> {calls}\n",
    }
    for name, body in scripts.items():
        p = bindir / name
        p.write_text(body)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    return {"env": env, "calls": calls}


def _packages() -> list[str]:
    text = SCRIPT.read_text()
    block = text[text.index("PACKAGES=(") + len("PACKAGES=(") : text.index(")", text.index("PACKAGES=("))]
    return block.split()


def test_nothing_to_do_when_every_package_is_installed(tmp_path):
    fake = _fake_bin(tmp_path, set(_packages()), uid=1000)
    res = subprocess.run(["bash", str(SCRIPT)], env=fake["env"], capture_output=True, text=True)
    assert res.returncode == 0 and "all" in res.stdout and "present" in res.stdout
    assert not fake["calls"].exists()


def test_non_root_user_gets_the_exact_commands_and_nothing_runs(tmp_path):
    pkgs = _packages()
    fake = _fake_bin(tmp_path, set(pkgs) - {"mbrola-us1", "libttspico-utils"}, uid=1000)
    res = subprocess.run(["bash", str(SCRIPT)], env=fake["env"], capture_output=True, text=True)
    assert res.returncode == 1
    assert "mbrola-us1 libttspico-utils" in res.stderr
    assert "apt-get install -y --no-install-recommends mbrola-us1 libttspico-utils" in res.stderr
    assert "apt-get update" in res.stderr
    assert not fake["calls"].exists(), "a non-root run must not call apt-get"


def test_every_voice_the_demo_needs_is_installed_by_setup():
    from speaker_neurons.data import synth

    pkgs = set(_packages())
    needed = {v.package for v in synth.VOICES.values()}
    needed |= {p for pkgs in synth.ENGINE_PACKAGES.values() for p in pkgs}
    assert needed, "voices should name their Debian package"
    assert needed <= pkgs, f"setup_system.sh misses {sorted(needed - pkgs)}"
