import base64
import io
import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from multimoe.cli import main
from multimoe.evaluate import predict
from multimoe.report import render_html, report_frames, routing_report_frames, save_report
from multimoe.runs.reopen import open_run
from multimoe.train import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny Flex-MoE run (bank, combination supervision) on 3 synthetic modalities with 30 % MCAR."""
    return train(tiny_config(tmp_path_factory.mktemp("report"), "train.epochs=2")).run_dir


@pytest.fixture(scope="module")
def report(run_dir):
    frames = report_frames(open_run(run_dir))
    page = save_report(frames, run_dir / "report")
    return page, page.read_text(), frames


class _Tables(HTMLParser):
    """Tables of the report page: frame name -> (column names, rows of cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, tuple[list[str], list[list[str]]]] = {}
        self._name, self._cell, self._row = None, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._name = a["data-frame"]
            self.tables[self._name] = ([], [])
        elif tag == "th" and self._name:
            self.tables[self._name][0].append(a["data-col"])
        elif tag == "tr" and self._name:
            self._row = []
        elif tag == "td" and self._name:
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._name and self._row:
            self.tables[self._name][1].append(self._row)
            self._row = []
        elif tag == "table":
            self._name = None


def _matches(text: str, value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return text == "-"
    if isinstance(value, (bool, np.bool_)):
        return text == ("yes" if value else "no")
    if isinstance(value, (int, np.integer)):
        return text == str(int(value))
    if isinstance(value, (float, np.floating)):
        return abs(float(text) - float(value)) <= 5e-5
    return text == str(value)


def test_report_renders_self_contained_with_valid_pngs(report):
    page, text, _ = report
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text
    assert not re.search(r"(src|href)=\"(?!data:)", text)  # nothing to fetch: opens offline
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    files = sorted(page.parent.glob("*.png"))
    names = {p.name for p in files}
    assert {"activation_combination.png", "activation_modality.png", "own_expert.png", "entropy.png"} <= names
    assert {"load.png", "bank_similarity.png", "metrics_by_combination.png", "drift.png"} <= names
    assert len(uris) == len(files)
    embedded = {base64.b64decode(u) for u in uris}
    for path in files:
        png = path.read_bytes()
        assert png.startswith(PNG_SIGNATURE) and png in embedded
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and min(im.size) > 100
    assert (page.parent / "data" / "activation_combination.csv").is_file()


def test_numbers_in_the_html_match_the_frames(report):
    _, text, frames = report
    parser = _Tables()
    parser.feed(text)
    expected = {"summary", "metrics", "routing_combination", "routing_modality", "load_balance", "bank_claim"}
    assert expected <= set(parser.tables)
    for name, (columns, rows) in parser.tables.items():
        frame = frames[name]
        assert len(rows) == len(frame), name
        for row, values in zip(rows, frame[columns].itertuples(index=False)):
            for col, cell, value in zip(columns, row, values):
                assert _matches(cell, value), f"{name}.{col}: html {cell!r} vs frame {value!r}"


def test_activation_fractions_sum_to_one_per_group(report):
    frames = report[2]
    for name, key in (("activation_combination", "combination"), ("activation_modality", ["modality", "observed"])):
        sums = frames[name].groupby(["layer", *np.atleast_1d(key)])[["slot_share", "weight_share", "top1_share"]].sum()
        np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-9)
    assert set(frames["activation_combination"]["combination"]) == set(frames["metrics"]["combination"])


def test_activation_and_own_expert_match_a_direct_count(run_dir, report):
    """Recount top-k assignments from the model's own routing on the test split."""
    frames = report[2]
    run = open_run(run_dir)
    ids, combo = [], []
    predict(run.model, run.splits.test, 64, on_output=lambda out, b: (ids.append(out.moe[0].routing.ids_TK),
                                                                      combo.append(out.info.combo_T)))  # fmt: skip
    ids_TK, combo_T = torch.cat(ids).numpy(), torch.cat(combo).numpy()
    E, K = run.model.cfg.moe.num_experts, ids_TK.shape[1]
    act = frames["activation_combination"].set_index(["index", "expert"])["slot_share"]
    rc = frames["routing_combination"].set_index("index")
    for c in np.unique(combo_T):
        mine = ids_TK[combo_T == c]
        share = np.bincount(mine.ravel(), minlength=E) / mine.size
        np.testing.assert_allclose(act.loc[c].to_numpy(), share, atol=1e-12)
        assert rc.loc[c, "tokens"] == len(mine)
        assert rc.loc[c, "own_topk"] == pytest.approx((mine == c).any(axis=1).mean())  # identity map: expert c
        assert rc.loc[c, "own_top1"] == pytest.approx((mine[:, 0] == c).mean())
    assert K == 2


def test_bank_baseline_is_the_rebuilt_initialisation(report):
    frames = report[2]
    assert list(frames["bank_claim"]["fill"]) == ["trained", "init", "update"]
    rows = frames["bank_rows"]
    assert (rows.loc[rows["train_samples"] > 0, "relative_update"] > 0).all()
    pairs = frames["bank_pairs"]
    assert len(pairs) == 3 * 3  # 3 modalities x 3 pairs among the 3 trained combinations lacking each one
    assert set(pairs["shared"]) == {0, 1}


def test_drift_has_one_point_per_epoch(report):
    drift = report[2]["drift"]
    for stat in ("load_cv", "own_weight", "usage_entropy"):
        assert sorted(drift.loc[drift["stat"] == stat, "epoch"].unique()) == [1, 2]


def test_model_without_bank_reports_through_the_cli_under_another_protocol(tmp_path, capsys):
    run_dir = train(tiny_config(tmp_path, "train.epochs=1", "model.fill=zero")).run_dir
    assert main(["report", str(run_dir), "data.missing=mcar:0.6"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    page = run_dir / "report-mcar0.6" / "report.html"
    assert out["report"] == str(page) and "no missing-modality bank" in page.read_text()
    summary = pd.read_csv(page.parent / "data" / "summary.csv").set_index("item")["value"]
    assert summary["evaluated under"] == "mcar:0.6" and summary["trained under"] == "mcar:0.3"
    assert pd.read_csv(page.parent / "data" / "activation_combination.csv")["slot_share"].notna().all()
    assert main(["report", str(run_dir), "model.dim=4"]) == 2
    assert "valid overrides" in capsys.readouterr().err


def test_dense_model_without_bank_still_reports(tmp_path):
    run_dir = train(tiny_config(tmp_path, "train.epochs=1", "model.ffn=dense", "model.fill=token")).run_dir
    frames = routing_report_frames(run_dir)
    notes = " ".join(str(v) for v in frames["summary"]["value"])
    assert frames["activation_combination"].empty and frames["bank_pairs"].empty
    assert "no MoE layer" in notes and "no missing-modality bank" in notes
    doc, pngs = render_html(frames)
    assert "metrics_by_combination.png" in pngs and "no missing-modality bank" in doc


def test_late_fusion_run_reports_without_routing(tmp_path):
    from conftest import tiny_config

    from multimoe.report import write_report
    from multimoe.train import train

    run = train(tiny_config(tmp_path, "model.arch=late_fusion", "train.epochs=1"))
    page = write_report(run.run_dir)
    assert page.is_file() and "accuracy" in page.read_text().lower()


def test_an_ensembles_report_names_each_members_layers(tmp_path):
    """model.members=2 with 2 fusion layers: 4 MoE layers in member order; every routing frame says whose layer it
    is (member = layer // 2) and the page titles name member and layer."""
    run_dir = train(tiny_config(tmp_path, "train.epochs=1", "model.members=2", "model.layers=2")).run_dir
    frames = routing_report_frames(run_dir)
    for name in ("routing_combination", "routing_modality", "load_balance", "activation_combination"):
        frame = frames[name]
        assert sorted(frame["layer"].unique()) == [0, 1, 2, 3], name
        assert (frame["member"] == frame["layer"] // 2).all(), name
    summary = frames["summary"].set_index("item")["value"]
    assert summary["MoE layers"] == "4 (2 members)"
    doc, _ = render_html(frames)
    assert "(member 1, MoE layer 0)" in doc and "(member 0, MoE layer 1)" in doc


def test_an_ensembles_report_tests_each_members_bank(tmp_path):
    """model.members=2: each member has its own bank, initialised from its own draws. The bank frames list both
    members; member 1's pairs are those of its own bank against its own rebuilt initialisation (member 0's
    initial bank would give other updates), and the page says which member the figures show."""
    from multimoe.model import build_model
    from multimoe.report.bank import bank_pairs

    run_dir = train(tiny_config(tmp_path, "train.epochs=1", "model.members=2")).run_dir
    frames = routing_report_frames(run_dir)
    assert list(frames["bank_claim"]["member"]) == [0, 0, 0, 1, 1, 1]
    assert list(frames["bank_claim"]["fill"]) == ["trained", "init", "update"] * 2
    run = open_run(run_dir)
    torch.manual_seed(run.cfg.seed)
    built = build_model(run.cfg.model, run.splits.schema)  # as train builds it: member 0's draws, then member 1's
    train_count_S = np.bincount(run.splits.train.combo_N.numpy(), minlength=7)  # 3 modalities: 7 combinations
    modalities = run.splits.schema.modalities
    bank_1 = run.model.members[1].fill.bank_SMPD.detach().numpy()
    for init, same in ((built.members[1], True), (built.members[0], False)):
        expected = bank_pairs(bank_1, modalities, train_count_S, init.fill.bank_SMPD.detach().numpy())
        ours = frames["bank_pairs"][frames["bank_pairs"]["member"] == 1].drop(columns="member")
        assert np.allclose(ours["cosine_update"], expected["cosine_update"]) == same
    rows = frames["bank_rows"]
    assert set(rows["member"]) == {0, 1} and (rows.loc[rows["train_samples"] > 0, "relative_update"] > 0).all()
    doc, _ = render_html(frames)
    assert "the figures and the summary show member 0" in doc and "Spearman (update) of every member" in doc
    read = rows[rows["train_samples"] > 0]
    medians = [float(np.median(read.loc[read["member"] == k, "relative_update"])) for k in (0, 1)]
    assert f"moved by a median {medians[0]:.4f}, {medians[1]:.4f} of their initial norm, member by member" in doc


def test_under_weight_decay_the_init_baseline_is_the_shrunk_initialisation(tmp_path):
    """AdamW with weight decay 0.1 at lr 3e-3: the rows training never reads get no gradient, so every step shrinks
    them by 1 - 3e-4 and nothing else moves them; after the best epoch's steps (ceil(train rows / 32) per epoch) the
    report's init baseline is the rebuilt initialisation times (1 - 3e-4)^steps, and the note gives that factor."""
    from multimoe.model import build_model

    result = train(tiny_config(tmp_path, "train.optimizer=adamw", "train.weight_decay=0.1"))
    frames = routing_report_frames(result.run_dir)
    assert list(frames["bank_claim"]["fill"]) == ["trained", "init", "update"]
    steps = result.best_epoch * math.ceil(len(result.splits.train) / 32)
    factor = (1 - 3e-3 * 0.1) ** steps
    notes = " ".join(str(v) for k, v in zip(frames["summary"]["item"], frames["summary"]["value"]) if "note" in k)
    assert f"by a factor {factor:.4f}" in notes
    run = open_run(result.run_dir)
    torch.manual_seed(run.cfg.seed)
    init = build_model(run.cfg.model, run.splits.schema).fill.bank_SMPD.detach().numpy().astype(np.float64)
    trained = run.model.fill.bank_SMPD.detach().numpy().astype(np.float64)
    rows = frames["bank_rows"].set_index(["index", "modality"])
    c, m = int(rows.index[0][0]), run.splits.schema.modalities.index(rows.index[0][1])
    v, v0 = trained[c, m].ravel(), factor * init[c, m].ravel()
    assert rows["relative_update"].iloc[0] == pytest.approx(np.linalg.norm(v - v0) / np.linalg.norm(v0), rel=1e-4)
