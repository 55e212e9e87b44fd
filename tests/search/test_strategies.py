"""Cheap evaluation: the pruners' rungs, the time budget's plan, zero-cost screening."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from nasgraph import analysis
from nasgraph.cli import app
from nasgraph.data import load_dataset
from nasgraph.errors import BudgetError
from nasgraph.search import Context, load_space, parse_duration
from nasgraph.search.config import SearchConfig, trial_timeout
from nasgraph.search.run import search
from nasgraph.search.schedule import (
    FINAL_SHARE,
    MARGIN,
    MAX_TRIAL_EPOCHS,
    REPORT_SECONDS,
    STEADY_EPOCHS,
    TIMED_DEFAULTS,
    TRIAL_IMAGES,
    FinalPlan,
    Schedule,
    Trained,
    level_and_fastest,
    refit_epochs,
    trial_epochs,
)
from nasgraph.search.strategies import make_pruner, rungs

TINY = f"{Path(__file__).parent / 'tiny_space.py'}:space"


@pytest.mark.parametrize(("text", "parsed"), [
    ("30m", 1800), ("90s", 90), ("1.5h", 5400), ("600", 600), (" 2 min", 120)])
def test_parse_duration(text, parsed):
    assert parse_duration(text) == parsed


@pytest.mark.parametrize("text", ["0", "0.5s", "abc", "-5m", "2y", "nan", "1e9h"])
def test_parse_duration_rejects(text):
    with pytest.raises(BudgetError, match="--time-budget"):
        parse_duration(text)


@pytest.mark.parametrize(("epochs", "expected"), [(1, []), (2, [1]), (3, [1]), (10, [1, 3, 9]),
                                                  (27, [1, 3, 9])])
def test_successive_halving_judges_at_powers_of_three_below_the_last_epoch(epochs, expected):
    assert rungs(SearchConfig(pruner="halving", epochs=epochs)) == expected


def test_successive_halving_keeps_the_best_third_at_each_rung():
    # asynchronous (ASHA): after epoch 1, a trial goes on when it is among the best third
    # (at least the best one) of the trials that reached epoch 1 so far, itself included
    study = optuna.create_study(direction="maximize",
                                pruner=make_pruner(SearchConfig(pruner="halving", epochs=9)))
    values = [0.5, 0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.95, 0.4]
    for k, value in enumerate(values):
        trial = study.ask()
        trial.report(value, 1)
        seen = sorted(values[:k + 1], reverse=True)
        assert trial.should_prune() == (value < seen[max(1, len(seen) // 3) - 1])
        study.tell(trial, state=TrialState.PRUNED)


@pytest.mark.parametrize("pruner, kind", [
    ("median", optuna.pruners.MedianPruner), ("halving", optuna.pruners.SuccessiveHalvingPruner),
    ("hyperband", optuna.pruners.HyperbandPruner), ("none", optuna.pruners.NopPruner)])
def test_pruner_by_name(pruner, kind):
    assert isinstance(make_pruner(SearchConfig(pruner=pruner, epochs=9)), kind)


def test_time_budget_keeps_its_final_share_for_the_final_retraining():
    plan = Schedule(budget=1800.0, start=100.0)
    assert plan.trials_end == 100 + 1800 * (1 - FINAL_SHARE) - REPORT_SECONDS
    assert plan.end == 1900
    # --final-share 1/3: the trials get two thirds of the budget
    assert Schedule(1800.0, 100.0, final_share=1 / 3).trials_end == pytest.approx(
        100 + 1200 - REPORT_SECONDS)


@pytest.fixture
def configured(monkeypatch):
    """`nasgraph search ARGS` -> the SearchConfig it would run (the search itself is not run)."""
    import nasgraph.search.run

    class Captured(Exception):
        pass

    def capture(cfg, **kwargs):
        raise Captured(cfg)

    monkeypatch.setattr(nasgraph.search.run, "search", capture)

    def configure(*args: str) -> SearchConfig:
        result = CliRunner().invoke(app, ["search", *args])
        assert isinstance(result.exception, Captured), result.output
        return result.exception.args[0]

    return configure


def test_a_timed_search_defaults_to_screening_halving_and_two_retrainings(configured):
    cfg = configured("residual", "--dataset", "digits", "--time-budget", "2m", "--device",
                     "cpu")
    assert (cfg.screen, cfg.pruner, cfg.final_seeds, cfg.final_share) == (
        TIMED_DEFAULTS["screen"], "halving", 2, FINAL_SHARE)
    # digits' training split is small: the most epochs; one worker per retraining and core
    assert cfg.epochs == trial_epochs(len(load_dataset("digits").train)) == MAX_TRIAL_EPOCHS
    assert cfg.workers == min(2, os.cpu_count())


def test_a_timed_search_keeps_the_options_it_is_given(configured):
    cfg = configured("residual", "--time-budget", "2m", "--device", "cpu", "--epochs", "3",
                     "--screen", "0", "--pruner", "none", "--final-seeds", "3",
                     "--final-share", "0.5", "--workers", "1")
    assert (cfg.epochs, cfg.screen, cfg.pruner, cfg.final_seeds, cfg.final_share,
            cfg.workers) == (3, 0, "none", 3, 0.5, 1)


def test_an_untimed_search_keeps_the_configs_defaults(configured):
    cfg = configured("residual", "--device", "cpu")
    assert cfg == SearchConfig(space="residual", device="cpu")
    # on a GPU a timed search keeps one worker
    timed = configured("residual", "--time-budget", "2m", "--device", "cuda:0", "--epochs", "2")
    assert timed.workers == 1


def test_trial_epochs_see_about_the_same_number_of_images():
    assert trial_epochs(54_000) == 2  # Fashion-MNIST's training split
    assert trial_epochs(TRIAL_IMAGES) == 1
    assert trial_epochs(TRIAL_IMAGES - 1) == 2
    assert trial_epochs(10) == MAX_TRIAL_EPOCHS


def test_final_plan_fills_the_time_left():
    plan = Schedule(budget=1800.0, start=0.0)
    # 580 s left; an epoch of 54k images took 12 s, 60k take 12 * 60 / 54 * MARGIN
    epoch = 12.0 * 60 / 54 * MARGIN
    final = plan.final_plan(now=1200.0, seconds_per_epoch=12.0, seeds=3, train_images=54_000,
                            final_images=60_000)
    assert final == FinalPlan(3, int(580 // (3 * epoch)))
    assert final.epochs * final.seeds * epoch <= 580 < (final.epochs + 1) * final.seeds * epoch


def test_final_plan_drops_seeds_before_epochs_and_everything_when_out_of_time():
    plan = Schedule(budget=100.0, start=0.0)
    left = 100 - REPORT_SECONDS - 50  # 30 s
    assert plan.final_plan(now=50.0, seconds_per_epoch=12.0, seeds=3, train_images=1,
                           final_images=1) == FinalPlan(int(left // (12 * MARGIN)), 1)
    assert plan.final_plan(now=75.0, seconds_per_epoch=12.0, seeds=3, train_images=1,
                           final_images=1) == FinalPlan(0, 0)


def test_final_plan_counts_the_seeds_that_train_at_once():
    plan = Schedule(budget=1800.0, start=0.0)
    epoch = 12.0 * MARGIN
    # 580 s left: 3 seeds 2 at a time are two rounds, so each seed gets 580 / (2 * epoch)
    final = plan.final_plan(now=1200.0, seconds_per_epoch=12.0, seeds=3, train_images=1,
                            final_images=1, parallel=2)
    assert final == FinalPlan(3, int(580 // (2 * epoch)))
    one_by_one = plan.final_plan(now=1200.0, seconds_per_epoch=12.0, seeds=3, train_images=1,
                                 final_images=1)
    assert final.epochs > one_by_one.epochs


def test_a_timed_search_retrains_the_fastest_of_the_trials_level_with_the_best():
    # 400 validation images at 90%: one standard error is sqrt(0.9 * 0.1 / 400) = 1.5 points
    trials = [Trained(0, 0.900, 60.0), Trained(1, 0.886, 30.0), Trained(2, 0.884, 10.0),
              Trained(3, 0.895, 30.0)]
    assert level_and_fastest(trials, val_images=400) == 3  # 1 and 3 tie: the more accurate
    assert level_and_fastest(trials[:3], val_images=400) == 1  # 2 is 1.6 points behind
    # with 10x the validation images the standard error is 0.47 points: only the best is
    assert level_and_fastest(trials, val_images=4_000) == 0
    with pytest.raises(ValueError, match="no trained trial"):
        level_and_fastest([], val_images=400)


def test_refit_epochs_fill_the_time_left_after_the_first_epoch():
    per = 20.0 * MARGIN
    for rounds in (1, 2, 3):
        epochs = refit_epochs(now=100.0, until=1000.0, epoch_seconds=20.0, rounds=rounds)
        # this retraining's epochs after its first, and those of the rounds after it, fit
        assert ((epochs - 1) + (rounds - 1) * epochs) * per <= 900
        assert (epochs + (rounds - 1) * (epochs + 1)) * per > 900
    assert refit_epochs(now=999.0, until=1000.0, epoch_seconds=20.0) == 1  # out of time
    # after 4 epochs, with 840 s left: 4 + 840 / 22, and never fewer than those done
    assert refit_epochs(now=160.0, until=1000.0, epoch_seconds=20.0, done=4) == 42
    assert refit_epochs(now=999.0, until=1000.0, epoch_seconds=20.0, done=4) == 4


@pytest.mark.parametrize(("refit_to", "trained"), [(2, 2), (5, 3)])
def test_the_final_retraining_is_cut_once_after_its_first_epoch(tmp_path, monkeypatch,
                                                                refit_to, trained):
    # one seed after the other: the first has both seeds' rounds to fit, the second its own;
    # 3 epochs planned are cut to 2 when only 2 fit, and not lengthened when 5 would
    calls = []

    def refit(now: float, until: float, epoch_seconds: float, rounds: int = 1,
              done: int = 1) -> int:
        calls.append((until, rounds))
        return refit_to

    monkeypatch.setattr("nasgraph.search.final.refit_epochs", refit)
    until = time.time() + 1000
    seen = []
    cfg = SearchConfig(space=TINY, trials=1, epochs=1, final_epochs=3, final_seeds=2,
                       final_until=until, runs_dir=str(tmp_path), device="cpu")
    result = search(cfg, progress=lambda phase, done, total: seen.append((phase, done, total)))
    assert calls == [(until, 2), (until, 1)]
    best = result.best
    assert best["final_epochs_runs"] == [trained, trained] and best["final_epochs"] == trained
    assert ("final retraining, seed 2/2", trained, trained) in seen


@pytest.mark.parametrize("refit_to", [5, 18])
def test_a_long_final_retraining_is_fitted_again_at_its_steady_pace(tmp_path, monkeypatch,
                                                                   refit_to):
    # 16 epochs planned (4 x STEADY_EPOCHS): not cut after the first; after the fourth,
    # fitted again at the mean of epochs 2-4, and cut to 5 or grown to 18
    assert STEADY_EPOCHS == 4
    calls = []

    def refit(now: float, until: float, epoch_seconds: float, rounds: int = 1,
              done: int = 1) -> int:
        calls.append((done, epoch_seconds))
        return 16 if done == 1 else refit_to

    monkeypatch.setattr("nasgraph.search.final.refit_epochs", refit)
    cfg = SearchConfig(space=TINY, trials=1, epochs=1, final_epochs=16, final_seeds=1,
                       final_until=time.time() + 1000, runs_dir=str(tmp_path), device="cpu")
    best = search(cfg).best
    assert [done for done, _ in calls] == [1, STEADY_EPOCHS]
    assert best["final_epochs_runs"] == [refit_to]


def test_final_seeds_train_in_parallel_on_cpu_workers_and_report_each_epoch(tmp_path):
    seen = []
    cfg = SearchConfig(space=TINY, trials=2, epochs=1, final_epochs=2, final_seeds=2,
                       workers=2, runs_dir=str(tmp_path), device="cpu", study="parallel")
    result = search(cfg, progress=lambda phase, done, total: seen.append((phase, done, total)))
    best = result.best
    assert best["final_seeds"] == 2 and len(best["test_accuracy_runs"]) == 2
    assert best["model_test_accuracy"] == best["test_accuracy_runs"][0]
    for k in (1, 2):
        assert (f"final retraining, seed {k}/2", 2, 2) in seen  # every seed's last epoch


def test_trial_timeout_is_the_sooner_of_timeout_and_the_time_budget():
    now = time.time()
    assert trial_timeout(SearchConfig(timeout=50)) == 50
    assert trial_timeout(SearchConfig(trials_until=now + 30)) == pytest.approx(30, abs=2)
    assert trial_timeout(SearchConfig(timeout=10, trials_until=now + 30)) == 10
    assert trial_timeout(SearchConfig(trials_until=now - 5)) == 0


def test_a_time_budgeted_search_stops_its_trials_and_plans_its_final_retraining(tmp_path):
    # a quarter for the final retraining: the trials stop 13.75 s in, not the default's 10
    cfg = SearchConfig(space=TINY, trials=100_000, epochs=2, time_budget=45, final_seeds=2,
                       final_share=0.25, runs_dir=str(tmp_path), device="cpu", study="timed")
    result = search(cfg)
    study = optuna.load_study(study_name="timed",
                              storage=f"sqlite:///{tmp_path / 'timed' / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    assert 1 <= result.trials < 100_000  # the trials stopped on time, not on count
    start = min(t.datetime_start for t in trials).timestamp()
    trials_end = Schedule(45, start, final_share=0.25).trials_end
    # no trial started after the trials' time was up (a second of slack: the study's clock)
    assert all(t.datetime_start.timestamp() <= trials_end + 1 for t in trials)
    # the final retraining was planned into the time left: some seeds, some epochs
    best = result.best
    assert best is not None and 1 <= best["final_seeds"] <= 2 and best["final_epochs"] >= 1
    # of the trials level with the best, the fastest to train was retrained
    trained = [Trained(t.number, t.values[0], t.user_attrs["train_seconds"]) for t in trials
               if t.state == TrialState.COMPLETE and t.user_attrs.get("feasible")]
    val_images = len(load_dataset("digits", seed=cfg.seed).val)
    assert best["trial"] == level_and_fastest(trained, val_images)
    if best["picked_for"] == "the best validation accuracy":
        assert best["val_accuracy"] == round(max(t.val_accuracy for t in trained), 4)
    assert set(result.seconds) >= {"setup", "trials", "report and final retraining"}


def test_screening_queues_the_most_promising_candidates_first(tmp_path):
    cfg = SearchConfig(space="residual", budget_macs=100_000, trials=3, epochs=1, screen=12,
                       final_seeds=0, runs_dir=str(tmp_path), device="cpu")
    result = search(cfg)
    study = optuna.load_study(study_name="residual-digits",
                              storage=f"sqlite:///{tmp_path / 'residual-digits' / 'study.db'}")
    screening = study.user_attrs["screening"]
    assert screening["candidates"] == 12 and screening["queued"] == 3
    trials = study.get_trials(deepcopy=False)
    promises = [t.user_attrs["screened"]["promise"] for t in trials]
    assert promises == sorted(promises, reverse=True)  # the best screened are trained first
    assert all({"params", "snip"} <= set(t.user_attrs["screened"]) for t in trials)
    assert result.trials == 3


def test_every_trial_records_whether_it_was_made_cheaper_to_fit(tmp_path):
    cfg = SearchConfig(space="residual", budget_macs=60_000, trials=6, epochs=1,
                       sampler="random", final_seeds=0, runs_dir=str(tmp_path), device="cpu")
    result = search(cfg)
    study = optuna.load_study(study_name="residual-digits",
                              storage=f"sqlite:///{tmp_path / 'residual-digits' / 'study.db'}")
    space, ctx = load_space("residual"), Context(input_shape=(1, 8, 8), num_classes=10)
    fitted = []
    for t in study.get_trials(deepcopy=False):
        as_sampled = analysis.macs(space(optuna.trial.FixedTrial(t.params), ctx))
        assert t.user_attrs["fitted"] == (as_sampled > 60_000), t.number
        fitted.append(t.user_attrs["fitted"] and t.user_attrs["feasible"])
    assert any(fitted)
    assert result.shrunk_fraction == pytest.approx(
        sum(fitted) / sum(t.user_attrs["feasible"] for t in study.trials))


def test_the_cli_runs_a_time_budgeted_search_and_says_where_the_time_went(tmp_path):
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        # trials get 60 s less a third, less the report's 20 s: room for a trial on a busy CPU
        [sys.executable, "-m", "nasgraph", "search", TINY, "--time-budget", "60s", "--epochs",
         "2", "--pruner", "halving", "--screen", "8", "--final-seeds", "1", "--final-share",
         "0.34", "--runs-dir",
         str(tmp_path), "--study", "timed"], capture_output=True, text=True, cwd=root,
        timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr
    assert "trials for 1m00s in all" in run.stderr and "screening" in run.stderr
    assert "final retraining, seed 1/1" in run.stderr
    assert "over 1 retraining of" in run.stdout  # its epochs planned into the time left
    time_line = next(line for line in run.stdout.splitlines() if line.startswith("time"))
    assert "trials" in time_line and "report and final retraining" in time_line


@pytest.mark.parametrize(("args", "message"), [
    (["--time-budget", "soon"], "--time-budget 'soon': expected a duration"),
    (["--time-budget", "1m", "--final-epochs", "3"], "--final-epochs with --time-budget"),
    (["--pruner", "sometimes"], "--pruner 'sometimes': expected median, halving"),
    (["--screen", "-1"], "--screen"),
    (["--final-share", "1.5"], "--final-share 1.5: Input should be less than 1"),
])
def test_bad_cheap_evaluation_options_are_one_line(tmp_path, args, message):
    run = subprocess.run([sys.executable, "-m", "nasgraph", "search", TINY, *args,
                          "--runs-dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0, run.stderr
    assert message in run.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_an_architecture_trained_once_is_not_trained_again(tmp_path):
    """The tiny space has 16 architectures: 24 trials repeat some, and each repeat is pruned
    before training, naming the trial that trained it."""
    cfg = SearchConfig(space=TINY, trials=24, epochs=1, sampler="random", final_seeds=0,
                       runs_dir=str(tmp_path), device="cpu", study="twins")
    search(cfg)
    study = optuna.load_study(study_name="twins",
                              storage=f"sqlite:///{tmp_path / 'twins' / 'study.db'}")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    twins = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert twins and all(t.state == TrialState.PRUNED for t in twins)
    prints = [t.user_attrs["fingerprint"] for t in complete]
    assert len(prints) == len(set(prints))  # no architecture trained twice
    by_number = {t.number: t for t in trials}
    for t in twins:
        first = by_number[t.user_attrs["duplicate_of"]]
        assert first.user_attrs["fingerprint"] == t.user_attrs["fingerprint"]
        assert first.params != t.params or first.number < t.number
