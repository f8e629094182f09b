"""The architectures and variants that the architecture and export tests run, at small widths."""

from __future__ import annotations

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
# Small widths keep the suite fast; the defaults are exercised by the build-only test.
SMALL = {
    "lipmlp": {"widths": (32, 32)},
    "lipconv": {"widths": (4, 8), "dense": (16,)},
    "lipresnet": {"widths": (4, 12), "depth": 1},
    "orthoconv": {"widths": (4, 8), "depth": 1, "dense": (16,)},
}
# Other layer families, activations and blocks of the same architectures, on digits-sized inputs.
VARIANTS = [
    *[
        ("lipconv", family, {**SMALL["lipconv"], "family": family})
        for family in ("aol", "orthogonal", "frobenius")
    ],
    ("lipconv", "householder", {**SMALL["lipconv"], "activation": "householder"}),
    ("lipconv", "orthogonal-init", {**SMALL["lipconv"], "init": "orthogonal", "bjorck_tol": 1e-3}),
    ("lipmlp", "orthogonal-init", {**SMALL["lipmlp"], "init": "orthogonal", "bjorck_tol": 1e-3}),
    ("lipresnet", "convex", {**SMALL["lipresnet"], "block": "convex"}),
    ("lipresnet", "stem-stride2", {**SMALL["lipresnet"], "stem_stride": 2}),
    (
        "lipconv",
        "operator-l2pool",
        {**SMALL["lipconv"], "conv_norm": "operator", "pool": "l2", "pool_from": 0},
    ),
]
