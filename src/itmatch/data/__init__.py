"""Readers for image-caption data sets -> one in-memory :class:`Corpus`; tokenizer; vocabulary."""

from itmatch.data.corpus import CAPTIONS_PER_IMAGE, Corpus
from itmatch.data.readers import (
    FORMATS,
    detect_format,
    load_corpus,
    read_coco_captions,
    read_flickr8k,
    read_karpathy,
    read_precomp,
)
from itmatch.data.text import Vocabulary, tokenize

__all__ = [
    "CAPTIONS_PER_IMAGE",
    "FORMATS",
    "Corpus",
    "Vocabulary",
    "detect_format",
    "load_corpus",
    "read_coco_captions",
    "read_flickr8k",
    "read_karpathy",
    "read_precomp",
    "tokenize",
]
