"""Generated multimodal data with any number of modalities, whose labels need several modalities jointly.

Each modality sees only a coarsened label: the classes are paired up by a modality-specific random pairing and a
modality's features encode the pair, not the class. One modality alone can therefore reach at most about half the
classes' separation; two modalities with different pairings identify the class. A model that ignores a modality
is measurably worse. The generator is fixed for a given shape, so every seed sees the same data and only the split
and masks change. Always labelled synthetic in results.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from multimoe.config import DataConfig
from multimoe.data.builtin import BuiltinDataset
from multimoe.data.table import Table
from multimoe.errors import DataError

LATENT = 8  # latent width behind each modality's features


def generate(modalities: int, features: int, samples: int, classes: int, noise: float) -> Table:
    if modalities < 1 or features < 1 or classes < 2 or samples < 10 * classes:
        raise DataError(
            f"synthetic data needs modalities >= 1, features >= 1, classes >= 2 and samples >= 10 x classes; "
            f"got modalities={modalities}, features={features}, classes={classes}, samples={samples}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([0x5E, modalities, features, samples, classes]))
    y = rng.permutation(np.arange(samples) % classes)
    columns, mods = {}, {}
    for m in range(modalities):
        pair_of_class = np.empty(classes, dtype=np.int64)
        pair_of_class[rng.permutation(classes)] = np.arange(classes) // 2
        prototypes = 1.5 * rng.standard_normal((pair_of_class.max() + 1, LATENT))
        mixing = rng.standard_normal((LATENT, features)) / np.sqrt(LATENT)
        latent = prototypes[pair_of_class[y]] + noise * rng.standard_normal((samples, LATENT))
        x = np.tanh(latent @ mixing) + 0.1 * rng.standard_normal((samples, features))
        names = [f"m{m}_{j}" for j in range(features)]
        columns.update(dict(zip(names, x.T)))
        mods[f"m{m}"] = names
    frame = pd.DataFrame(columns)
    frame["label"] = y
    return Table(name="synthetic", frame=frame, label="label", modalities=mods, source="generated", synthetic=True)


def load(cfg: DataConfig) -> Table:
    s = cfg.synthetic
    return generate(s.modalities, s.features, s.samples, s.classes, s.noise)


DATASET = BuiltinDataset(load, license="generated")
