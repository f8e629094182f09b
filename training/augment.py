"""Batch augmentations of the published recipes, on tensors, driven by an explicit generator so a
seeded (or resumed) run draws the same crops and flips."""

from __future__ import annotations

import torch

__all__ = ["AUGMENTATIONS", "augment"]

AUGMENTATIONS = ("none", "crop", "crop_flip")


def _random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at a random offset per image."""
    n, channels, height, width = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy, dx = (torch.randint(0, 2 * padding + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None].to(x.device)
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :].to(x.device)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(channels, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def augment(x: torch.Tensor, kind: str, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Apply augmentation ``kind`` ('none', 'crop', 'crop_flip') to a batch (N, C, H, W)."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; known: {', '.join(AUGMENTATIONS)}")
    if kind == "none":
        return x
    x = _random_crop(x, padding, generator)
    if kind == "crop_flip":
        flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x
