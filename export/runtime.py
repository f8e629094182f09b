"""ONNX Runtime sessions on an explicitly chosen device, never a silent fallback to the CPU."""

from __future__ import annotations

import os

import onnxruntime as ort

from zoo.device import DeviceUnavailableError

__all__ = ["onnx_session"]

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def onnx_session(
    path: str | os.PathLike, device: str = "cpu", options: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    """An inference session of the model at ``path`` running on ``device`` ('cpu' or 'cuda').

    onnxruntime-gpu quietly falls back to the CPU when CUDA cannot be used; here asking for cuda
    either gives a session whose first provider is CUDA or raises DeviceUnavailableError saying why.
    """
    if device not in _PROVIDERS:
        raise DeviceUnavailableError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    provider = _PROVIDERS[device]
    if device == "cuda":
        import torch  # loads the CUDA libraries of the nvidia wheels for onnxruntime-gpu

        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                "device cuda was requested but no CUDA device is available on this machine "
                "(torch.cuda.is_available() is False)"
            )
        if provider not in ort.get_available_providers():
            raise DeviceUnavailableError(
                "device cuda was requested but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {ort.get_available_providers()}); install onnxruntime-gpu"
            )
    session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=[provider])
    if session.get_providers()[0] != provider:
        raise DeviceUnavailableError(
            f"onnxruntime could not start {provider} (it runs {session.get_providers()}): "
            "refusing a silent fallback"
        )
    return session
