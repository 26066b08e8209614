"""The COVID-19 classifiers, by the name the command line and the options use.

One registry for training (``train-classifier --model``) and for the analysis
(``AnalysisOptions.classifier``), so both agree on the network and its weights file:

- ``decovnet``: DeCoVNet (METHOD step 7), the node's classifier, with the CAM that localizes
  lesions (METHOD step 9);
- ``2dclfnet``: 2DClfNet, the paper's 2-D comparison network (:mod:`inference.models.clfnet2d`);
  it gives a probability only, no CAM and hence no lesions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from inference.models.clfnet2d import ClfNet2d
from inference.models.decovnet import DeCoVNet
from inference.weights import CLFNET2D, DECOVNET


@dataclass(frozen=True)
class ClassifierSpec:
    """How to build a classifier, the file its weights live in, and the name findings carry."""

    build: Callable[[], nn.Module]
    weights: str
    algorithm_name: str


CLASSIFIERS: dict[str, ClassifierSpec] = {
    "decovnet": ClassifierSpec(DeCoVNet, DECOVNET, "DeCoVNet"),
    "2dclfnet": ClassifierSpec(ClfNet2d, CLFNET2D, "2DClfNet"),
}
"""Keyed like :data:`inference.options.CLASSIFIER_NAMES` (which the options and the command line
check names against without importing torch)."""


def classifier_spec(name: str) -> ClassifierSpec:
    """The registry entry of ``name``; a ValueError naming the known ones otherwise."""
    try:
        return CLASSIFIERS[name]
    except KeyError:
        raise ValueError(f"unknown classifier {name!r}; known: {', '.join(CLASSIFIERS)}") from None
