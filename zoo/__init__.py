"""lipschitz-zoo: certified, deployable 1-Lipschitz networks.

``zoo.load(path_or_name)`` gives a plain model with its certificate re-computed from its weights.
"""

__version__ = "0.1.0"

from zoo.hub import CertifiedModel, load

__all__ = ["CertifiedModel", "__version__", "load"]
