"""Carry a results store (cells.jsonl) across a change of the config layout, so that no finished cell is recomputed.

A cell's key ends in a digest of its resolved config; a new layout (renamed keys, a new list of result-neutral keys)
gives every cell a new digest. This script computes, for every sweep in configs/sweeps/, the digest of each
(method, grid point) under the old code and sweep files (a git revision, run from a temporary copy) and under the
current ones,
and rewrites the keys of the stored cells whose old digest matches: exactly the cells the current sweep files
would compute again. Other cells (stale digests of edited sweeps) are left as they are. Store version 2 also counts
epochs from 1 (``best_epoch`` + 1). Records already at version 2 are left alone, so a second run changes nothing.

    python benchmarks/migrate_store.py --from-rev 109c67d results/cells.jsonl

The old store is kept next to the new one as cells.jsonl.bak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from multimoe.bench.store import STORE_VERSION

DIGESTS = """
import json, sys
from pathlib import Path
sys.path.insert(0, ".")  # this tree's package, ahead of an editable install's finder
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()]
from multimoe.bench import load_sweep
out = {}
for path in sorted(Path("configs/sweeps").glob("*.yaml")):
    sweep = load_sweep(path)
    for (method, i), digest in sweep.digests.items():
        out[json.dumps([path.name, method, sweep.grid[i]], sort_keys=True)] = digest
print(json.dumps(out))
"""


def digests(tree: Path) -> dict[str, str]:
    """(sweep file, method, point) -> digest, for every sweep file of ``tree`` (a checkout: multimoe/ and
    configs/), computed by that tree's own code."""
    out = subprocess.run([sys.executable, "-c", DIGESTS], cwd=tree, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"computing digests in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path, help="the cells.jsonl to migrate")
    parser.add_argument("--from-rev", required=True, help="git revision whose code wrote the store's keys")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(
            ["git", "archive", args.from_rev, "multimoe", "configs"], cwd=repo, capture_output=True
        )
        if archive.returncode:
            raise SystemExit(archive.stderr.decode())
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(old, filter="data")
        before = digests(Path(old))
    after = digests(repo)
    rename = {}  # old digest -> new digest, over the (sweep, method, point) both layouts have
    for k in before.keys() & after.keys():
        if rename.setdefault(before[k], after[k]) != after[k]:
            raise SystemExit(f"digest {before[k]} would map to two new digests ({k}); not migrating")
    lines = args.store.read_text().splitlines()
    moved = kept = already = 0
    out = []
    for line in lines:
        record = json.loads(line)
        if record.get("store_version") == STORE_VERSION:
            already += 1
        else:
            head, seed, digest = record["key"].rsplit("|", 2)
            if digest in rename:
                record["key"] = f"{head}|{seed}|{rename[digest]}"
                moved += 1
            else:
                kept += 1
            if isinstance(record.get("best_epoch"), int):
                record["best_epoch"] += 1
            record["store_version"] = STORE_VERSION
        out.append(json.dumps(record))
    backup = args.store.with_suffix(".jsonl.bak")
    backup.write_text("\n".join(lines) + "\n")
    args.store.write_text("\n".join(out) + "\n")
    print(f"{moved} cells re-keyed, {kept} kept their key (no current sweep computes them), {already} already at "
          f"version {STORE_VERSION}; backup: {backup}")  # fmt: skip


if __name__ == "__main__":
    main()
