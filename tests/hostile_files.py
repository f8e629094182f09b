"""Crafting hostile files for the security tests: edits of the zip archives torch writes, and
payloads whose only effect, if they ever ran, is to create a directory (the tests' canary)."""

from __future__ import annotations

import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn


class MakesADirectory:
    """Unpickling this calls ``os.makedirs(target)``: a stand-in for arbitrary code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (str(self.target),))


def python_payload(canary: Path) -> str:
    """A Python expression that creates ``canary`` when evaluated."""
    return f"__import__('os').makedirs('{canary}')"


def zip_entries(path: Path) -> list[tuple[str, bytes]]:
    """The entries of a torch archive, named relative to its root folder."""
    with zipfile.ZipFile(path) as archive:
        return [(info.filename.split("/", 1)[1], archive.read(info)) for info in archive.infolist()]


def write_zip(target: Path, entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    """An archive of ``entries`` under the root folder ``archive/`` (a name may repeat)."""
    with zipfile.ZipFile(target, "w", compression) as archive:
        for name, data in entries:
            archive.writestr("archive/" + name, data)
    return target


def edited_zip(source: Path, target: Path, name: str, edit: Callable[[bytes], bytes]) -> Path:
    """A copy of the archive ``source`` whose entry ``name`` holds ``edit(its data)``."""
    entries = zip_entries(source)
    assert name in [n for n, _ in entries], name
    return write_zip(target, [(n, edit(d) if n == name else d) for n, d in entries])


def edited_json_entry(source: Path, target: Path, name: str, edit: Callable[[dict], None]) -> Path:
    """:func:`edited_zip` for a JSON entry, changed in place by ``edit``."""

    def change(data: bytes) -> bytes:
        document = json.loads(data)
        edit(document)
        return json.dumps(document).encode()

    return edited_zip(source, target, name, change)


def pt2_with_sympy_payload(source: Path, target: Path, canary: Path) -> Path:
    """A copy of the ``.pt2`` file ``source`` whose symbolic batch size, which torch.export.load hands
    to ``sympy.sympify`` (an ``eval``), also creates ``canary``."""

    def edit(data: bytes) -> bytes:
        text = data.decode()
        (symbol,) = set(re.findall(r"Symbol\('s\d+', positive=True, integer=True\)", text))
        return text.replace(symbol, f"{python_payload(canary)} or {symbol}").encode()

    return edited_zip(source, target, "models/model.json", edit)


def pt2_with_guard_payload(source: Path, target: Path, canary: Path) -> Path:
    """A copy of the ``.pt2`` file ``source`` whose guard code, which ``program.module()`` executes
    as Python, creates ``canary``."""

    def edit(program: dict) -> None:
        program["guards_code"] = [f"{python_payload(canary)} or True"]

    return edited_json_entry(source, target, "models/model.json", edit)


class WritesAFile(nn.Module):
    """A TorchScript program that creates ``target`` (``aten::from_file`` with ``shared=True``)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_file(self.target, True, 4).sum() * 0


class _AddsOnes(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(4).sum() * 0


def pt2_writing_a_file(target: Path, canary: Path) -> Path:
    """A ``.pt2`` file at ``target`` whose program creates ``canary`` (:class:`WritesAFile` as a
    torch.export program). ``aten::from_file`` has no fake kernel, so torch.export cannot trace it: the
    ``aten::ones`` node of an exported program is turned into ``from_file(canary, shared=True, 4)``.
    Every entry and every node target is one the archive check accepts (an aten operator)."""
    plain = target.with_name(f"{target.stem}-plain.pt2")
    batch = {0: torch.export.Dim("batch")}
    torch.export.save(torch.export.export(_AddsOnes(), (torch.zeros(2, 4),), dynamic_shapes=(batch,)), plain)

    def edit(program: dict) -> None:
        (node,) = [n for n in program["graph_module"]["graph"]["nodes"] if n["name"] == "ones"]
        node["target"] = "torch.ops.aten.from_file.default"
        arguments = {
            "filename": {"as_string": str(canary)},
            "shared": {"as_bool": True},
            "size": {"as_int": 4},
        }
        positional = [{"name": name, "arg": arg, "kind": 1} for name, arg in arguments.items()]
        node["inputs"] = positional + [i for i in node["inputs"] if i["name"] != "size"]

    edited_json_entry(plain, target, "models/model.json", edit)
    plain.unlink()
    return target


class LoopsForever(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i >= 0:
            i += 1
        return x


class AllocatesTooMuch(nn.Module):
    """40 GB of ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(100_000, 100_000).sum()


def scripted(module: nn.Module, path: Path) -> Path:
    """``module`` compiled by ``torch.jit.script`` and saved at ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), path)
    return path


HUGE_CONSTANT_OPS = {
    "ConstantOfShape": {"shape": [100_000, 100_000]},
    "Range": {"start": 0, "limit": 10**10, "delta": 1},
    "Expand": {"one": [1], "shape": [100_000, 100_000]},
    "Tile": {"one": [1], "repeats": [10**10]},
}
"""Ops that compute a tensor of 10^10 elements from a few stored integers (the op's inputs)."""


def onnx_computing_a_huge_constant(op: str) -> onnx.ModelProto:
    """``logits = input + sum(big)``, where ``big`` (10^10 elements, 40 GB or more) is computed by
    ``op`` from small stored integers (:data:`HUGE_CONSTANT_OPS`): no shape the file declares is large."""
    stored = [
        numpy_helper.from_array(np.array(v, np.int64), name) for name, v in HUGE_CONSTANT_OPS[op].items()
    ]
    nodes = [
        helper.make_node(op, [t.name for t in stored], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Cast", ["total"], ["total_float"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["input", "total_float"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        stored,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
