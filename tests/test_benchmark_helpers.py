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


def test_an_ensembles_block_keeps_the_runs_and_its_table_reports_the_gain_over_the_members(common, monkeypatch):
    import flickr8k_baseline as base
    import flickr8k_best as best

    monkeypatch.setattr(base, "RESULTS_DIR", common.RESULTS_DIR)
    monkeypatch.setattr(best, "RESULT", "res")
    base.record_run("res", "a-seed0", {"rsum": 3})
    metrics = {c: 10.0 for c in base.COLUMNS}
    groups = [{"members": ["a-seed0", "a-seed1"], "members_dev_rsum": [300.0, 304.0], "dev_metrics": metrics | {"rsum": 310.0}, "val_rsum": 350.0, "members_val_rsum": [340.0, 344.0]},
              {"members": ["a-seed0", "a-seed2"], "members_dev_rsum": [300.0, 306.0], "dev_metrics": metrics | {"rsum": 314.0}, "val_rsum": 352.0, "members_val_rsum": [340.0, 346.0]}]  # fmt: skip
    base.record_block("res", "ensembles", {"a x 2": groups})
    base.record_run("res", "a-seed1", {"rsum": 4})  # a later run keeps the block
    saved = json.loads((common.RESULTS_DIR / "res.json").read_text())
    assert saved["ensembles"] == {"a x 2": groups} and set(saved["runs"]) == {"a-seed0", "a-seed1"}
    row = best.ensemble_table().splitlines()[2].split(" | ")
    # rsum 312 ± 2.8 over the 2 pairs; members 302 and 303 (mean 302.5 ± 0.7); gains 8 and 11
    assert row[:3] == ["| a x 2", "2", "2"]
    assert row[3 + base.COLUMNS.index("rsum")] == "312.0 ± 2.8"
    assert row[-4:] == ["302.5 ± 0.7", "9.5 ± 2.1", "351.0 ± 1.4", "342.5 ± 0.7 |"]
