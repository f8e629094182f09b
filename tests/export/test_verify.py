"""``export.verify``: bounds recomputed from ONNX, TorchScript and .pt2 files alone, compared with the
PyTorch-side certificates, with independent truths, and with each other."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import graph_model as _model
from onnx_graphs import graph_node as _node
from onnx_graphs import run_graph as _run
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from export.onnx_graph import graph_bound
from export.pipeline import ExportError, export_model
from export.propagation import Tracker
from export.torch_graph import program_bound
from export.verify import (
    UnsupportedOpError,
    VerificationError,
    VerificationReport,
    verify_artifact,
    verify_onnx,
)
from export.writers import CERTIFICATE_KEY, write_onnx, write_pt2, write_torchscript
from zoo.app.cli import app
from zoo.certify import certify
from zoo.hub import CertifiedModel
from zoo.hub import load as zoo_load
from zoo.models import build

INPUT_SHAPE = (1, 8, 8)
TINY = {"input_shape": (1, 4, 4), "num_classes": 3, "widths": (4, 4), "dense": ()}


# --- zoo models, tampered copies ---------------------------------------------------------------------


def _zoo_artifact(directory: Path, **options) -> tuple[Path, CertifiedModel]:
    """A lipconv model, plain with random weights, certified and written by write_onnx."""
    torch.manual_seed(0)
    options = {"input_shape": INPUT_SHAPE, "num_classes": 10, **options}
    model = build("lipconv", parametrized=False, **options).eval()
    certificate = certify(model, options["input_shape"])
    path = write_onnx(model, certificate, directory / "model.onnx")
    return path, CertifiedModel(model, certificate, {"name": "lipconv", **options})


@pytest.fixture(scope="module")
def zoo_artifact(tmp_path_factory) -> tuple[Path, CertifiedModel]:
    """The digits architecture (GroupSort2)."""
    return _zoo_artifact(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory) -> tuple[Path, CertifiedModel]:
    """A small lipconv (cheap bounds) for the tampering, command-line and pipeline tests."""
    return _zoo_artifact(tmp_path_factory.mktemp("tiny"), **TINY)


def _tampered(path: Path, out: Path, edit) -> Path:
    model = onnx.load(path)
    edit(model)
    out.write_bytes(model.SerializeToString())
    return out


def _set_certificate(model: onnx.ModelProto, text: str) -> None:
    (entry,) = [e for e in model.metadata_props if e.key == CERTIFICATE_KEY]
    entry.value = text


def _assert_verifies_with_the_pytorch_side_bound(path: Path, certified: CertifiedModel) -> VerificationReport:
    report = verify_artifact(path)
    assert report.ok and report.problems == ()
    assert report.embedded == certified.certificate
    expected = certified.certificate.lipschitz_bound
    assert abs(report.lipschitz_bound - expected) <= 1e-9 * expected
    assert report.input_shape == certified.certificate.input_shape
    assert report.layers[-1].bound == report.lipschitz_bound
    return report


def test_zoo_model_verifies_with_the_pytorch_side_bound(zoo_artifact):
    report = _assert_verifies_with_the_pytorch_side_bound(*zoo_artifact)  # GroupSort2: Slice/Min/Max
    # layers are named after the torch modules (name scopes): conv "0" first, the logits layer last
    layers = report.layers
    assert [(layers[i].name, layers[i].op) for i in (0, -1)] == [("0", "Conv"), ("11", "Gemm")]


def test_zoo_model_torchscript_and_pt2_files_verify_with_the_pytorch_side_bound(tiny_artifact, tmp_path):
    _, certified = tiny_artifact
    model, certificate = certified.model, certified.certificate
    _assert_verifies_with_the_pytorch_side_bound(
        write_torchscript(model, certificate, tmp_path / "model.ts.pt"), certified
    )
    batch = torch.export.Dim("batch")
    example = torch.zeros(2, *certificate.input_shape)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "model.pt2", extra_files={CERTIFICATE_KEY: certificate.to_json()})
    _assert_verifies_with_the_pytorch_side_bound(tmp_path / "model.pt2", certified)


def test_maxmin_variant_verifies_with_the_pytorch_side_bound(tmp_path):
    _assert_verifies_with_the_pytorch_side_bound(*_zoo_artifact(tmp_path, **TINY, activation="maxmin"))


TORCHSCRIPT_IS_DEPRECATED = pytest.mark.filterwarnings(r"ignore:`torch\.jit.*deprecated:FutureWarning")


def test_a_scaled_initializer_raises_the_bound_and_is_caught(tiny_artifact, tmp_path):
    path, certified = tiny_artifact

    def scale_conv(model: onnx.ModelProto) -> None:
        (weight,) = [t for t in model.graph.initializer if t.name == "2.weight"]
        weight.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(weight), weight.name))

    report = verify_onnx(_tampered(path, tmp_path / "scaled.onnx", scale_conv))
    assert not report.ok
    assert report.lipschitz_bound == pytest.approx(2 * certified.certificate.lipschitz_bound, rel=1e-6)
    assert "above" in report.problems[0]


def test_a_lowered_certificate_is_caught(tiny_artifact, tmp_path):
    path, certified = tiny_artifact
    data = certified.certificate.to_dict()
    data["lipschitz_bound"] /= 2
    lowered = _tampered(path, tmp_path / "lowered.onnx", lambda m: _set_certificate(m, json.dumps(data)))
    report = verify_onnx(lowered)
    assert not report.ok and report.embedded.lipschitz_bound == data["lipschitz_bound"]


def test_truncated_files_and_malformed_certificates_are_clear_errors(tiny_artifact, tmp_path):
    path, _ = tiny_artifact
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(VerificationError, match="not a readable ONNX file"):
        verify_onnx(truncated)
    malformed = _tampered(path, tmp_path / "malformed.onnx", lambda m: _set_certificate(m, "{oops"))
    with pytest.raises(VerificationError, match=r"embedded certificate is malformed.*not valid JSON"):
        verify_onnx(malformed)
    with pytest.raises(VerificationError, match="no such file"):
        verify_onnx(tmp_path / "missing.onnx")


def _rewritten_torchscript(path: Path, out: Path, weight_scale: float, certificate: str | None) -> Path:
    """A copy of a TorchScript file with weight ``2.weight`` scaled and, if given, another certificate."""
    extra = {CERTIFICATE_KEY: ""}
    module = torch.jit.load(path, _extra_files=extra)
    with torch.no_grad():
        dict(module.named_parameters())["2.weight"].mul_(weight_scale)
    torch.jit.save(module, out, _extra_files={CERTIFICATE_KEY: certificate or extra[CERTIFICATE_KEY]})
    return out


def _rewritten_pt2(path: Path, out: Path, weight_scale: float, certificate: str | None) -> Path:
    """A copy of a .pt2 file with weight ``2.weight`` scaled and, if given, another certificate."""
    extra = {CERTIFICATE_KEY: ""}
    program = torch.export.load(path, extra_files=extra)
    with torch.no_grad():
        program.state_dict["2.weight"].mul_(weight_scale)
    torch.export.save(program, out, extra_files={CERTIFICATE_KEY: certificate or extra[CERTIFICATE_KEY]})
    return out


PROGRAM_FORMATS = {
    "torchscript": (write_torchscript, _rewritten_torchscript, "model.ts.pt", "TorchScript"),
    "pt2": (write_pt2, _rewritten_pt2, "model.pt2", "torch.export"),
}


@TORCHSCRIPT_IS_DEPRECATED
@pytest.mark.parametrize("format_name", PROGRAM_FORMATS)
def test_tampered_torchscript_and_pt2_files_are_refused(tiny_artifact, tmp_path, format_name):
    _, certified = tiny_artifact
    write, rewritten, name, label = PROGRAM_FORMATS[format_name]
    written = write(certified.model, certified.certificate, tmp_path / name)
    bound = certified.certificate.lipschitz_bound
    # the rewrite itself keeps a file valid: unchanged weights and certificate still verify
    assert verify_artifact(rewritten(written, tmp_path / f"copy-{name}", 1.0, None)).ok

    scaled = verify_artifact(rewritten(written, tmp_path / f"scaled-{name}", 2.0, None))
    assert not scaled.ok and "above" in scaled.problems[0]
    assert scaled.lipschitz_bound == pytest.approx(2 * bound, rel=1e-6)

    data = certified.certificate.to_dict()
    data["lipschitz_bound"] /= 2
    lowered = verify_artifact(rewritten(written, tmp_path / f"lowered-{name}", 1.0, json.dumps(data)))
    assert not lowered.ok and lowered.embedded.lipschitz_bound == data["lipschitz_bound"]
    assert lowered.lipschitz_bound == pytest.approx(bound, rel=1e-9)

    truncated = tmp_path / f"truncated-{name}"
    truncated.write_bytes(written.read_bytes()[:-200])
    with pytest.raises(VerificationError, match=f"not a readable {label} file"):
        verify_artifact(truncated)


def test_export_model_verifies_what_it_wrote(tiny_artifact, tmp_path):
    _, certified = tiny_artifact
    checks = export_model(certified, tmp_path / "good")
    assert [check.format for check in checks] == ["onnx", "torchscript"]
    for check in checks:
        assert check.notes == [f"bound recomputed from the file: {certified.certificate.lipschitz_bound:.6f}"]
    data = certified.certificate.to_dict()
    data["lipschitz_bound"] /= 2
    forged = CertifiedModel(certified.model, type(certified.certificate).from_dict(data), {})
    with pytest.raises(ExportError, match="above"):
        export_model(forged, tmp_path / "forged", torchscript=False)


class _ShiftedSession:
    """An onnxruntime session whose outputs are moved by ``shift``: a runtime that disagrees."""

    def __init__(self, session: ort.InferenceSession, shift: float) -> None:
        self.session, self.shift = session, shift

    def run(self, names, feeds):
        return [output + self.shift for output in self.session.run(names, feeds)]


def test_export_fails_when_the_runtime_disagrees_with_pytorch(short_run, tmp_path, monkeypatch):
    import export.pipeline

    opened = export.pipeline.onnx_session
    monkeypatch.setattr(export.pipeline, "onnx_session", lambda *a: _ShiftedSession(opened(*a), 1e-3))
    certified = zoo_load(short_run.checkpoint)
    with pytest.raises(ExportError, match=r"onnx outputs differ from PyTorch's by 0\.001 \(> 1e-05\)"):
        export_model(certified, tmp_path / "direct", torchscript=False)
    result = CliRunner().invoke(app, ["export", str(short_run.checkpoint), "--onnx", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "outputs differ from PyTorch's" in " ".join(result.stderr.split())


def test_verifiers_report_each_op_to_a_progress_callback(tiny_artifact, tmp_path):
    path, certified = tiny_artifact
    seen: list[tuple[int, int | None, str]] = []
    verify_artifact(path, lambda done, total, op: seen.append((done, total, op)))
    nodes = onnx.load(path).graph.node  # walked at each of the batch sizes 2, 5 and 1
    assert [done for done, _, _ in seen] == list(range(3 * len(nodes)))
    assert {total for _, total, _ in seen} == {3 * len(nodes)}
    assert [op.split()[0] for _, _, op in seen] == [node.op_type for node in nodes] * 3
    assert [op.split()[-1] for _, _, op in seen[:: len(nodes)]] == ["2)", "5)", "1)"]

    seen.clear()
    script = write_torchscript(certified.model, certified.certificate, tmp_path / "model.ts.pt")
    report = verify_artifact(script, lambda done, total, op: seen.append((done, total, op)))
    assert [done for done, _, _ in seen] == list(range(len(seen)))  # the total is not known in advance
    assert {total for _, total, _ in seen} == {None} and len(seen) >= len(report.layers)
    assert {layer.op for layer in report.layers} <= {op for _, _, op in seen}


# --- a model made outside the zoo ---------------------------------------------------------------


def _dense_norm(layer: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Exact operator norm of a float64 linear (or affine) layer: its matrix from one-hot inputs."""
    size = math.prod(input_shape)
    with torch.no_grad():
        basis = torch.eye(size, dtype=torch.float64).reshape(size, *input_shape)
        columns = (layer(basis) - layer(torch.zeros_like(basis[:1]))).reshape(size, -1)
    return float(torch.linalg.matrix_norm(columns, ord=2))


@pytest.fixture(scope="module")
def foreign_net(tmp_path_factory) -> tuple[Path, nn.Sequential]:
    """A plain conv net exported by torch.onnx.export itself (static batch of 1, no certificate)."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.LeakyReLU(0.1),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()
    path = tmp_path_factory.mktemp("foreign") / "net.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), path, dynamo=True, external_data=False, verbose=False)
    return path, net


def test_a_foreign_model_gets_a_sound_and_tight_bound(foreign_net):
    path, net = foreign_net
    report = verify_onnx(path)
    assert report.ok and report.embedded is None and report.input_shape == (3, 8, 8)
    # the product of the exact norms of the linear layers (the activations and a non-overlapping max
    # pool are 1-Lipschitz) is the per-layer bound the rules should reproduce, padded convolutions
    # included (Pad + Conv in the graph); the Jacobian norms below are lower bounds
    net = copy.deepcopy(net).double()
    shapes = {0: (3, 8, 8), 2: (8, 8, 8), 4: (8, 4, 4), 6: (8, 2, 2), 8: (8,)}
    product = math.prod(_dense_norm(net[i], shape) for i, shape in shapes.items())
    assert product <= report.lipschitz_bound <= product * (1 + 1e-5)
    # and it bounds the network's Jacobian at random points
    for seed in range(3):
        x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x).reshape(5, -1)
        assert float(torch.linalg.matrix_norm(jacobian, ord=2)) <= report.lipschitz_bound


@TORCHSCRIPT_IS_DEPRECATED
def test_torchscript_pt2_and_onnx_of_one_net_get_the_same_bound(foreign_net):
    """Circular padding reaches the dispatcher as new_empty + copy_ into slices: still one padded conv."""
    path, net = foreign_net
    example = torch.zeros(2, 3, 8, 8)
    traced = torch.jit.trace(net, example)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    expected = verify_onnx(path).lipschitz_bound
    for module in (traced, program.module()):
        bound = program_bound(module, (3, 8, 8), dtype=torch.float32).lipschitz_bound
        assert bound == pytest.approx(expected, rel=1e-9)


@TORCHSCRIPT_IS_DEPRECATED
def test_a_foreign_torchscript_file_is_verified_at_the_input_shape_given(foreign_net, tmp_path):
    path, net = foreign_net
    script = tmp_path / "foreign.pt"
    torch.jit.trace(net, torch.zeros(2, 3, 8, 8)).save(str(script))
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(script), "--no-progress"])
    assert result.exit_code == 1 and "give it (--input-shape C,H,W)" in " ".join(result.stderr.split())

    result = runner.invoke(app, ["verify", str(script), "--input-shape", "3,8,8", "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["embedded"] is None and report["input_shape"] == [3, 8, 8]
    assert report["lipschitz_bound"] == pytest.approx(verify_onnx(path).lipschitz_bound, rel=1e-9)

    result = runner.invoke(app, ["verify", str(path), "--input-shape", "3,9,9", "--no-progress"])
    assert result.exit_code == 1
    assert "takes inputs of shape (3, 8, 8), not (3, 9, 9)" in " ".join(result.stderr.split())
    result = runner.invoke(app, ["verify", str(script), "--input-shape", "3,x", "--no-progress"])
    assert result.exit_code == 1 and "--input-shape must be positive sizes" in " ".join(result.stderr.split())


def _seeded(module: nn.Module) -> nn.Module:
    torch.manual_seed(2)
    for parameter in module.parameters():
        nn.init.normal_(parameter)
    return module.eval()


def _batch_norm() -> nn.BatchNorm2d:
    norm = _seeded(nn.BatchNorm2d(3))
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    return norm


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x + self.conv(x), x.mean(dim=(2, 3), keepdim=True).expand_as(x)), dim=1)


# (module, example shape, largest allowed bound / exact norm): eager runs reach the same rules as
# TorchScript and .pt2 programs
LINEAR_PROGRAMS = {
    "batch norm": (_batch_norm, (3, 2, 2), 1 + 1e-5),
    "grouped dilated conv1d": (lambda: _seeded(nn.Conv1d(4, 6, 3, dilation=2, groups=2)), (4, 9), 1 + 1e-5),
    "adaptive average pool": (lambda: nn.AdaptiveAvgPool2d(2), (2, 4, 6), 1 + 1e-5),
    "adaptive average pool, overlapping windows": (lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 7, 5), 1 + 1e-5),
    "adaptive average pool, uneven windows": (lambda: nn.AdaptiveAvgPool2d(3), (2, 2, 2), 1 + 1e-5),
    "residual, mean, expand, concat": (lambda: _seeded(_Residual()), (2, 4, 4), 3.0),
    "grouped conv_transpose2d, stride 2, output padding": (
        lambda: _seeded(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)),
        (4, 4, 4),
        1 + 1e-5,
    ),
}


@pytest.mark.parametrize("case", LINEAR_PROGRAMS)
def test_linear_programs_are_bounded_by_their_exact_norm(case):
    make, example_shape, looseness = LINEAR_PROGRAMS[case]
    module = make()
    bound = program_bound(module, example_shape, dtype=torch.float32).lipschitz_bound
    exact = _dense_norm(module.double(), example_shape)
    assert exact * (1 - 1e-9) <= bound <= exact * looseness


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (torch.exp, "unsupported op aten.exp"),
        (lambda x: x * x.relu(), "product of two input-dependent tensors"),
        (lambda x: x.pow(3), "only the square of an input-dependent tensor"),
        (lambda x: (x * x).sum(dim=1).tanh(), "reads squares of input-dependent values"),
        (lambda x: (x * x).clamp_min_(1e-6).sqrt(), "reads squares of input-dependent values"),
        (lambda x: x.reshape(1, -1), "changes the batch axis"),
        (lambda x: x.sort(dim=1).indices.float(), "the indices of aten.sort"),
    ],
)
def test_program_ops_without_a_sound_rule_are_named(program, message):
    with pytest.raises(VerificationError, match=message):
        program_bound(program, (4,), dtype=torch.float32)


# --- op rules on graphs written with onnx.helper --------------------------------------------------


def _weights(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# (nodes, initializers, example shape, largest allowed bound / exact norm)
LINEAR_GRAPHS = {
    "conv same_upper stride groups": (
        [_node("Conv", ["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2], group=2)],
        {"w": _weights(6, 2, 3, 3)},
        (4, 7, 7),
        1 + 1e-5,
    ),
    "conv asymmetric pads dilation": (
        [_node("Conv", ["x", "w"], pads=[0, 1, 2, 0], strides=[1, 2], dilations=[2, 1])],
        {"w": _weights(3, 2, 3, 2)},
        (2, 6, 5),
        1.5,
    ),
    "conv1d": ([_node("Conv", ["x", "w"], pads=[1, 1])], {"w": _weights(4, 3, 3)}, (3, 10), 1 + 1e-5),
    "grouped conv transpose, stride 2, output padding": (
        [
            _node(
                "ConvTranspose", ["x", "w"], pads=[1, 1, 1, 1], strides=[2, 2], output_padding=[1, 1], group=2
            )
        ],
        {"w": _weights(4, 3, 3, 3)},
        (4, 4, 4),
        1 + 1e-5,
    ),
    "conv transpose, asymmetric pads": (
        [_node("ConvTranspose", ["x", "w"], pads=[0, 1, 2, 0], dilations=[1, 2])],
        {"w": _weights(2, 3, 3, 2)},
        (2, 5, 4),
        1.05,
    ),
    "wrap pad + conv": (
        [_node("Pad", ["x", "p"], "t", mode="wrap"), _node("Conv", ["t", "w"])],
        {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1]), "w": _weights(3, 2, 3, 3)},
        (2, 5, 5),
        1 + 1e-5,
    ),
    "circular pad as slices + concat + conv": (
        [
            _node("Slice", ["x", "last", "end", "width"], "right"),
            _node("Slice", ["x", "first", "one", "width"], "left"),
            _node("Concat", ["right", "x", "left"], "h", axis=3),
            _node("Slice", ["h", "last", "end", "height"], "bottom"),
            _node("Slice", ["h", "first", "one", "height"], "top"),
            _node("Concat", ["bottom", "h", "top"], "t", axis=2),
            _node("Conv", ["t", "w"]),
        ],
        {
            "first": np.array([0]),
            "one": np.array([1]),
            "last": np.array([-1]),
            "end": np.array([5]),
            "height": np.array([2]),
            "width": np.array([3]),
            "w": _weights(3, 2, 3, 3),
        },
        (2, 5, 5),
        1 + 1e-5,
    ),
    "reflect pad + conv": (
        [_node("Pad", ["x", "p"], "t", mode="reflect"), _node("Conv", ["t", "w"])],
        {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1]), "w": _weights(3, 2, 3, 3)},
        (2, 5, 5),
        1 + 1e-5,
    ),
    "average pool with padding": (
        [
            _node(
                "AveragePool",
                ["x"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                count_include_pad=1,
            )
        ],
        {},
        (2, 7, 7),
        1 + 1e-5,
    ),
    "flatten + gemm transB=0 alpha": (
        [_node("Flatten", ["x"], "t"), _node("Gemm", ["t", "w", "b"], alpha=2.0)],
        {"w": _weights(12, 5), "b": _weights(5)},
        (3, 4),
        1 + 1e-5,
    ),
    "W @ x": ([_node("MatMul", ["w", "x"])], {"w": _weights(5, 4)}, (3, 4, 6), 1 + 1e-5),
    "reduce mean + per-channel scale": (
        [_node("ReduceMean", ["x", "axes"], "t"), _node("Mul", ["t", "w"])],
        {"axes": np.array([2, 3]), "w": _weights(1, 3, 1, 1)},
        (3, 4, 5),
        1 + 1e-5,
    ),
    "depth to space + transpose + global average pool": (
        [
            _node("DepthToSpace", ["x"], "t", blocksize=2, mode="CRD"),
            _node("Transpose", ["t"], "u", perm=[0, 1, 3, 2]),
            _node("GlobalAveragePool", ["u"]),
        ],
        {},
        (8, 3, 3),
        1 + 1e-5,
    ),
    "concat of two convs of x": (
        [
            _node("Conv", ["x", "w1"], "a", pads=[1, 1, 1, 1]),
            _node("Conv", ["x", "w2"], "b", pads=[1, 1, 1, 1]),
            _node("Concat", ["a", "b"], axis=1),
        ],
        {"w1": _weights(2, 2, 3, 3, seed=1), "w2": _weights(2, 2, 3, 3, seed=2)},
        (2, 4, 4),
        math.sqrt(2),
    ),
    "residual x + conv(x) - constant": (
        [
            _node("Conv", ["x", "w"], "a", pads=[1, 1, 1, 1]),
            _node("Add", ["x", "a"], "s"),
            _node("Sub", ["s", "c"]),
        ],
        {"w": _weights(2, 2, 3, 3), "c": _weights(1, 2, 1, 1)},
        (2, 4, 4),
        2.0,
    ),
    "batch normalization": (
        [_node("BatchNormalization", ["x", "w1", "w2", "w3", "w4"])],
        {
            "w1": _weights(3),
            "w2": _weights(3, seed=1),
            "w3": _weights(3, seed=2),
            "w4": np.float32([0.5, 2, 3]),
        },
        (3, 2, 2),
        1 + 1e-5,
    ),
}


# torch.onnx spells an adaptive pool whose windows do not tile the input as a Transpose that moves the
# batch axis, a GatherND of the windows and a mean (equal windows) or masked sums divided by the
# window sizes (uneven windows): both get the exact norm of the nonnegative matrix they make.
ADAPTIVE_POOLS = {
    "overlapping windows": ((3, 2), (2, 7, 5)),
    "copies, 1x1 -> 7x7 (VGG's pool on small inputs)": ((7, 7), (3, 1, 1)),
    "uneven windows, upsampling": ((3, 3), (2, 2, 2)),
    "uneven windows": ((5, 3), (3, 7, 4)),
}


@pytest.mark.parametrize("case", ADAPTIVE_POOLS)
def test_adaptive_pools_exported_by_torch_onnx_are_bounded_soundly(case, tmp_path):
    output_size, shape = ADAPTIVE_POOLS[case]
    pool = nn.AdaptiveAvgPool2d(output_size)
    program = torch.onnx.export(
        pool,
        (torch.zeros(2, *shape),),
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        verbose=False,
    )
    exact = _dense_norm(pool, shape)
    bound = graph_bound(program.model_proto).lipschitz_bound
    assert exact * (1 - 1e-9) <= bound <= exact * (1 + 1e-5)


@pytest.mark.parametrize("case", LINEAR_GRAPHS)
def test_linear_graphs_are_bounded_by_their_exact_norm(case):
    nodes, initializers, example_shape, looseness = LINEAR_GRAPHS[case]
    model = _model(nodes, initializers, example_shape)
    size = math.prod(example_shape)
    basis = np.eye(size).reshape(size, *example_shape)
    outputs = _run(model, basis) - _run(model, np.zeros((1, *example_shape)))
    exact = float(np.linalg.norm(outputs.reshape(size, -1), ord=2))
    bound = graph_bound(model).lipschitz_bound
    assert exact * (1 - 1e-5) <= bound <= exact * looseness  # float32 evaluation of the truth


def test_a_padding_is_absorbed_only_when_its_copies_hold_the_same_values():
    tracker = Tracker(batch=2)
    x = tracker.source((2, 1, 4, 4), 1.0)
    circular = F.pad(torch.from_numpy(x.index), (1, 1, 1, 1), mode="circular").numpy()
    center, padding, mode = tracker.padding_of(tracker.reindexed(circular, [x]), (3, 3))
    assert np.array_equal(center.index, x.index) and (padding, mode) == ((1, 1), "circular")
    # the same index pattern, but the left column holds relu(x) where x is copied: no padding
    relu = tracker.elementwise(x, 1.0, alike=True)
    left = tracker.reindexed(relu.index[..., -1:], [relu])
    mixed = tracker.reindexed(np.concatenate([left.index, x.index, x.index[..., :1]], axis=3), [left, x])
    assert tracker.padding_of(mixed, (1, 3)) is None


def test_an_overlapping_max_pool_is_bounded_tightly_by_its_window_coverage():
    model = _model([_node("MaxPool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], {}, (1, 5, 5))
    bound = graph_bound(model).lipschitz_bound
    assert bound == pytest.approx(3.0)  # a pixel lies in 9 windows
    spike = np.zeros((1, 1, 5, 5))
    spike[0, 0, 2, 2] = 1.0  # the max of all 9 windows that contain it: the bound is attained
    assert np.linalg.norm(_run(model, spike) - _run(model, np.zeros_like(spike))) == pytest.approx(bound)


NONLINEAR_GRAPHS = {
    "maxmin of split halves after leaky relu": (
        [
            _node("LeakyRelu", ["x"], "r", alpha=2.0),
            helper.make_node("Split", ["r"], ["a", "b"], axis=1, num_outputs=2),
            _node("Max", ["a", "b"], "hi"),
            _node("Min", ["b", "a"], "lo"),
            _node("Concat", ["hi", "lo"], axis=1),
        ],
        {},
        (4, 3),
        2.0,
    ),
    "topk + abs + sigmoid": (
        [
            helper.make_node("TopK", ["x", "k"], ["t", "i"], axis=1),
            _node("Abs", ["t"], "a"),
            _node("Sigmoid", ["a"]),
        ],
        {"k": np.array([2])},
        (5,),
        0.25,
    ),
    "lp pool + clip + tanh + max with a constant": (
        [
            _node("LpPool", ["x"], "p", kernel_shape=[2], strides=[1], p=2),
            _node("Clip", ["p", "lo", "hi"], "c"),
            _node("Max", ["c", "lo"], "m"),
            _node("Tanh", ["m"]),
        ],
        {"lo": np.float32(-0.5), "hi": np.float32(0.5)},
        (2, 6),
        math.sqrt(2),
    ),
}


NONLINEAR_GRAPHS |= {
    "l2 norm pool: square, overlapping average pool, scale, floor, root": (
        [
            _node("Pow", ["x", "two"], "s"),
            _node("AveragePool", ["s"], "p", kernel_shape=[3], strides=[1], pads=[1, 1], count_include_pad=1),
            _node("Mul", ["p", "three"], "m"),
            _node("Clip", ["m", "eps"], "c"),
            _node("Sqrt", ["c"]),
        ],
        {"two": np.float32(2), "three": np.float32(3), "eps": np.float32(1e-12)},
        (2, 6),
        math.sqrt(3),  # a pixel lies in 3 windows of the sum of squares
    ),
    "global l2 norm: x * x, sum, floor, root": (
        [
            _node("Mul", ["x", "x"], "s"),
            _node("ReduceSum", ["s", "axes"], "r", keepdims=1),
            _node("Max", ["r", "eps"], "m"),
            _node("Sqrt", ["m"]),
        ],
        {"axes": np.array([2]), "eps": np.float32(1e-12)},
        (3, 4),
        1.0,
    ),
    "centering: x - mean over channels + bias": (
        [
            _node("ReduceMean", ["x", "axes"], "m", keepdims=1),
            _node("Sub", ["x", "m"], "c"),
            _node("Add", ["c", "b"]),
        ],
        {"axes": np.array([1]), "b": _weights(1, 3, 1)},
        (3, 4),
        1.0,
    ),
    "global lp pools p=1 and p=3, reduce l2 over channels": (
        [
            _node("GlobalLpPool", ["x"], "one", p=1),
            _node("GlobalLpPool", ["x"], "three", p=3),
            _node("Concat", ["one", "three"], "c", axis=1),
            _node("ReduceL2", ["c", "axes"], keepdims=1),
        ],
        {"axes": np.array([1])},
        (2, 3, 3),
        math.sqrt(9 + 1),  # the p=1 pool of 9 pixels moves by up to 3 ||dx||, the p=3 pool by ||dx||
    ),
    "sort with k read from the shape": (
        [
            _node("Shape", ["x"], "s"),
            _node("Gather", ["s", "one"], "k"),
            helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=1),
        ],
        {"one": np.array([1])},
        (5,),
        1.0,
    ),
}


@pytest.mark.parametrize("case", NONLINEAR_GRAPHS)
def test_nonlinear_graphs_bound_their_difference_quotients(case):
    nodes, initializers, example_shape, expected = NONLINEAR_GRAPHS[case]
    model = _model(nodes, initializers, example_shape)
    bound = graph_bound(model).lipschitz_bound
    assert bound == pytest.approx(expected, rel=1e-9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, *example_shape))
    y = x + 0.1 * rng.standard_normal(x.shape)
    moves = np.linalg.norm((_run(model, x) - _run(model, y)).reshape(len(x), -1), axis=1)
    assert np.max(moves / np.linalg.norm((x - y).reshape(len(x), -1), axis=1)) <= bound * (1 + 1e-4)


class _Reduction(nn.Module):
    def __init__(self, reduce) -> None:
        super().__init__()
        self.reduce = reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(x)


# Reductions of the last axis (4 values) of (3, 4) examples: (map, its Lipschitz constant, whether
# torch.onnx spells it with ops that have a rule: a p-norm with p other than 1, 2, inf becomes Pow)
REDUCTIONS = {
    "l1 norm": (lambda x: torch.linalg.vector_norm(x, ord=1, dim=2), 2.0, True),
    "l2 norm": (lambda x: torch.linalg.vector_norm(x, dim=2), 1.0, True),
    "max norm": (lambda x: torch.linalg.vector_norm(x, ord=math.inf, dim=2), 1.0, True),
    "1.5 norm": (lambda x: torch.norm(x, p=1.5, dim=2), 4 ** (1 / 1.5 - 1 / 2), False),
    "logsumexp": (lambda x: torch.logsumexp(x, dim=2), 1.0, True),
    "amin": (lambda x: x.amin(dim=2), 1.0, True),
}


@pytest.mark.parametrize("name", REDUCTIONS)
def test_norm_and_extremum_reductions_get_their_constant_from_onnx_and_programs(name):
    reduce, constant, in_onnx = REDUCTIONS[name]
    net = _Reduction(reduce).eval()
    example, batch = (torch.zeros(2, 3, 4),), ({0: torch.export.Dim("batch")},)
    exported = torch.export.export(net, example, dynamic_shapes=batch)
    bounds = [
        program_bound(net, (3, 4), dtype=torch.float32).lipschitz_bound,
        program_bound(exported.module(), (3, 4), dtype=torch.float32).lipschitz_bound,
    ]
    assert bounds == pytest.approx([constant] * 2, rel=1e-12)
    program = torch.onnx.export(net, example, dynamo=True, dynamic_shapes=batch, verbose=False)
    if in_onnx:
        assert graph_bound(program.model_proto).lipschitz_bound == pytest.approx(constant, rel=1e-12)
    else:
        with pytest.raises(UnsupportedOpError, match="Pow node"):
            graph_bound(program.model_proto)
    x = torch.randn(256, 3, 4, dtype=torch.float64)
    y = x + 0.1 * torch.randn_like(x)
    with torch.no_grad():
        quotients = (net(x) - net(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(quotients.max()) <= constant * (1 + 1e-9)


def test_a_product_with_the_sigmoid_of_another_tensor_is_refused():
    nodes = [_node("Relu", ["x"], "r"), _node("Sigmoid", ["r"], "s"), _node("Mul", ["x", "s"])]
    with pytest.raises(UnsupportedOpError, match="product of two input-dependent tensors"):
        graph_bound(_model(nodes, {}, (4,)))


@pytest.mark.parametrize(
    ("node", "initializers", "message"),
    [
        (_node("Exp", ["x"]), {}, "unsupported op Exp"),
        (_node("Div", ["w", "x"]), {"w": _weights(3)}, "division by an input-dependent tensor"),
        (_node("Pow", ["x", "w"]), {"w": np.float32(3)}, "only the square of an input-dependent tensor"),
        (_node("Sqrt", ["x"]), {}, "square root of its pooled squares"),
        (_node("Mul", ["x", "x"]), {}, "is squares of input-dependent values"),
    ],
)
def test_ops_without_a_sound_rule_are_named(node, initializers, message):
    with pytest.raises(UnsupportedOpError, match=message):
        graph_bound(_model([node], initializers, (3,)))


def test_a_conv_transpose_sized_by_output_shape_is_refused():
    node = _node("ConvTranspose", ["x", "w"], output_shape=[6, 6])
    with pytest.raises(UnsupportedOpError, match="auto_pad and output_shape are not supported"):
        graph_bound(_model([node], {"w": _weights(2, 3, 3, 3)}, (2, 4, 4)))


@pytest.mark.parametrize(
    ("nodes", "initializers", "message"),
    [
        ([_node("Flatten", ["x"], axis=0)], {}, "changes the batch axis"),
        ([_node("Transpose", ["x"], perm=[1, 0])], {}, "output 'y' is a tensor whose batch axis was moved"),
        (
            [_node("Transpose", ["x"], "t", perm=[1, 0]), _node("Relu", ["t"])],
            {},
            "Relu node .* reads a tensor whose batch axis was moved to axis 1",
        ),
        (
            [_node("Transpose", ["x"], "t", perm=[1, 0]), _node("Reshape", ["t", "s"])],
            {"s": np.array([-1, 2])},
            "reshapes a tensor whose batch axis is not first",
        ),
        ([_node("Reshape", ["x", "s"])], {"s": np.array([2, -1])}, "fixed batch size"),
        ([_node("Gather", ["x", "i"], axis=0)], {"i": np.array([1, 0])}, "mixes the examples"),
        (
            [_node("Mul", ["x", "x"], "s"), _node("Tanh", ["s"])],
            {},
            "reads squares of input-dependent values",
        ),
        (
            [_node("Relu", ["x"], "r"), _node("Mul", ["x", "r"])],
            {},
            "product of two input-dependent tensors",
        ),
        (
            [
                _node("Shape", ["x"], "s"),
                _node("Gather", ["s", "i"], "b"),
                _node("Cast", ["b"], "f", to=TensorProto.FLOAT),
                _node("Mul", ["x", "f"]),
            ],
            {"i": np.array(0)},
            "casts the batch size read by a Shape node",
        ),
        (
            [
                _node("Shape", ["x"], "s"),
                _node("Gather", ["s", "i"], "b"),
                _node("Mul", ["b", "b"], "t"),
                _node("Reshape", ["x", "t"]),
            ],
            {"i": np.array([0, 1])},
            "computes with the batch size read by a Shape node",
        ),
    ],
)
def test_ops_that_mix_examples_are_refused(nodes, initializers, message):
    with pytest.raises(VerificationError, match=message):
        graph_bound(_model(nodes, initializers, (4,)))


# --- the command line -------------------------------------------------------------------------------


def test_zoo_verify_json_and_exit_codes(tiny_artifact, tmp_path):
    path, certified = tiny_artifact
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"lipschitz_bound", "layers", "embedded", "ok"} <= set(report)
    assert report["ok"] is True and report["embedded"] == json.loads(certified.certificate.to_json())
    assert {"name", "op", "bound"} <= set(report["layers"][0])

    data = certified.certificate.to_dict()
    data["lipschitz_bound"] /= 2
    lowered = _tampered(path, tmp_path / "lowered.onnx", lambda m: _set_certificate(m, json.dumps(data)))
    result = runner.invoke(app, ["verify", str(lowered), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["ok"] is False
    assert "above" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not an onnx file")
    result = runner.invoke(app, ["verify", str(garbage)])
    # (the CLI's shared error printer wraps long lines at the console width)
    assert result.exit_code == 1 and "not a readable ONNX file" in " ".join(result.stderr.split())
