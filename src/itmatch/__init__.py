"""itmatch: image-sentence matching with a modality-invariant joint embedding."""

__version__ = "0.1.0"
