"""The application layer: the ``zoo`` command line, the server, model cards and publishing.

This is the only part of the project that imports both ``training`` and ``export``; the core of
``zoo`` (layers, bounds, certificates, checkpoints, the registry, ``zoo.load``) imports neither, and
``training`` and ``export`` import only that core (``docs/ARCHITECTURE.md``, checked by
``tests/test_layering.py``). The commands import what they need inside their own body, because each
needs a different optional extra (``train``, ``export``, ``serve``, ``report``): a missing extra is a
one-line error naming it, not an ImportError at ``zoo --help``.
"""

EXPORTED_SUFFIXES = (".onnx", ".pt", ".pt2")
"""Suffixes of the files ``zoo export`` writes (ONNX, TorchScript, torch.export), which ``zoo verify``
and ``zoo report`` read and ``zoo certify`` / ``zoo export`` refuse as checkpoints."""

PROGRAM_SUFFIXES = (".pt", ".pt2")
"""Exported files holding a program that torch runs (TorchScript, torch.export): ``zoo verify`` runs
it confined, ``zoo report`` only with ``--trust-program``, ``zoo serve`` never."""
