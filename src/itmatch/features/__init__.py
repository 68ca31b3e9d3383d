"""Image backbones, the one image preprocessing pipeline, and cached feature extraction."""

from itmatch.features.backbones import BackboneSpec, backbone_spec, get_backbone, list_backbones
from itmatch.features.extract import extract_corpus_features, extract_features
from itmatch.features.preprocess import IMAGENET_NORMALIZATION, ImageTransform, Normalization, load_rgb
from itmatch.features.store import FeatureStore, store_path

__all__ = [
    "IMAGENET_NORMALIZATION",
    "BackboneSpec",
    "FeatureStore",
    "ImageTransform",
    "Normalization",
    "backbone_spec",
    "extract_corpus_features",
    "extract_features",
    "get_backbone",
    "list_backbones",
    "load_rgb",
    "store_path",
]
