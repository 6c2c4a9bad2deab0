"""The benchmark harness: every method on the same data, splits, masks, budget and seeds.

A sweep file names methods (a preset plus overrides each), a grid of config overrides (e.g. datasets and
missingness protocols), seeds, the overrides every cell shares (the training budget), and the reference method
for paired comparisons. ``run_sweep`` expands methods x grid x seeds into cells, runs them in worker processes
(one per core by default, one torch thread each), and appends one JSON line per finished cell to the store
``<results>/cells.jsonl`` (``store.py``). A cell's key holds a digest of its fully resolved config, so sweeps
sharing a store never compute the same cell twice. A restart skips finished cells; a line cut short by a kill is
dropped and repaired. Tables and plots of a sweep go to ``<results>/<sweep name>/`` (``render.py``).

    name: main
    seeds: [0, 1, 2, 3, 4]
    reference: flexmoe
    budget: "what is held equal across methods"
    common: {train.batch_size: 32, train.patience: 10}
    methods:
      flexmoe: configs/flexmoe.yaml
      flexmoe-token: {preset: configs/flexmoe.yaml, overrides: {model.fill: token}}
    grid:
      - {data.name: mfeat, data.missing: "mcar:0.3"}
    per_combination: true   # also test every combination of observed modalities once (Flex-MoE's table)
    skip:                   # cells the sweep does not run, and why (the tables count them apart)
      - {method: flexmoe-token, where: {data.name: mfeat}, reason: "cut for the CPU budget"}

A ``skip`` entry names one method or a list of them, optionally the grid values (``where``) a point must have, and
a reason; the bench never runs the cells it matches, and the tables say how many were skipped and why.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from multimoe.config import ADDED_KEYS, Config, ConfigError, load_yaml, to_dict
from multimoe.registry import load_config
from multimoe.runs.folder import without_neutral

SWEEP_KEYS = (
    "name", "description", "seeds", "reference", "budget", "common", "methods", "grid", "per_combination", "skip"
)  # fmt: skip


@dataclass
class Sweep:
    name: str
    methods: dict[str, dict]  # method -> {"preset": path, "overrides": {dotted key: value}}
    grid: list[dict]  # points: {dotted key: value}
    seeds: list[int]
    common: dict = field(default_factory=dict)
    reference: str | None = None
    budget: str = ""
    description: str = ""
    per_combination: bool = False
    source: Path | None = None  # the sweep file
    skip: list[dict] = field(default_factory=list)  # {"methods": [...], "where": {dotted key: value}, "reason": ...}

    digests: dict = field(default_factory=dict)  # (method, point index) -> digest of the resolved config
    complete_cases: set = field(default_factory=set)  # (method, point index) whose config has data.complete_cases

    def cells(self) -> list[dict]:
        return [
            {"method": m, "point": point, "seed": seed, "key": cell_key(m, point, seed, self.digests.get((m, i), ""))}
            for i, point in enumerate(self.grid)
            for m in self.methods
            for seed in self.seeds
        ]

    def skip_reason(self, cell: dict) -> str | None:
        """Why the sweep file skips ``cell`` (its first matching ``skip`` entry), or None when it is planned."""
        return next((entry["reason"] for entry in self.skip if _matches(entry, cell)), None)

    def planned(self) -> list[dict]:
        """The cells the bench runs: every cell but the skipped ones."""
        return [c for c in self.cells() if self.skip_reason(c) is None]

    def cell_overrides(self, cell: dict) -> tuple[str, dict]:
        """The cell's preset path and its overrides: common < method < grid point < seed."""
        spec = self.methods[cell["method"]]
        over = {**self.common, **spec.get("overrides", {}), **cell["point"], "seed": cell["seed"]}
        return spec["preset"], {"method": cell["method"], **over}


def cell_key(method: str, point: dict, seed: int, digest: str = "") -> str:
    return f"{method}|{json.dumps(point, sort_keys=True)}|{seed}|{digest}"


def config_digest(cfg) -> str:
    """A digest of everything that decides a cell's result: the config without its result-neutral keys (where it
    is written, how it is shown, where it runs), without the seed, which the key holds on its own, and without the
    keys added after cells were stored (``multimoe.config.ADDED_KEYS``) while at their defaults, so that the cells
    stored before a key existed, which ran its default, keep their keys."""
    d = without_neutral(to_dict(cfg), also=("seed",))
    defaults = to_dict(Config())
    for key in ADDED_KEYS:
        *parents, last = key.split(".")
        node, default = d, defaults
        for p in parents:
            node, default = node[p], default[p]
        if node[last] == default[last]:
            del node[last]
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file: every cell's config must load before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist (sweeps live in configs/sweeps/)")
    try:
        raw = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file {path} is not valid YAML: {e}") from None
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key '{unknown[0]}'; valid keys: {', '.join(SWEEP_KEYS)}")
    for key in ("methods", "grid", "seeds"):
        if not raw.get(key):
            raise ConfigError(f"sweep file {path} needs a non-empty '{key}'")
    root = path.parent
    methods = {}
    for name, spec in raw["methods"].items():
        spec = {"preset": spec} if isinstance(spec, str) else dict(spec)
        if set(spec) - {"preset", "overrides"} or "preset" not in spec:
            raise ConfigError(f"sweep {path}: method '{name}' needs 'preset' and optional 'overrides'")
        preset = Path(spec["preset"])
        if not preset.is_file():  # relative to the working directory, else to the sweep file
            preset = root / spec["preset"]
        methods[str(name)] = {"preset": str(preset), "overrides": dict(spec.get("overrides") or {})}
    grid = [dict(p or {}) for p in raw["grid"]]
    sweep = Sweep(
        name=str(raw.get("name") or path.stem),
        methods=methods,
        grid=grid,
        seeds=[int(s) for s in raw["seeds"]],
        common=dict(raw.get("common") or {}),
        reference=raw.get("reference"),
        budget=str(raw.get("budget") or ""),
        description=str(raw.get("description") or ""),
        per_combination=bool(raw.get("per_combination", False)),
        source=path,
    )
    sweep.skip = [_skip_entry(path, i, entry, methods) for i, entry in enumerate(raw.get("skip") or [])]
    for i, entry in enumerate(sweep.skip):
        if not any(_matches(entry, c) for c in sweep.cells()):
            raise ConfigError(f"sweep {path}: skip entry {i + 1} ({entry['where']}) matches no cell of the grid")
    if sweep.reference is not None and sweep.reference not in methods:
        raise ConfigError(f"sweep {path}: reference '{sweep.reference}' is not one of the methods {list(methods)}")
    for i, point in enumerate(sweep.grid):  # every (method, point) must make a valid config
        for method in methods:
            preset, over = sweep.cell_overrides({"method": method, "point": point, "seed": 0})
            try:
                cfg = load_config(preset, [f"{k}={yaml_scalar(v)}" for k, v in over.items()])
            except ConfigError as e:
                raise ConfigError(f"sweep {path}, method '{method}', point {point}: {e}") from None
            sweep.digests[(method, i)] = config_digest(cfg)
            if cfg.data.complete_cases:
                sweep.complete_cases.add((method, i))
    return sweep


def _skip_entry(path: Path, i: int, entry, methods: dict) -> dict:
    where = f"sweep {path}: skip entry {i + 1}"
    if not isinstance(entry, dict) or set(entry) - {"method", "where", "reason"} or "method" not in entry:
        raise ConfigError(f"{where} needs 'method' (a name or a list), optional 'where' (grid values) and 'reason'")
    names = [entry["method"]] if isinstance(entry["method"], str) else list(entry["method"])
    unknown = [n for n in names if n not in methods]
    if unknown:
        raise ConfigError(f"{where} names the method '{unknown[0]}', which is not one of {list(methods)}")
    if not str(entry.get("reason") or "").strip():
        raise ConfigError(f"{where} needs a 'reason': the tables say why its cells were not run")
    if not isinstance(entry.get("where") or {}, dict):
        raise ConfigError(f"{where}: 'where' must map grid keys to values, e.g. {{data.name: mfeat}}")
    return {"methods": names, "where": dict(entry.get("where") or {}), "reason": str(entry["reason"]).strip()}


def _matches(entry: dict, cell: dict) -> bool:
    point = cell["point"]
    return cell["method"] in entry["methods"] and all(k in point and point[k] == v for k, v in entry["where"].items())


def yaml_scalar(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)
