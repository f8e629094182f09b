"""Continual learning that produces certified models: class-incremental scenarios over any dataset,
rehearsal and regularisation strategies (naive, ER, DER++, LiDER, AR1, Synaptic Intelligence), the
continual metrics, and :class:`ContinualProtocol`, which ``zoo train`` runs for a recipe with a
``continual`` block.

Modules, one idea each: ``scenario`` (the stream), ``buffer`` (reservoir sampling), ``metrics``
(accuracy matrix, forgetting, BWT), ``recipe`` (the validated ``recipe.continual`` block), ``si``,
``lider``, ``cwr``, ``latent_replay`` and ``renorm`` (the pieces strategies are made of),
``strategies`` (the strategies), ``runner`` (the protocol the trainer runs).
"""

from training.continual.runner import CONTINUAL_FILE, ContinualProtocol

__all__ = ["CONTINUAL_FILE", "ContinualProtocol"]
