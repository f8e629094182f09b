"""`zoo train NAME --data PATH` on an image folder or an .npz, `zoo predict`, and every refusal of bad
data in one line naming the file or array."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from serve_helpers import infer_body, outputs_of, running
from typer.testing import CliRunner

import zoo
from training.own_data import DataError, adapt_entry, image_input, load_image_folder, load_npz, load_own_data
from training.trainer import evaluate
from zoo.app.cli import app
from zoo.app.serve import Limits, open_model
from zoo.app.serve.app import create_app
from zoo.registry import get_entry

RECIPE = "lipconv_s.digits_hkr"
CLASSES = {"bars": 17, "blobs": 11}  # uneven class sizes


def pattern(label: int, index: int) -> np.ndarray:
    """An 8x8 grey uint8 image: class 0 has a bright left column band, class 1 a bright centre."""
    noise = np.random.default_rng(100 * label + index).integers(0, 60, (8, 8))
    if label == 0:
        noise[:, :3] += 160
    else:
        noise[2:6, 2:6] += 160
    return noise.astype(np.uint8)


def write_folder(root: Path, classes: dict[str, int] = CLASSES, rgb_every: int = 3) -> Path:
    """An image folder: grey PNGs, and every ``rgb_every``-th image an RGB JPEG (quality 100)."""
    for label, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for index in range(count):
            grey = pattern(label, index)
            if rgb_every and index % rgb_every == 0:
                Image.fromarray(np.stack([grey] * 3, -1)).save(root / name / f"{index}.jpg", quality=100)
            else:
                Image.fromarray(grey).save(root / name / f"{index}.png")
    (root / "bars" / "notes.txt").write_text("not an image: skipped, as ImageFolder does")
    return root


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    return result.exit_code, result.stdout, result.stderr


def one_line_error(*args: str) -> str:
    code, _, stderr = invoke(*args)
    assert code == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: ")
    return stderr.strip()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The digits recipe trained by `zoo train --data` on a folder of grey PNGs and RGB JPEGs."""
    root = tmp_path_factory.mktemp("own")
    folder = write_folder(root / "folder")
    code, _, stderr = invoke("train", RECIPE, "--data", folder, "--epochs", "8", "--out", root / "run")
    assert code == 0, stderr
    assert f"data: image folder {folder}: 2 classes (bars, blobs), 22 train / 6 test examples" in stderr
    return folder, root / "run" / "model.safetensors"


def test_an_image_folder_trains_a_certified_model_whose_accuracies_reproduce_from_zoo_load(trained):
    folder, checkpoint = trained
    certified = zoo.load(checkpoint)
    assert 0 < certified.certificate.lipschitz_bound <= 1.0
    assert certified.architecture["input_shape"] == [3, 8, 8] and certified.architecture["num_classes"] == 2
    record = certified.preprocessing
    assert record == load_image_folder(folder).preprocessing  # the data is rebuilt from the record
    assert record["classes"] == ["bars", "blobs"] and record["image_mode"] == "RGB"
    assert record["transform"] == "pixel / 255" and record["resize"] is None
    assert record["split"] == {
        "method": "stratified, scikit-learn train_test_split",
        "test_fraction": 0.2,
        "random_state": 0,
    }

    data = load_own_data(record["path"])
    metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
    measured = evaluate(certified.model, data.x_test, data.y_test, certified.certificate.lipschitz_bound)
    assert measured["clean_accuracy"] == metrics["clean_accuracy"] > 0.5
    assert measured["certified_accuracy"] == metrics["certified_accuracy"]


def test_zoo_predict_agrees_with_the_served_model(trained, tmp_path):
    folder, checkpoint = trained
    images = [folder / "bars" / "0.jpg", folder / "bars" / "1.png", folder / "blobs" / "2.png"]
    code, stdout, stderr = invoke("predict", checkpoint, *images, "--json")
    assert code == 0, stderr
    predicted = json.loads(stdout)
    assert [row["image"] for row in predicted] == [str(path) for path in images]

    certified = zoo.load(checkpoint)
    x = torch.stack([image_input(path, certified.preprocessing, (3, 8, 8)) for path in images]).numpy()
    served = open_model(checkpoint, "cpu", tmp_path)
    limits = Limits()
    server = create_app(served, max_batch=4, max_delay_ms=5, limits=limits)
    with running(server, limits.request_timeout) as url:
        answer = httpx.post(f"{url}/v2/models/{served.name}/infer", json=infer_body(x), timeout=30)
    out = outputs_of(answer)
    assert [row["class"] for row in predicted] == out["predicted_class"].tolist()
    assert [row["label"] for row in predicted] == [["bars", "blobs"][k] for k in out["predicted_class"]]
    np.testing.assert_allclose([row["margin"] for row in predicted], out["margin"], rtol=1e-5)
    np.testing.assert_allclose(
        [row["certified_radius"] for row in predicted], out["certified_radius"], rtol=1e-5
    )

    code, stdout, _ = invoke("predict", checkpoint, *images)
    assert code == 0 and "certified radius" in stdout and "pixel / 255" in stdout


def test_folder_conventions_grey_rgb_sizes_and_split(tmp_path):
    grey = load_image_folder(write_folder(tmp_path / "grey", rgb_every=0))
    assert grey.input_shape == (1, 8, 8) and grey.preprocessing["image_mode"] == "L"
    mixed = load_image_folder(write_folder(tmp_path / "mixed"))
    assert mixed.input_shape == (3, 8, 8)
    # A grey PNG among RGB images: its pixels / 255, replicated to three channels.
    png = tmp_path / "mixed" / "blobs" / "1.png"
    x = image_input(png, mixed.preprocessing, (3, 8, 8))
    expected = torch.from_numpy(pattern(1, 1)).float() / 255
    assert all(torch.equal(channel, expected) for channel in x)
    assert len(mixed.y_train) + len(mixed.y_test) == 28 and mixed.y_test.bincount().tolist() == [4, 2]
    again = load_image_folder(tmp_path / "mixed")
    assert torch.equal(again.x_test, mixed.x_test) and torch.equal(again.y_test, mixed.y_test)

    resized = load_own_data(tmp_path / "grey", resize=(12, 10))
    assert resized.input_shape == (1, 12, 10) and resized.preprocessing["resize"] == [12, 10]

    split = tmp_path / "split"
    write_folder(split / "train")
    write_folder(split / "test", {"bars": 2, "blobs": 3})
    given = load_image_folder(split)
    assert len(given.y_train) == 28 and given.y_test.tolist() == [0, 0, 1, 1, 1]
    assert given.preprocessing["split"] == "the folder's train/ and test/"


def test_image_pixels_are_the_file_pixels_over_255(tmp_path):
    folder = write_folder(tmp_path / "grey", rgb_every=0)
    data = load_image_folder(folder)
    expected = torch.from_numpy(np.array(Image.open(folder / "bars" / "1.png"))).float() / 255
    x = image_input(folder / "bars" / "1.png", data.preprocessing, (1, 8, 8))
    assert torch.equal(x[0], expected)
    everything = torch.cat([data.x_train, data.x_test])
    assert any(torch.equal(example[0], expected) for example in everything)


def npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_in_both_layouts_uint8_and_float(tmp_path):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (40, 3, 6, 5), dtype=np.uint8)
    classes = np.arange(40) % 4
    first = load_npz(npz(tmp_path / "nchw.npz", x_train=nchw, y_train=classes))
    second = load_npz(npz(tmp_path / "nhwc.npz", x_train=nchw.transpose(0, 2, 3, 1), y_train=classes))
    assert first.input_shape == second.input_shape == (3, 6, 5)
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.x_test, second.x_test)
    assert first.preprocessing["array_layout"] == "NCHW" and second.preprocessing["array_layout"] == "NHWC"
    given_test = load_npz(
        npz(
            tmp_path / "t.npz",
            x_train=nchw[:32].transpose(0, 2, 3, 1),
            y_train=classes[:32],
            x_test=nchw[32:].transpose(0, 2, 3, 1),
            y_test=classes[32:],
        )
    )
    assert torch.equal(given_test.x_test, torch.from_numpy(nchw[32:]).float() / 255)

    floats = (nchw / 255.0).astype(np.float64)
    given = load_npz(
        npz(
            tmp_path / "f.npz",
            x_train=floats[:32],
            y_train=classes[:32],
            x_test=floats[32:],
            y_test=classes[32:],
        ),
        layout="nchw",
    )
    assert (
        given.preprocessing["transform"] == "float pixels as given"
        and "image_mode" not in given.preprocessing
    )
    assert torch.allclose(given.x_test, torch.from_numpy(floats[32:]).float())
    assert given.preprocessing["split"] == "the file's x_test / y_test"
    grey = load_npz(
        npz(tmp_path / "grey.npz", x_train=nchw[:, 0], y_train=classes, class_names=np.array(list("abcd")))
    )
    assert grey.input_shape == (1, 6, 5) and grey.preprocessing["classes"] == ["a", "b", "c", "d"]


def test_recipes_that_do_not_fit_the_data_are_refused(tmp_path):
    data = load_image_folder(write_folder(tmp_path / "folder"))
    with pytest.raises(DataError, match="a transfer recipe names its classes"):
        adapt_entry(get_entry("lipconv_xs.digits_transfer_l2"), data)
    with pytest.raises(
        ValueError, match=r"'recipe\.continual\.experiences': 2 classes do not split evenly into 5"
    ):
        adapt_entry(get_entry("lipconv_s.digits_ar1"), data)
    adapted = adapt_entry(get_entry(RECIPE), data)
    assert adapted.architecture.input_shape == (3, 8, 8) and adapted.architecture.num_classes == 2
    assert adapted.checkpoint is None and adapted.certificate is None and adapted.metrics is None
    error = one_line_error("train", RECIPE, "--data", write_folder(tmp_path / "one", {"bars": 6}))
    assert "one class (bars): a classifier needs at least 2" in error


def pixels(n: int = 4, shape: tuple[int, ...] = (8, 8), dtype=np.uint8, value=0) -> np.ndarray:
    return np.full((n, *shape), value, dtype)


def labels(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


NAN_AT_3 = np.where(np.arange(5)[:, None, None] == 3, np.nan, 0.5) * np.ones((5, 8, 8))
TWO_CLASSES = dict(x_train=pixels(10), y_train=np.arange(10) % 2)
BAD_NPZ = {
    "wrong shape": (dict(x_train=pixels(10, (64,)), y_train=labels(*[0] * 10)), "x_train: shape (10, 64)"),
    "labels do not match": (
        dict(x_train=pixels(10), y_train=labels(*[0] * 9)),
        "y_train: shape (9,); expected (10,)",
    ),
    "test images of another shape": (
        dict(TWO_CLASSES, x_test=pixels(4, (7, 8)), y_test=labels(0, 0, 0, 0)),
        "x_test images are uint8 (1, 7, 8) but x_train's are uint8 (1, 8, 8)",
    ),
    "test label outside the classes": (
        dict(TWO_CLASSES, x_test=pixels(2), y_test=labels(1, 2)),
        "y_test: label 2 is outside the classes 0..1",
    ),
    "negative label": (dict(x_train=pixels(), y_train=labels(0, 1, -1, 0)), "label -1 is negative"),
    "a class without examples": (
        dict(x_train=pixels(), y_train=labels(0, 2, 2, 0)),
        "classes without a training example: [1]",
    ),
    "label beyond the class names": (
        dict(x_train=pixels(), y_train=labels(0, 1, 2, 0), class_names=np.array(["a", "b"])),
        "largest label 2",
    ),
    "NaN pixels": (dict(x_train=NAN_AT_3, y_train=labels(0, 0, 0, 0, 0)), "x_train: example 3 holds NaN"),
    "floats above 1": (
        dict(x_train=pixels(dtype=np.float32, value=255), y_train=labels(0, 0, 0, 0)),
        "float values from 255 to 255; expected [0, 1]",
    ),
    "integer pixels not uint8": (
        dict(x_train=pixels(dtype=np.int64), y_train=labels(0, 0, 0, 0)),
        "dtype int64; expected uint8",
    ),
    "float labels": (dict(x_train=pixels(), y_train=np.zeros(4)), "expected integer class labels"),
    "undetectable layout": (
        dict(x_train=pixels(4, (3, 8, 3)), y_train=labels(0, 0, 0, 0)),
        "pass --layout nchw or --layout nhwc",
    ),
    "an unexpected array": (
        dict(x_train=pixels(), y_train=labels(0, 0, 0, 0), extra=np.zeros(1)),
        "unexpected arrays extra",
    ),
    "a pickled object array": (
        dict(x_train=np.array([None] * 4, dtype=object), y_train=labels(0, 0, 0, 0)),
        "not a readable .npz of plain arrays",
    ),
}


@pytest.mark.parametrize("case", BAD_NPZ, ids=list(BAD_NPZ))
def test_bad_arrays_are_refused_in_one_line(case, tmp_path):
    arrays, message = BAD_NPZ[case]
    path = npz(tmp_path / "data.npz", **arrays)
    error = one_line_error("train", RECIPE, "--data", path, "--out", tmp_path / "run")
    assert message in error
    assert not (tmp_path / "run").exists()


def test_bad_image_folders_are_refused_in_one_line(tmp_path):
    corrupt = write_folder(tmp_path / "corrupt")
    (corrupt / "blobs" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    error = one_line_error("train", RECIPE, "--data", corrupt, "--out", tmp_path / "run")
    assert f"{corrupt / 'blobs' / '3.png'}: not a readable image" in error

    empty = write_folder(tmp_path / "empty")
    (empty / "zebras").mkdir()
    error = one_line_error("train", RECIPE, "--data", empty, "--out", tmp_path / "run")
    assert f"{empty / 'zebras'}: class folder 'zebras' holds no image" in error

    mixed = write_folder(tmp_path / "sizes", rgb_every=0)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mixed / "blobs" / "big.png")
    error = one_line_error("train", RECIPE, "--data", mixed, "--out", tmp_path / "run")
    assert (
        "images of different sizes:" in error and "big.png is 10x12" in error and "pass --resize HxW" in error
    )

    lonely = write_folder(tmp_path / "lonely", {"bars": 5, "blobs": 1})
    error = one_line_error("train", RECIPE, "--data", lonely, "--out", tmp_path / "run")
    assert "class 'blobs' has 1 example: a stratified split needs at least 2 per class" in error

    sixteen = write_folder(tmp_path / "sixteen", rgb_every=0)
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(sixteen / "bars" / "deep.png")
    error = one_line_error("train", RECIPE, "--data", sixteen, "--out", tmp_path / "run")
    assert "deep.png: I;16 images (16-bit or float) are not supported" in error

    assert "--resize '8': expected HEIGHTxWIDTH" in one_line_error(
        "train", RECIPE, "--data", mixed, "--resize", "8"
    )
    assert "not an image folder (a directory) nor an .npz file" in one_line_error(
        "train", RECIPE, "--data", tmp_path / "x.csv"
    )
    assert not (tmp_path / "run").exists()


def test_predict_refuses_what_it_cannot_preprocess(trained, tmp_path):
    folder, checkpoint = trained
    error = one_line_error("predict", RECIPE, folder / "bars" / "1.png")
    assert "trained on digits whose preprocessing does not say how an image file becomes an input" in error
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "nine.png")
    error = one_line_error("predict", checkpoint, tmp_path / "nine.png")
    assert "nine.png: 9x9 image, but the model takes 8x8" in error
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert "broken.jpg: not a readable image" in one_line_error(
        "predict", checkpoint, tmp_path / "broken.jpg"
    )
