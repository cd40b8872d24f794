"""Inferer wrappers shared by the bundles: fold ensembles and mirroring test-time augmentation (:mod:`.averaging`)."""

from common.inferers.averaging import (
    ACTIVATIONS,
    EnsembleCheckpointError,
    EnsembleCheckpointNotFoundError,
    EnsembleInferer,
    load_networks,
    mirror_flips,
    probabilities_to_logits,
)

__all__ = [
    "ACTIVATIONS",
    "EnsembleCheckpointError",
    "EnsembleCheckpointNotFoundError",
    "EnsembleInferer",
    "load_networks",
    "mirror_flips",
    "probabilities_to_logits",
]
