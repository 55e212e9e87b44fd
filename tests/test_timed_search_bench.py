"""benchmarks/timed_search.py records the runs it made, reports them from the record with
the hand design's JSON, each strategy's mean over seeds and the margins with their standard
errors."""

import argparse
import json
import math
import shutil
from pathlib import Path

import pytest

from benchmarks.timed_search import record, report, welch


def test_welch_is_the_difference_of_means_with_its_standard_error() -> None:
    a, b = [0.92, 0.93, 0.94], [0.91, 0.91]
    se = math.sqrt(0.0001 / 3 + 0.0 / 2)  # sample variances 1e-4 and 0
    assert welch(a, b) == f"+2.00 +- {se * 100:.2f}"


def fake_run(folder: Path, runs: list[float], epochs: int, wall: float) -> None:
    best = folder / "residual-fashion-mnist" / "best"
    best.mkdir(parents=True)
    best.joinpath("result.json").write_text(json.dumps({
        "test_accuracy": sum(runs) / len(runs), "test_accuracy_runs": runs,
        "final_epochs": epochs, "macs": 990_000, "params": 90_000, "val_accuracy": 0.87}))
    folder.joinpath("wall.json").write_text(json.dumps({"seconds": wall}))


def arguments(runs_dir: Path, **kw) -> argparse.Namespace:
    return argparse.Namespace(**{
        "runs_dir": runs_dir, "record": runs_dir / "record.json", "space": "residual",
        "dataset": "fashion-mnist", "budget": "1M", "time_budget": "30m", "hand_json": None,
        "hand_epochs": None, **kw})


def test_report_reads_runs_and_picks_hand_runs_of_the_median_final_epochs(tmp_path) -> None:
    fake_run(tmp_path / "search-s0", [0.926, 0.928], 60, 1810)
    fake_run(tmp_path / "search-s1", [0.924, 0.924], 58, 1790)
    fake_run(tmp_path / "search-s2", [0.930, 0.928], 62, 1800)
    for seed in range(3):
        fake_run(tmp_path / f"random-s{seed}", [0.92, 0.92], 30, 1700)
    hand = tmp_path / "limits.json"
    hand.write_text(json.dumps([
        {"budget": 1_000_000, "epochs": 60, "flip": False, "test": t} for t in (0.923, 0.925)]
        + [{"budget": 1_000_000, "epochs": 54, "flip": False, "test": 0.99}]))
    args = arguments(tmp_path, hand_json=hand)
    record(args, [0, 1, 2])
    text = report(args, [0, 1, 2])
    assert "| search | 92.67% +- 0.25% | 1800 s (1810 s) |" in text
    assert "| plain CNN, 60 epochs, 2 seeds | 92.40% +- 0.14% | |" in text
    assert f"search - random: {welch([0.927, 0.924, 0.929], [0.92] * 3)} points" in text
    assert f"search - plain CNN: {welch([0.927, 0.924, 0.929], [0.923, 0.925])}" in text
    assert "| search | 0 | 87.00% | 990k, 90.0k | 2 x 60 epochs | 92.70% +- 0.14% | " \
           "1810 s (+0.6%) |" in text


def test_report_takes_hand_runs_of_other_epochs_when_told(tmp_path) -> None:
    for seed in range(2):
        fake_run(tmp_path / f"search-s{seed}", [0.926, 0.928], 60, 1800)
        fake_run(tmp_path / f"random-s{seed}", [0.92, 0.92], 30, 1700)
    hand = tmp_path / "limits.json"
    hand.write_text(json.dumps([{"budget": 1_000_000, "epochs": 54, "flip": False,
                                 "test": 0.92}]))
    args = arguments(tmp_path, hand_json=hand, hand_epochs=54)
    record(args, [0, 1])
    text = report(args, [0, 1])
    assert "trained for 54 epochs (the searches' median final retraining: 60" in text
    assert "| plain CNN, 54 epochs, 1 seed | 92.00% | |" in text


def test_a_replayed_final_stands_for_the_runs_result(tmp_path) -> None:
    for seed in range(2):
        fake_run(tmp_path / f"search-s{seed}", [0.926, 0.928], 60, 1800)
        fake_run(tmp_path / f"random-s{seed}", [0.92, 0.92], 30, 1700)
    tmp_path.joinpath("random-s1", "replay.json").write_text(json.dumps({
        "trial": 12, "replaces_trial": 23, "val_accuracy": 0.874, "macs": 993_608,
        "params": 121_778, "test_accuracy": 0.93, "test_accuracy_runs": [0.93, 0.93],
        "final_epochs": 44, "final_epochs_runs": [44, 43], "final_seconds": 902.4,
        "final_seconds_allowed": 1029.7}))
    args = arguments(tmp_path)
    record(args, [0, 1])
    text = report(args, [0, 1])
    assert "| random (final replayed: 902 of 1030 s) | 1 | 87.40% | 994k, 121.8k | " \
           "44 + 43 epochs | 93.00% +- 0.00% | 1700 s (-5.6%) |" in text
    assert "| random | 92.50% +- 0.71% |" in text  # 92% and the replay's 93%
    assert "`python -m benchmarks.timed_search --seeds 0,1`" in text


def test_the_record_keeps_runs_whose_folders_are_gone_and_where_they_ran(tmp_path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    fake_run(first / "search-s0", [0.926, 0.928], 60, 1800)
    fake_run(first / "random-s0", [0.92, 0.92], 30, 1700)
    args = arguments(first, record=tmp_path / "record.json")
    kept = record(args, [0, 1])
    assert [(r["strategy"], r["seed"]) for r in kept] == [("search", 0), ("random", 0)]
    kept[0]["revision"], kept[0]["date"] = "abc1234", "2026-12-01"  # as an earlier session's
    args.record.write_text(json.dumps(kept))
    assert record(args, [0])[0]["revision"] == "abc1234"  # same result: same provenance
    with pytest.raises(SystemExit, match="no record of search seed 1, random seed 1"):
        report(args, [0, 1])
    fake_run(second / "search-s1", [0.93, 0.93], 62, 1790)
    fake_run(second / "random-s1", [0.91, 0.91], 30, 1710)
    args.runs_dir = second  # a later session, the first one's folders gone
    shutil.rmtree(first)
    record(args, [1])
    text = report(args, [0, 1])
    assert "| search | 92.85% +- 0.21% | 1795 s (1800 s) |" in text
    assert "revision abc1234 (2026-12-01): search 0" in text


def test_a_run_recorded_by_hand_says_so_and_may_lack_its_validation_accuracy(tmp_path) -> None:
    runs = [{"strategy": s, "seed": 0, "test": t, "runs": None, "sd": 0.001, "epochs": 60,
             "macs": 985_000, "params": 96_100, "val": None, "wall": 1771, "trial": 24,
             "replayed": False, "epochs_text": "2 x 60", "final_seconds": None,
             "final_seconds_allowed": None, "revision": "abc1234", "machine": "a CPU",
             "date": "2026-12-03", "note": "transcribed from the docs."}
            for s, t in (("search", 0.9271), ("random", 0.9234))]
    args = arguments(tmp_path)
    args.record.write_text(json.dumps(runs))
    text = report(args, [0])
    assert "| search | 0 | n/a | 985k, 96.1k | 2 x 60 epochs | 92.71% +- 0.10% |" in text
    assert "Search seed 0 and random seed 0: transcribed from the docs." in text
    assert "a CPU; revision abc1234 (2026-12-03): search 0, random 0" in text
