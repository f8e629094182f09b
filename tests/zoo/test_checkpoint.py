"""Certified checkpoints round trip, and every kind of tampering is refused with a clear message."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import zoo
from zoo.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from zoo.hub import CertificateMismatchError


def test_round_trip_gives_the_same_model_and_certificate(short_run, digits):
    loaded = zoo.load(short_run.checkpoint)
    assert loaded.certificate == short_run.certificate
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
