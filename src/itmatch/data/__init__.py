"""Readers for image-caption data sets -> one in-memory :class:`Corpus`; tokenizer; vocabulary."""

from itmatch.data.corpus import CAPTIONS_PER_IMAGE, Corpus

__all__ = ["CAPTIONS_PER_IMAGE", "Corpus"]
