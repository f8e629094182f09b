"""Ship a trained model with the project: its checkpoint goes into ``zoo/weights/`` and its entry in
models.yaml records the file, its sha256, the certificate summary and the measured metrics.

The certificate is re-checked (``zoo.load``) before anything is written: only a checkpoint whose
weights satisfy their certificate is shipped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from zoo.hub import PACKAGE_DIR, load
from zoo.registry import get_entry, registry_path

__all__ = ["WEIGHTS_DIR", "registry_metrics", "ship"]

WEIGHTS_DIR = "weights"
HEADER = """\
# The registry of every model of the zoo (validated on load by zoo/registry.py).
# Names are arch.tag. `checkpoint` (inside the zoo package), `sha256`, `certificate` and `metrics` are
# written by `zoo ship NAME RUN_DIR` for models whose weights ship with the project; an entry without
# them is a recipe to train with `zoo train NAME`.
"""


def registry_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The flat metrics models.yaml records, from a run's metrics.json."""
    flat = {"clean_accuracy": round(metrics["clean_accuracy"], 4)}
    for eps, accuracy in metrics["certified_accuracy"].items():
        flat[f"certified_accuracy_{eps}"] = round(accuracy, 4)
    if "empirical_lipschitz" in metrics:
        flat["empirical_lipschitz"] = round(metrics["empirical_lipschitz"], 6)
    for key in ("torch_threads", "final_average_accuracy", "forgetting"):
        if key in metrics:
            flat[key] = round(metrics[key], 4)
    return flat


def ship(name: str, run_dir: str | Path) -> Path:
    """Copy ``run_dir/model.safetensors`` into the package and record it in models.yaml.

    Returns the shipped checkpoint's path.
    """
    entry = get_entry(name)
    run_dir = Path(run_dir)
    certified = load(run_dir / "model.safetensors")  # refuses a checkpoint that fails its certificate
    metrics = json.loads((run_dir / "metrics.json").read_text())
    relative = f"{WEIGHTS_DIR}/{name}.safetensors"
    target = PACKAGE_DIR / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "model.safetensors", target)

    path = registry_path()
    document = yaml.safe_load(path.read_text())
    fields = document["models"][entry.name]
    fields["checkpoint"] = relative
    fields["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    certificate = certified.certificate
    fields["certificate"] = {
        "lipschitz_bound": round(certificate.lipschitz_bound, 8),
        "relative_margin": certificate.relative_margin,
        "input_shape": list(certificate.input_shape),
        "weights_sha256": certificate.weights_sha256,
    }
    fields["metrics"] = registry_metrics(metrics)
    text = HEADER + yaml.safe_dump(document, sort_keys=False, width=100, allow_unicode=True)
    path.write_text(text)
    return target
