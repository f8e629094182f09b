"""Ship a trained model with the project: its checkpoint goes into ``zoo/weights/`` and its entry in
models.yaml records the file, its sha256, the certificate summary and the measured metrics.

Nothing is written until everything is checked: the checkpoint satisfies its certificate
(``zoo.load``), it was trained for this entry (same name, architecture, epochs and seed, so that
``zoo train NAME`` reproduces it), and its metrics are the ones measured on it. models.yaml is then
edited in place: only the entry's weight fields are replaced, every other line (comments included)
is kept byte for byte. Both files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from zoo import hub
from zoo.checkpoint import atomic_write_bytes
from zoo.registry import ModelEntry, get_entry, registry_path

__all__ = ["WEIGHTS_DIR", "WEIGHT_FIELDS", "ShipError", "registry_metrics", "ship", "with_weight_fields"]

WEIGHTS_DIR = "weights"
WEIGHT_FIELDS = ("checkpoint", "sha256", "certificate", "metrics")
"""The fields of a models.yaml entry that ``zoo ship`` writes (in this order)."""


class ShipError(ValueError):
    """A run cannot be shipped under a models.yaml entry, or the entry cannot be edited."""


def registry_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The flat metrics models.yaml records, from a run's metrics.json (for a continual run, also its
    class-incremental final average accuracy and forgetting)."""
    flat = {"clean_accuracy": round(metrics["clean_accuracy"], 4)}
    for eps, accuracy in metrics["certified_accuracy"].items():
        flat[f"certified_accuracy_{eps}"] = round(accuracy, 4)
    if "empirical_lipschitz" in metrics:
        flat["empirical_lipschitz"] = round(metrics["empirical_lipschitz"], 6)
    if "torch_threads" in metrics:
        flat["torch_threads"] = metrics["torch_threads"]
    class_il = metrics.get("continual", {}).get("class_il", {})
    for key in ("final_average_accuracy", "forgetting"):
        if class_il.get(key) is not None:
            flat[key] = round(class_il[key], 4)
    return flat


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    """A line that holds YAML content (not blank, not only a comment)."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def with_weight_fields(text: str, name: str, fields: dict[str, Any]) -> str:
    """``text`` (a models.yaml) with the weight fields of entry ``name`` replaced by ``fields``.

    The entry's other fields keep their lines; its old weight fields are removed and the new ones
    appended at the end of the entry, dumped in block style at the entry's field indentation. The
    result is parsed back and must equal the old document with exactly this change.

    Raises:
        ShipError: the entry is not written as a block mapping ``  name:`` under ``models:``.
    """
    lines = text.splitlines(keepends=True)
    header = re.compile(rf"^( +)(['\"]?){re.escape(name)}\2:\s*(#.*)?$")
    starts = [i for i, line in enumerate(lines) if header.match(line.rstrip("\n"))]
    if len(starts) != 1:
        raise ShipError(f"models.yaml: cannot find entry {name!r} as one block 'name:' line to edit")
    start = starts[0]
    entry_indent = _indent(lines[start])
    end = start + 1  # one past the entry's last content line
    for i in range(start + 1, len(lines)):
        if _is_content(lines[i]):
            if _indent(lines[i]) <= entry_indent:
                break
            end = i + 1
    body = [i for i in range(start + 1, end) if _is_content(lines[i])]
    field_indent = _indent(lines[body[0]]) if body else entry_indent + 2

    kept: list[str] = []
    dropping = False
    for line in lines[start + 1 : end]:
        if _is_content(line) and _indent(line) == field_indent:
            key = line.strip().split(":", 1)[0].strip("'\"")
            dropping = key in WEIGHT_FIELDS
        if not dropping:
            kept.append(line)
    dumped = yaml.safe_dump(fields, sort_keys=False, width=100, allow_unicode=True)
    added = [" " * field_indent + line if line.strip() else line for line in dumped.splitlines(keepends=True)]
    while kept and not _is_content(kept[-1]):  # blank lines or comments at the end stay after the entry
        added.append(kept.pop())
    edited = "".join([*lines[: start + 1], *kept, *added, *lines[end:]])

    before, after = yaml.safe_load(text), yaml.safe_load(edited)
    expected = {key: value for key, value in before["models"][name].items() if key not in WEIGHT_FIELDS}
    before["models"][name] = expected | fields
    if after != before:
        raise ShipError(f"models.yaml: editing entry {name!r} in place would change other content")
    return edited


def _check_run(
    entry: ModelEntry, architecture: dict[str, Any], metrics: dict[str, Any], bound: float
) -> None:
    """Refuse a run that is not the entry's recipe, or whose metrics were measured on other weights."""
    expected = entry.architecture.model_dump(mode="json")
    if architecture != expected:
        raise ShipError(
            f"{entry.name}: the checkpoint's architecture {architecture} is not the entry's {expected}"
        )
    recipe = {"model": entry.name, "epochs": entry.recipe.epochs, "seed": entry.recipe.seed}
    run = {key: metrics.get(key) for key in recipe}
    if run != recipe:
        raise ShipError(
            f"{entry.name}: the run is {run} but the entry's recipe is {recipe}: "
            f"ship a run of `zoo train {entry.name}` with its recipe's epochs and seed"
        )
    reported = metrics.get("lipschitz_bound")
    # The load recomputes the bound with this process's thread count, training with its recipe's:
    # float64 sums may differ in their last bits, never by more than this.
    if not isinstance(reported, float) or not math.isclose(reported, bound, rel_tol=hub.BOUND_TOLERANCE):
        raise ShipError(
            f"{entry.name}: metrics.json reports a bound of {metrics.get('lipschitz_bound')} but the "
            f"checkpoint's certificate is {bound}: the metrics are not from this checkpoint"
        )


def ship(name: str, run_dir: str | Path) -> Path:
    """Copy ``run_dir/model.safetensors`` into the package and record it in models.yaml.

    Returns the shipped checkpoint's path.

    Raises:
        ShipError: the run directory is incomplete, or the run does not belong to the entry.
        CheckpointError, CertificateMismatchError: the checkpoint is refused by ``zoo.load``.
    """
    entry = get_entry(name)
    run_dir = Path(run_dir)
    source, metrics_file = run_dir / "model.safetensors", run_dir / "metrics.json"
    for required in (source, metrics_file):
        if not required.is_file():
            raise ShipError(
                f"{run_dir}: no {required.name}: not the output directory of a finished `zoo train`"
            )
    data = source.read_bytes()
    certified = hub.load_bytes(data, str(source))  # refuses a checkpoint that fails its certificate
    metrics = json.loads(metrics_file.read_text())
    certificate = certified.certificate
    _check_run(entry, certified.architecture, metrics, certificate.lipschitz_bound)

    relative = f"{WEIGHTS_DIR}/{name}.safetensors"
    fields = {
        "checkpoint": relative,
        "sha256": hashlib.sha256(data).hexdigest(),
        "certificate": {
            "lipschitz_bound": round(certificate.lipschitz_bound, 8),
            "relative_margin": certificate.relative_margin,
            "input_shape": list(certificate.input_shape),
            "weights_sha256": certificate.weights_sha256,
        },
        "metrics": registry_metrics(metrics),
    }
    registry = registry_path()
    edited = with_weight_fields(registry.read_text(), entry.name, fields)
    target = hub.PACKAGE_DIR / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    atomic_write_bytes(registry, edited.encode())
    return target
