"""Certified checkpoints round trip, and every kind of tampering is refused with a clear message."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

import zoo
from zoo.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from zoo.hub import CertificateMismatchError


def test_round_trip_gives_the_same_model_and_certificate(same_certificate, short_run, digits):
    loaded = zoo.load(short_run.checkpoint)
    assert same_certificate(loaded.certificate, short_run.certificate)
    again = read_checkpoint(short_run.checkpoint)
    assert again.certificate == short_run.certificate
    with torch.no_grad():
        logits = loaded.model(digits.x_test[:32])
    assert logits.shape == (32, 10)
    assert loaded.preprocessing["input_range"] == [0.0, 1.0]


def test_writing_is_byte_reproducible(short_run, tmp_path):
    checkpoint = read_checkpoint(short_run.checkpoint)
    copy = tmp_path / "copy.safetensors"
    write_checkpoint(copy, checkpoint.state_dict, checkpoint.architecture, checkpoint.certificate)
    assert copy.read_bytes() == short_run.checkpoint.read_bytes()


def test_a_flipped_byte_in_the_weights_is_refused(short_run, tmp_path):
    data = bytearray(short_run.checkpoint.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's bytes
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(CertificateMismatchError, match="do not match their certificate"):
        zoo.load(path)


def test_a_scaled_up_weight_is_refused_even_with_a_matching_hash(short_run, tmp_path):
    checkpoint = read_checkpoint(short_run.checkpoint)
    state = dict(checkpoint.state_dict)
    name = next(k for k in state if k.endswith("weight"))
    state[name] = state[name] * 3
    path = tmp_path / "scaled.safetensors"
    write_checkpoint(path, state, checkpoint.architecture, checkpoint.certificate)
    with pytest.raises(CertificateMismatchError, match="do not match their certificate"):
        zoo.load(path)
    # A forger who also updates the weights hash still cannot keep the old bound.
    from zoo.certificate import weights_sha256

    forged = dataclasses.replace(checkpoint.certificate, weights_sha256=weights_sha256(state))
    write_checkpoint(path, state, checkpoint.architecture, forged)
    with pytest.raises(CertificateMismatchError, match="claims a Lipschitz bound"):
        zoo.load(path)


def test_edited_metadata_is_refused(short_run, tmp_path):
    data = short_run.checkpoint.read_bytes()
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    document = json.loads(header["__metadata__"]["zoo"])
    document["certificate"]["lipschitz_bound"] /= 2
    header["__metadata__"]["zoo"] = json.dumps(document)
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    path = tmp_path / "edited.safetensors"
    path.write_bytes(len(new_header).to_bytes(8, "little") + new_header + data[8 + header_size :])
    with pytest.raises(CertificateMismatchError, match="claims a Lipschitz bound"):
        zoo.load(path)


def test_truncated_and_foreign_files_are_refused(short_run, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(short_run.checkpoint.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        zoo.load(truncated)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a certified zoo checkpoint"):
        zoo.load(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        zoo.load(tmp_path / "missing.safetensors")


def _with_metadata(source, target, edit) -> None:
    """A copy of the checkpoint ``source`` at ``target`` whose 'zoo' metadata document is
    ``edit(document)`` (a dict, or the text itself when ``edit`` returns a string)."""
    from safetensors.torch import save_file

    checkpoint = read_checkpoint(source)
    document = {"architecture": checkpoint.architecture, "certificate": checkpoint.certificate.to_dict()}
    edited = edit(json.loads(json.dumps(document)))
    text = edited if isinstance(edited, str) else json.dumps(edited)
    save_file(checkpoint.state_dict, target, metadata={"zoo": text})


def _edit_architecture(**fields):
    def edit(document):
        document["architecture"].update(fields)
        return document

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "[" * 100_000 + "]" * 100_000, r"malformed 'zoo' metadata \(.* nested too deeply"),
        (lambda d: '{"architecture": NaN}', r"malformed 'zoo' metadata \(.*holds NaN"),
        (lambda d: "[]", r"malformed 'zoo' metadata \(it must be a JSON object, got list\)"),
        (
            lambda d: {**d, "certificate": {**d["certificate"], "lipschitz_bound": -1}},
            r"lipschitz_bound must be finite and non-negative",
        ),
        (
            lambda d: {**d, "certificate": {**d["certificate"], "input_shape": [1, 9, 9]}},
            r"inputs of shape \(1, 9, 9\), the recorded architecture takes \(1, 8, 8\)",
        ),
        (_edit_architecture(num_classes=0), r"architecture\.num_classes must be a positive integer"),
        (_edit_architecture(input_shape=[1, -8, 8]), r"architecture\.input_shape must be a non-empty list"),
        (_edit_architecture(options=[]), r"architecture\.options must be an object"),
        (_edit_architecture(name="nonet"), r"cannot be built \(unknown architecture 'nonet'"),
    ],
)
def test_malformed_metadata_is_a_checkpoint_error(short_run, tmp_path, edit, message):
    path = tmp_path / "edited.safetensors"
    _with_metadata(short_run.checkpoint, path, edit)
    with pytest.raises(CheckpointError, match=message) as caught:
        zoo.load(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ([0, 0, 0], r"0\.bias is of shape \(0,\) in the architecture, of shape \(16,\) in the file"),
        ([10_000, 10_000, 10_000], r"\(1,805,241,418 weights\) does not fit the file's tensors"),
    ],
)
def test_an_architecture_that_does_not_fit_the_tensors_is_refused_before_it_is_built(
    short_run, tmp_path, monkeypatch, widths, message
):
    path = tmp_path / "widths.safetensors"
    options = {**read_checkpoint(short_run.checkpoint).architecture["options"], "widths": widths}
    _with_metadata(short_run.checkpoint, path, _edit_architecture(options=options))
    built = []
    monkeypatch.setattr(
        "zoo.hub.build", lambda *a, **k: built.append(torch.empty(0).device) or _build(*a, **k)
    )
    with pytest.raises(CheckpointError, match=message):
        zoo.load(path)
    assert built == [torch.device("meta")]  # only the meta build ran: nothing was allocated


def _build(*args, **kwargs):
    from zoo.models import build

    return build(*args, **kwargs)


def test_a_huge_recorded_input_is_refused(short_run, tmp_path):
    path = tmp_path / "input.safetensors"

    def edit(document):
        document["architecture"]["input_shape"] = document["certificate"]["input_shape"] = [
            1,
            100_000,
            100_000,
        ]
        return document

    _with_metadata(short_run.checkpoint, path, edit)
    with pytest.raises(
        CheckpointError, match=r"the recorded input has shape \(1, 100000, 100000\).*--max-elements"
    ):
        zoo.load(path)


def test_expected_sha256_pins_the_file(same_certificate, short_run):
    sha = hashlib.sha256(short_run.checkpoint.read_bytes()).hexdigest()
    assert same_certificate(
        zoo.load(short_run.checkpoint, expected_sha256=sha.upper()).certificate, short_run.certificate
    )
    with pytest.raises(CheckpointError, match=f"its sha256 is {sha}, not the expected {'0' * 64}"):
        zoo.load(short_run.checkpoint, expected_sha256="0" * 64)
