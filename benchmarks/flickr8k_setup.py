"""The Flickr8k benchmark settings shared by flickr8k_quality.py and flickr8k_compare.py.

Sized for a 2-core CPU: the recipes' model width and epochs are cut (joint space d = 512 instead
of 1024, 1 + 7 baseline epochs instead of 1 + 15); every cut is an override listed here and
recorded in each result file.
"""

from __future__ import annotations

from _common import REPO_ROOT

DATA = REPO_ROOT.parent / "shared" / "data" / "flickr8k"
CACHE = "/tmp/itmatch-bench-cache"
RUNS = "/tmp/itmatch-f8k-compare"

OVERRIDES = [
    "data.format=flickr8k",
    f"data.path={DATA}",
    "data.val_holdout=500",
    f"data.feature_cache={CACHE}",
    "model.embed_dim=512",
    "training.threads=1",
    "stages.hardest.epochs=7",
    "stages.hardest.lr_decay_epochs=5",
    "stages.classifier.epochs=1",
    "stages.adversarial.epochs=3",
    "stages.more.epochs=3",
]
