"""Command line: ``multimoe train | eval | report | datasets``. Subcommands compose library functions and hold no logic.

The last line ``train`` and ``eval`` print on stdout is one JSON object with ``run_dir`` and ``test`` metrics;
``report`` prints one with ``run_dir`` and ``report`` (the HTML page).
"""

from __future__ import annotations

import argparse
import json
import sys

from multimoe.checkpoint import CheckpointError
from multimoe.config import ConfigError, load_config
from multimoe.data import DataError, DataPackageMissing
from multimoe.evaluate import format_results

USER_ERRORS = (ConfigError, DataError, DataPackageMissing, CheckpointError)


def _final_line(run_dir: str, test: dict, **extra) -> str:
    o = test["overall"]
    return json.dumps(
        {"run_dir": run_dir, "test": {"accuracy": o["accuracy"], "f1": o["f1"], "auc": o["auc"], "n": o["n"]}, **extra}
    )


def cmd_train(args: argparse.Namespace) -> None:
    from multimoe.train import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    print(f"best epoch {result.best_epoch + 1} of {result.summary['epochs_run']}, run folder {result.run_dir}")
    print(format_results(result.test, f"test ({cfg.data.missing})"))
    print(_final_line(str(result.run_dir), result.test, best_epoch=result.best_epoch))


def cmd_eval(args: argparse.Namespace) -> None:
    from multimoe.runs import evaluate_run

    result = evaluate_run(args.run_dir, args.overrides)
    print(format_results(result["test"], f"test ({result['missing']}; trained under {result['train_missing']})"))
    print(_final_line(result["run_dir"], result["test"], missing=result["missing"]))


def cmd_report(args: argparse.Namespace) -> None:
    from multimoe.report import write_report

    page = write_report(args.run_dir, args.out, args.overrides)
    print(f"routing report written to {page} (figures and data/ next to it)")
    print(json.dumps({"run_dir": args.run_dir, "report": str(page)}))


def cmd_datasets(args: argparse.Namespace) -> None:
    from multimoe.config import DataConfig
    from multimoe.data import DATASETS

    for name, info in DATASETS.items():
        print(f"{name}: {info.description}")
        if not info.installed:
            print(f"  package {info.package}=={info.version} not installed; install with: {info.install}")
            continue
        table = info.load(DataConfig(name=name))
        mods = ", ".join(f"{m} ({len(c)})" for m, c in table.modalities.items())
        classes = table.frame[table.label].nunique()
        source = f"package {info.package}=={info.version} installed" if info.package else "generated"
        print(f"  rows {len(table.frame)}, classes {classes}, label '{table.label}', {source}")
        print(f"  modalities (columns): {mods}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multimoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a config (a preset in configs/) and test its best validation epoch")
    p.add_argument("config", help="YAML preset, e.g. configs/flexmoe.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.name=mfeat seed=1")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a run's best model, e.g. under another missingness protocol")
    p.add_argument("run_dir", help="a folder written by `multimoe train`")
    p.add_argument("overrides", nargs="*", help="e.g. data.missing=mcar:0.5")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("report", help="write a run's routing report (HTML + PNG figures) from its test split")
    p.add_argument("run_dir", help="a folder written by `multimoe train`")
    p.add_argument("overrides", nargs="*", help="e.g. data.missing=mcar:0.5 (as eval)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("datasets", help="list the built-in datasets and whether their packages are installed")
    p.set_defaults(func=cmd_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
