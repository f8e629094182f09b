"""Device selection with no silent fallback: asking for cuda where there is none is an error."""

from __future__ import annotations

import torch

__all__ = ["DeviceUnavailableError", "resolve_device"]


class DeviceUnavailableError(RuntimeError):
    """The requested device cannot be used on this machine."""


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``name`` ('cpu', 'cuda' or 'cuda:N'), or raise with the reason."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"--device {name} was requested but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False: no GPU or no CUDA driver). "
                "Use --device cpu to run on the CPU."
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"--device {name} was requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
        return device
    raise DeviceUnavailableError(f"unknown device {name!r}; use 'cpu', 'cuda' or 'cuda:N'")
