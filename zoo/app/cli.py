"""The ``zoo`` command line (the contract is in docs/ARCHITECTURE.md, "Command line").

Each command imports the packages it needs inside its body (``training``, ``export``, the server,
the report), through :func:`_needs_extra`: those come with optional extras of the distribution, so
``zoo list`` stays fast and a command whose extra is not installed says which one to install."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from zoo.app import EXPORTED_SUFFIXES
from zoo.app.tables import compact_table, print_heading, print_table
from zoo.certificate import Certificate, LayerBound
from zoo.checkpoint import CheckpointError
from zoo.device import DeviceUnavailableError
from zoo.hub import CertificateMismatchError, CertifiedModel, load
from zoo.limits import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT
from zoo.registry import ModelEntry, RegistryError, get_entry, load_registry

if TYPE_CHECKING:  # export is imported inside the commands only (it needs the `export` extra)
    from export.propagation import Progress
    from export.verify import VerificationReport
    from training.data import Dataset

app = typer.Typer(
    help="Certified 1-Lipschitz networks: train, certify, export and serve them.",
    no_args_is_help=True,
    add_completion=False,
    # Docstrings are wrapped at the source's line length: markdown joins a paragraph's lines so that
    # the terminal, not the source, decides where lines break.
    rich_markup_mode="markdown",
)
console = Console()
errors = Console(stderr=True)
DATA_DIR_HELP = (
    "directory of the MNIST / Fashion-MNIST idx files or of CIFAR-10 (default for Fashion-MNIST: "
    "/usr/share/datasets/fashion-mnist, from apt-get install -y dataset-fashion-mnist)"
)

# Errors that describe bad input or a refused file: printed as one line, exit code 1.
USER_ERRORS: tuple[type[Exception], ...] = (
    RegistryError,
    CheckpointError,
    CertificateMismatchError,
    DeviceUnavailableError,
    ValueError,
    FileNotFoundError,
)


class Device(StrEnum):
    """Where to run. ``cuda`` on a machine without CUDA is an error, never a silent CPU run (use
    ``CUDA_VISIBLE_DEVICES`` to pick a GPU)."""

    cpu = "cpu"
    cuda = "cuda"


class Precision(StrEnum):
    """Training arithmetic: float32, or bfloat16 autocast (CUDA only)."""

    fp32 = "fp32"
    bf16 = "bf16"


class Layout(StrEnum):
    """Axis order of the 4-D image arrays of an .npz: (N, C, H, W) or (N, H, W, C)."""

    nchw = "nchw"
    nhwc = "nhwc"


class TritonInstances(StrEnum):
    """Where Triton runs the model instances of an exported repository."""

    gpu = "gpu"
    cpu = "cpu"


# The optional extras of the distribution, by the top-level modules they bring.
EXTRA_OF_MODULE = {
    "sklearn": "train",
    "torchvision": "train",
    "PIL": "train",
    "onnxscript": "export",
    "fastapi": "serve",
    "uvicorn": "serve",
    "starlette": "serve",
    "matplotlib": "report",
    "tritonclient": "triton",
}


@app.callback()
def main() -> None:
    """Certified 1-Lipschitz networks: train, certify, export and serve them."""


@contextmanager
def _needs_extra(command: str) -> Iterator[None]:
    """Decorates a command: the ImportError of a module that an optional extra brings, wherever the
    command imports it, becomes a one-line error naming the extra to install; any other ImportError
    is a bug and propagates."""
    try:
        yield
    except ModuleNotFoundError as error:
        top = (error.name or "").partition(".")[0]
        if top not in EXTRA_OF_MODULE:
            raise
        extra = EXTRA_OF_MODULE[top]
        install = escape(f"pip install 'lipschitz-zoo[{extra}]'")  # [extra] is not rich markup
        errors.print(
            f"[bold red]error:[/] zoo {command} needs the '{extra}' extra (module {top} is not installed): "
            f"{install}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


@contextmanager
def _user_errors(*extra: type[Exception]) -> Iterator[None]:
    """Errors of bad input or refused files become one line on stderr (messages quoted from a
    library may span several: their whitespace is collapsed) and exit code 1."""
    try:
        yield
    except (*USER_ERRORS, *extra) as error:
        _fail(" ".join(str(error).split()))


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as one line on stderr (no markup read in it) and exit with ``code``."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


@contextmanager
def _op_progress(enabled: bool, description: str) -> Iterator[Progress | None]:
    """A verifier's progress callback drawing a transient bar on stderr (ops done / total and the op
    being bounded), or None when ``enabled`` is False."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.fields[op]}"), console=errors, transient=True) as bar:
        task = bar.add_task(description, total=None, op="")

        def report(done: int, total: int | None, op: str) -> None:
            bar.update(task, completed=done, total=total, op=op)

        yield report


def _format_accuracy(metrics: dict | None, eps: str | None = None) -> str:
    if not metrics:
        return "-"
    value = metrics.get("clean_accuracy") if eps is None else metrics.get(f"certified_accuracy_{eps}")
    return "-" if value is None else f"{100 * value:.1f}"


@app.command("list")
def list_models(
    json_output: Annotated[bool, typer.Option("--json", help="print one JSON array of the entries")] = False,
) -> None:
    """The models of models.yaml by dataset: bound, tightness (lower / upper), clean / certified accuracy."""
    with _user_errors():
        entries = load_registry()
    if json_output:
        print(json.dumps([entry.model_dump(mode="json") for entry in entries.values()]))
        return
    table = compact_table(
        caption="lower / upper: an attack's lower bound over the certified bound (1: tight); "
        "-: a recipe without weights (zoo train NAME trains it)"
    )
    table.add_column("name")
    for column in ("bound", "lower/\nupper", "clean\n%", "cert. %\n@0.25"):
        table.add_column(column, justify="right")
    datasets: dict[str, list[ModelEntry]] = {}
    for entry in entries.values():
        datasets.setdefault(entry.recipe.dataset, []).append(entry)
    for dataset, group in datasets.items():
        if table.row_count:
            table.add_section()
        table.add_row(f"[bold]{dataset}[/]")
        for entry in group:
            bound = (entry.certificate or {}).get("lipschitz_bound")
            lower = (entry.metrics or {}).get("empirical_lipschitz")
            table.add_row(
                entry.name,
                "-" if bound is None else f"{bound:.4f}",
                "-" if bound is None or lower is None else f"{lower / bound:.2f}",
                _format_accuracy(entry.metrics),
                _format_accuracy(entry.metrics, "0.25"),
            )
    shipped = sum(entry.has_weights for entry in entries.values())
    print_table(console, f"lipschitz zoo: {len(entries)} models, {shipped} with certified weights", table)


@app.command()
def info(
    name: Annotated[str, typer.Argument(metavar="NAME", help="model name from models.yaml")],
    json_output: Annotated[bool, typer.Option("--json", help="print the entry as one JSON object")] = False,
) -> None:
    """One model: architecture, recipe, certificate, metrics, files."""
    with _user_errors():
        entry = get_entry(name)
    if json_output:
        print(json.dumps(entry.model_dump(mode="json")))
        return
    print_heading(console, entry.name)
    console.print(entry.description, highlight=False)
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column()
    for field, lines in _entry_fields(entry).items():
        fields.add_row(field, "\n".join(lines))
    console.print()
    console.print(fields, highlight=False)


def _entry_fields(entry: ModelEntry) -> dict[str, list[str]]:
    """``zoo info``'s fields of ``entry``: a name, then the lines of its value."""
    arch, recipe = entry.architecture, entry.recipe
    shape = "x".join(map(str, arch.input_shape))
    fields = {
        "architecture": [f"{arch.name}: input {shape}, {arch.num_classes} classes", _pairs(arch.options)],
        "recipe": [
            f"dataset {recipe.dataset}, loss {recipe.loss.name} ({_pairs(recipe.loss.params)})",
            f"{recipe.optimizer.name}: {_pairs(recipe.optimizer.model_dump(exclude={'name'}))}",
            f"{recipe.epochs} epochs, batch {recipe.batch_size}, seed {recipe.seed}, "
            f"lr schedule {recipe.lr_schedule}, augmentation {recipe.augmentation}",
        ],
    }
    for stage in ("transfer", "continual"):
        if getattr(recipe, stage) is not None:
            fields[stage] = [_pairs(getattr(recipe, stage))]
    if not entry.has_weights:
        fields["weights"] = [f"none shipped: a recipe (zoo train {entry.name} trains it)"]
        return fields
    certificate, metrics = entry.certificate or {}, dict(entry.metrics or {})
    fields["checkpoint"] = [entry.checkpoint or entry.url or ""]
    fields["file sha256"] = [str(entry.sha256)]
    bound = certificate.get("lipschitz_bound")
    fields["bound"] = [f"{bound} (certified; relative margin {certificate.get('relative_margin')} per layer)"]
    fields["weights sha256"] = [str(certificate.get("weights_sha256"))]
    if "clean_accuracy" in metrics:
        fields["clean accuracy"] = [f"{100 * metrics.pop('clean_accuracy'):.1f} %"]
    certified = {
        key.removeprefix("certified_accuracy_"): key for key in metrics if "certified_accuracy_" in key
    }
    if certified:
        accuracies = " / ".join(f"{100 * metrics.pop(key):.1f}" for key in certified.values())
        fields["certified acc."] = [f"{accuracies} % at eps {' / '.join(certified)}"]
    lower = metrics.pop("empirical_lipschitz", None)
    if lower is not None and bound:
        fields["lower bound"] = [f"{lower:g} (empirical; {lower / bound:.2f} of the certified bound)"]
    fields.update({key.replace("_", " "): [str(value)] for key, value in metrics.items()})
    return fields


def _pairs(mapping: dict) -> str:
    """``{"lr": 0.003, "decay": {"k": 2}}`` -> ``'lr 0.003, decay (k 2)'``."""
    return ", ".join(
        f"{key.replace('_', ' ')} {f'({_pairs(value)})' if isinstance(value, dict) else value}"
        for key, value in mapping.items()
    )


def _launch_torchrun(nproc: int, name: str, options: dict[str, object]) -> int:
    """Run this same ``zoo train`` under torchrun with ``nproc`` processes; returns its exit code."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += ["-m", "zoo", "train", name]
    for option, value in options.items():
        flag = "--" + option.replace("_", "-")
        if isinstance(value, bool):
            command.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            command += [flag, str(value)]
    return subprocess.call(command)


@app.command()
@_needs_extra("train")
def train(
    name: Annotated[str, typer.Argument(metavar="NAME", help="model name from models.yaml")],
    epochs: Annotated[int | None, typer.Option(help="override the recipe's epochs")] = None,
    out: Annotated[Path | None, typer.Option(help="output directory (default runs/NAME)")] = None,
    device: Annotated[Device, typer.Option(help="where to train")] = Device.cpu,
    resume: Annotated[bool, typer.Option(help="continue from OUT/train_state.pt")] = False,
    seed: Annotated[int | None, typer.Option(help="override the recipe's seed")] = None,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    download: Annotated[bool, typer.Option(help="download the dataset into --data-dir if missing")] = False,
    precision: Annotated[Precision, typer.Option(help="fp32, or bf16 autocast (CUDA only)")] = Precision.fp32,
    nproc: Annotated[int, typer.Option(help="processes to launch with torchrun (data parallel)")] = 1,
    threads: Annotated[
        int | None,
        typer.Option(
            help="torch threads (default: the count the resumed run or the shipped model was trained with; "
            "results depend on it in the last bits)"
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option(help="show progress on stderr: a bar on a terminal, else one line per epoch")
    ] = True,
    data: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="train on your own data: an image folder (one subfolder per class) or an .npz "
            "(x_train, y_train[, x_test, y_test, class_names]); input shape and classes come from it",
        ),
    ] = None,
    layout: Annotated[
        Layout | None, typer.Option(help="axis order of 4-D .npz images (default: detected)")
    ] = None,
    resize: Annotated[
        str | None, typer.Option(metavar="HxW", help="resize every image of a folder to HxW (bilinear)")
    ] = None,
    test_fraction: Annotated[
        float, typer.Option(help="test share of a stratified split, for --data without a test split")
    ] = 0.2,
) -> None:
    """Train the recipe of NAME (on its dataset, or on --data); writes the folded checkpoint with its
    certificate."""
    from training.divergence import TrainingDivergedError
    from training.lock import RunDirectoryError
    from training.own_data import DataError, adapt_entry, load_own_data, parse_resize
    from training.trainer import RunOptions, TrainingStateError, require_data_parallel
    from training.trainer import train as run_training

    out = out or Path("runs") / name
    options = RunOptions(
        epochs=epochs,
        seed=seed,
        device=device.value,
        resume=resume,
        data_dir=data_dir,
        download=download,
        precision=precision.value,
        progress=progress,
        threads=threads,
    )
    # Progress and messages go to stderr (a log when it is not a terminal: lines never wrapped),
    # results to stdout.
    log = Console(stderr=True, soft_wrap=True)
    with _user_errors(TrainingStateError, RunDirectoryError, TrainingDivergedError, DataError):
        entry = get_entry(name)
        own_data = None
        if data is not None:
            size = parse_resize(resize) if resize is not None else None
            layout_name = layout.value if layout is not None else None
            own_data = load_own_data(data, layout=layout_name, resize=size, test_fraction=test_fraction)
            entry = adapt_entry(entry, own_data)
            log.print(_describe_own_data(own_data))
        elif resize is not None or layout is not None:
            raise typer.BadParameter("--resize and --layout describe --data", param_hint="--data")
        if nproc > 1:
            require_data_parallel(entry)
            own_flags = dict(data=data, layout=layout, resize=resize, test_fraction=test_fraction)
            raise typer.Exit(_launch_torchrun(nproc, name, asdict(options) | {"out": out} | own_flags))
        result = run_training(entry, out, options, data=own_data, console=log)
    if result is None:  # a non-zero rank of a torchrun job: rank 0 reports
        return
    metrics = result.metrics
    table = Table(title=f"{name}: folded model, test set")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("Lipschitz bound (certified)", f"{result.certificate.lipschitz_bound:.6f}")
    table.add_row("clean accuracy", f"{100 * metrics['clean_accuracy']:.2f} %")
    for eps, accuracy in metrics["certified_accuracy"].items():
        table.add_row(f"certified accuracy, eps {eps}", f"{100 * accuracy:.2f} %")
    console.print(table)
    console.print(f"checkpoint: {result.checkpoint}")


EXPECT_SHA256_HELP = "refuse the file unless its sha256 is this (pin a file obtained elsewhere)"
MAX_ELEMENTS_HELP = "most elements one input example of the file may declare"


@app.command()
@_needs_extra("predict")
def predict(
    checkpoint: Annotated[
        str, typer.Argument(metavar="CHECKPOINT", help="a checkpoint trained on images (zoo train --data)")
    ],
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="image files to classify")],
    json_output: Annotated[bool, typer.Option("--json", help="print JSON (one object per image)")] = False,
    expect_sha256: Annotated[str | None, typer.Option(help=EXPECT_SHA256_HELP)] = None,
) -> None:
    """Class, margin and certified L2 radius of each image, preprocessed as the model's training
    images were (mode, resize, scale: the certificate's record)."""
    import torch

    from training.own_data import DataError, image_input

    certified = _load_or_exit(checkpoint, "predict", expect_sha256)
    with _user_errors(DataError):
        shape = certified.certificate.input_shape
        inputs = torch.stack([image_input(path, certified.preprocessing, shape) for path in images])
        predictions = certified.predict(inputs)
    names = certified.preprocessing.get("classes") or []
    rows = [
        {
            "image": str(path),
            "class": int(label),
            "label": names[int(label)] if int(label) < len(names) else str(int(label)),
            "margin": float(margin),
            "certified_radius": float(radius),
        }
        for path, label, margin, radius in zip(
            images, predictions.predicted_class, predictions.margin, predictions.certified_radius, strict=True
        )
    ]
    if json_output:
        console.print_json(json.dumps(rows))
        return
    table = compact_table(
        caption=f"certified L2 radius in the input space: {certified.preprocessing['transform']}"
    )
    for column in ("image", "class", "margin", "certified radius"):
        table.add_column(column, justify="left" if column in ("image", "class") else "right")
    for row in rows:
        table.add_row(row["image"], row["label"], f"{row['margin']:.6f}", f"{row['certified_radius']:.6f}")
    print_table(console, f"{checkpoint}: bound {certified.certificate.lipschitz_bound:.6f}", table)


def _describe_own_data(data: Dataset) -> str:
    """One line: where the data came from, its classes, split sizes and input shape."""
    record = data.preprocessing
    classes = record["classes"]
    shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
    return (
        f"data: {record['source']} {record['path']}: {len(classes)} classes ({shown}), "
        f"{len(data.y_train)} train / {len(data.y_test)} test examples, inputs {data.input_shape}"
    )


def _load_or_exit(
    source: str,
    command: str,
    expected_sha256: str | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> CertifiedModel:
    """The checkpoint or registry model ``source``; an exported file or a Triton repository is an
    error pointing to ``zoo verify``, which reads those."""
    path = Path(source)
    if path.is_dir() or (path.suffix in EXPORTED_SUFFIXES and path.is_file()):
        _fail(
            f"{source} is an exported model, not a checkpoint (zoo {command} reads a .safetensors "
            f"checkpoint or a model name): `zoo verify {source}` recomputes its bound"
        )
    with _user_errors():
        return load(source, expected_sha256=expected_sha256, max_elements=max_elements)


def _layer_table(layers: Iterable[LayerBound]) -> Table:
    """Per-layer bounds: name, op, input shape, bound."""
    table = compact_table()
    for column in ("layer", "op", "input shape"):
        table.add_column(column)
    table.add_column("bound", justify="right")
    for layer in layers:
        shape = "x".join(map(str, layer.input_shape))
        table.add_row(layer.name, layer.op, shape, f"{layer.bound:.6f}")
    return table


def _print_certificate(certificate: Certificate, heading: str) -> None:
    print_table(console, heading, _layer_table(certificate.layers))
    console.print(
        f"global Lipschitz bound: [bold]{certificate.lipschitz_bound:.6f}[/] "
        f"(relative safety margin {certificate.relative_margin:g} per layer)"
    )


@app.command()
def certify(
    source: Annotated[str, typer.Argument(metavar="NAME|CHECKPOINT", help="model name or checkpoint path")],
    json_output: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    expect_sha256: Annotated[str | None, typer.Option(help=EXPECT_SHA256_HELP)] = None,
    max_elements: Annotated[int, typer.Option(min=1, help=MAX_ELEMENTS_HELP)] = DEFAULT_MAX_ELEMENTS,
) -> None:
    """Per-layer bounds and the global bound, recomputed from the weights."""
    certified = _load_or_exit(source, "certify", expect_sha256, max_elements)
    certificate = certified.certificate
    if json_output:
        print(certificate.to_json())
    else:
        _print_certificate(certificate, f"certificate of {source}: bound of each layer")


@app.command()
@_needs_extra("export")
def export(
    source: Annotated[str, typer.Argument(metavar="NAME|CHECKPOINT", help="model name or checkpoint path")],
    out: Annotated[Path, typer.Option(help="output directory")],
    onnx: Annotated[bool, typer.Option("--onnx", help="write model.onnx")] = False,
    torchscript: Annotated[bool, typer.Option("--torchscript", help="write model.ts.pt")] = False,
    pt2: Annotated[bool, typer.Option("--pt2", help="write model.pt2 (torch.export)")] = False,
    triton: Annotated[bool, typer.Option("--triton", help="write a Triton model repository")] = False,
    triton_instances: Annotated[
        TritonInstances, typer.Option(help="where Triton runs the model instances")
    ] = TritonInstances.gpu,
    triton_max_batch: Annotated[
        int, typer.Option(min=1, help="largest batch Triton's dynamic batcher forms")
    ] = 256,
    progress: Annotated[bool, typer.Option(help="draw the verification progress bar (stderr)")] = True,
) -> None:
    """Fold, write the artifacts, then verify what was written; non-zero exit if a check fails."""
    from export.pipeline import ExportError, export_model

    if triton and not (onnx or torchscript):
        _fail(
            "--triton builds its repository from the verified ONNX or TorchScript file: "
            "add --onnx or --torchscript",
            2,
        )
    if not (onnx or torchscript or pt2):
        _fail("choose at least one format: --onnx, --torchscript, --pt2", 2)
    certified = _load_or_exit(source, "export")
    with _user_errors(ExportError), _op_progress(progress, "verifying") as report:
        checks = export_model(
            certified,
            out,
            onnx=onnx,
            torchscript=torchscript,
            pt2=pt2,
            triton=triton,
            triton_instances=triton_instances.value,
            triton_max_batch=triton_max_batch,
            progress=report,
        )
    table = compact_table()
    for column in ("file", "format", "max |diff| vs PyTorch", "checks"):
        table.add_column(column)
    for check in checks:
        if check.max_abs_diff is None:  # a Triton model directory
            diff, notes = "-", "; ".join(check.notes)
        else:
            diff = f"{check.max_abs_diff:.2e}"
            notes = "; ".join(["certificate embedded, read back", *check.notes])
        table.add_row(str(check.path), check.format, diff, notes)
    print_table(console, f"export of {source}: files written and verified", table)
    console.print(f"Lipschitz bound (certificate): {certified.certificate.lipschitz_bound:.6f}")


@app.command()
@_needs_extra("verify")
def verify(
    artifact: Annotated[
        Path,
        typer.Argument(
            metavar="ARTIFACT",
            help="an exported model (.onnx, .pt TorchScript, .pt2) or a Triton model repository",
        ),
    ],
    json_output: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    progress: Annotated[bool, typer.Option(help="draw the progress bar (stderr)")] = True,
    input_shape: Annotated[
        str | None,
        typer.Option(
            help="one example's shape, e.g. 3,32,32: needed for a TorchScript file without certificate"
        ),
    ] = None,
    expect_sha256: Annotated[str | None, typer.Option(help=EXPECT_SHA256_HELP)] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="seconds a file's verification may take")
    ] = DEFAULT_TIMEOUT,
    max_memory: Annotated[
        int, typer.Option(min=1024, help="MiB the verifying process may allocate (torch takes ~1 GiB)")
    ] = DEFAULT_MAX_MEMORY // 2**20,
    max_elements: Annotated[int, typer.Option(min=1, help=MAX_ELEMENTS_HELP)] = DEFAULT_MAX_ELEMENTS,
    trust_program: Annotated[
        bool,
        typer.Option(
            help="verify a TorchScript / .pt2 file even where the kernel cannot forbid its program to "
            "write files (no Landlock)"
        ),
    ] = False,
) -> None:
    """Recompute the Lipschitz bound from the artifact alone; non-zero exit on a violation or a
    mismatch with its embedded certificate.

    The file is read by a confined process: no file can be written (Landlock), and it is stopped at
    --timeout seconds or --max-memory MiB. A directory is read as a Triton model repository: every
    model file in it is verified, and the certificate copies of each config.pbtxt are checked against
    the file's certificate (--json then prints {"repository", "ok", "models": [one object per file]})."""
    from export.sandbox import Confinement, verify_confined

    confinement = Confinement(timeout, max_memory * 2**20, max_elements, trust_program)
    verify_file = functools.partial(verify_confined, confinement=confinement)
    with _user_errors(), _op_progress(progress, f"bounding {artifact.name}") as on_op:
        shape = None if input_shape is None else _parse_shape(input_shape)
        if artifact.is_dir():
            if shape is not None or expect_sha256 is not None:
                raise ValueError("--input-shape and --expect-sha256 are for one file, not a repository")
            from export.triton import verify_triton_repository

            reports = verify_triton_repository(artifact, on_op, verify_file)
        else:
            reports = [verify_file(artifact, on_op, shape, expected_sha256=expect_sha256)]
    ok = all(report.ok for report in reports)
    if json_output:
        if artifact.is_dir():
            print(
                json.dumps({"repository": str(artifact), "ok": ok, "models": [r.to_dict() for r in reports]})
            )
        else:
            print(json.dumps(reports[0].to_dict()))
    else:
        for report in reports:
            _print_report(report)
        if artifact.is_dir() and ok:
            console.print(
                f"verified: the {len(reports)} model files of {artifact}, each within its certificate",
                highlight=False,
                soft_wrap=True,
            )
    for report in reports:
        if not report.ok:
            message = f"[bold red]error:[/] {report.artifact}: {'; '.join(report.problems)}"
            errors.print(message, highlight=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(1)


def _parse_shape(text: str) -> tuple[int, ...]:
    """``'3,32,32'`` -> ``(3, 32, 32)``; ValueError naming the option otherwise."""
    try:
        shape = tuple(int(size) for size in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(
            f"--input-shape must be positive sizes separated by commas, e.g. 3,32,32; got {text!r}"
        )
    return shape


def _print_report(report: VerificationReport) -> None:
    heading = f"{report.artifact}: bounds recomputed from the file (cumulative, from the input)"
    print_table(console, heading, _layer_table(report.layers))
    recomputed = f"{report.lipschitz_bound:.6f}"
    if report.embedded is None:
        console.print(f"recomputed Lipschitz bound: [bold]{recomputed}[/] (the file carries no certificate)")
    elif report.ok:
        console.print(
            f"verified: bound [bold]{recomputed}[/] recomputed from the file "
            f"<= certificate {report.embedded.lipschitz_bound:.6f}"
        )
    else:
        console.print(
            f"recomputed Lipschitz bound: [bold]{recomputed}[/], certificate: "
            f"{report.embedded.lipschitz_bound:.6f}"
        )


@app.command()
def ship(
    name: Annotated[str, typer.Argument(metavar="NAME", help="model name from models.yaml")],
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="a finished `zoo train` output directory")
    ],
) -> None:
    """Ship a trained model: copy its checkpoint into the package and record it in models.yaml."""
    from zoo.app.publish import ship as ship_model

    with _user_errors():
        target = ship_model(name, run_dir)
    console.print(f"shipped {name}: {target}")


@app.command()
@_needs_extra("report")
def report(
    source: Annotated[
        str,
        typer.Argument(
            metavar="NAME|CHECKPOINT|ARTIFACT",
            help="a models.yaml name with weights, a checkpoint, or an exported file (.onnx, .pt, .pt2)",
        ),
    ],
    out: Annotated[Path, typer.Option(help="output directory of the model card")] = Path("cards"),
    dataset: Annotated[
        str | None,
        typer.Option(help="test set of a checkpoint or file (default: the dataset its certificate records)"),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    progress: Annotated[bool, typer.Option(help="draw an exported file's verification progress")] = True,
    trust_program: Annotated[
        bool,
        typer.Option(
            help="report a TorchScript / .pt2 file: its program runs in this process, unconfined, to "
            "measure it (refused otherwise)"
        ),
    ] = False,
) -> None:
    """Write a model card: certified accuracy against eps, per-layer bounds, and test images with their
    certified radius and the distance of the closest adversarial example an attack finds.

    The radii of an exported file use the bound recomputed from the file (as zoo verify does)."""
    from export.verify import VerificationError
    from zoo.app.report import (
        CertificateContradictedError,
        evaluation_set,
        resolve_card_source,
        write_model_card,
    )

    with _user_errors(VerificationError), _op_progress(progress, f"verifying {Path(source).name}") as on_op:
        card = resolve_card_source(source, dataset, on_op, trust_program=trust_program)
    with _user_errors(CertificateContradictedError):
        path = write_model_card(card, evaluation_set(card, data_dir), out)
    console.print(f"model card: {path}", highlight=False, soft_wrap=True)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    context: typer.Context,
    name: Annotated[
        str | None, typer.Argument(metavar="NAME", help="benchmark to run (bench/bench_NAME.py)")
    ] = None,
) -> None:
    """Run a benchmark script of bench/, or list them without NAME.

    The arguments after NAME go to the script (``zoo bench layers --steps 5``; its own help:
    ``zoo bench layers -- --help``). The scripts print measured ratios side by side (against the
    plain network, exact computations or the peers); they need a source checkout of the repository."""
    from zoo.app.benches import describe, find_benchmarks, run_benchmark

    with _user_errors():
        if name is None:
            table = Table(title="benchmarks (their options: zoo bench NAME -- --help)")
            table.add_column("name")
            table.add_column("measures")
            for benchmark, script in find_benchmarks().items():
                table.add_row(benchmark, describe(script))
            console.print(table)
            return
        code = run_benchmark(name, context.args)
    raise typer.Exit(code)


@app.command()
@_needs_extra("serve")
def serve(
    source: Annotated[
        str,
        typer.Argument(
            metavar="ARTIFACT|CHECKPOINT|NAME", help="a zoo .onnx file, a checkpoint path or a model name"
        ),
    ],
    host: Annotated[str, typer.Option(help="address to listen on (loopback only by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port)")] = 8000,
    device: Annotated[Device, typer.Option(help="where onnxruntime runs the model")] = Device.cpu,
    max_batch: Annotated[int, typer.Option(min=1, help="most examples per model call; 1: no batching")] = 32,
    max_delay_ms: Annotated[
        float, typer.Option(min=0, help="longest wait for a batch to fill; 0: run what has queued")
    ] = 0.0,
    max_body_mb: Annotated[float, typer.Option(min=0, help="largest request body accepted (413), MiB")] = 64,
    max_pending_mb: Annotated[
        float, typer.Option(min=0, help="request bodies held at once; beyond, 503 + Retry-After (MiB)")
    ] = 256,
    request_timeout_s: Annotated[
        float,
        typer.Option(min=0, help="time a client has to send a request's head, and again its body (408)"),
    ] = 30,
    drain_s: Annotated[
        float, typer.Option(min=0, help="on SIGTERM, how long the requests already taken may keep running")
    ] = 20,
    clamp_inputs: Annotated[
        bool,
        typer.Option(help="clamp inputs outside the certificate's input range (and say so) instead of 400"),
    ] = False,
    expect_sha256: Annotated[str | None, typer.Option(help=EXPECT_SHA256_HELP)] = None,
    max_elements: Annotated[int, typer.Option(min=1, help=MAX_ELEMENTS_HELP)] = DEFAULT_MAX_ELEMENTS,
) -> None:
    """Serve a certified model over HTTP: KServe v2 / Open Inference Protocol, on onnxruntime.

    Each answer carries the logits and, per example, the predicted class, the margin and the
    certified L2 radius. An .onnx file must carry a certificate that its graph satisfies; a checkpoint
    or a name is exported to ONNX first. On SIGTERM or SIGINT, drains: readiness turns 503, the
    requests already taken are answered (within --drain-s), then the server exits."""
    import tempfile

    from zoo.app.serve import Limits, open_model
    from zoo.app.serve import serve as run_server

    with _user_errors():
        limits = Limits(
            max_body_bytes=int(max_body_mb * 2**20),
            max_pending_bytes=int(max_pending_mb * 2**20),
            request_timeout=request_timeout_s,
            drain_seconds=drain_s,
        )
    with tempfile.TemporaryDirectory(prefix="zoo-serve-") as workdir:
        with _user_errors():
            served = open_model(source, device.value, Path(workdir), expect_sha256, max_elements)
        shape = ", ".join(map(str, served.input_shape))
        console.print(
            f"serving [bold]{served.name}[/]: inputs [-1, {shape}], {served.num_classes} classes, "
            f"Lipschitz bound {served.certificate.lipschitz_bound:.6f}, on {served.provider}; "
            f"batching up to {max_batch} examples, waiting at most {max_delay_ms:g} ms",
            highlight=False,
        )
        run_server(
            served,
            host=host,
            port=port,
            max_batch=max_batch,
            max_delay_ms=max_delay_ms,
            limits=limits,
            clamp_inputs=clamp_inputs,
        )
