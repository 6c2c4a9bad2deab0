"""The preprocessing as JSON and on new rows (multimoe/data/preprocess.py): rebuilt from its JSON form it encodes the
training table's rows bit for bit as prepare did; new rows follow the training rules (absent modalities, empty cells,
unseen categories, numbers spelt another way) and bad cells are errors naming the row."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import frame_table
from sklearn.preprocessing import QuantileTransformer, StandardScaler

from multimoe.config import DataConfig
from multimoe.data.prepare import prepare
from multimoe.data.preprocess import Preprocessor, scaler_from_dict, scaler_to_dict
from multimoe.errors import DataError


@pytest.mark.parametrize("scaler", [StandardScaler(), QuantileTransformer(n_quantiles=50)])
def test_a_scaler_rebuilt_from_json_transforms_bit_for_bit(scaler):
    rng = np.random.default_rng(0)
    X = rng.lognormal(size=(200, 4))
    X[::7, 1] = np.nan
    scaler.fit(X)
    rebuilt = scaler_from_dict(json.loads(json.dumps(scaler_to_dict(scaler))))
    new = rng.lognormal(size=(50, 4)) * 3  # new rows, some outside the training range
    new[::5, 2] = np.nan
    assert np.array_equal(rebuilt.transform(new), scaler.transform(new), equal_nan=True)


@pytest.mark.parametrize("kind", ["standard", "quantile"])
def test_json_preprocessing_encodes_the_training_rows_exactly_as_prepare(kind):
    table = frame_table(200)
    table.frame["shade"] = np.where(np.arange(200) % 3, "dark", "light")  # auto-detected categorical
    table.modalities["b"].append("shade")
    splits = prepare(table, DataConfig(scaler=kind, missing="natural"), seed=0)
    doc = json.loads(json.dumps(splits.preprocessing))  # through JSON text, as read from preprocess.json
    assert doc["auto_categorical"] == ["shade"] and doc["categorical"] == ["color"]
    assert doc["classes"] == ["0", "1"] and doc["label"] == "y" and doc["label_kind"] == "integer"
    pre = Preprocessor.from_dict(doc)
    rows = splits.split_rows["test"]
    enc = pre.transform_frame(table.frame.drop(columns="y").iloc[rows])
    for m in ("a", "b"):
        assert np.array_equal(enc.values[m], splits.test.values[m].numpy())
        assert np.array_equal(enc.missing[m], splits.test.cell_missing[m].numpy())
    assert np.array_equal(enc.present_NM, splits.natural_NM[rows])


def fitted() -> Preprocessor:
    return Preprocessor.from_dict(prepare(frame_table(200), DataConfig(missing="natural"), seed=0).preprocessing)


def test_new_rows_absent_columns_empty_cells_and_unseen_categories():
    pre = fitted()
    new = pd.DataFrame({"a1": [1.0, np.nan, 2.0], "a2": [0.5, np.nan, np.nan], "color": ["red", "blue", "violet"]})
    enc = pre.transform_frame(new)  # b1 is absent from the frame: empty cells of modality b
    assert enc.present_NM.tolist() == [[True, True], [False, True], [True, True]]
    assert enc.missing["b"][:, 0].all() and (enc.values["b"][:, 0] == 0).all()
    categories = pre.coders["b"][1].categories  # ['blue', 'green', 'red']
    assert enc.values["b"][0, 1:].tolist() == [float(c == "red") for c in categories]
    assert (enc.values["b"][2, 1:] == 0).all() and not enc.missing["b"][2, 1:].any()  # unseen: zeros, not missing
    assert enc.unknown["color"].tolist() == [False, False, True]
    assert enc.missing["a"][2].tolist() == [False, True]
    only_b = pre.transform_frame(pd.DataFrame({"b1": [0.1], "color": ["red"]}))
    assert only_b.present_NM.tolist() == [[False, True]]  # modality a absent from the frame: missing


def test_categories_that_are_numbers_match_however_a_chunk_spells_them():
    rng = np.random.default_rng(0)
    table = frame_table(200)
    table.frame["grade"] = rng.integers(1, 4, 200)  # integer categories: "1", "2", "3" in training
    table.modalities["b"].append("grade")
    table.categorical.append("grade")
    pre = Preprocessor.from_dict(prepare(table, DataConfig(missing="natural"), seed=0).preprocessing)
    spelt = pd.DataFrame({"a1": [1.0] * 3, "grade": ["2", "2.0", 2.0]})  # a chunk with empty cells reads "2.0"
    enc = pre.transform_frame(spelt)
    assert pre.coders["b"][2].categories == ["1", "2", "3"]
    assert (enc.values["b"][:, -3:] == [0, 1, 0]).all() and not enc.unknown["grade"].any()


def test_bad_new_rows_are_errors_naming_the_row():
    pre = fitted()
    with pytest.raises(DataError, match=r"column 'a1' in new.csv is numeric but row 12 holds the text 'n/a'"):
        pre.transform_frame(pd.DataFrame({"a1": [1.0, "n/a"], "b1": [1.0, 2.0]}, index=[11, 12]), " in new.csv")
    with pytest.raises(DataError, match=r"'a1' in new.csv is numeric in training but holds only text .* row 5"):
        pre.transform_frame(pd.DataFrame({"a1": ["x"], "b1": [1.0]}, index=[5]), " in new.csv")
    with pytest.raises(DataError, match=r"row 8 in new.csv has no present modality"):
        pre.transform_frame(pd.DataFrame({"a1": [1.0, np.nan], "b1": [2.0, np.nan]}, index=[7, 8]), " in new.csv")
