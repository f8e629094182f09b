"""Your own data: an image folder or an ``.npz`` of arrays, checked, split, and recorded.

**Image folder** (torchvision's ``ImageFolder`` conventions): one subfolder per class, classes in
sorted order of their folder names (label 0 is the first), every file below a class folder with an
image extension (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.ppm``, ``.pgm``, ``.tif``, ``.tiff``,
``.webp``, any case) is an example of it; other files are not images and are skipped. A folder
whose subfolders are exactly ``train`` and ``test`` holds its own split, each side such a folder.
Images are decoded by Pillow: when every image is grey (modes ``1``, ``L``, ``LA``) the inputs
have one channel (``convert('L')``), otherwise three in R, G, B order (``convert('RGB')``: grey
images replicated, alpha dropped). 16-bit and float images are refused. All images must have one
size, unless ``resize=(H, W)`` resizes every image (Pillow's bilinear filter, after the mode
conversion). Pixels are divided by 255.

**npz** (``numpy.savez``): ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test`` and
``class_names``; nothing else (no pickled objects). Images are uint8 (0..255, divided by 255) or
float in [0, 1] (taken as they are), shaped (N, H, W) (one channel), (N, C, H, W) or (N, H, W, C).
The layout of 4-D arrays is ``layout`` ('nchw' / 'nhwc'), or detected: the channel axis is the one
of axes 1 and 3 whose size is 1 or 3 when the other's is not; otherwise the layout must be given.
Labels are integers 0..K-1, K the length of ``class_names`` if given, else the largest training
label + 1, and every class has a training example.

Without a test split, a stratified one is drawn: ``test_fraction`` of each class, with scikit-learn's
``train_test_split(stratify=labels, random_state=0)``, as for the embedded digits.

Everything that maps a file to the network's input (source, mode, resize, scale, layout, split) is
the dataset's ``preprocessing`` record, which the certificate embeds: the certified radius is an L2
distance in that pixel space, and :func:`image_input` maps an image file to an input the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.continual.recipe import parse_continual_recipe
from training.data import Dataset
from zoo.registry import ModelEntry

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "adapt_entry",
    "image_input",
    "is_own_data",
    "load_image_folder",
    "load_npz",
    "load_own_data",
    "parse_resize",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA")
SPLIT_SEED = 0
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "class_names")


class DataError(ValueError):
    """The user's data cannot be used as given; the message names the file or array and the problem."""


def is_own_data(data: Dataset) -> bool:
    """Whether ``data`` was read by this module (its record names a ``source``)."""
    return "source" in data.preprocessing


def parse_resize(text: str) -> tuple[int, int]:
    """``'HxW'`` (e.g. '28x28') as (H, W), both >= 1."""
    height, _, width = text.lower().partition("x")
    try:
        size = (int(height), int(width))
    except ValueError:
        raise DataError(f"--resize {text!r}: expected HEIGHTxWIDTH, e.g. 28x28") from None
    if min(size) < 1:
        raise DataError(f"--resize {text!r}: both sizes must be >= 1")
    return size


# --- image folders ------------------------------------------------------------------------------


def _class_files(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """(class names, image files, labels) of an ImageFolder-style directory."""
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DataError(f"{root}: no class folders (an image folder holds one subfolder per class)")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(
            Path(folder) / file
            for folder, _, names in os.walk(root / name, followlinks=True)
            for file in names
            if file.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not found:
            raise DataError(
                f"{root / name}: class folder '{name}' holds no image ({', '.join(IMAGE_EXTENSIONS)})"
            )
        files += found
        labels += [label] * len(found)
    return classes, files, labels


def _open_image(path: Path) -> Any:
    """The decoded Pillow image of ``path``, or a DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from None


def _image_array(image: Any, path: Path, mode: str, resize: tuple[int, int] | None) -> np.ndarray:
    """uint8 (H, W, C) pixels of ``image`` converted to ``mode`` ('L' or 'RGB') and resized."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        raise DataError(f"{path}: {image.mode} images (16-bit or float) are not supported: save it as 8-bit")
    image = image.convert(mode)
    if resize is not None:
        image = image.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, -1)


def _read_images(files: Sequence[Path], resize: tuple[int, int] | None) -> tuple[np.ndarray, str]:
    """uint8 (N, C, H, W) of ``files`` and the mode they were converted to: 'L' if every image is
    grey, else 'RGB'."""
    images = [_open_image(path) for path in files]
    mode = "L" if all(image.mode in GREY_MODES for image in images) else "RGB"
    arrays = [_image_array(image, path, mode, resize) for image, path in zip(images, files, strict=True)]
    first = arrays[0].shape[:2]
    for array, path in zip(arrays, files, strict=True):
        if array.shape[:2] != first:
            raise DataError(
                f"images of different sizes: {files[0]} is {first[0]}x{first[1]}, {path} is "
                f"{array.shape[0]}x{array.shape[1]} (height x width); pass --resize HxW"
            )
    return np.stack(arrays).transpose(0, 3, 1, 2), mode


def load_image_folder(
    root: str | Path, resize: tuple[int, int] | None = None, test_fraction: float = 0.2
) -> Dataset:
    """An image folder (see the module docstring) as a :class:`Dataset` with its preprocessing record.

    Raises:
        DataError: no class folder, an empty class folder, an unreadable image (named), 16-bit
            images, mixed sizes without ``resize``, a class too small to split.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    subfolders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if subfolders == ["test", "train"]:
        classes, train_files, y_train = _class_files(root / "train")
        test_classes, test_files, y_test = _class_files(root / "test")
        if test_classes != classes:
            raise DataError(f"{root}: train/ has classes {classes} but test/ has {test_classes}")
        x_all, mode = _read_images([*train_files, *test_files], resize)
        x_train, x_test = x_all[: len(train_files)], x_all[len(train_files) :]
        split: Any = "the folder's train/ and test/"
    else:
        classes, files, labels = _class_files(root)
        x_all, mode = _read_images(files, resize)
        x_train, y_train, x_test, y_test, split = _split(x_all, np.array(labels), classes, test_fraction)
    record = {
        "source": "image folder",
        "path": str(root),
        "classes": classes,
        **_image_record(mode, resize),
        "split": split,
    }
    return _dataset(x_train, np.array(y_train), x_test, np.array(y_test), len(classes), record)


def _image_record(mode: str, resize: tuple[int, int] | None) -> dict[str, Any]:
    """How an image file becomes an input: what :func:`image_input` reads back."""
    conversion = "grey" if mode == "L" else "R, G, B (grey images replicated, alpha dropped)"
    return {
        "image_mode": mode,
        "channels": conversion,
        "resize": list(resize) if resize is not None else None,
        "resize_filter": "bilinear (Pillow)" if resize is not None else None,
        "transform": "pixel / 255",
        "input_range": [0.0, 1.0],
        "layout": "NCHW",
    }


# --- npz ----------------------------------------------------------------------------------------


def _channels_first(name: str, x: np.ndarray, layout: str | None) -> tuple[np.ndarray, str]:
    """``x`` as (N, C, H, W) and the layout it had ('NHW', 'NCHW', 'NHWC')."""
    if x.ndim == 3:
        return x[:, None], "NHW"
    if x.ndim != 4:
        raise DataError(f"{name}: shape {x.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C)")
    if layout is None:
        first, last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
        if first == last:
            raise DataError(
                f"{name}: shape {x.shape}: cannot tell the channel axis (axis 1 or 3 must be the only "
                "one of size 1 or 3); pass --layout nchw or --layout nhwc"
            )
        layout = "nchw" if first else "nhwc"
    if layout == "nhwc":
        return x.transpose(0, 3, 1, 2), "NHWC"
    return x, "NCHW"


def _checked_pixels(name: str, x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{name}: dtype {x.dtype}; expected uint8 (0..255) or float in [0, 1]")
    bad = ~np.isfinite(x)
    if bad.any():
        index = int(np.argwhere(bad.reshape(len(x), -1).any(1))[0, 0])
        raise DataError(f"{name}: example {index} holds NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise DataError(f"{name}: float values from {low:g} to {high:g}; expected [0, 1] (or uint8 0..255)")
    return x


def _checked_labels(name: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{name}: shape {y.shape}; expected ({n},), one label per image")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: dtype {y.dtype}; expected integer class labels 0..K-1")
    if n and int(y.min()) < 0:
        raise DataError(f"{name}: label {int(y.min())} is negative; expected class labels 0..K-1")
    return y.astype(np.int64)


def load_npz(path: str | Path, layout: str | None = None, test_fraction: float = 0.2) -> Dataset:
    """An ``.npz`` of arrays (see the module docstring) as a :class:`Dataset` with its preprocessing.

    Raises:
        DataError: a missing, unexpected or pickled array, a wrong shape or dtype, NaN or
            out-of-range pixels, labels outside the classes, an undetectable layout.
    """
    path = Path(path).resolve()
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:  # not a zip, a truncated file, a pickled (object) array
        raise DataError(f"{path}: not a readable .npz of plain arrays ({error})") from None
    unexpected = sorted(set(arrays) - set(NPZ_ARRAYS))
    if unexpected:
        raise DataError(
            f"{path}: unexpected arrays {', '.join(unexpected)}; expected {', '.join(NPZ_ARRAYS)}"
        )
    missing = [name for name in ("x_train", "y_train") if name not in arrays]
    if missing or (("x_test" in arrays) != ("y_test" in arrays)):
        raise DataError(f"{path}: needs x_train and y_train, and x_test with y_test or neither")

    def images(name: str) -> tuple[np.ndarray, str]:
        x, original = _channels_first(f"{path.name}:{name}", arrays[name], layout)
        return _checked_pixels(f"{path.name}:{name}", x), original

    x_train, original = images("x_train")
    y_train = _checked_labels(f"{path.name}:y_train", arrays["y_train"], len(x_train))
    if "class_names" in arrays:
        classes = [str(name) for name in arrays["class_names"].tolist()]
    else:
        classes = [str(k) for k in range(int(y_train.max()) + 1 if len(y_train) else 0)]
    absent = sorted(set(range(len(classes))) - set(y_train.tolist()))
    if absent or int(y_train.max()) >= len(classes):
        raise DataError(
            f"{path.name}:y_train: labels must be 0..{len(classes) - 1} with every class present "
            f"(classes without a training example: {absent or 'none'}; largest label {int(y_train.max())})"
        )
    if "x_test" in arrays:
        x_test, _ = images("x_test")
        y_test = _checked_labels(f"{path.name}:y_test", arrays["y_test"], len(x_test))
        if x_test.shape[1:] != x_train.shape[1:] or x_test.dtype != x_train.dtype:
            raise DataError(
                f"{path.name}: x_test images are {x_test.dtype} {x_test.shape[1:]} but x_train's are "
                f"{x_train.dtype} {x_train.shape[1:]}"
            )
        outside = y_test[y_test >= len(classes)]
        if len(outside):
            raise DataError(
                f"{path.name}:y_test: label {int(outside[0])} is outside the classes 0..{len(classes) - 1}"
            )
        split: Any = "the file's x_test / y_test"
    else:
        x_train, y_train, x_test, y_test, split = _split(x_train, y_train, classes, test_fraction)
    record = {
        "source": "npz",
        "path": str(path),
        "classes": classes,
        "array_layout": original,
        "array_dtype": str(x_train.dtype),
        "transform": "pixel / 255" if x_train.dtype == np.uint8 else "float pixels as given",
        "input_range": [0.0, 1.0],
        "layout": "NCHW",
        "split": split,
    }
    if x_train.dtype == np.uint8 and x_train.shape[1] in (1, 3):  # what an 8-bit image file maps to
        record |= {"image_mode": "L" if x_train.shape[1] == 1 else "RGB", "resize": None}
    return _dataset(x_train, y_train, x_test, y_test, len(classes), record)


# --- common -------------------------------------------------------------------------------------


def _stratified_split(
    labels: np.ndarray, classes: Sequence[str], test_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): ``test_fraction`` of each class for the test set."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"--test-fraction {test_fraction:g}: expected a fraction between 0 and 1")
    counts = np.bincount(labels, minlength=len(classes))
    smallest = int(counts.argmin())
    if counts[smallest] < 2:
        raise DataError(
            f"class '{classes[smallest]}' has {counts[smallest]} example: a stratified split needs at "
            "least 2 per class; add examples or a test split"
        )
    test_size = math.ceil(len(labels) * test_fraction)
    if min(test_size, len(labels) - test_size) < len(classes):
        raise DataError(
            f"--test-fraction {test_fraction:g} of {len(labels)} examples leaves {test_size} for the test "
            f"set and {len(labels) - test_size} for training: each side needs one per class ({len(classes)})"
        )
    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=SPLIT_SEED)
    return np.sort(train), np.sort(test)


def _split(
    x: np.ndarray, y: np.ndarray, classes: Sequence[str], test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(x_train, y_train, x_test, y_test, its record): a stratified split of (x, y)."""
    train, test = _stratified_split(y, classes, test_fraction)
    record = {
        "method": "stratified, scikit-learn train_test_split",
        "test_fraction": test_fraction,
        "random_state": SPLIT_SEED,
    }
    return x[train], y[train], x[test], y[test], record


def _dataset(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    record: dict[str, Any],
) -> Dataset:
    if num_classes < 2:
        raise DataError(
            f"{record['path']}: one class ({record['classes'][0]}): a classifier needs at least 2"
        )

    def pixels(x: np.ndarray) -> torch.Tensor:
        if x.dtype == np.uint8:
            return torch.from_numpy(x.astype(np.float32) / 255.0)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    return Dataset(
        x_train=pixels(x_train),
        y_train=torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
        x_test=pixels(x_test),
        y_test=torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
        num_classes=num_classes,
        preprocessing=record,
    )


def load_own_data(
    path: str | Path,
    *,
    layout: str | None = None,
    resize: tuple[int, int] | None = None,
    test_fraction: float = 0.2,
) -> Dataset:
    """An image folder (a directory) or an ``.npz`` file; ``resize`` is for folders, ``layout`` for npz.

    Raises:
        DataError: anything wrong with the data, in one line naming the file or array.
    """
    path = Path(path)
    if path.is_dir():
        if layout is not None:
            raise DataError("--layout is for .npz arrays; an image folder's layout is known")
        return load_image_folder(path, resize, test_fraction)
    if path.suffix.lower() == ".npz" and path.is_file():
        if resize is not None:
            raise DataError("--resize is for image folders; resize the arrays of an .npz yourself")
        return load_npz(path, layout, test_fraction)
    raise DataError(f"--data {path}: not an image folder (a directory) nor an .npz file")


def adapt_entry(entry: ModelEntry, data: Dataset) -> ModelEntry:
    """``entry`` with its architecture's input shape and class count taken from ``data``; the
    shipped model's fields (checkpoint, certificate, metrics) are dropped, as they describe another
    network. Every architecture of the zoo builds for any input shape (pooling stops at 1x1, dense
    layers are sized from the input); what can fail is the recipe.

    Raises:
        DataError: a transfer recipe (its classes and source are fixed).
        ContinualRecipeError: a continual recipe whose stream does not fit the data's classes.
    """
    if entry.recipe.transfer is not None:
        raise DataError(
            f"{entry.name}: a transfer recipe names its classes and source model; --data trains "
            "plain and continual recipes"
        )
    architecture = entry.architecture.model_copy(
        update={"input_shape": tuple(data.input_shape), "num_classes": data.num_classes}
    )
    shipped = dict.fromkeys(("checkpoint", "sha256", "certificate", "metrics"))
    adapted = entry.model_copy(update={"architecture": architecture, **shipped})
    if adapted.recipe.continual is not None:
        parse_continual_recipe(adapted)
    return adapted


def image_input(path: str | Path, preprocessing: dict[str, Any], input_shape: Sequence[int]) -> torch.Tensor:
    """The input (C, H, W) an image file is for a model whose certificate records ``preprocessing``:
    the same mode conversion, resize and scale as its training images.

    Raises:
        DataError: the record does not say how image files map to inputs (the model was trained on
            other data), an unreadable image (named), or an image whose size does not fit.
    """
    if "image_mode" not in preprocessing:
        described = preprocessing.get("dataset") or preprocessing.get("source") or "data"
        raise DataError(
            f"this model was trained on {described} whose preprocessing does not say how an image file "
            "becomes an input: zoo predict takes models trained with zoo train --data on images "
            "or uint8 arrays; use CertifiedModel.predict on tensors"
        )
    path = Path(path)
    resize = preprocessing.get("resize")
    pixels = _image_array(
        _open_image(path), path, preprocessing["image_mode"], tuple(resize) if resize else None
    )
    x = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32) / 255.0)
    if tuple(x.shape) != tuple(input_shape):
        raise DataError(
            f"{path}: {x.shape[1]}x{x.shape[2]} image, but the model takes {input_shape[1]}x{input_shape[2]} "
            "(its certificate records no resize)"
        )
    return x
