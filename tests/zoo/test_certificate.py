"""Certificates read from files are parsed strictly: every number a finite non-negative number, every
shape positive integers, malformed or absurd documents refused with a ValueError naming the field."""

from __future__ import annotations

import json

import pytest

from zoo.certificate import Certificate, parse_json


@pytest.fixture(scope="module")
def document(short_run) -> dict:
    return json.loads(short_run.certificate.to_json())


def test_the_json_form_round_trips(short_run, document):
    assert Certificate.from_json(short_run.certificate.to_json()) == short_run.certificate
    assert Certificate.from_dict(short_run.certificate.to_dict()) == short_run.certificate


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinite_bounds_are_refused(short_run, literal):
    text = short_run.certificate.to_json()
    bound = json.dumps(short_run.certificate.lipschitz_bound)
    forged = text.replace(f'"lipschitz_bound":{bound}', f'"lipschitz_bound":{literal}')
    assert forged != text
    with pytest.raises(ValueError, match=f"the certificate holds {literal}, which is not a number"):
        Certificate.from_json(forged)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lipschitz_bound", -1.0, r"lipschitz_bound must be finite and non-negative, got -1\.0"),
        ("lipschitz_bound", "0.5", r"lipschitz_bound must be a number, got '0\.5'"),
        ("lipschitz_bound", True, r"lipschitz_bound must be a number, got True"),
        ("lipschitz_bound", 1e309, r"lipschitz_bound must be finite"),  # json.dumps writes Infinity
        ("relative_margin", -1e-6, r"relative_margin must be finite and non-negative"),
        ("input_shape", [1, 0, 8], r"input_shape must be a non-empty list of positive integers"),
        ("input_shape", [1, 8.5, 8], r"input_shape must be a non-empty list of positive integers"),
        ("input_shape", [], r"input_shape must be a non-empty list of positive integers"),
        ("input_shape", "1,8,8", r"input_shape must be a non-empty list of positive integers"),
        ("weights_sha256", "abc", r"weights_sha256 must be 64 lower-case hex digits"),
        ("layers", {"0": 1}, r"layers must be a list"),
        ("preprocessing", [], r"preprocessing must be an object"),
        ("method", 3, r"method must be a string, got 3"),
        ("format", 2, r"certificate format 2 is not supported"),
    ],
)
def test_malformed_fields_are_named(document, field, value, message):
    forged = {**document, field: value}
    with pytest.raises(ValueError, match=message):
        Certificate.from_dict(forged)
    if value == 1e309:
        with pytest.raises(ValueError, match="holds Infinity"):
            Certificate.from_json(json.dumps(forged))


def test_a_layer_bound_that_is_nan_or_negative_is_refused(document):
    for value, message in ((float("nan"), "finite"), (-0.5, "non-negative"), (None, "a number")):
        layers = [dict(layer) for layer in document["layers"]]
        layers[1]["bound"] = value
        with pytest.raises(ValueError, match=rf"layers\[1\]\.bound must be .*{message}"):
            Certificate.from_dict({**document, "layers": layers})


def test_missing_fields_and_non_objects_are_named(document):
    partial = {k: v for k, v in document.items() if k != "weights_sha256"}
    with pytest.raises(ValueError, match="no field 'weights_sha256'"):
        Certificate.from_dict(partial)
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        Certificate.from_dict([])
    with pytest.raises(ValueError, match="not valid JSON"):
        Certificate.from_json("{")


def test_a_document_nested_100k_deep_is_a_value_error():
    with pytest.raises(ValueError, match="the certificate is nested too deeply to be read"):
        Certificate.from_json("[" * 100_000 + "]" * 100_000)
    assert parse_json('{"a": [[1]]}', "x") == {"a": [[1]]}
