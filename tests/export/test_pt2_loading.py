"""A .pt2 file is checked entry by entry before torch.export.load sees it: that loader would run code
from a crafted file in many ways (pickles, AOTInductor libraries, sympy expressions, guard code, any
callable as a node's target). Each crafted file here would create a directory if its payload ran."""

from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path

import pytest
import torch
from hostile_files import (
    MakesADirectory,
    edited_json_entry,
    edited_zip,
    pt2_with_guard_payload,
    pt2_with_sympy_payload,
    write_zip,
    zip_entries,
)
from torch import nn

from export.pt2_loading import check_pt2_archive, load_pt2
from export.verify import VerificationError


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


def test_a_plain_archive_loads(plain_pt2):
    program, text = load_pt2(plain_pt2, "zoo.certificate")
    assert text == "certificate text" and program.module()(torch.ones(5, 3)).shape == (5, 4)
    assert load_pt2(plain_pt2, "other")[1] == ""


class _WithConstants(nn.Module):
    """Weights, a batch norm's buffers, a non-persistent buffer and a lifted tensor constant."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.norm = nn.Linear(4, 3), nn.BatchNorm1d(3)
        self.register_buffer("scale", torch.tensor([2.0, 3.0, 4.0]), persistent=False)
        self.offset = torch.ones(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x)) * self.scale + self.offset


def test_every_entry_torch_export_save_writes_for_a_plain_program_is_accepted(tmp_path):
    """The allow-list's other side: weights, buffers, constants and several extra files load, and the
    loaded program computes what the module does."""
    module = _WithConstants().eval()
    batch = {0: torch.export.Dim("batch")}
    program = torch.export.export(module, (torch.zeros(2, 4),), dynamic_shapes=(batch,))
    path = tmp_path / "constants.pt2"
    torch.export.save(program, path, extra_files={"notes.txt": "n", "zoo.certificate": "certificate text"})
    names = {name for name, _ in zip_entries(path)}
    assert {"data/constants/tensor_0", "data/weights/weight_0", "extra/notes.txt"} <= names
    loaded, text = load_pt2(path, "zoo.certificate")
    inputs = torch.randn(5, 4)
    assert text == "certificate text" and torch.equal(loaded.module()(inputs), module(inputs))


def test_pickled_sample_inputs_are_never_unpickled(plain_pt2, tmp_path, canary):
    payload = io.BytesIO()
    torch.save(MakesADirectory(canary), payload)
    crafted = edited_zip(
        plain_pt2, tmp_path / "c.pt2", "data/sample_inputs/model.pt", lambda _: payload.getvalue()
    )
    program, _ = load_pt2(crafted, "zoo.certificate")  # torch.export.load alone creates the canary here
    assert program.module()(torch.ones(1, 3)).shape == (1, 4)


def test_weights_stored_as_pickles_are_refused(plain_pt2, tmp_path):
    def pickled(config):
        config["config"]["0.weight"]["use_pickle"] = True

    crafted = edited_json_entry(
        plain_pt2, tmp_path / "c.pt2", "data/weights/model_weights_config.json", pickled
    )
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
    crafted = write_zip(tmp_path / "c.pt2", [*zip_entries(plain_pt2), (extra_entry, b"\x7fELF payload")])
    with pytest.raises(VerificationError, match=f"refused: unknown entry '{extra_entry}'"):
        check_pt2_archive(crafted)


@pytest.mark.parametrize(
    "duplicate", ["extra/zoo.certificate", "data/weights/model_weights_config.json", "data/weights/weight_0"]
)
def test_duplicated_entries_are_refused(plain_pt2, tmp_path, duplicate):
    entries = zip_entries(plain_pt2)
    (original,) = [data for name, data in entries if name == duplicate]
    with pytest.warns(UserWarning, match="Duplicate name"):
        crafted = write_zip(tmp_path / "c.pt2", [*entries, (duplicate, original + b" ")])
    with pytest.raises(VerificationError, match=f"several entries named '{duplicate}'"):
        check_pt2_archive(crafted)


def test_deflated_entries_are_refused_as_torch_export_save_never_compresses(plain_pt2, tmp_path):
    entries = [
        (n, d + b" " * 1_000_000 if n.endswith("zoo.certificate") else d) for n, d in zip_entries(plain_pt2)
    ]
    crafted = write_zip(tmp_path / "c.pt2", entries, zipfile.ZIP_DEFLATED)
    assert crafted.stat().st_size < 100_000
    with pytest.raises(
        VerificationError, match=r"its entries inflate to [\d,]+ bytes from a [\d,]+-byte file"
    ):
        check_pt2_archive(crafted)


CODE_PAYLOADS = {
    "a symbolic size that is Python": (
        pt2_with_sympy_payload,
        "the symbolic expression .* is not plain shape",
    ),
    "guard code": (pt2_with_guard_payload, "the program holds guard code"),
}


@pytest.mark.parametrize("payload", CODE_PAYLOADS)
def test_a_program_carrying_python_is_refused(plain_pt2, tmp_path, canary, payload):
    craft, message = CODE_PAYLOADS[payload]
    crafted = craft(plain_pt2, tmp_path / "c.pt2", canary)
    with pytest.raises(VerificationError, match=f"refused: {message}"):
        load_pt2(crafted, "zoo.certificate")


@pytest.mark.parametrize("payload", CODE_PAYLOADS)
def test_the_payloads_are_live_for_torch_export_load_alone(plain_pt2, tmp_path, payload):
    """The control: without the checks, loading and running the crafted file does run its payload."""
    target = tmp_path / "created-by-torch-export-load"
    crafted = CODE_PAYLOADS[payload][0](plain_pt2, tmp_path / "c.pt2", target)
    with contextlib.suppress(Exception):  # the payload's value may break the program after it ran
        torch.export.load(crafted).module()(torch.ones(2, 3))
    assert target.is_dir()


@pytest.mark.parametrize("target", ["torch.os.makedirs", "torch.ops.higher_order.cond", "builtins.eval", 3])
def test_a_node_calling_anything_but_an_aten_operator_is_refused(plain_pt2, tmp_path, canary, target):
    def call(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = target

    crafted = edited_json_entry(plain_pt2, tmp_path / "c.pt2", "models/model.json", call)
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

    crafted = edited_json_entry(
        plain_pt2, tmp_path / "c.pt2", "data/weights/model_weights_config.json", inflate
    )
    with pytest.raises(VerificationError, match=rf"refused: payload '0\.weight' .*{message}"):
        check_pt2_archive(crafted)


def test_an_unreferenced_tensor_entry_is_refused(plain_pt2, tmp_path):
    crafted = write_zip(tmp_path / "c.pt2", [*zip_entries(plain_pt2), ("data/weights/weight_99", b"\0" * 8)])
    with pytest.raises(VerificationError, match="'data/weights/weight_99' is not named by the weights"):
        check_pt2_archive(crafted)


def test_a_deeply_nested_program_is_a_verification_error(plain_pt2, tmp_path):
    crafted = edited_zip(
        plain_pt2, tmp_path / "c.pt2", "models/model.json", lambda _: b"[" * 100_000 + b"]" * 100_000
    )
    with pytest.raises(VerificationError, match="nested too deeply"):
        check_pt2_archive(crafted)
