"""The hostile corpus: crafted files in every format, each given to the CLI (``zoo verify``, ``zoo
serve``, ``zoo certify``) in a subprocess under a memory and a CPU-time limit. Each must be refused
with one line naming the file and the problem (no traceback), within the limits, and no payload may
run: payloads that would run code or write a file aim at a canary path that must never exist.

The peak resident memory of each run (the CLI and its confined verifier) is measured; the largest is
printed with ``-s``. The slow cases run in CI; a few representatives always run."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import threading
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import hostile_files as hostile
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file
from torch import nn

from export.confinement import landlock_abi
from export.triton import write_triton_repository
from export.writers import write_onnx, write_pt2, write_torchscript
from zoo.certify import certify
from zoo.checkpoint import read_checkpoint
from zoo.hub import PACKAGE_DIR

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = 4 * 2**30  # RLIMIT_DATA of the CLI process (its verifier child inherits at most this)
CPU_LIMIT = 300  # seconds of CPU time
PEAK_LIMIT = 2 * 2**30  # no run may reach this resident size (importing torch twice takes ~1.5 GiB)
CHECKPOINT = "weights/lipmlp_s.digits_hkr.safetensors"
INPUT_SHAPE = (1, 4, 4)


@dataclasses.dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes, the largest of the process and its children


def run_cli(*args: str, cwd: Path, timeout: float = 900) -> Run:
    """``python -m zoo ARGS`` under the corpus limits (killed after ``timeout`` seconds: a server that
    started would wait for ever); its peak resident memory measured by wait4."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))
        resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT, CPU_LIMIT))

    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT), "COLUMNS": "200"}
    child = subprocess.Popen(
        [sys.executable, "-m", "zoo", *args],
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=limit,
    )
    streams = {}
    readers = [
        threading.Thread(target=lambda n=name, s=stream: streams.__setitem__(n, s.read().decode()))
        for name, stream in (("out", child.stdout), ("err", child.stderr))
    ]
    for reader in readers:
        reader.start()
    killer = threading.Timer(timeout, child.kill)
    killer.start()
    _, status, usage = os.wait4(child.pid, 0)
    killer.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    return Run(child.returncode, streams["out"], streams["err"], usage.ru_maxrss * 1024)


# -- the files ---------------------------------------------------------------------------------


def _certified() -> tuple[nn.Module, object]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    return model, certify(model, INPUT_SHAPE)


def _certificate_text(edit: Callable[[dict], object]) -> str:
    document = json.loads(_certified()[1].to_json())
    edited = edit(document)
    return edited if isinstance(edited, str) else json.dumps(document)


NAN_BOUND = lambda d: d.update(lipschitz_bound=float("nan"))  # noqa: E731  (json.dumps writes NaN)
NEGATIVE_BOUND = lambda d: d.update(lipschitz_bound=-1.0)  # noqa: E731
DEEP = lambda d: "[" * 100_000 + "]" * 100_000  # noqa: E731
OTHER_SHAPE = lambda d: d.update(input_shape=[1, 5, 5])  # noqa: E731


def onnx_with_certificate(edit: Callable[[dict], object]) -> Callable[[Path, Path], Path]:
    def make(directory: Path, canary: Path) -> Path:
        path = write_onnx(*_certified(), directory / "model.onnx")
        model = onnx.load(path)
        (entry,) = model.metadata_props
        entry.value = _certificate_text(edit)
        path.write_bytes(model.SerializeToString())
        return path

    return make


def onnx_graph(input_dims: list, initializer: TensorProto | None = None) -> Callable[[Path, Path], Path]:
    def make(directory: Path, canary: Path) -> Path:
        node = helper.make_node("Relu", ["input"], ["logits"])
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_dims)],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, input_dims)],
            [initializer] if initializer is not None else [],
        )
        path = directory / "model.onnx"
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
        path.write_bytes(model.SerializeToString())
        return path

    return make


def _computed(op: str) -> Callable[[Path, Path], Path]:
    def make(directory: Path, canary: Path) -> Path:
        path = directory / "model.onnx"
        path.write_bytes(hostile.onnx_computing_a_huge_constant(op).SerializeToString())
        return path

    return make


def _external(directory: Path, canary: Path) -> Path:
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="/dev/zero")
    return onnx_graph(["batch", 4], weight)(directory, canary)


def _garbage(suffix: str) -> Callable[[Path, Path], Path]:
    def make(directory: Path, canary: Path) -> Path:
        path = directory / f"garbage{suffix}"
        path.write_bytes(b"PK\x03\x04" + os.urandom(2000))
        return path

    return make


def torchscript_program(module: Callable[[Path], nn.Module]) -> Callable[[Path, Path], Path]:
    return lambda directory, canary: hostile.scripted(module(canary), directory / "model.pt")


def torchscript_with_certificate(edit: Callable[[dict], object]) -> Callable[[Path, Path], Path]:
    def make(directory: Path, canary: Path) -> Path:
        path = write_torchscript(*_certified(), directory / "certified.pt")
        text = _certificate_text(edit).encode()
        return hostile.edited_zip(path, directory / "model.pt", "extra/zoo.certificate", lambda _: text)

    return make


def _torchscript_bomb(directory: Path, canary: Path) -> Path:
    source = write_torchscript(*_certified(), directory / "certified.pt")
    target = directory / "model.pt"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            if info.filename.endswith("extra/zoo.certificate"):
                bomb = zipfile.ZipInfo(info.filename)
                bomb.compress_type = zipfile.ZIP_DEFLATED
                with copy.open(bomb, "w", force_zip64=True) as entry:
                    for _ in range(80):  # 80 MiB of spaces, about 80 KB deflated
                        entry.write(b" " * 2**20)
            else:
                copy.writestr(info, original.read(info))
    return target


def _duplicated(name: str, suffix: str, write: Callable) -> Callable[[Path, Path], Path]:
    def make(directory: Path, canary: Path) -> Path:
        source = write(*_certified(), directory / f"certified{suffix}")
        entries = hostile.zip_entries(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate
            return hostile.write_zip(directory / f"model{suffix}", [*entries, (name, b"{}")])

    return make


def _pt2(directory: Path) -> Path:
    return write_pt2(*_certified(), directory / "certified.pt2")


def pt2_entry(name: str, data: bytes = b"\x7fELF") -> Callable[[Path, Path], Path]:
    def make(directory: Path, canary: Path) -> Path:
        return hostile.write_zip(
            directory / "model.pt2", [*hostile.zip_entries(_pt2(directory)), (name, data)]
        )

    return make


def pt2_program(craft: Callable[[Path, Path, Path], Path]) -> Callable[[Path, Path], Path]:
    return lambda directory, canary: craft(_pt2(directory), directory / "model.pt2", canary)


def _pt2_calling_makedirs(directory: Path, canary: Path) -> Path:
    def edit(program: dict) -> None:
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.makedirs"

    return hostile.edited_json_entry(_pt2(directory), directory / "model.pt2", "models/model.json", edit)


def _pt2_inflating_weights(directory: Path, canary: Path) -> Path:
    def edit(config: dict) -> None:
        for payload in config["config"].values():
            payload["tensor_meta"]["sizes"] = [{"as_int": 100_000}, {"as_int": 100_000}]

    name = "data/weights/model_weights_config.json"
    return hostile.edited_json_entry(_pt2(directory), directory / "model.pt2", name, edit)


def _pt2_allocating(directory: Path, canary: Path) -> Path:
    """A program of ``torch.ones(100000, 100000)`` (traced with fake tensors: nothing allocated here)."""
    batch = {0: torch.export.Dim("batch")}
    program = torch.export.export(hostile.AllocatesTooMuch(), (torch.zeros(2, 4),), dynamic_shapes=(batch,))
    torch.export.save(program, directory / "model.pt2")
    return directory / "model.pt2"


def _pt2_deflated(directory: Path, canary: Path) -> Path:
    entries = hostile.zip_entries(_pt2(directory))
    padded = [(n, d + b" " * 2**24 if n == "extra/zoo.certificate" else d) for n, d in entries]
    return hostile.write_zip(directory / "model.pt2", padded, zipfile.ZIP_DEFLATED)


def _pt2_nan_certificate(directory: Path, canary: Path) -> Path:
    text = _certificate_text(NAN_BOUND).encode()
    return hostile.edited_zip(
        _pt2(directory), directory / "model.pt2", "extra/zoo.certificate", lambda _: text
    )


def checkpoint(edit: Callable[[dict], object]) -> Callable[[Path, Path], Path]:
    """The shipped lipmlp checkpoint with its metadata document edited."""

    def make(directory: Path, canary: Path) -> Path:
        source = read_checkpoint(PACKAGE_DIR / CHECKPOINT)
        document = {"architecture": source.architecture, "certificate": source.certificate.to_dict()}
        document = json.loads(json.dumps(document))
        edited = edit(document)
        text = edited if isinstance(edited, str) else json.dumps(document)
        path = directory / "model.safetensors"
        save_file(source.state_dict, path, metadata={"zoo": text})
        return path

    return make


def _huge_input(document: dict) -> None:
    document["architecture"]["input_shape"] = document["certificate"]["input_shape"] = [1, 10**5, 10**5]


def _options(**options) -> Callable[[dict], None]:
    return lambda d: d["architecture"]["options"].update(options)


def _triton(edit: Callable[[str], str]) -> Callable[[Path, Path], Path]:
    def make(directory: Path, canary: Path) -> Path:
        model, certificate = _certified()
        onnx_file = write_onnx(model, certificate, directory / "model.onnx")
        repository = directory / "repository"
        (model_dir,) = write_triton_repository(repository, "m", {"onnx": onnx_file}, certificate, 3)
        config = model_dir / "config.pbtxt"
        config.write_text(edit(config.read_text()))
        return directory / "repository"

    return make


def _triton_with_library(directory: Path, canary: Path) -> Path:
    """A repository with an ONNX backend library beside the model (Triton would load it first)."""
    repository = _triton(lambda text: text)(directory, canary)
    (repository / "m_onnx" / "libtriton_onnxruntime.so").write_bytes(b"\x7fELF")
    return repository


def _lying_config(text: str) -> str:
    start = text.index("parameters")
    sha = text.split('string_value: "')[-1].split('"')[0]
    return (
        text[:start]
        + f'parameters < key: "zoo.weights_sha256" value < string_value: "{sha}" > >\n'
        + "parameters < key: 'zoo.lipschitz_bound' value < string_value: '0.5' > >\n"
    )


# -- the cases ---------------------------------------------------------------------------------

needs_landlock = pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock")
slow = pytest.mark.slow

# id: (command and options, file maker, message); every file is refused (exit 1) but where noted
CASES = {
    # ONNX: verify and serve
    "onnx huge declared input / verify": (
        ["verify"],
        onnx_graph(["b", 1, 100_000, 100_000]),
        "above the limit",
    ),
    "onnx huge declared input / serve": (
        ["serve"],
        onnx_graph(["b", 1, 100_000, 100_000]),
        "above the limit",
    ),
    "onnx initializer without data": (
        ["verify"],
        onnx_graph(["b", 4], TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100_000, 100_000])),
        "its data is not in the file",
    ),
    "onnx external data": (["verify"], _external, "refers to external data '/dev/zero'"),
    "onnx Range computing 10^10 elements / verify": (["verify"], _computed("Range"), "its shape inferred"),
    "onnx ConstantOfShape computing 10^10 elements / serve": (
        ["serve"],
        _computed("ConstantOfShape"),
        "its shape inferred",
    ),
    "onnx NaN certificate / verify": (["verify"], onnx_with_certificate(NAN_BOUND), "holds NaN"),
    "onnx NaN certificate / serve": (["serve"], onnx_with_certificate(NAN_BOUND), "holds NaN"),
    "onnx negative certificate": (
        ["verify"],
        onnx_with_certificate(NEGATIVE_BOUND),
        "finite and non-negative",
    ),
    "onnx certificate nested 100k deep": (["serve"], onnx_with_certificate(DEEP), "nested too deeply"),
    "onnx certificate input shape edited": (
        ["verify"],
        onnx_with_certificate(OTHER_SHAPE),
        r"the certificate is for inputs of shape (1, 5, 5), the graph takes (1, 4, 4)",
    ),
    "onnx garbage / verify": (["verify"], _garbage(".onnx"), "not a readable ONNX file"),
    "onnx garbage / serve": (["serve"], _garbage(".onnx"), "not a readable ONNX file"),
    # TorchScript: verify
    "torchscript program writing a file": (
        ["verify", "--input-shape", "4"],
        torchscript_program(lambda canary: hostile.WritesAFile(str(canary))),
        "the program failed on a tracked input",  # aten::from_file: Permission denied (Landlock)
    ),
    "torchscript infinite loop": (
        ["verify", "--input-shape", "4", "--timeout", "60"],
        torchscript_program(lambda canary: hostile.LoopsForever()),
        "verification stopped after 60 s (--timeout)",
    ),
    "torchscript allocating 40 GB": (
        ["verify", "--input-shape", "4", "--max-memory", "3072"],
        torchscript_program(lambda canary: hostile.AllocatesTooMuch()),
        # torch loses the allocator's error on this path (a SystemError): the refusal says the
        # program failed, the memory limit having held (see the peak below)
        "the program failed on a tracked input",
    ),
    "torchscript deflate bomb": (["verify"], _torchscript_bomb, "its entries inflate to"),
    "torchscript duplicated entry": (
        ["verify"],
        _duplicated("extra/zoo.certificate", ".pt", write_torchscript),
        "several entries named",
    ),
    "torchscript NaN certificate": (["verify"], torchscript_with_certificate(NAN_BOUND), "holds NaN"),
    "torchscript garbage": (["verify"], _garbage(".pt"), "not a readable TorchScript file"),
    # .pt2: verify
    "pt2 AOTInductor library": (["verify"], pt2_entry("data/aotinductor/model/model.so"), "unknown entry"),
    "pt2 second program in a case variant": (
        ["verify"],
        pt2_entry("models/evil.JSON", b"{}"),
        "unknown entry",
    ),
    "pt2 duplicated weights config": (
        ["verify"],
        _duplicated("data/weights/model_weights_config.json", ".pt2", write_pt2),
        "several entries named",
    ),
    "pt2 symbolic size that is Python": (
        ["verify"],
        pt2_program(hostile.pt2_with_sympy_payload),
        "is not plain shape arithmetic",
    ),
    "pt2 guard code": (
        ["verify"],
        pt2_program(hostile.pt2_with_guard_payload),
        "the program holds guard code",
    ),
    "pt2 node calling torch.os.makedirs": (
        ["verify"],
        _pt2_calling_makedirs,
        "which is not an aten operator",
    ),
    "pt2 weights config inflating": (["verify"], _pt2_inflating_weights, "elements where its entry"),
    "pt2 deflated entries": (["verify"], _pt2_deflated, "its entries inflate to"),
    "pt2 NaN certificate": (["verify"], _pt2_nan_certificate, "holds NaN"),
    "pt2 program allocating 40 GB": (
        ["verify", "--max-memory", "3072"],
        _pt2_allocating,
        "needs more than 3,072 MiB of memory (--max-memory)",
    ),
    "pt2 program writing a file": (
        ["verify", "--input-shape", "4"],
        lambda directory, canary: hostile.pt2_writing_a_file(directory / "model.pt2", canary),
        "the program failed on a tracked input",  # aten::from_file: Permission denied (Landlock)
    ),
    "pt2 garbage": (["verify"], _garbage(".pt2"), "not a readable torch.export file"),
    # checkpoints: certify and serve
    "checkpoint widths of 10000 / certify": (
        ["certify"],
        checkpoint(_options(widths=[10_000, 10_000])),
        "does not fit the file's tensors",
    ),
    "checkpoint widths of 10000 / serve": (
        ["serve"],
        checkpoint(_options(widths=[10_000, 10_000])),
        "does not fit the file's tensors",
    ),
    "checkpoint widths of 0": (
        ["certify"],
        checkpoint(_options(widths=[0, 0])),
        "does not fit the file's tensors",
    ),
    "checkpoint metadata nested 100k deep": (["certify"], checkpoint(DEEP), "nested too deeply"),
    "checkpoint NaN certificate": (
        ["certify"],
        checkpoint(lambda d: d["certificate"].update(lipschitz_bound=float("nan"))),
        "holds NaN",
    ),
    "checkpoint certificate input shape edited": (
        ["certify"],
        checkpoint(lambda d: d["certificate"].update(input_shape=[1, 9, 9])),
        "the certificate is for inputs of shape (1, 9, 9)",
    ),
    "checkpoint huge recorded input": (["certify"], checkpoint(_huge_input), "above the limit"),
    "checkpoint pinned to another hash": (
        ["certify", "--expect-sha256", "0" * 64],
        checkpoint(lambda d: None),
        "its sha256 is",
    ),
    # Triton repositories: verify
    "triton python backend": (
        ["verify"],
        _triton(lambda text: text.replace('platform: "onnxruntime_onnx"', 'backend: "python"')),
        "not an ONNX or TorchScript model",
    ),
    "triton config lying in angle brackets": (["verify"], _triton(_lying_config), "says a bound of 0.5"),
    "triton backend library beside the model": (
        ["verify"],
        _triton_with_library,
        "libtriton_onnxruntime.so: not a file Triton serves here",
    ),
}
ALWAYS = {
    "onnx huge declared input / serve",
    "torchscript program writing a file",
    "pt2 symbolic size that is Python",
    "checkpoint widths of 10000 / certify",
}
PEAKS: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def report_peaks():
    """Print the peak resident memory of each run (``pytest -s``)."""
    yield
    for case, peak in sorted(PEAKS.items(), key=lambda item: -item[1]):
        print(f"{peak / 2**20:7.0f} MiB  {case}")


def _arguments(command: list[str], target: Path) -> list[str]:
    name, *options = command
    extra = {"verify": ["--no-progress"], "serve": ["--port", "0"]}.get(name, [])
    return [name, str(target), *options, *extra]


def _marks(case: str) -> list:
    return ([] if case in ALWAYS else [slow]) + ([needs_landlock] if "writing a file" in case else [])


@pytest.mark.parametrize("case", [pytest.param(case, marks=_marks(case)) for case in CASES])
def test_a_hostile_file_is_refused_in_one_line_within_the_limits(tmp_path, case):
    command, make, message = CASES[case]
    canary = tmp_path / "canary"
    files = tmp_path / "files"
    files.mkdir()
    target = make(files, canary)
    run = run_cli(*_arguments(command, target), cwd=tmp_path)
    PEAKS[case] = run.peak_rss
    assert run.code == 1, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {target}"), run.stderr
    assert message in lines[0], lines[0]
    assert "Traceback (most recent call last)" not in run.stderr + run.stdout
    assert run.peak_rss < PEAK_LIMIT, f"{run.peak_rss / 2**20:.0f} MiB"
    assert not canary.exists(), "a payload of the file ran"
