"""Transfer learning: each regularizer against an independent computation on small hand-made
tensors, which parameters each one sends gradient to (the source model never receives any), recipe
validation, the class split, copying a folded source into a parametrized network, and a short
fine-tuning run on digits that ends with a certified checkpoint ``zoo.load`` accepts."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

import zoo
from training import trainer
from training.data import DIGITS_PREPROCESSING, Dataset
from training.trainer import STATE_FILE, RunOptions, TrainingStateError, train
from training.transfer.bi_tuning import BiTuning, MomentumEncoder
from training.transfer.bss import BatchSpectralShrinkage
from training.transfer.channel_attention import attention_from_importance, channel_attention
from training.transfer.co_tuning import (
    CoTuning,
    bayes_inversion,
    calibrated_relationship,
    direct_relationship,
    fit_temperature,
)
from training.transfer.delta import AttentionRegularization, BehavioralRegularization
from training.transfer.features import IntermediateLayerGetter
from training.transfer.l2 import L2
from training.transfer.l2sp import L2SP
from training.transfer.loop import run_epoch
from training.transfer.lwf import LwF
from training.transfer.objective import build_objective
from training.transfer.recipe import (
    BiTuningSpec,
    BSSSpec,
    CoTuningSpec,
    DeltaAttentionSpec,
    DeltaSpec,
    L2Spec,
    L2SPSpec,
    LwFSpec,
    parse_transfer,
)
from training.transfer.source import SOURCE_DIR, Source, initialise_backbone, split_head
from training.transfer.tasks import class_subset
from training.transfer.weights import effective_tensors
from zoo.certify import certify
from zoo.checkpoint import write_checkpoint
from zoo.fold import fold
from zoo.layers import spectral_bjorck
from zoo.models import build
from zoo.registry import ModelEntry, load_registry

ARCHITECTURE = {
    "name": "lipconv",
    "input_shape": [1, 8, 8],
    "num_classes": 5,
    "options": {"widths": [4, 8], "dense": [16]},
}
RECIPE = {
    "dataset": "digits",
    "loss": {"name": "tau_cross_entropy", "params": {"tau": 10.0}},
    "optimizer": {"name": "adam", "lr": 0.003},
    "epochs": 2,
    "batch_size": 64,
}
SOURCE = {"classes": [0, 1, 2, 3, 4]}
TARGET = {"source": "lipconv.src", "source_classes": [0, 1, 2, 3, 4], "classes": [5, 6, 7, 8, 9]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(num_classes: int, **options) -> nn.Module:
    """The test architecture, parametrized, with ``options`` changed."""
    options = {**ARCHITECTURE["options"], **options}
    return build("lipconv", input_shape=(1, 8, 8), num_classes=num_classes, parametrized=True, **options)


def linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


# --- effective tensors, L2, L2-SP ---------------------------------------------------------------


def test_effective_tensors_are_the_folded_state_dict():
    torch.manual_seed(0)
    model = tiny(3)
    tensors = {name: tensor.detach().clone() for name, tensor in effective_tensors(model.eval()).items()}
    folded = fold(model).state_dict()
    assert tensors.keys() == folded.keys()
    for name, tensor in tensors.items():
        torch.testing.assert_close(tensor, folded[name])


def test_l2_is_half_the_squared_norm_of_weights_and_biases():
    layer = linear([[1.0, 2.0], [0.0, -1.0]], [3.0, 0.5])
    assert L2()(layer).item() == pytest.approx(0.5 * (1 + 4 + 0 + 1 + 9 + 0.25))


def test_l2sp_measures_the_effective_weights_and_moves_with_the_module():
    torch.manual_seed(0)
    layer = spectral_bjorck(nn.Linear(3, 2)).eval()  # eval: no power iteration between reads
    source = {"weight": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), "bias": torch.tensor([0.5, -0.5])}
    l2sp = L2SP(source)
    expected = 0.5 * (
        (layer.weight - source["weight"]).square().sum() + (layer.bias - source["bias"]).square().sum()
    )
    value = l2sp(layer)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)

    value.backward()
    raw = layer.parametrizations.weight.original
    assert raw.grad is not None and raw.grad.abs().sum() > 0 and layer.bias.grad is not None
    assert set(l2sp.state_dict()) == {"weight", "bias"}
    assert l2sp.double().starting_point("weight").dtype == torch.float64  # buffers follow .to()


def test_l2sp_refuses_a_source_tensor_without_partner():
    with pytest.raises(ValueError, match="no partner"):
        L2SP({"weight": torch.zeros(3, 3)})(nn.Linear(3, 2))


# --- DELTA --------------------------------------------------------------------------------------


def test_behavioral_regularization_is_a_batch_mean_of_half_squared_distances():
    target = {"a": torch.tensor([[1.0, 2.0], [0.0, 0.0]]), "b": torch.ones(2, 1, 2, 2)}
    source = {"a": torch.tensor([[0.0, 0.0], [3.0, 4.0]]), "b": torch.zeros(2, 1, 2, 2)}
    # layer a: examples 0.5 * 5 and 0.5 * 25, mean 7.5; layer b: 0.5 * 4 per example
    assert float(BehavioralRegularization()(target, source)) == pytest.approx(7.5 + 2.0)


def test_attention_regularization_weights_channels_and_divides_by_positions():
    torch.manual_seed(0)
    target, source = {"conv": torch.randn(3, 2, 2, 2), "dense": torch.randn(3, 4)}, {}
    source = {name: torch.randn_like(value) for name, value in target.items()}
    attention = {"conv": torch.tensor([0.25, 0.75]), "dense": torch.tensor([0.1, 0.2, 0.3, 0.4])}
    expected = 0.0
    for name, fm in target.items():
        channels = fm.shape[1]
        positions = fm[0, 0].numel()
        for b in range(fm.shape[0]):
            for c in range(channels):
                distance = float(torch.linalg.vector_norm(fm[b, c] - source[name][b, c]))
                expected += 0.5 * channels * float(attention[name][c]) * distance**2 / positions / fm.shape[0]
    assert float(AttentionRegularization(attention)(target, source)) == pytest.approx(expected, rel=1e-5)

    uniform = {name: torch.full((fm.shape[1],), 1 / fm.shape[1]) for name, fm in target.items()}
    conv_only = ({"conv": target["conv"]}, {"conv": source["conv"]})
    behavioural = BehavioralRegularization()(*conv_only)
    uniform_conv = AttentionRegularization({"conv": uniform["conv"]})(*conv_only)
    assert float(uniform_conv) == pytest.approx(float(behavioural) / 4, rel=1e-6)


def test_channel_attention_is_the_softmax_of_z_scored_loss_increases():
    # Layer "0" passes x = (1, 1, 1) through; layer "1" sums it with weights 1, 2, 3. With the loss
    # -mean(output), masking channel j of layer "0" raises the loss by exactly j + 1.
    model = nn.Sequential(
        linear([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], [0, 0, 0]), linear([[1.0, 2.0, 3.0]], [0])
    )
    batches = [(torch.ones(5, 3), torch.zeros(5, dtype=torch.long))] * 2
    attention = channel_attention(model, ["0"], batches, lambda out, y: -out.mean())["0"]
    importance = np.array([1.0, 2.0, 3.0])
    z = (importance - importance.mean()) / importance.std()
    expected = np.exp(z / 5) / np.exp(z / 5).sum()
    np.testing.assert_allclose(attention.numpy(), expected, rtol=1e-6)
    assert float(attention_from_importance(torch.ones(4)).std()) == 0.0  # equal importances: uniform


def test_intermediate_layer_getter_records_outputs_and_leaves_no_hook():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    x = torch.randn(4, 2)
    outputs, result = IntermediateLayerGetter(model, ["0", "1"])(x)
    torch.testing.assert_close(outputs["0"], model[0](x))
    torch.testing.assert_close(outputs["1"], model[1](model[0](x)))
    torch.testing.assert_close(result, model(x))
    assert not any(module._forward_hooks for module in model.modules())
    with pytest.raises(ValueError, match="no submodule named 7"):
        IntermediateLayerGetter(model, ["7"])


# --- LwF, Co-Tuning -----------------------------------------------------------------------------


def test_lwf_is_the_kl_between_recorded_and_current_softened_source_outputs():
    head = linear([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 0.0, 0.0])
    recorded = torch.tensor([[0.3, 0.1, -0.2], [0.0, 0.5, 0.2], [9.0, 9.0, 9.0]])
    features = torch.tensor([[0.2, -0.1], [0.05, 0.3]], requires_grad=True)
    index = torch.tensor([1, 0])
    scale, temperature = 10.0, 3.0
    lwf = LwF(head, recorded, scale, temperature)
    value = lwf(features, index)

    def softmax(v: np.ndarray) -> np.ndarray:
        e = np.exp(v - v.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p = softmax(scale * recorded[[1, 0]].numpy() / temperature)
    q = softmax(scale * (features.detach().numpy() @ head.weight.detach().numpy().T) / temperature)
    assert value.item() == pytest.approx(float((p * np.log(p / q)).sum(1).mean()), rel=1e-5)
    value.backward()
    assert features.grad is not None and all(p.grad is None for p in lwf.source_head.parameters())
    assert head.weight.grad is None  # LwF keeps its own frozen copy of the source head


def test_direct_relationship_is_the_average_source_prediction_per_target_class():
    probabilities = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.2, 0.8], [0.1, 0.9], [0.4, 0.6]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    expected = torch.tensor([[0.6, 0.4], [(0.2 + 0.1 + 0.4) / 3, (0.8 + 0.9 + 0.6) / 3]])
    torch.testing.assert_close(direct_relationship(probabilities, labels, 2), expected)
    with pytest.raises(ValueError, match="no labelled example of target classes \\[2\\]"):
        direct_relationship(probabilities, labels, 3)


def test_bayes_inversion_by_hand():
    target_given_source = torch.tensor([[0.9, 0.1], [0.2, 0.8]])  # rows: source class
    prior = torch.tensor([0.25, 0.75])
    # p(s=0 | t=0) = 0.9 * 0.25 / (0.9 * 0.25 + 0.2 * 0.75) = 0.225 / 0.375
    expected = torch.tensor([[0.225 / 0.375, 0.15 / 0.375], [0.025 / 0.625, 0.6 / 0.625]])
    torch.testing.assert_close(bayes_inversion(target_given_source, prior), expected)


def test_fit_temperature_recovers_the_temperature_of_sampled_labels():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 3, generator=generator)
    labels = torch.multinomial(torch.softmax(2.5 * logits, dim=1), 1, generator=generator).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)


def test_calibrated_relationship_finds_which_source_class_each_target_class_is():
    # target class t is (mostly) source class 2 - t
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(40)
    logits = 4.0 * F.one_hot(2 - labels, 3) + torch.randn(120, 3, generator=generator)
    relationship = calibrated_relationship(torch.softmax(logits, dim=1), labels, 3)
    torch.testing.assert_close(relationship.sum(1), torch.ones(3))
    assert (relationship >= 0).all()
    assert relationship.argmax(1).tolist() == [2, 1, 0]


def test_co_tuning_is_the_cross_entropy_against_translated_labels():
    head = linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.1])
    relationship = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    features = torch.tensor([[0.1, 0.2], [0.3, -0.1]], requires_grad=True)
    labels = torch.tensor([2, 0])
    co_tuning = CoTuning(head, relationship, scale=10.0)
    log_p = torch.log_softmax(10.0 * (features.detach() @ head.weight.T.detach() + head.bias.detach()), 1)
    expected = -(0.5 * log_p[0, 0] + 0.5 * log_p[0, 1] + 0.9 * log_p[1, 0] + 0.1 * log_p[1, 1]) / 2
    value = co_tuning(features, labels)
    assert value.item() == pytest.approx(float(expected), rel=1e-6)
    value.backward()
    assert features.grad is not None and all(p.grad is None for p in co_tuning.source_head.parameters())


# --- BSS ----------------------------------------------------------------------------------------


def test_bss_is_the_smallest_squared_singular_values_over_the_batch_size():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(6, 4, generator=generator)
    singular = np.linalg.svd(features.double().numpy(), compute_uv=False)
    expected = (singular[-2:] ** 2).sum() / 6
    assert float(BatchSpectralShrinkage(k=2)(features)) == pytest.approx(expected, rel=1e-5)
    # the batch-size normalisation: the same examples twice give the same value
    doubled = torch.cat([features, features])
    assert float(BatchSpectralShrinkage(k=2)(doubled)) == pytest.approx(expected, rel=1e-4)


def test_bss_guards():
    assert float(BatchSpectralShrinkage(k=2)(torch.randn(2, 5))) == 0.0  # whole spectrum: no penalty
    equal = torch.eye(4, requires_grad=True)  # four equal singular values
    BatchSpectralShrinkage(k=1)(equal).backward()
    assert torch.isfinite(equal.grad).all()
    half = torch.randn(5, 3, dtype=torch.float16)
    assert BatchSpectralShrinkage(k=1)(half).dtype == torch.float32


# --- Bi-Tuning ----------------------------------------------------------------------------------


def make_bi_tuning(num_classes: int = 2, queue_size: int = 3) -> BiTuning:
    return BiTuning(nn.Linear(2, 2), 2, num_classes, queue_size=queue_size, projection_dim=2)


def test_bi_tuning_enqueue_is_per_class_first_in_first_out():
    bi_tuning = make_bi_tuning()
    keys = torch.arange(1.0, 6.0)[:, None].repeat(1, 3)  # key i is (i, i, i)
    bi_tuning.enqueue(keys, keys[:, :2], torch.tensor([0, 1, 0, 0, 0]))
    # class 0 received keys 1, 3, 4, 5 into 3 slots: 5 overwrote 1; class 1 received key 2
    assert bi_tuning.queue_h[0, :, 0].tolist() == [5.0, 3.0, 4.0]
    assert bi_tuning.queue_h[1, :, 0].tolist() == [2.0, 0.0, 0.0]
    assert bi_tuning.queue_z[0, :, 0].tolist() == [5.0, 3.0, 4.0]
    assert bi_tuning.pointer.tolist() == [1, 1] and bi_tuning.filled.tolist() == [3, 1]

    bi_tuning.enqueue(keys[:2] + 10, keys[:2, :2] + 10, torch.tensor([0, 1]))
    assert bi_tuning.queue_h[0, :, 0].tolist() == [5.0, 11.0, 4.0]
    assert bi_tuning.queue_h[1, :, 0].tolist() == [2.0, 12.0, 0.0]
    assert bi_tuning.pointer.tolist() == [2, 2] and bi_tuning.filled.tolist() == [3, 2]


def reference_contrastive(own, anchors, queue, filled, labels, temperature):
    """Per example, as the paper writes it: own key first, then every written queue slot."""
    losses = []
    for b in range(len(labels)):
        logits, positive = [float(own[b])], [True]
        for c in range(queue.shape[0]):
            for k in range(int(filled[c])):
                logits.append(float(anchors[b] @ queue[c, k]))
                positive.append(c == int(labels[b]))
        log_p = np.array(logits) / temperature
        log_p = log_p - np.log(np.exp(log_p).sum())
        losses.append(-log_p[np.array(positive)].mean())
    return float(np.mean(losses))


def test_bi_tuning_terms_against_a_loop_over_examples():
    torch.manual_seed(0)
    bi_tuning = make_bi_tuning(num_classes=3, queue_size=2)
    queued = F.normalize(torch.randn(5, 3), dim=1)
    bi_tuning.enqueue(queued, F.normalize(torch.randn(5, 2), dim=1), torch.tensor([0, 0, 1, 2, 2]))
    z_q, z_k = F.normalize(torch.randn(4, 2), dim=1), F.normalize(torch.randn(4, 2), dim=1)
    h_q, prototypes = F.normalize(torch.randn(4, 3), dim=1), F.normalize(torch.randn(3, 3), dim=1)
    labels = torch.tensor([1, 0, 2, 1])
    snapshot = (bi_tuning.queue_h.clone(), bi_tuning.queue_z.clone())

    projector, classifier = bi_tuning.contrastive_terms(z_q, z_k, h_q, prototypes, labels)

    filled = bi_tuning.filled
    expected_z = reference_contrastive((z_q * z_k).sum(1), z_q, bi_tuning.queue_z, filled, labels, 0.07)
    anchors = prototypes[labels]
    expected_h = reference_contrastive(
        (h_q * anchors).sum(1), anchors, bi_tuning.queue_h, filled, labels, 0.07
    )
    assert float(projector) == pytest.approx(expected_z, rel=1e-5)
    assert float(classifier) == pytest.approx(expected_h, rel=1e-5)
    assert torch.equal(snapshot[0], bi_tuning.queue_h) and torch.equal(snapshot[1], bi_tuning.queue_z)


def test_bi_tuning_forward_reads_the_queues_before_enqueuing_its_own_keys():
    torch.manual_seed(0)
    backbone, head = nn.Linear(3, 2), nn.Linear(2, 2)
    bi_tuning = BiTuning(backbone, 2, 2, queue_size=4, projection_dim=2)
    x, labels = torch.randn(3, 3), torch.tensor([0, 0, 1])
    # Empty queues: each example's only candidate is its own key, so both terms are exactly 0. Had
    # the batch's keys been enqueued first, examples 0 and 1 would see each other and example 2.
    assert bi_tuning(backbone(x), x, labels, backbone, head).item() == 0.0
    assert bi_tuning.filled.tolist() == [2, 1]
    assert bi_tuning(backbone(x), x, labels, backbone, head).item() > 0
    assert bi_tuning.filled.tolist() == [4, 2]


def test_momentum_encoder_is_an_exponential_moving_average():
    online = nn.Linear(2, 1)
    key = MomentumEncoder(online, momentum=0.75)
    before = key.encoder.weight.clone()
    with torch.no_grad():
        online.weight.add_(4.0)
    key.update(online)
    torch.testing.assert_close(key.encoder.weight, 0.75 * before + 0.25 * online.weight.detach())
    assert not any(p.requires_grad for p in key.parameters())


# --- which parameters receive gradient -----------------------------------------------------------


@pytest.fixture(scope="module")
def pair():
    """A tiny folded source model and a 3-class task."""
    torch.manual_seed(0)
    source_model = fold(tiny(3)).requires_grad_(False)
    x = torch.rand(24, 1, 8, 8)
    task = Dataset(x, torch.arange(24) % 3, x[:6], torch.arange(6) % 3, num_classes=3)
    return source_model, task


SPECS = [
    (L2Spec(name="l2"), True),
    (L2SPSpec(name="l2sp"), True),
    (DeltaSpec(name="delta"), True),
    (DeltaAttentionSpec(name="delta_attention", attention_batches=1), True),
    (LwFSpec(name="lwf"), False),
    (CoTuningSpec(name="co_tuning"), False),
    (BiTuningSpec(name="bi_tuning", queue_size=4), False),
    (BSSSpec(name="bss"), False),
]


@pytest.mark.parametrize(("spec", "head_gets_gradient"), SPECS, ids=[spec.name for spec, _ in SPECS])
def test_gradient_reaches_the_model_and_never_the_source(pair, spec, head_gets_gradient):
    source_model, task = pair
    torch.manual_seed(1)
    model = tiny(3)  # not a copy of the source: every term is > 0
    source = Source(source_model, 1.0, 10.0, "test")
    objective = build_objective(
        spec, model, source, task, loss_fn=nn.CrossEntropyLoss(), batch_size=8, probe=lambda epochs: model
    )
    optimizer = torch.optim.SGD(list(model.parameters()) + list(objective.parameters()), lr=0.0)
    for epoch in range(2):  # in the second epoch Bi-Tuning's queues hold keys
        summary = run_epoch(
            model,
            lambda logits, labels: logits.sum() * 0.0,  # the task loss sends no gradient
            objective,
            optimizer,
            task,
            order=torch.arange(epoch, 24),
            batch_size=8,
            augmentation="none",
            generator=torch.Generator(),
        )
    assert summary["penalty"] > 0 and math.isfinite(summary["penalty"])

    def moved(parameters) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in parameters)

    backbone, head = split_head(model)
    assert moved(backbone[0].parameters())  # the first layer
    assert moved(head.parameters()) == head_gets_gradient
    assert all(p.grad is None for p in source_model.parameters())
    assert all(p.grad is None for p in objective.parameters() if not p.requires_grad)
    if isinstance(spec, BiTuningSpec):
        assert moved(objective.terms["bi_tuning"].projector.parameters())


# --- recipes, tasks, the source, a whole run -------------------------------------------------


def entry(transfer: dict, name: str = "lipconv.test") -> ModelEntry:
    return ModelEntry(
        name=name, description="test", architecture=ARCHITECTURE, recipe={**RECIPE, "transfer": transfer}
    )


@pytest.mark.parametrize(
    ("transfer", "message"),
    [
        ({**TARGET, "regularizer": {"name": "l3"}}, "field 'recipe.transfer.regularizer'"),
        (
            {**TARGET, "regularizer": {"name": "l2sp", "weight": -1}},
            "recipe.transfer.regularizer.l2sp.weight",
        ),
        ({**TARGET, "label_fraction": 0}, "field 'recipe.transfer.label_fraction'"),
        ({**TARGET, "classes": [5, 6, 7]}, "field 'recipe.transfer.classes': 3 classes but architecture"),
        ({"source": "lipconv.src", "classes": [5, 6, 7, 8, 9]}, "'source_classes'"),
        ({"classes": [0, 1, 2, 3, 4], "regularizer": {"name": "bss"}}, "need a 'source'"),
    ],
)
def test_invalid_transfer_blocks_name_the_entry_and_field(transfer, message):
    with pytest.raises(ValueError, match=r"entry lipconv\.test: field 'recipe\.transfer") as error:
        parse_transfer(entry(transfer))
    assert message in str(error.value)


def test_class_subset_relabels_and_keeps_a_fraction_of_each_class(digits):
    task = class_subset(digits, [7, 3], label_fraction=0.1, seed=4)
    assert task.num_classes == 2 and task.input_shape == digits.input_shape
    for label, digit in enumerate([7, 3]):
        available = int((digits.y_train == digit).sum())
        assert int((task.y_train == label).sum()) == round(0.1 * available)
        assert int((task.y_test == label).sum()) == int((digits.y_test == digit).sum())
    kept = task.x_train[task.y_train == 0]
    assert all((digits.x_train[digits.y_train == 7] == image).flatten(1).all(1).any() for image in kept)
    again = class_subset(digits, [7, 3], label_fraction=0.1, seed=4)
    assert torch.equal(task.x_train, again.x_train)
    assert not torch.equal(task.x_train, class_subset(digits, [7, 3], label_fraction=0.1, seed=5).x_train)


def test_a_folded_source_initialises_the_parametrized_backbone():
    torch.manual_seed(0)
    source, model = fold(tiny(5)), tiny(3)
    head_before = split_head(model)[1].parametrizations.weight.original.clone()
    probe = torch.rand(16, 1, 8, 8)
    deviation = initialise_backbone(model, source, probe)
    assert deviation < 1e-4
    torch.testing.assert_close(
        split_head(model)[0](probe), split_head(source)[0](probe), atol=1e-4, rtol=1e-4
    )
    assert torch.equal(split_head(model)[1].parametrizations.weight.original, head_before)

    with pytest.raises(ValueError, match="does not fit the model"):
        initialise_backbone(tiny(3, widths=[4, 6]), source, probe)


def test_fine_tuning_trains_the_missing_source_then_writes_a_certified_checkpoint(
    tmp_path, monkeypatch, digits
):
    registry = tmp_path / "models.yaml"
    target = {**TARGET, "label_fraction": 0.2, "regularizer": {"name": "l2sp"}}
    models = {
        "lipconv.src": {
            "description": "source",
            "architecture": ARCHITECTURE,
            "recipe": {**RECIPE, "epochs": 1, "transfer": SOURCE},
        },
        "lipconv.tgt": {
            "description": "target",
            "architecture": ARCHITECTURE,
            "recipe": {**RECIPE, "transfer": target},
        },
    }
    registry.write_text(yaml.safe_dump({"models": models}))
    monkeypatch.setenv("ZOO_MODELS_YAML", str(registry))
    console = Console(record=True, width=200)

    options = RunOptions(progress=False)
    result = train(load_registry()["lipconv.tgt"], tmp_path / "out", options, data=digits, console=console)

    assert "source lipconv.src has no shipped weights: training it first" in console.export_text()
    certified = zoo.load(result.checkpoint)  # weights hash and bound re-checked from the file
    assert certified.certificate.lipschitz_bound == pytest.approx(result.certificate.lipschitz_bound)
    assert 0 < result.certificate.lipschitz_bound <= 1.0
    source = zoo.load(tmp_path / "out" / SOURCE_DIR / "model.safetensors")
    assert certified.architecture["num_classes"] == source.architecture["num_classes"] == 5
    metrics = result.metrics
    assert len(metrics["history"]) == 2 and metrics["history"][0]["penalty"] >= 0
    assert metrics["clean_accuracy"] >= metrics["certified_accuracy"]["0.25"]
    target_test = class_subset(digits, [5, 6, 7, 8, 9])
    logits = certified.model(target_test.x_test)
    assert float((logits.argmax(1) == target_test.y_test).double().mean()) == pytest.approx(
        metrics["clean_accuracy"]
    )


def source_checkpoint(path: Path, num_classes: int) -> Path:
    """An untrained folded source with ``num_classes`` logits, certified, written to ``path``."""
    torch.manual_seed(0)
    source = fold(tiny(num_classes))
    certificate = certify(source, (1, 8, 8), DIGITS_PREPROCESSING)
    write_checkpoint(path, source.state_dict(), {**ARCHITECTURE, "num_classes": num_classes}, certificate)
    return path


def test_a_checkpoint_path_source_of_other_classes_is_refused(tmp_path, digits):
    path = source_checkpoint(tmp_path / "four.safetensors", 4)
    with pytest.raises(ValueError, match="5 classes but the source has 4 logits"):
        train(
            entry({**TARGET, "source": str(path)}), tmp_path / "out", data=digits, console=Console(quiet=True)
        )


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch, digits):
    """Bi-Tuning's key encoder and queues are part of the saved training state."""
    path = source_checkpoint(tmp_path / "source.safetensors", 5)
    regularizer = {"name": "bi_tuning", "queue_size": 8, "momentum": 0.9}
    target = entry({**TARGET, "source": str(path), "source_logit_scale": 10.0, "regularizer": regularizer})
    save_state = trainer.save_state

    def keep_first_epoch(state_path: Path, **state) -> None:
        save_state(state_path, **state)
        if state["unit"] == 0:
            shutil.copyfile(state_path, tmp_path / "after_first_epoch.pt")

    monkeypatch.setattr(trainer, "save_state", keep_first_epoch)
    quiet = dict(data=digits, console=Console(quiet=True))
    reference = train(target, tmp_path / "uninterrupted", RunOptions(progress=False), **quiet)
    (tmp_path / "interrupted").mkdir()
    shutil.copyfile(tmp_path / "after_first_epoch.pt", tmp_path / "interrupted" / STATE_FILE)
    console = Console(record=True, width=200)
    options = RunOptions(resume=True, progress=False)
    resumed = train(target, tmp_path / "interrupted", options, data=digits, console=console)
    assert "after epoch 1" in console.export_text()  # only the second epoch ran again

    expected, actual = load_file(reference.checkpoint), load_file(resumed.checkpoint)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-7)
    with pytest.raises(TrainingStateError, match="already holds a training run"):
        train(target, tmp_path / "interrupted", RunOptions(progress=False), **quiet)
