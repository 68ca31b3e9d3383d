"""The benchmark scripts' shared helpers (benchmarks/_common.py, the Flickr8k command line): concurrent result updates, subcommand dispatch."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def common(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common

    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(_common, "git_state", lambda: {})  # no git in tmp_path's way
    return _common


def _add_entries(results_dir: str, worker: int, count: int) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    import _common

    _common.RESULTS_DIR = Path(results_dir)
    _common.git_state = lambda: {}
    _common.machine_info = lambda: {}  # torch's import in 3 fresh processes would dominate (minutes on a busy CPU)
    path = Path(results_dir) / "shared.json"
    for i in range(count):
        with _common.result_lock("shared"):
            runs = json.loads(path.read_text())["runs"] if path.exists() else {}
            runs[f"w{worker}-{i}"] = i
            _common.write_result("shared", {"runs": runs})


def test_concurrent_read_modify_writes_under_the_result_lock_keep_every_entry(common, tmp_path):
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_add_entries, args=(str(tmp_path), w, 15)) for w in range(3)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=300)
        assert p.exitcode == 0
    runs = json.loads((tmp_path / "shared.json").read_text())["runs"]
    assert sorted(runs) == sorted(f"w{w}-{i}" for w in range(3) for i in range(15))
    assert not list(tmp_path.glob("*.tmp"))  # every writer's temporary file was renamed into place


def test_the_shared_command_line_dispatches_its_own_and_a_script_s_extra_subcommands(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import flickr8k_baseline as base

    calls = []
    monkeypatch.setattr(base, "run", lambda *a: calls.append(("run",) + a))
    monkeypatch.setattr(base, "table", lambda result: f"table of {result}")
    variants = {"v": ("vsepp", [], "a variant")}
    extra = {
        "seeds": ("over seeds", base.data_argument, lambda args: calls.append(("seeds", args.data))),
        "plot": ("replaced", lambda p: p.add_argument("--dpi", type=int), lambda args: calls.append(("plot", args.dpi))),
    }

    def cli(*argv):
        monkeypatch.setattr(sys, "argv", ["script.py", *argv])
        base.main("doc", variants, {"v": "base"}, "res", "title", extra=extra)

    cli("run", "v", "--seed", "3", "--data", str(tmp_path))
    cli("seeds", "--data", str(tmp_path))
    cli("plot", "--dpi", "72")
    cli("table")
    assert calls == [
        ("run", "v", 3, tmp_path, variants, {"v": "base"}, "res"),
        ("seeds", tmp_path),
        ("plot", 72),
    ]
    assert capsys.readouterr().out == "table of res\n"
    with pytest.raises(SystemExit):
        cli("run", "not-a-variant")


def test_recording_a_run_keeps_the_other_runs_and_a_script_s_own_blocks(common, monkeypatch):
    import flickr8k_baseline as base

    monkeypatch.setattr(base, "RESULTS_DIR", common.RESULTS_DIR)  # bound at its first import

    common.write_result("res", {"extraction": {"lite2": 1.5}, "runs": {"a-seed0": {"rsum": 1}}})
    base.record_run("res", "b-seed1", {"rsum": 2}, mmd_bandwidth=1.0)
    base.record_run("res", "a-seed0", {"rsum": 3})
    saved = json.loads((common.RESULTS_DIR / "res.json").read_text())
    assert saved["runs"] == {"a-seed0": {"rsum": 3}, "b-seed1": {"rsum": 2}}
    assert saved["extraction"] == {"lite2": 1.5} and saved["mmd_bandwidth"] == 1.0
    assert saved["name"] == "res" and set(saved) >= set(common.RESULT_HEADER)
