"""Every architecture and variant exports to every format (ONNX, TorchScript, .pt2, Triton), and so
does every layer of the library; each written file re-certifies itself: the bound recomputed from
the file alone equals the PyTorch-side certificate. Residual blocks of any weights are bounded alike
by the certifier and the verifiers."""

from __future__ import annotations

import onnx
import pytest
import torch
from architecture_cases import SMALL, VARIANTS
from layer_cases import CASES as LAYER_CASES
from layer_cases import build as build_layer
from layer_cases import train_a_few_steps
from layer_checks import adjoint_residual

from export.onnx_graph import graph_bound
from export.pipeline import export_model
from export.torch_graph import program_bound
from export.verify import verify_artifact
from export.writers import write_onnx, write_pt2, write_torchscript
from zoo.bounds import conv_bound, conv_transpose_bound
from zoo.certify import certify, network_bound
from zoo.fold import fold
from zoo.hub import CertifiedModel
from zoo.layers import HouseHolder
from zoo.models import ARCHITECTURES, build

SHAPE = (1, 8, 8)
CASES = [(name, "default", options) for name, options in SMALL.items()] + VARIANTS
TORCHSCRIPT_IS_DEPRECATED = pytest.mark.filterwarnings(r"ignore:`torch\.jit.*deprecated:FutureWarning")


def _certified(name: str, options: dict, shape: tuple[int, ...] = SHAPE) -> CertifiedModel:
    """A trained-mode model with random weights, folded into its plain architecture and certified."""
    torch.manual_seed(0)
    folded = fold(build(name, input_shape=shape, num_classes=10, **options)).eval()
    plain = build(name, input_shape=shape, num_classes=10, parametrized=False, **options).eval()
    plain.load_state_dict(folded.state_dict())
    return CertifiedModel(plain, certify(plain, shape), {"name": name, **options})


@TORCHSCRIPT_IS_DEPRECATED
@pytest.mark.parametrize(("name", "variant", "options"), CASES, ids=[f"{n}-{v}" for n, v, _ in CASES])
def test_every_architecture_exports_to_every_format_and_verifies(name, variant, options, tmp_path):
    certified = _certified(name, options)
    checks = export_model(certified, tmp_path, onnx=True, torchscript=True, pt2=True, triton=True)
    assert {check.format for check in checks} == {"onnx", "torchscript", "pt2", "triton"}
    expected = certified.certificate.lipschitz_bound
    for check in checks:
        if check.format == "triton":
            continue
        report = verify_artifact(check.path)
        assert report.ok, report.problems
        assert abs(report.lipschitz_bound - expected) <= 1e-9 * expected, check.format
        assert check.max_abs_diff <= 1e-5
    if name == "lipresnet" and variant == "default":
        assert expected <= 1 + 1e-4  # SLL blocks bounded as blocks (the triangle inequality gives ~3 each)


@pytest.mark.slow
@TORCHSCRIPT_IS_DEPRECATED
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_cifar_sized_default_architectures_export_and_verify(name, tmp_path):
    """The default widths on 3x32x32 inputs (the CIFAR-10 recipes), where the conv bounds take the
    FFT path instead of exact dense norms."""
    certified = _certified(name, {}, (3, 32, 32))
    for check in export_model(certified, tmp_path, onnx=True, torchscript=True):
        report = verify_artifact(check.path)
        assert report.ok, report.problems
        expected = certified.certificate.lipschitz_bound
        assert abs(report.lipschitz_bound - expected) <= 1e-9 * expected, check.format


WRITERS = {".onnx": write_onnx, ".pt": write_torchscript, ".pt2": write_pt2}


@TORCHSCRIPT_IS_DEPRECATED
@pytest.mark.parametrize("suffix", WRITERS)
@pytest.mark.parametrize("name", LAYER_CASES)
def test_every_layer_exports_and_verifies(name, suffix, tmp_path):
    case = LAYER_CASES[name]
    layer = build_layer(case)
    train_a_few_steps(layer, case.shape)
    layer = fold(layer).eval()
    certificate = certify(layer, case.shape)
    path = WRITERS[suffix](layer, certificate, tmp_path / f"layer{suffix}")
    report = verify_artifact(path)
    assert report.ok, report.problems
    # equal up to the margin: a few layers are bounded with one margin fewer from the file, and a
    # constant the file stores in float32 (a pool's scale traced by TorchScript) rounds by < 6e-8
    expected = certificate.lipschitz_bound
    assert expected * (1 - 3e-6) <= report.lipschitz_bound <= expected * (1 + 6e-8)


@TORCHSCRIPT_IS_DEPRECATED
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "conv2d-flipped"])
@pytest.mark.parametrize(("noise", "sign"), [(0.0, -1.0), (0.05, -1.0), (0.3, 1.0)])
def test_residual_blocks_of_any_weights_get_the_certifier_bound_from_every_format(
    kind, noise, sign, tmp_path
):
    """The certifier's rule is checked sound against Jacobians (tests/zoo/test_layer_rules.py); the
    verifiers must find the same number in the graphs the exporters write."""
    torch.manual_seed(3)
    block, shape = adjoint_residual(kind, noise, sign)
    block.eval()
    expected, _ = network_bound(block, shape)
    onnx_path = write_onnx(block, certify(block, shape), tmp_path / "block.onnx")
    example = torch.zeros(2, *shape)
    programs = [
        torch.jit.trace(block, example),
        torch.export.export(block, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module(),
    ]
    bounds = [graph_bound(onnx.load(onnx_path)).lipschitz_bound]
    bounds += [program_bound(p, shape, dtype=torch.float32).lipschitz_bound for p in programs]
    assert bounds == pytest.approx([expected] * 3, rel=1e-9)


def _general_residual_bound(weight: torch.Tensor, shape: tuple[int, ...]) -> float:
    """min(triangle, Cauchy-Schwarz) of ``x + B relu(A x)`` with ``A = B^T`` = the 3x3 ``weight``."""
    gain = conv_bound(weight, input_size=shape[1:], padding=1) * conv_transpose_bound(
        weight, input_size=shape[1:], padding=1
    )
    return min(1 + gain, 2**0.5 * (1 + gain**2) ** 0.5)


class _NearMiss(torch.nn.Module):
    """``x' + B relu(A x)`` where the residual term ``x'`` is not the tensor that ``A`` reads (``x'`` is
    a copy of ``x``, or ``relu(x)``), or the activation is not a ReLU: no block to bound as a whole."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.weight = torch.nn.Parameter(torch.randn(4, 2, 3, 3) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activation = torch.nn.functional.leaky_relu if self.how == "leaky" else torch.relu
        branch = torch.nn.functional.conv_transpose2d(
            activation(torch.nn.functional.conv2d(x, self.weight, padding=1)), -self.weight, padding=1
        )
        residual = torch.relu(x) if self.how == "other input" else x
        return residual + branch


@pytest.mark.parametrize("how", ["other input", "leaky"])
def test_a_sum_that_is_not_an_adjoint_residual_block_gets_the_general_bound(how, tmp_path):
    torch.manual_seed(6)
    block, shape = _NearMiss(how).eval(), (2, 5, 5)
    path = tmp_path / "near_miss.onnx"
    torch.onnx.export(block, (torch.zeros(2, *shape),), path, dynamo=True, dynamic_shapes=({0: "batch"},))
    general = _general_residual_bound(block.weight.detach(), shape)
    assert graph_bound(onnx.load(path)).lipschitz_bound == pytest.approx(general, rel=1e-9)
    program = program_bound(block, shape, dtype=torch.float32)
    assert program.lipschitz_bound == pytest.approx(general, rel=1e-9)
    assert general > 1.5  # and the same weights as a block: about 1


def test_householder_is_the_reflection_of_the_pairs_on_the_negative_side():
    torch.manual_seed(7)
    layer = HouseHolder(6)
    with torch.no_grad():
        layer.theta.uniform_(-3, 3)
    for shape in [(5, 6), (5, 6, 4), (5, 6, 3, 3)]:
        x = torch.randn(*shape, dtype=torch.float64)
        a, b = x.chunk(2, dim=1)
        view = (1, -1) + (1,) * (x.dim() - 2)
        cos, sin = layer.theta.double().cos().view(view), layer.theta.double().sin().view(view)
        along = (a * cos + b * sin).clamp(max=0)
        expected = torch.cat((a - 2 * along * cos, b - 2 * along * sin), dim=1)
        torch.testing.assert_close(layer.double()(x), expected)
        layer.float()
    bound, _ = network_bound(layer, (6, 3, 3))
    assert 1 <= bound <= 1 + 1e-5
