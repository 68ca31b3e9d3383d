"""Encoders, the joint model, the modality classifier and gradient reversal."""

from itmatch.models.classifier import ModalityClassifier, grad_reverse
from itmatch.models.encoders import GRUTextEncoder, ImageEncoder, l2_normalize
from itmatch.models.joint import JointModel, build_model

__all__ = [
    "GRUTextEncoder",
    "ImageEncoder",
    "JointModel",
    "ModalityClassifier",
    "build_model",
    "grad_reverse",
    "l2_normalize",
]
