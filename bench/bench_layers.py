"""Training-step time of each 1-Lipschitz layer family, relative to plain torch layers of the same shape.

    zoo bench layers [--steps 10] [--threads 2]

One training step is forward, backward (loss: mean of the squared outputs) and an Adam step (lr
1e-3: every weight moves as in training, so iterative normalisations that stop early cannot ride on
weights that stay at their initialisation). The networks of a row are timed in turns over ``--steps``
rounds after ``--warmup`` untimed ones; the table shows the median step time of the plain network and
the ratio of each constrained network to it, for this library and, when they are installed,
deel-torchlip and orthogonium (a column shows '-' when the peer lacks the layer, or is not
installed). The rows marked "(orthogonal init, tol)" build the spectral family as deel-torchlip
does: orthogonal initial weights, Bjorck stopped at ``bjorck_tol=1e-3``. A benchmark, not a test: it
prints figures and checks nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from collections.abc import Callable
from typing import Any

import torch
from timing import interleaved_seconds
from torch import nn

from zoo.layers import FAMILIES, SLL, GroupSort2, sll_residual
from zoo.models.common import constrain

Factory = Callable[[int, int], nn.Module]  # (in, out) -> layer
CONV_SHAPE = (32, 3, 32, 32)  # batch, channels, height, width
MLP_SHAPE = (64, 1024)
RESIDUAL_SHAPE = (32, 32, 16, 16)


def conv_net(conv: Factory) -> nn.Module:
    """Three 3x3 convolutions (3 -> 32 -> 32 -> 32 channels, zero padding 1) with GroupSort2."""
    return nn.Sequential(conv(3, 32), GroupSort2(), conv(32, 32), GroupSort2(), conv(32, 32))


def mlp(linear: Factory) -> nn.Module:
    """1024 -> 512 -> 512 -> 10 dense layers with GroupSort2."""
    return nn.Sequential(linear(1024, 512), GroupSort2(), linear(512, 512), GroupSort2(), linear(512, 10))


def residual_net(block: Callable[[int], nn.Module]) -> nn.Module:
    """Three residual blocks on 32 channels."""
    return nn.Sequential(*(block(32) for _ in range(3)))


def zoo_family(family: str, **options: Any) -> tuple[Factory, Factory]:
    """(conv, dense) factories of ``family``, built by the architectures' ``constrain``."""
    return (
        lambda i, o: constrain(nn.Conv2d(i, o, 3, padding=1), family, parametrized=True, **options),
        lambda i, o: constrain(nn.Linear(i, o), family, parametrized=True, **options),
    )


FAST_SPECTRAL = {"init": "orthogonal", "bjorck_tol": 1e-3}  # deel-torchlip's way
FAST_LABEL = " (orthogonal init, tol)"  # its rows are compared with the peers' rows without it


def peer_layers() -> dict[str, dict[str, Callable[[], nn.Module]]]:
    """Networks built from the peers' layers, by peer and then by row name, for those installed."""
    peers: dict[str, dict[str, Callable[[], nn.Module]]] = {}
    if importlib.util.find_spec("deel") and importlib.util.find_spec("deel.torchlip"):
        import deel.torchlip as tl

        peers["deel-torchlip"] = {
            "spectral conv": lambda: conv_net(lambda i, o: tl.SpectralConv2d(i, o, 3, padding=1)),
            "spectral dense": lambda: mlp(tl.SpectralLinear),
            "frobenius conv": lambda: conv_net(lambda i, o: tl.FrobeniusConv2d(i, o, 3, padding=1)),
            "frobenius dense": lambda: mlp(tl.FrobeniusLinear),
        }
    if importlib.util.find_spec("orthogonium"):
        from orthogonium.layers import OrthoLinear
        from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d
        from orthogonium.layers.conv.AOL.aol import AOLConv2D
        from orthogonium.layers.conv.SLL import SDPBasedLipschitzResBlock

        peers["orthogonium"] = {
            "orthogonal conv": lambda: conv_net(
                lambda i, o: AdaptiveOrthoConv2d(i, o, 3, padding=1, padding_mode="zeros")
            ),
            "orthogonal dense": lambda: mlp(OrthoLinear),
            "aol conv": lambda: conv_net(lambda i, o: AOLConv2D(i, o, 3, padding=1)),
            "sll residual": lambda: residual_net(lambda c: SDPBasedLipschitzResBlock(c, 1)),
        }
    return peers


def rows() -> list[tuple[str, tuple[int, ...], Callable[[], nn.Module], Callable[[], nn.Module]]]:
    """(row name, input shape, plain network, this library's network)."""
    plain_conv = lambda: conv_net(lambda i, o: nn.Conv2d(i, o, 3, padding=1))  # noqa: E731
    plain_mlp = lambda: mlp(nn.Linear)  # noqa: E731
    table = []
    variants = [(family, family, {}) for family in FAMILIES]
    variants.insert(1, ("spectral", f"spectral{FAST_LABEL}", FAST_SPECTRAL))
    for family, label, options in variants:
        conv, linear = zoo_family(family, **options)
        table.append((f"{label} conv", CONV_SHAPE, plain_conv, lambda conv=conv: conv_net(conv)))
        table.append((f"{label} dense", MLP_SHAPE, plain_mlp, lambda linear=linear: mlp(linear)))
    plain_residual = lambda: residual_net(lambda c: sll_residual(nn.Conv2d(c, c, 3, padding=1)))  # noqa: E731
    sll = lambda: residual_net(lambda c: SLL(nn.Conv2d(c, c, 3, padding=1)))  # noqa: E731
    table.append(("sll residual", RESIDUAL_SHAPE, plain_residual, sll))
    return table


def step_times(
    makers: list[Callable[[], nn.Module]], shape: tuple[int, ...], steps: int, warmup: int
) -> list[float]:
    """Median seconds of one training step of each network on the same random batch, the networks
    timed in interleaved rounds (bench/timing.py) so that a change of machine load affects them all
    alike (the CPU is shared)."""
    torch.manual_seed(0)
    x = torch.randn(*shape)

    def training_step(model: nn.Module) -> Callable[[], None]:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            loss = model(x).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    steps_of = {str(i): training_step(make().train()) for i, make in enumerate(makers)}
    times = interleaved_seconds(steps_of, steps, warmup)
    return [statistics.median(times[str(i)]) for i in range(len(makers))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per network")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per network first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peers = peer_layers()
    names = ["deel-torchlip", "orthogonium"]
    header = f"{'layer':<40}{'input':<16}{'plain ms':>10}{'zoo':>8}" + "".join(f"{n:>15}" for n in names)
    print(header)
    print("-" * len(header))
    for row, shape, plain, ours in rows():
        peer_row = row.replace(FAST_LABEL, "")
        available = [peers[peer][peer_row] for peer in names if peer_row in peers.get(peer, {})]
        base, zoo, *others = step_times([plain, ours, *available], shape, args.steps, args.warmup)
        cells = [f"{zoo / base:7.2f}x"]
        for peer in names:
            has_row = peer_row in peers.get(peer, {})
            cells.append(f"{others.pop(0) / base:14.2f}x" if has_row else f"{'-':>15}")
        shape_text = "x".join(map(str, shape))
        print(f"{row:<40}{shape_text:<16}{base * 1e3:10.2f} " + "".join(cells), flush=True)
    missing = [n for n in names if n not in peers]
    if missing:
        print(f"not installed: {', '.join(missing)} (pip install deel-torchlip orthogonium)")


if __name__ == "__main__":
    main()
