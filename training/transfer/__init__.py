"""Transfer learning for certified models: fine-tune a 1-Lipschitz source model onto a new task and
keep a certificate.

One idea per module:

========================  =====================================================================
``recipe``                the ``recipe.transfer`` block of models.yaml, validated
``tasks``                 a class subset of a dataset, with a fraction of its training labels
``source``                finding / training / loading the source, copying its backbone
``weights``               the effective (parametrized) tensors regularizers act on
``features``              intermediate feature maps through forward hooks
``l2``, ``l2sp``          L2 towards zero and towards the source weights
``delta``                 DELTA behavioural and attention feature-map regularization
``channel_attention``     DELTA's channel attention (loss increase when a channel is masked)
``lwf``                   Learning without Forgetting
``co_tuning``             Co-Tuning and its category relationship (direct, calibrated)
``bi_tuning``             Bi-Tuning's momentum keys, per-class queues and contrastive terms
``bss``                   Batch Spectral Shrinkage
``objective``             a recipe's regularizer assembled and evaluated on a training step
``loop``, ``train``       the epoch loop and :class:`TransferProtocol`, which ``zoo train`` runs
========================  =====================================================================
"""

from training.transfer.bi_tuning import BiTuning, MomentumEncoder
from training.transfer.bss import BatchSpectralShrinkage
from training.transfer.channel_attention import channel_attention
from training.transfer.co_tuning import CoTuning, calibrated_relationship, direct_relationship
from training.transfer.delta import AttentionRegularization, BehavioralRegularization
from training.transfer.features import IntermediateLayerGetter
from training.transfer.l2 import L2
from training.transfer.l2sp import L2SP
from training.transfer.lwf import LwF
from training.transfer.recipe import TransferSpec, parse_transfer
from training.transfer.train import TransferProtocol

__all__ = [
    "L2",
    "L2SP",
    "AttentionRegularization",
    "BatchSpectralShrinkage",
    "BehavioralRegularization",
    "BiTuning",
    "CoTuning",
    "IntermediateLayerGetter",
    "LwF",
    "MomentumEncoder",
    "TransferProtocol",
    "TransferSpec",
    "calibrated_relationship",
    "channel_attention",
    "direct_relationship",
    "parse_transfer",
]
