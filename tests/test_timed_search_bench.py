"""benchmarks/timed_search.py reads the runs it made and the hand design's JSON, and
reports each strategy's mean over seeds and the margins with their standard errors."""

import argparse
import json
import math
from pathlib import Path

from benchmarks.timed_search import report, welch


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
    args = argparse.Namespace(runs_dir=tmp_path, space="residual", dataset="fashion-mnist",
                              budget="1M", time_budget="30m", hand_json=hand,
                              hand_epochs=None)
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
    args = argparse.Namespace(runs_dir=tmp_path, space="residual", dataset="fashion-mnist",
                              budget="1M", time_budget="30m", hand_json=hand, hand_epochs=54)
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
    args = argparse.Namespace(runs_dir=tmp_path, space="residual", dataset="fashion-mnist",
                              budget="1M", time_budget="30m", hand_json=None, hand_epochs=None)
    text = report(args, [0, 1])
    assert "| random (final replayed: 902 of 1030 s) | 1 | 87.40% | 994k, 121.8k | " \
           "44 + 43 epochs | 93.00% +- 0.00% | 1700 s (-5.6%) |" in text
    assert "| random | 92.50% +- 0.71% |" in text  # 92% and the replay's 93%
    assert "`python -m benchmarks.timed_search --seeds 0,1`" in text
