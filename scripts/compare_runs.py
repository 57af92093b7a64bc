"""Compare two results folders of the same config, file by file, byte for byte.

    .venv/bin/python scripts/compare_runs.py RESULTS_A RESULTS_B

Every file present in both is compared. Files that legitimately differ between two runs are named
by pattern and counted apart: they hold absolute paths (the manifests, HuBERT's .tsv, the i-vector
.scp) or what depends on them (provenance and JSON records hash the manifest), or wall times (logs,
benchmarks, summary.json, train_log.tsv's elapsed_s column and the same rows in a checkpoint's
state.pt, loss_curve.png). Exit status 1 when any
other file differs (those are results: models, labels, counts, neuron sets, audio, tables, plots).
"""

from __future__ import annotations

import filecmp
import fnmatch
import sys
from pathlib import Path

EXPECTED = {
    "absolute paths": ["corpora/*/manifest*.tsv", "*/hubert.tsv", "corpora/*/ivectors/ivectors.scp"],
    "records that hash or name inputs": ["*provenance/*.json", "*/activation_counts.json", "corpora/*/audio/corpus.json"],
    "wall times": ["logs/*", "benchmarks/*", "*/pretrain/summary.json", "*/pretrain/train_log.tsv",
                   "*/pretrain/loss_curve.png", "*/checkpoints/*/state.pt"],  # state.pt: the log rows so far
}


def kind(rel: str) -> str | None:
    for why, patterns in EXPECTED.items():
        if any(fnmatch.fnmatch(rel, p) for p in patterns):
            return why
    return None


def main(a: Path, b: Path) -> int:
    files_a = {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()}
    files_b = {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()}
    common = sorted(files_a & files_b)
    same, expected, unexpected = 0, {}, []
    for rel in common:
        if filecmp.cmp(a / rel, b / rel, shallow=False):
            same += 1
        elif kind(rel):
            expected.setdefault(kind(rel), []).append(rel)
        else:
            unexpected.append(rel)
    print(f"{len(common)} files in both ({len(files_a - files_b)} only in A, {len(files_b - files_a)} only in B)")
    print(f"byte-identical: {same}")
    for why, rels in expected.items():
        print(f"differ, as expected ({why}): {len(rels)}")
    print(f"differ, unexpectedly: {len(unexpected)}")
    for rel in unexpected:
        print(f"  {rel}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
