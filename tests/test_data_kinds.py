"""Modality sources of kind image, text, embedding and series (multimoe/data/kinds/): spec entries, presence, fit on
training rows, batch tensors, lazy image reads in data-loader workers, and every bad input's message."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from multimoe.data.kinds import KINDS, EmbeddingSource, ImageSource, SeriesSource, TextSource, build_source
from multimoe.data.kinds.text import hash_ngrams
from multimoe.errors import DataError


def write_pngs(folder, n=6, size=(10, 12), seed=0):
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        Image.fromarray((rng.random(size) * 255).astype(np.uint8)).save(folder / f"im{i}.png")
        names.append(f"im{i}.png")
    return names


@pytest.fixture
def images(tmp_path):
    """Six grey PNG files in images/, the third row without a path."""
    (tmp_path / "images").mkdir()
    paths = write_pngs(tmp_path / "images")
    paths[2] = ""
    return tmp_path, pd.DataFrame({"path": paths, "y": [0, 1] * 3})


def image_source(images, **entry):
    folder, frame = images
    return build_source("scan", {"kind": "image", "column": "path", "root": "images", **entry}, frame, folder)


# ---- images ------------------------------------------------------------------------------------------------------


def test_image_paths_read_as_grey_arrays_in_0_1_with_an_empty_path_absent(images):
    src = image_source(images, normalize=False)
    assert src.presence().tolist() == [True, True, False, True, True, True]
    assert src.input_shape().shape == (1, 10, 12)
    x, missing = src.batch(np.array([0, 2]))
    assert x.shape == (2, 1, 10, 12) and missing.shape == (2, 10, 12)
    expected = np.asarray(Image.open(images[0] / "images" / "im0.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(x[0, 0].numpy(), expected, atol=1e-6)
    assert not missing[0].any() and missing[1].all() and (x[1] == 0).all()


def test_images_are_resized_to_the_spec_size_and_rgb_when_asked(images):
    x, missing = image_source(images, size=[5, 6], channels=3).batch(np.array([0, 1]))
    assert x.shape == (2, 3, 5, 6) and missing.shape == (2, 5, 6)
    torch.testing.assert_close(x[:, 0], x[:, 2])  # grey pixels: equal channels


def test_normalisation_is_fit_on_training_images_only(images):
    src = image_source(images).fit(np.array([0, 1]))
    x, _ = src.batch(np.array([0, 1]))
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(unbiased=False)) - 1) < 1e-4
    folder = images[0] / "images"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(folder / "im5.png")  # a test image changes: same statistics
    again = image_source(images).fit(np.array([0, 1]))
    assert again.mean_V == pytest.approx(src.mean_V) and again.std_V == pytest.approx(src.std_V)


def test_images_stream_from_disk_and_hidden_rows_are_never_read(images):
    src = image_source(images)
    (images[0] / "images" / "im4.png").unlink()  # made before: reading row 4 would fail now
    x, missing = src.batch(np.array([0, 4]), keep=np.array([True, False]))
    assert missing[1].all() and not missing[0].any()
    with pytest.raises(DataError, match="row 4 of column 'path', file .*im4.png"):
        src.batch(np.array([4]))


class Batches(torch.utils.data.Dataset):
    """Whole batches of a source, as a data loader with a batch sampler asks for them."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return self.source.batch(np.array([2 * i, 2 * i + 1]))


def test_an_image_source_pickles_and_loads_batches_in_worker_processes(images):
    src = image_source(images).fit(np.arange(6))
    assert pickle.loads(pickle.dumps(src)).batch(np.array([0]))[0].shape == (1, 1, 10, 12)
    loader = torch.utils.data.DataLoader(Batches(src), batch_size=None, num_workers=2)
    got = list(loader)
    for i, (x, missing) in enumerate(got):
        ref_x, ref_missing = src.batch(np.array([2 * i, 2 * i + 1]))
        torch.testing.assert_close(x, ref_x)
        assert torch.equal(missing, ref_missing)


def test_a_path_to_no_file_is_an_error_naming_row_and_path_or_a_missing_modality(images):
    folder, frame = images
    frame.loc[3, "path"] = "nope.png"
    with pytest.raises(DataError, match=r"row 3 of column 'path' names the file .*nope\.png, which does not exist.*"
                                        r"missing_file: absent"):  # fmt: skip
        image_source(images)
    assert image_source(images, missing_file="absent").presence().tolist() == [True, True, False, False, True, True]


def test_an_image_that_does_not_decode_is_an_error_naming_row_and_path(images):
    (images[0] / "images" / "im1.png").write_bytes(b"not a png at all")
    src = image_source(images, size=[10, 12], channels=1)
    with pytest.raises(DataError, match=r"row 1 of column 'path', file .*im1\.png: not an image Pillow can decode"):
        src.batch(np.array([0, 1]))


def test_npy_images_and_volumes_keep_nan_pixels_unobserved(tmp_path):
    vol = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    vol[0, 0, :3] = np.nan
    np.save(tmp_path / "v0.npy", vol)
    np.save(tmp_path / "v1.npy", np.full((4, 5, 6), np.nan, np.float32))  # nothing observed: still a present row
    frame = pd.DataFrame({"p": ["v0.npy", "v1.npy", None]})
    src = build_source("mri", {"kind": "image", "column": "p", "dims": 3, "normalize": False}, frame, tmp_path)
    assert src.input_shape().shape == (1, 4, 5, 6) and src.presence().tolist() == [True, True, False]
    x, missing = src.batch(np.arange(3))
    assert missing[0, 0, 0, :3].all() and not missing[0, 0, 0, 3:].any() and missing[1:].all()
    np.testing.assert_allclose(x[0, 0, 1].numpy(), vol[1])
    resized = build_source("mri", {"kind": "image", "column": "p", "dims": 3, "size": [2, 3, 3]}, frame, tmp_path)
    assert resized.batch(np.arange(1))[0].shape == (1, 1, 2, 3, 3)


def test_an_in_memory_image_array_is_a_source_too():
    array = np.random.default_rng(0).random((5, 16, 15)).astype(np.float32)
    array[1] = np.nan
    src = ImageSource("pix", array=array, normalize=False)
    assert src.presence().tolist() == [True, False, True, True, True] and src.input_shape().shape == (1, 16, 15)
    np.testing.assert_allclose(src.batch(np.array([3]))[0][0, 0].numpy(), array[3])


# ---- text --------------------------------------------------------------------------------------------------------


def test_hashing_is_stable_across_processes_and_lower_cases():
    assert hash_ngrams("Hello world", 1000, 2, 10).tolist() == hash_ngrams("hello WORLD", 1000, 2, 10).tolist()
    assert hash_ngrams("hello world", 1000, 2, 10).tolist() == [
        534,
        987,
        761,
    ]  # CRC-32 of "1\x1fhello" etc.: fixed for good
    assert hash_ngrams("a b c d", 50, 1, 2).size == 2  # max_tokens


def test_text_ids_are_padded_and_an_empty_text_is_absent():
    frame = pd.DataFrame({"note": ["red fox jumps", "", None, b"caf\xc3\xa9 au lait", "  "]})
    src = build_source("notes", {"kind": "text", "column": "note", "buckets": 64, "ngrams": 1}, frame)
    assert src.presence().tolist() == [True, False, False, True, False]
    assert src.input_shape().shape == (3,) and src.input_shape().vocab == 65
    ids, missing = src.batch(np.arange(5))
    assert missing.tolist()[:2] == [[False] * 3, [True] * 3] and (ids[missing] == 0).all()
    assert ((ids[~missing] >= 1) & (ids[~missing] <= 64)).all()
    sub_ids, _ = src.subset(np.array([3, 0])).batch(np.arange(2))
    assert torch.equal(sub_ids, ids[[3, 0]])


@pytest.mark.parametrize("cell", [b"caf\xe9", "caf\udce9"])
def test_text_that_is_not_utf8_is_an_error_naming_the_row(cell):
    frame = pd.DataFrame({"note": pd.Series(["fine", cell], dtype=object)})  # pandas' own strings refuse surrogates
    with pytest.raises(DataError, match=r"modality 'notes' \(text\): row 1 of column 'note' is not UTF-8 text"):
        build_source("notes", {"kind": "text", "column": "note"}, frame)


# ---- embeddings --------------------------------------------------------------------------------------------------


def embeddings(n=6, f=4):
    x = np.random.default_rng(0).normal(size=(n, f)).astype(np.float32)
    x[1] = np.nan  # a row without an embedding
    x[2, 0] = np.nan  # a missing cell
    return x


@pytest.mark.parametrize("form", ["npy", "safetensors", "pt", "column", "text column"])
def test_embedding_files_and_list_columns_give_the_same_rows(tmp_path, form):
    from safetensors.torch import save_file

    x = embeddings()
    frame = pd.DataFrame({"y": range(6)})
    if form == "npy":
        np.save(tmp_path / "e.npy", x)
        entry = {"file": "e.npy"}
    elif form == "safetensors":
        save_file({"other": torch.zeros(2), "emb": torch.from_numpy(x)}, tmp_path / "e.safetensors")
        entry = {"file": "e.safetensors", "key": "emb"}
    elif form == "pt":
        torch.save(torch.from_numpy(x), tmp_path / "e.pt")
        entry = {"file": "e.pt"}
    else:
        cells = [None if np.isnan(r).all() else r.tolist() for r in x]
        frame["emb"] = [str(c).replace("nan", "NaN") if form == "text column" and c else c for c in cells]
        entry = {"column": "emb"}
    src = build_source("emb", {"kind": "embedding", **entry}, frame, tmp_path)
    assert src.presence().tolist() == [True, False, True, True, True, True]
    np.testing.assert_array_equal(src.values_NF, x)


def test_embedding_scaling_is_fit_on_training_rows_and_missing_cells_are_masked():
    x = embeddings()
    src = EmbeddingSource("emb", x).fit(np.array([0, 2, 3]))
    values, missing = src.batch(np.array([0, 1, 2, 3]))
    np.testing.assert_allclose(src.mean_F[1:], x[[0, 2, 3], 1:].mean(axis=0), rtol=1e-5)
    assert src.mean_F[0] == pytest.approx(x[[0, 3], 0].mean())  # the missing cell is left out
    assert missing[1].all() and missing[2, 0] and not missing[2, 1:].any() and (values[missing] == 0).all()


def test_an_embedding_file_with_the_wrong_row_count_is_an_error(tmp_path):
    np.save(tmp_path / "e.npy", embeddings(n=5))
    with pytest.raises(DataError, match=r"e\.npy has 5 rows but the table has 6"):
        build_source("emb", {"kind": "embedding", "file": "e.npy"}, pd.DataFrame({"y": range(6)}), tmp_path)


def test_a_pt_file_holding_code_is_refused(tmp_path):
    torch.save({"emb": torch.zeros(6, 2), "note": Batches(None)}, tmp_path / "e.pt")
    with pytest.raises(DataError, match="weights_only"):
        build_source("emb", {"kind": "embedding", "file": "e.pt"}, pd.DataFrame({"y": range(6)}), tmp_path)


def test_list_cells_of_unequal_length_are_an_error_naming_the_row():
    frame = pd.DataFrame({"emb": [[1.0, 2.0], [1.0, 2.0, 3.0]]})
    with pytest.raises(DataError, match="row 1 of column 'emb' has 3 values but row 0 has 2"):
        build_source("emb", {"kind": "embedding", "column": "emb"}, frame)


# ---- series ------------------------------------------------------------------------------------------------------

LONG = pd.DataFrame(  # irregular times, per-channel gaps; id 12 has one value, 13 none, 99 is no row of the table
    {
        "pid": [10, 10, 10, 11, 11, 12, 99, 10],
        "t": [0.0, 1.0, 1.0, 5.0, 2.0, 3.0, 1.0, 4.0],
        "ch": ["hr", "hr", "sbp", "hr", "sbp", "sbp", "hr", "hr"],
        "v": [60, 62, 120, 70, 110, 115, 1, np.nan],
    }
)
ROWS = pd.DataFrame({"pid": [10, 11, 12, 13], "y": [0, 1, 0, 1]})
SPEC = {"kind": "series", "table": "v.csv", "id": "pid", "time": "t", "channel": "ch", "value": "v"}


def long_source(tmp_path, **extra):
    LONG.to_csv(tmp_path / "v.csv", index=False)
    return build_source("vitals", {**SPEC, **extra}, ROWS, tmp_path)


def test_a_long_table_becomes_per_row_grids_of_its_distinct_times(tmp_path):
    src = long_source(tmp_path)
    assert src.channels == ["hr", "sbp"] and src.steps == 2 and src.unmatched_lines == 1
    assert src.presence().tolist() == [True, True, True, False]
    x, missing = src.batch(np.arange(4))
    obs = ~missing.numpy()
    # row 10: hr at 0 and 1, sbp at 1; row 11: sbp at 2, hr at 5; row 12: sbp at 3; row 13: nothing
    assert obs.tolist() == [[[1, 1], [0, 1]], [[0, 1], [1, 0]], [[0, 0], [1, 0]], [[0, 0], [0, 0]]]
    np.testing.assert_allclose(x.values_BVU[0, 0].numpy(), [60, 62])
    np.testing.assert_allclose(x.times_BU.numpy(), [[0, 1], [0, 3], [0, 0], [0, 0]])
    assert (x.values_BVU[missing] == 0).all()


def test_series_statistics_and_time_scale_are_fit_on_training_rows(tmp_path):
    src = long_source(tmp_path).fit(np.array([0, 1]))
    assert src.mean_V.tolist() == pytest.approx([64.0, 115.0])  # hr 60, 62, 70; sbp 120, 110
    assert src.time_scale == 3.0  # row 11 spans 2 -> 5
    x, _ = src.batch(np.array([1]))
    np.testing.assert_allclose(x.times_BU.numpy(), [[0, 1]])
    np.testing.assert_allclose(x.values_BVU[0, 0, 1].item(), (70 - 64) / np.std([60, 62, 70]), rtol=1e-5)


def test_a_grid_longer_than_steps_keeps_its_last_times(tmp_path):
    src = long_source(tmp_path, steps=1)
    assert src.truncated_rows == 2  # rows 10 and 11 have two distinct times
    x, missing = src.batch(np.array([0, 1]))
    assert (~missing).numpy().tolist() == [[[1], [1]], [[1], [0]]]  # row 10 keeps t=1, row 11 keeps t=5
    np.testing.assert_allclose(x.values_BVU[:, 0, 0].numpy(), [62, 70])


def test_a_subset_of_a_long_source_batches_as_the_same_rows(tmp_path):
    src = long_source(tmp_path)
    x, missing = src.subset(np.array([2, 0])).batch(np.arange(2))
    ref_x, ref_missing = src.batch(np.array([2, 0]))
    assert torch.equal(missing, ref_missing) and torch.equal(x.values_BVU, ref_x.values_BVU)


def test_a_channel_absent_from_the_spec_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"channel 'sbp' \(first at data line 2\) is not among the channels the spec "
                                        r"lists \(hr\)"):  # fmt: skip
        long_source(tmp_path, channels=["hr"])


def test_an_id_shared_by_two_rows_is_an_error(tmp_path):
    LONG.to_csv(tmp_path / "v.csv", index=False)
    rows = pd.DataFrame({"pid": [10, 10]})
    with pytest.raises(DataError, match="row 1 of the id column 'pid' is the id 10 of an earlier row"):
        build_source("vitals", SPEC, rows, tmp_path)


def test_dense_arrays_with_a_rate_and_nan_gaps(tmp_path):
    values = np.random.default_rng(0).normal(size=(3, 2, 5)).astype(np.float32)
    values[1] = np.nan
    values[2, 0, 1:] = np.nan
    np.save(tmp_path / "s.npy", values)
    frame = pd.DataFrame({"y": [0, 1, 2]})
    src = build_source("acc", {"kind": "series", "file": "s.npy", "rate": 2, "channels": ["x", "y"]}, frame, tmp_path)
    assert src.presence().tolist() == [True, False, True] and src.input_shape().shape == (2, 5)
    src.fit(np.array([0, 2]))
    assert src.time_scale == 2.0  # 5 samples at 2 per time unit
    x, missing = src.batch(np.arange(3))
    np.testing.assert_allclose(x.times_BU[0].numpy(), [0, 0.25, 0.5, 0.75, 1])
    assert missing[1].all() and missing[2, 0, 1:].all() and not missing[2, 1].any()


# ---- spec entries ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"kind": "video", "column": "p"}, "'kind' must be one of series, image, text, embedding"),
        ({"kind": "image", "colum": "p"}, "unknown key 'colum'; valid keys: kind, column, root"),
        ({"kind": "text"}, "needs the key 'column'"),
        ({"kind": "text", "column": "nope"}, "reads column 'nope', which is not in the table"),
        ({"kind": "image", "column": "p", "dims": 4}, "'dims' must be one of 2, 3"),
        ({"kind": "embedding", "file": "e.npy", "column": "p"}, "exactly one of 'file' and 'column'"),
        (
            {"kind": "series", "table": "v.csv", "id": "p", "time": "t", "channel": "c", "value": "v", "steps": 0},
            "'steps' must be a positive whole number",
        ),  # fmt: skip
    ],
)
def test_bad_spec_entries_name_the_modality_and_the_fix(entry, words):
    with pytest.raises(DataError, match=r"modality 'm'.*" + words.replace("(", r"\(").replace(")", r"\)")):
        build_source("m", entry, pd.DataFrame({"p": ["a"]}))


def test_every_kind_has_a_source_class():
    assert {cls.kind for cls in KINDS.values()} == set(KINDS) == {"series", "image", "text", "embedding"}
    assert all(issubclass(cls, (SeriesSource, ImageSource, TextSource, EmbeddingSource)) for cls in KINDS.values())
