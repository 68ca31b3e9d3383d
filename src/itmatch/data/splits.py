"""One split of the data set a recipe's ``data`` section names."""

from __future__ import annotations

from typing import Any

from itmatch.data.corpus import Corpus
from itmatch.errors import ConfigError


def load_split(data_cfg: dict[str, Any], split: str) -> Corpus:
    """Read one split of the data set the config names."""
    from itmatch.data import load_corpus

    if not data_cfg.get("format") or not data_cfg.get("path"):
        raise ConfigError("data.format and data.path must be set (e.g. --format flickr8k --data PATH)")
    return load_corpus(data_cfg["format"], data_cfg["path"], split, image_root=data_cfg.get("image_root"))
