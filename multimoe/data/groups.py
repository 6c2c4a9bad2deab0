"""A seeded split by group (e.g. by person): every group's rows land in one split.

HAPT's windows overlap by half and one person's windows share their gait and phone placement, so the stratified
row-wise 70/15/15 split (``prepare.split_rows``) would put near copies of training windows in the test split. A
group split tests on people training never saw, the protocol of the UCI HAR benchmarks. It is not stratified: class
shares per split follow the groups drawn, and the row shares are met as closely as whole groups allow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from multimoe.errors import DataError


def split_groups(groups: np.ndarray, seed: int, val_fraction: float, test_fraction: float,
                 where: str = "") -> dict[str, np.ndarray]:  # fmt: skip
    """Row positions of train / val / test: groups shuffled by the seed are dealt to test until it holds
    ``test_fraction`` of the rows (at least one group), then to validation likewise; the other groups train.
    ``test_fraction=0`` deals no test group (the test rows are then the validation rows, as ``split_rows``)."""
    groups = pd.Series(np.asarray(groups))
    if groups.isna().any():
        raise DataError(f"the group column{where} is empty at row {int(np.flatnonzero(groups.isna())[0])}")
    names = np.asarray(pd.unique(groups))
    if names.size < 3:
        raise DataError(
            f"a split by group needs at least 3 groups (train, validation, test); found {names.size}{where}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x67726F]))  # "gro": independent of the other draws
    order = names[rng.permutation(names.size)]
    sizes = groups.value_counts().reindex(order).to_numpy()
    n, out, taken = len(groups), {}, 0
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        count = 1 if fraction > 0 else 0
        while taken + count < names.size - 1 and sizes[taken : taken + count].sum() < fraction * n:
            count += 1
        out[split] = order[taken : taken + count]
        taken += count
    out["train"] = order[taken:]
    if test_fraction == 0:
        out["test"] = out["val"]
    return {k: np.flatnonzero(groups.isin(out[k]).to_numpy()) for k in ("train", "val", "test")}
