"""Keeping freed memory in the process (itmatch.memory) and when the trainer does it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from itmatch.training import trainer
from itmatch.training.config import load_config
from itmatch.training.schedule import parse_stages

from conftest import tiny_overrides

# A child process allocates and writes 256 MiB twice and prints the page faults of the second
# time. Without retention glibc maps the block afresh (and unmapped the first on free), so every
# one of its 65,536 pages faults in again; with it, the second block reuses the first one's pages.
_CHILD = """
import resource, sys
if sys.argv[1] == "retain":
    from itmatch.memory import retain_freed_memory
    if not retain_freed_memory():
        print("unsupported")
        raise SystemExit
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = 256 << 20
for attempt in range(2):
    before = faults()
    block = bytearray(n)
    block[::4096] = b"\\x01" * len(range(0, n, 4096))
    del block
print(faults() - before)
"""


def _second_block_faults(mode: str) -> str:
    return subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_retained_memory_serves_the_next_big_block_without_page_faults():
    retained = _second_block_faults("retain")
    if retained == "unsupported":
        pytest.skip("this C library has no glibc mallopt")
    pages = (256 << 20) // 4096
    assert int(_second_block_faults("default")) >= pages // 2  # fresh mapping: its pages fault again
    assert int(retained) < pages // 100  # the freed pages are reused


@pytest.mark.parametrize(
    ("setting", "device", "photo_stage", "data", "expected"),
    [("auto", "cpu", True, "/feats", True), ("auto", "cpu", False, "/feats", False), ("auto", "cuda", True, "auto", False),
     ("auto", "cpu", False, "auto", True),  # features missing from the cache are extracted first
     ("auto", "cpu", False, "none", True),  # frozen stages embed the photos
     ("auto", "cuda", False, "none", False),
     ("auto", "cpu", False, "precomp", False),  # feature files, no photos
     (True, "cpu", False, "/feats", True), (False, "cpu", True, "auto", False)],
)  # fmt: skip
def test_the_trainer_retains_memory_when_photos_go_through_the_cpu_unless_told(setting, device, photo_stage, data, expected):
    train = ["image", "backbone", "text"] if photo_stage else ["image", "text"]
    stages = parse_stages([{"name": "s", "epochs": 1, "lr": 1e-4, "train": train, "rank": "sum"}])
    data_cfg = {"format": "precomp"} if data == "precomp" else {"format": "flickr8k", "features": data}
    assert trainer._retains_memory(setting, torch.device(device), stages, data_cfg) is expected


def test_train_applies_the_setting(tmp_path, precomp_data, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer, "retain_freed_memory", lambda: calls.append(1) or True)
    cfg = load_config("vsepp", tiny_overrides(precomp_data, "stages.0.epochs=1", "stages.1.epochs=0", "training.retain_memory=true"))
    trainer.train(cfg, tmp_path / "on")
    assert calls == [1]
    cfg = load_config("vsepp", tiny_overrides(precomp_data, "stages.0.epochs=1", "stages.1.epochs=0"))
    trainer.train(cfg, tmp_path / "auto")  # precomputed feature files: no photos
    assert calls == [1]


def test_the_command_line_retains_memory_for_its_process(monkeypatch, capsys, tmp_path):
    from itmatch import cli

    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["models"]) == 0
    assert calls == [1]
    assert cli.main(["train", "--config", "no-such-recipe", "--out", str(tmp_path / "run")]) == 1  # the run's setting decides
    assert calls == [1]
