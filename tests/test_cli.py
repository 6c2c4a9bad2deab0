import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from multimoe.cli import main

TINY = ["data.synthetic.samples=200", "data.synthetic.modalities=2", "model.dim=8", "model.tokens=2",
        "model.heads=2", "model.moe.hidden=8", "model.moe.router.top_k=2", "train.epochs=2",
        "train.batch_size=32", "train.progress=false"]  # fmt: skip


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_train_then_eval_print_a_final_json_line(tmp_path, capsys):
    assert main(["train", "configs/flexmoe.yaml", f"out_dir={tmp_path}", *TINY]) == 0
    out = last_json(capsys.readouterr().out)
    assert set(out["test"]) >= {"accuracy", "f1", "auc"}
    run_dir = out["run_dir"]
    assert main(["eval", run_dir, "data.missing=mcar:0.5"]) == 0
    ev = last_json(capsys.readouterr().out)
    assert ev["run_dir"] == run_dir and ev["missing"] == "mcar:0.5"
    assert ev["test"]["n"] == out["test"]["n"]  # the same test rows under another mask
    written = json.loads((Path(run_dir) / "eval-mcar0.5.json").read_text())
    assert written["test"]["overall"]["accuracy"] == ev["test"]["accuracy"]


def test_eval_rejects_overrides_that_change_the_model(tmp_path, capsys):
    assert main(["train", "configs/flexmoe.yaml", f"out_dir={tmp_path}", *TINY]) == 0
    run_dir = last_json(capsys.readouterr().out)["run_dir"]
    assert main(["eval", run_dir, "model.dim=4"]) == 2
    assert "valid overrides: data.missing" in capsys.readouterr().err


def test_user_table_via_spec(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 150)
    df = pd.DataFrame({"u": y + rng.normal(size=150), "v": rng.normal(size=150), "w": y * 1.0, "label": y})
    df.to_csv(tmp_path / "mine.csv", index=False)
    (tmp_path / "mine.yaml").write_text("path: mine.csv\nlabel: label\nmodalities:\n  one: [u, v]\n  two: [w]\n")
    assert main(["train", "configs/flexmoe.yaml", f"data.spec={tmp_path / 'mine.yaml'}", f"out_dir={tmp_path}",
                 *TINY, "train.lr=3e-3", "train.epochs=8"]) == 0  # fmt: skip
    assert last_json(capsys.readouterr().out)["test"]["auc"] > 0.7


def test_bad_input_exits_2_with_a_message(capsys):
    assert main(["train", "configs/flexmoe.yaml", "model.moe.topk=3"]) == 2
    assert "unknown config key model.moe.topk" in capsys.readouterr().err


def test_console_script_datasets_lists_every_dataset():
    out = subprocess.run(
        [sys.executable, "-m", "multimoe", "datasets"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("mfeat", "support2", "landsat", "synthetic", "hapt", "mfeat-image"):
        assert f"{name}:" in out


def _modules_after(code: str) -> list[str]:
    """Which heavy libraries a fresh interpreter holds after running ``code``."""
    probe = code + "\nimport sys\nprint(sorted(m for m in ('torch', 'sklearn', 'scipy', 'pandas') if m in sys.modules))"
    return json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
                      .stdout.strip().splitlines()[-1].replace("'", '"'))  # fmt: skip


def test_help_and_list_load_no_torch():
    parse = "from multimoe.cli import build_parser\nbuild_parser().parse_known_args(['train', 'configs/flexmoe.yaml'])"
    assert _modules_after(parse) == []
    for args in (["predict", "RUN", "data.csv", "--out", "p.csv", "--explain"], ["export", "RUN", "--format", "onnx"]):
        assert _modules_after(f"from multimoe.cli import build_parser\nbuild_parser().parse_args({args!r})") == []
    help_ = "import contextlib\nfrom multimoe.cli import main\nwith contextlib.suppress(SystemExit): main(['--help'])"
    assert _modules_after(help_) == []
    listing = "from multimoe.cli import main\nassert main(['list']) == 0"
    assert _modules_after(listing) == []
    assert _modules_after("import multimoe") == []


def test_list_prints_every_registry_and_the_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for section in ("encoders (model.encoder.kind)", "routers (model.moe.router.kind)", "presets ("):
        assert section in out
    assert "noisy_topk" in out and "flexmoe " in out and "[baseline]" in out
    assert main(["list", "routers"]) == 0
    assert "fills" not in capsys.readouterr().out
    assert main(["list", "widgets"]) == 2
    assert "choose from: encoders, fills" in capsys.readouterr().err
