"""Command line: ``multimoe train | eval | predict | export | report | bench | datasets | list``. It parses and calls
library functions.

Nothing heavy loads before the arguments are parsed (the parts of the library that load torch, pandas or
scikit-learn are imported inside the command that needs them), so ``--help`` and ``list`` answer at once. The last
line ``train`` and ``eval`` print on stdout is one JSON object with ``run_dir`` and ``test`` metrics (and, for a
``train`` under torchrun, ``world_size``: rank 0 alone prints); ``report`` prints one with ``run_dir`` and
``report`` (the HTML page); ``predict`` one with ``predictions``, ``rows`` and ``by_combination``; ``export`` one
with ``model`` and ``bytes``. Errors a user can fix print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from multimoe.config import ConfigError
from multimoe.errors import USER_ERRORS
from multimoe.registry import REGISTRIES, load_config, presets, presets_dir
from multimoe.runs.folder import RunFolder


def _final_line(run_dir: str, test: dict, **extra) -> str:
    o = test["overall"]
    return json.dumps(
        {"run_dir": run_dir, "test": {"accuracy": o["accuracy"], "f1": o["f1"], "auc": o["auc"], "n": o["n"]}, **extra}
    )


def cmd_train(args: argparse.Namespace) -> None:
    from multimoe import distributed
    from multimoe.evaluate import format_results
    from multimoe.train import train

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():  # `train --resume RUN key=value`
        config, overrides = None, [config, *overrides]
    if args.resume:
        config = config or RunFolder.open(args.resume).config  # default: the run's own resolved config
        overrides.append(f"train.resume={args.resume}")
    elif config is None:
        raise ConfigError("train needs a CONFIG (a preset such as configs/flexmoe.yaml) or --resume RUN_DIR")
    cfg = load_config(config, overrides)
    try:
        result = train(cfg)
    finally:
        distributed.shutdown()  # under torchrun: leave the process group
    if result.rank:  # under torchrun rank 0 alone reports
        return
    print(f"best epoch {result.best_epoch} of {result.summary['epochs_run']}, run folder {result.run_dir}")
    print(format_results(result.test, f"test ({cfg.data.missing})"))
    extra = {"world_size": result.world_size} if result.world_size > 1 else {}
    print(_final_line(str(result.run_dir), result.test, best_epoch=result.best_epoch, **extra))


def cmd_eval(args: argparse.Namespace) -> None:
    from multimoe.evaluate import format_results
    from multimoe.runs.reopen import evaluate_run

    result = evaluate_run(args.run_dir, args.overrides)
    print(format_results(result["test"], f"test ({result['missing']}; trained under {result['train_missing']})"))
    print(_final_line(result["run_dir"], result["test"], missing=result["missing"]))


def cmd_predict(args: argparse.Namespace) -> None:
    from multimoe.predict import final_line, format_summary, load_predictor

    summary = load_predictor(args.run_dir).predict_file(args.data, args.out, args.id, args.explain)
    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(format_summary(summary))
    print(final_line(summary))


def cmd_export(args: argparse.Namespace) -> None:
    from multimoe.export import export_onnx

    path = export_onnx(args.run_dir, args.out)
    print(f"exported {args.run_dir} to {path} (inputs: preprocessed modality tensors and the presence mask)")
    print(json.dumps({"model": str(path), "bytes": path.stat().st_size}))


def cmd_report(args: argparse.Namespace) -> None:
    from multimoe.report import write_report

    page = write_report(args.run_dir, args.out, args.overrides)
    print(f"routing report written to {page} (figures and data/ next to it)")
    print(json.dumps({"run_dir": args.run_dir, "report": str(page)}))


def cmd_datasets(args: argparse.Namespace) -> None:
    from multimoe.data.builtin import describe_datasets

    for d in describe_datasets():
        print(f"{d['name']}: {d['description']} (license: {d['license']})")
        if not d["installed"]:
            print(f"  package {d['package']} not installed; install with: {d['install']}")
            continue
        mods = ", ".join(f"{m} ({n})" for m, n in d["modalities"].items())
        source = f"package {d['package']} installed" if d["package"] else "generated"
        print(f"  rows {d['rows']}, classes {d['classes']}, label '{d['label']}', {source}")
        print(f"  modalities: {mods}")


def cmd_list(args: argparse.Namespace) -> None:
    valid = [*REGISTRIES, "presets"]
    unknown = [w for w in args.what if w not in valid]
    if unknown:
        raise ConfigError(f"multimoe list {unknown[0]}: nothing by that name; choose from: {', '.join(valid)}")
    for what in args.what or valid:
        if what == "presets":
            folder = presets_dir()
            print(f"presets ({folder if folder else 'no configs/ folder found'}):")
            items = [(name, text, "") for name, text in presets().items()]
        else:
            reg = REGISTRIES[what]
            print(f"{what} ({reg.key}):")
            items = [(n, e.summary, e.kind) for n, e in reg.entries.items()]
        width = max((len(n) for n, _, _ in items), default=0)
        for name, text, kind in items:
            print(f"  {name:<{width}}  {f'[{kind}] ' if kind else ''}{text}")


def cmd_bench(args: argparse.Namespace) -> None:
    from multimoe.bench import load_sweep, read_cells, render, run_sweep

    sweep = load_sweep(args.sweep)
    out = Path(args.out)
    if not args.render_only:
        try:
            run_sweep(sweep, out, jobs=args.jobs, threads=args.threads, executor=args.executor, address=args.address)
        except KeyboardInterrupt:
            print(f"\ninterrupted: the finished cells are in {out / 'cells.jsonl'}; the same command resumes",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(130) from None
    command = " ".join(["multimoe bench", args.sweep] + [a for a in sys.argv[3:] if not a.startswith("--render")])
    readme = render(sweep, out, command=command)
    keys = {c["key"] for c in sweep.planned()}  # the cells the sweep file plans (not the ones it skips)
    cells = [c for c in read_cells(out / "cells.jsonl") if c["key"] in keys]
    ok = len({c["key"] for c in cells if c.get("status") == "ok"})
    print(readme.read_text())
    print(json.dumps({"results": str(readme.parent), "cells_ok": ok, "cells_expected": len(keys)}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multimoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a config (a preset in configs/) and test its best validation epoch")
    p.add_argument("config", nargs="?", help="YAML preset, e.g. configs/flexmoe.yaml (with --resume: the run's own)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.name=mfeat seed=1")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a killed run from its last completed epoch (train.resume)"
    )
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a run's best model, e.g. under another missingness protocol")
    p.add_argument("run_dir", help="a folder written by `multimoe train`")
    p.add_argument("overrides", nargs="*", help="e.g. data.missing=mcar:0.5")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("predict", help="predict new rows (CSV, TSV, Parquet or a YAML spec) with a run's best model")
    p.add_argument("run_dir", help="a folder written by `multimoe train`")
    p.add_argument(
        "data",
        help="a CSV, TSV or Parquet file with the training table's columns (the label is optional), "
        "or a YAML spec of the new rows (series, image, text, embedding modalities from their files)",
    )
    p.add_argument("--out", help="output table: CSV, or Parquet by extension (default: print a summary only)")
    p.add_argument("--id", metavar="COLUMN", help="a column of DATA to pass through to the output")
    p.add_argument("--explain", action="store_true", help="add each row's top experts and gate weights per modality")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", help="export a run's best neural model (ONNX) for serving")
    p.add_argument("run_dir", help="a folder written by `multimoe train`")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the format (onnx)")
    p.add_argument("--out", help="output file (default: RUN_DIR/model.onnx)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("bench", help="run a sweep (methods x grid x seeds) in parallel, resumable; render tables/plots")
    p.add_argument("sweep", help="sweep file, e.g. configs/sweeps/main.yaml")
    p.add_argument("--out", default="results", help="results folder: cells.jsonl store, <sweep name>/ tables")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per core)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    where = "where cells run: local worker processes, or Ray tasks (pip install 'multimoe[ray]')"
    p.add_argument("--executor", choices=["local", "ray"], default="local", help=where)
    p.add_argument("--address", help="with --executor ray: the cluster (e.g. auto, HOST:6379); default a local Ray")
    p.add_argument("--render-only", action="store_true", help="only re-render tables and plots from cells.jsonl")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("report", help="write a run's routing report (HTML + PNG figures) from its test split")
    p.add_argument("run_dir", help="a folder written by `multimoe train`")
    p.add_argument("overrides", nargs="*", help="e.g. data.missing=mcar:0.5 (as eval)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("datasets", help="the built-in datasets: modalities, sizes, licenses, install status")
    p.set_defaults(func=cmd_datasets)
    p = sub.add_parser("list", help="every registry (encoders, fills, routers, archs, datasets) and the presets")
    p.add_argument("what", nargs="*", help="only these: encoders, fills, routers, archs, datasets, presets")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after an option (`train CONFIG --resume RUN seed=1`) land here
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
