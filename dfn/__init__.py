"""Dynamic Filter Networks (De Brabandere et al., NIPS 2016) in PyTorch, Lightning and Hydra."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning import LightningModule


def pretrained(experiment: str) -> LightningModule:
    """The model of ``experiment`` with the weights that ship in ``pretrained/``, in eval mode:
    ``dfn.pretrained("moving_mnist").predictor(frames)``."""
    from dfn.run.pretrained import pretrained as load  # the run layer; ``import dfn`` stays light

    return load(experiment)
