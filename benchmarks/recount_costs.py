"""Recount the compute figures of a sweep's stored ``hgb`` and blend cells, which predate their counting.

``hgb`` cells stored before ``HGB.flops`` have no FLOPs; blend cells (``model.blend``) stored before
``Blend.costs`` count the network only. For every such cell that SWEEP plans and the store holds, the data, split
and mask are rebuilt as the cell had them, the trees (and with ``hgb+svm`` the per-modality machines) are fit again
as the run fit them (deterministic, from the cell's seed), and the cell's figures are rewritten as a run of today's
code writes them:

- ``hgb``: ``flops_per_sample`` (one comparison per tree and level); its stored node count must equal the refit's;
- blends: ``Blend.costs`` of the network's own costs (rebuilt from the cell's config); the stored figures must be
  the network's alone (then rewritten) or already the blend's (then left as they are).

Any other mismatch means the refit is not the cell's and stops the script before anything is written. Nothing but
those figures changes: no metric is recomputed. The old store is kept next to the new one as ``cells.jsonl.bak``,
and a second run changes nothing.

    python benchmarks/recount_costs.py configs/sweeps/accuracy.yaml     # from the repository's root; ~30 min, 1 core
    multimoe bench configs/sweeps/accuracy.yaml --render-only          # the tables, recounted
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from multimoe.baselines import HGB
from multimoe.bench.store import read_cells, writer_lock
from multimoe.bench.sweep import load_sweep, yaml_scalar
from multimoe.blend import Blend, Product, Trees
from multimoe.cost import model_costs
from multimoe.data.prepare import prepare
from multimoe.data.table import build_table
from multimoe.files import write_jsonl
from multimoe.model import build_model, resolve
from multimoe.registry import load_config

FIGURES = ("parameters", "active_parameters", "flops_per_sample", "train_flops_per_sample")


def recount(sweep_path: str, cells_path: Path) -> tuple[int, list[dict]]:
    """The store's records with the figures of SWEEP's hgb and blend cells recounted, and how many changed."""
    sweep = load_sweep(sweep_path)
    planned = {c["key"]: c for c in sweep.cells()}
    stored = read_cells(cells_path)
    todo = {}  # index in the store -> (config, planned cell)
    for i, record in enumerate(stored):
        cell = planned.get(record["key"])
        if cell is None or record.get("status") != "ok":
            continue
        preset, overrides = sweep.cell_overrides(cell)
        cfg = load_config(preset, [f"{k}={yaml_scalar(v)}" for k, v in overrides.items()])
        if cfg.model.arch == "hgb" or cfg.model.blend != "none":
            todo[i] = (cfg, cell)
    current, got, changed = None, {}, 0  # the split and fits of the grid point and seed at hand
    for n, (i, (cfg, cell)) in enumerate(sorted(todo.items(), key=lambda kv: _order(kv[1][1])), start=1):
        record = stored[i]
        seed = cell["seed"]
        data_key = (json.dumps(dataclasses.asdict(cfg.data), sort_keys=True), seed)
        if data_key != current:  # one split, one forest and one set of machines per grid point and seed
            current, got = data_key, {"splits": prepare(build_table(cfg.data), cfg.data, seed)}
        splits = got["splits"]
        hgb_key = ("hgb", cfg.model.hgb_max_iter)
        if hgb_key not in got:
            got[hgb_key] = HGB(cfg.model, seed).fit(splits.train)
        hgb = got[hgb_key]
        if cfg.model.arch == "hgb":
            if record["parameters"] != hgb.size():
                raise SystemExit(f"{record['key']}: {record['parameters']} nodes stored, {hgb.size()} refit")
            new = {**{k: record.get(k) for k in FIGURES}, "flops_per_sample": hgb.flops()}
        else:
            model_cfg, _ = resolve(cfg.model, splits.schema)
            net = build_model(model_cfg, splits.schema)
            network = model_costs(net, model_cfg, splits.schema)
            trees = Trees(splits.schema).set_arrays({k: v.numpy() for k, v in hgb.state_dict().items()})
            product = None
            if cfg.model.blend == "hgb+svm":
                if "product" not in got:
                    got["product"] = Product(splits.schema).fit(splits.train, seed)
                product = got["product"]
            new = Blend(net, trees, product=product).costs(network)
            was = {k: record.get(k) for k in FIGURES}
            if was != {k: network[k] for k in FIGURES} and was != {k: new[k] for k in FIGURES}:
                raise SystemExit(f"{record['key']}: stored {was}, neither the network's {network} nor the blend's")
        updates = {k: new[k] for k in FIGURES if record.get(k) != new[k]}  # cells older than a figure lack it
        if updates:
            stored[i] = {**record, **updates}
            changed += 1
        moved = ", ".join(f"{k} {record.get(k)} -> {v}" for k, v in updates.items()) or "unchanged"
        print(f"[{n}/{len(todo)}] {cell['method']} {cell['point']} seed {seed}: {moved}", flush=True)
    return changed, stored


def _order(cell: dict) -> tuple:
    """Cells of one grid point and seed next to each other, so each split and fit is made once."""
    return json.dumps(cell["point"], sort_keys=True), cell["seed"], cell["method"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="a sweep file, e.g. configs/sweeps/accuracy.yaml")
    parser.add_argument("--cells", default="results/cells.jsonl")
    args = parser.parse_args(argv)
    path = Path(args.cells)
    with writer_lock(path.parent):  # no bench may append while the store is rewritten
        changed, stored = recount(args.sweep, path)
        if changed:
            shutil.copyfile(path, path.with_name(path.name + ".bak"))
            write_jsonl(path, stored)
    print(f"{changed} cells recounted in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
