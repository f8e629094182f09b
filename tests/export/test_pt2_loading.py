"""A .pt2 file is checked entry by entry before torch.export.load sees it: that loader would run code
from a crafted file in many ways (pickles, AOTInductor libraries, sympy expressions, guard code, any
callable as a node's target). Each crafted file here would create a directory if its payload ran."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from export.pt2_loading import check_pt2_archive, load_pt2
from export.verify import VerificationError


class _MakesADirectory:
    """Unpickling this calls ``os.makedirs(target)``: a stand-in for arbitrary code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (str(self.target),))


@pytest.fixture()
def plain_pt2(tmp_path) -> Path:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU()).eval()
    program = torch.export.export(net, (torch.zeros(2, 3),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "plain.pt2"
    torch.export.save(program, path, extra_files={"zoo.certificate": "certificate text"})
    return path


@pytest.fixture()
def canary(tmp_path) -> Path:
    """Where a payload would create a directory: it must never exist."""
    target = tmp_path / "created-by-the-file"
    yield target
    assert not target.exists(), "a payload of the crafted file ran"


def _entries(path: Path) -> list[tuple[str, bytes]]:
    """The archive's entries, named relative to its root folder."""
    with zipfile.ZipFile(path) as archive:
        return [(info.filename.split("/", 1)[1], archive.read(info)) for info in archive.infolist()]


def _write(target: Path, entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    """An archive of ``entries`` under the root folder ``archive/``."""
    with zipfile.ZipFile(target, "w", compression) as archive:
        for name, data in entries:
            archive.writestr("archive/" + name, data)
    return target


def _edited(source: Path, target: Path, name: str, edit: Callable[[bytes], bytes]) -> Path:
    """A copy of the archive with the entry ``name`` replaced by ``edit(data)``."""
    entries = _entries(source)
    assert name in [n for n, _ in entries]
    return _write(target, [(n, edit(d) if n == name else d) for n, d in entries])


def _edited_json(source: Path, target: Path, name: str, edit: Callable[[dict], None]) -> Path:
    def change(data: bytes) -> bytes:
        document = json.loads(data)
        edit(document)
        return json.dumps(document).encode()

    return _edited(source, target, name, change)


def test_a_plain_archive_loads(plain_pt2):
    program, text = load_pt2(plain_pt2, "zoo.certificate")
    assert text == "certificate text" and program.module()(torch.ones(5, 3)).shape == (5, 4)
    assert load_pt2(plain_pt2, "other")[1] == ""


def test_pickled_sample_inputs_are_never_unpickled(plain_pt2, tmp_path, canary):
    payload = io.BytesIO()
    torch.save(_MakesADirectory(canary), payload)
    crafted = _edited(
        plain_pt2, tmp_path / "c.pt2", "data/sample_inputs/model.pt", lambda _: payload.getvalue()
    )
    program, _ = load_pt2(crafted, "zoo.certificate")  # torch.export.load alone creates the canary here
    assert program.module()(torch.ones(1, 3)).shape == (1, 4)


def test_weights_stored_as_pickles_are_refused(plain_pt2, tmp_path):
    def pickled(config):
        config["config"]["0.weight"]["use_pickle"] = True

    crafted = _edited_json(plain_pt2, tmp_path / "c.pt2", "data/weights/model_weights_config.json", pickled)
    with pytest.raises(VerificationError, match=r"refused: payload '0\.weight' .*stored as a pickled object"):
        load_pt2(crafted, "zoo.certificate")


@pytest.mark.parametrize(
    "extra_entry",
    [
        "data/aotinductor/model/model.so",  # AOTInductor: torch extracts and dlopens it
        "data/aotinductor/model/weights_config.json",
        "models/second.JSON",  # a second program, in a case variant of the suffix
        "models/model.JSON",
        "Models/model.json",
        "data/weights/model.pt",  # a legacy pickled state dict
        "data/constants/custom_obj_0",
        "data/constants/opaque_obj_0",
        "data/executorch/model.pte",
        "extra/../models/evil.json",
    ],
)
def test_every_entry_outside_the_allow_list_is_refused(plain_pt2, tmp_path, extra_entry):
    crafted = _write(tmp_path / "c.pt2", [*_entries(plain_pt2), (extra_entry, b"\x7fELF payload")])
    with pytest.raises(VerificationError, match=f"refused: unknown entry '{extra_entry}'"):
        check_pt2_archive(crafted)


@pytest.mark.parametrize(
    "duplicate", ["extra/zoo.certificate", "data/weights/model_weights_config.json", "data/weights/weight_0"]
)
def test_duplicated_entries_are_refused(plain_pt2, tmp_path, duplicate):
    entries = _entries(plain_pt2)
    (original,) = [data for name, data in entries if name == duplicate]
    with pytest.warns(UserWarning, match="Duplicate name"):
        crafted = _write(tmp_path / "c.pt2", [*entries, (duplicate, original + b" ")])
    with pytest.raises(VerificationError, match=f"several entries named '{duplicate}'"):
        check_pt2_archive(crafted)


def test_deflated_entries_are_refused_as_torch_export_save_never_compresses(plain_pt2, tmp_path):
    entries = [
        (n, d + b" " * 1_000_000 if n.endswith("zoo.certificate") else d) for n, d in _entries(plain_pt2)
    ]
    crafted = _write(tmp_path / "c.pt2", entries, zipfile.ZIP_DEFLATED)
    assert crafted.stat().st_size < 100_000
    with pytest.raises(
        VerificationError, match=r"its entries inflate to [\d,]+ bytes from a [\d,]+-byte file"
    ):
        check_pt2_archive(crafted)


def test_a_symbolic_expression_that_is_python_is_refused(plain_pt2, tmp_path, canary):
    def evil(data: bytes) -> bytes:
        text = data.decode()
        (symbol,) = set(__import__("re").findall(r"Symbol\('s\d+', positive=True, integer=True\)", text))
        payload = f"__import__('os').makedirs('{canary}') or {symbol}"
        return text.replace(symbol, payload).encode()

    crafted = _edited(plain_pt2, tmp_path / "c.pt2", "models/model.json", evil)
    with pytest.raises(
        VerificationError, match=r"refused: the symbolic expression .* is not plain shape arithmetic"
    ):
        load_pt2(crafted, "zoo.certificate")


def test_guard_code_is_refused(plain_pt2, tmp_path, canary):
    def guard(program):
        program["guards_code"] = [f"__import__('os').makedirs('{canary}') or True"]

    crafted = _edited_json(plain_pt2, tmp_path / "c.pt2", "models/model.json", guard)
    with pytest.raises(VerificationError, match="the program holds guard code"):
        load_pt2(crafted, "zoo.certificate")


@pytest.mark.parametrize("target", ["torch.os.makedirs", "torch.ops.higher_order.cond", "builtins.eval", 3])
def test_a_node_calling_anything_but_an_aten_operator_is_refused(plain_pt2, tmp_path, canary, target):
    def call(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = target

    crafted = _edited_json(plain_pt2, tmp_path / "c.pt2", "models/model.json", call)
    with pytest.raises(
        VerificationError, match=f"the program calls {target!r}, which is not an aten operator"
    ):
        load_pt2(crafted, "zoo.certificate")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # sizes beyond the entry's data (for an empty entry torch would allocate torch.zeros(sizes))
        (
            lambda meta: meta.update(
                sizes=[{"as_int": 10**5}] * 2, strides=[{"as_int": 10**5}, {"as_int": 1}]
            ),
            "declares 10,000,000,000 elements where its entry 'data/weights/weight_0' stores 12",
        ),
        (lambda meta: meta.update(storage_offset={"as_int": 10**12}), "declares"),
        (
            lambda meta: meta.update(sizes=[{"as_expr": {"expr_str": "s0"}}, {"as_int": 3}]),
            "non-integer size",
        ),
        (lambda meta: meta.update(device={"type": "cuda", "index": 0}), "a tensor on 'cuda'"),
        (lambda meta: meta.update(dtype=999), "unknown dtype code 999"),
    ],
)
def test_weights_configs_that_point_outside_their_data_are_refused(plain_pt2, tmp_path, edit, message):
    def inflate(config):
        edit(config["config"]["0.weight"]["tensor_meta"])

    crafted = _edited_json(plain_pt2, tmp_path / "c.pt2", "data/weights/model_weights_config.json", inflate)
    with pytest.raises(VerificationError, match=rf"refused: payload '0\.weight' .*{message}"):
        check_pt2_archive(crafted)


def test_an_unreferenced_tensor_entry_is_refused(plain_pt2, tmp_path):
    crafted = _write(tmp_path / "c.pt2", [*_entries(plain_pt2), ("data/weights/weight_99", b"\0" * 8)])
    with pytest.raises(VerificationError, match="'data/weights/weight_99' is not named by the weights"):
        check_pt2_archive(crafted)


def test_a_deeply_nested_program_is_a_verification_error(plain_pt2, tmp_path):
    crafted = _edited(
        plain_pt2, tmp_path / "c.pt2", "models/model.json", lambda _: b"[" * 100_000 + b"]" * 100_000
    )
    with pytest.raises(VerificationError, match="nested too deeply"):
        check_pt2_archive(crafted)


def test_files_that_are_not_archives_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(VerificationError, match=r"not a readable torch\.export file"):
        check_pt2_archive(garbage)
