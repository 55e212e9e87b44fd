"""Workers sharing a SQLite study never take the same queued trial, and a worker whose running
trial another worker failed as stale goes on."""

from __future__ import annotations

from datetime import datetime, timedelta

import optuna
import pytest
import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import TrialState

from nasgraph.search.storage import open_storage
from nasgraph.search.workers import run_trials


def test_a_queued_trial_is_taken_once_when_two_workers_race_for_it(tmp_path):
    a, b = open_storage(None, tmp_path), open_storage(None, tmp_path)  # two workers' engines
    study = optuna.create_study(study_name="race", storage=a)
    study.enqueue_trial({"x": 1.0})
    trial_id = study.get_trials()[0]._trial_id
    taken_by_a: list[bool] = []

    @sqlalchemy.event.listens_for(b.engine, "before_cursor_execute")
    def a_takes_it_first(conn, cursor, statement, *args):
        # the moment b writes the trial's state, after any read of it, a takes the trial
        if statement.lstrip().upper().startswith("UPDATE TRIALS") and not taken_by_a:
            taken_by_a.append(a.set_trial_state_values(trial_id, TrialState.RUNNING))

    assert b.set_trial_state_values(trial_id, TrialState.RUNNING) is False
    assert taken_by_a == [True]
    assert study.get_trials()[0].state == TrialState.RUNNING


def test_several_workers_popping_a_queue_take_each_trial_once(tmp_path):
    storages = [open_storage(None, tmp_path) for _ in range(4)]
    study = optuna.create_study(study_name="queue", storage=storages[0])
    for x in range(12):
        study.enqueue_trial({"x": float(x)})
    queued = [t._trial_id for t in study.get_trials()]
    taken = {}
    for round_ in range(3):  # the workers in turns, each taking one trial a turn
        for worker, storage in enumerate(storages):
            mine = optuna.load_study(study_name="queue", storage=storage)._pop_waiting_trial_id()
            taken[(round_, worker)] = mine
    assert sorted(taken.values()) == queued
    # and none left
    assert optuna.load_study(study_name="queue", storage=storages[1])._pop_waiting_trial_id() \
        is None


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_worker_goes_on_when_another_fails_its_running_trial_as_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("NASGRAPH_HEARTBEAT_INTERVAL", "60")  # one heartbeat, as the trial starts
    monkeypatch.setenv("NASGRAPH_GRACE_PERIOD", "120")
    study = optuna.create_study(study_name="stale", storage=open_storage(None, tmp_path))
    other_storage = open_storage(None, tmp_path)  # another worker's
    other = optuna.load_study(study_name="stale", storage=other_storage)
    heartbeats = models.TrialHeartbeatModel.__table__

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 0:  # while it runs, its heartbeat looks an hour old to the other
            with other_storage.engine.begin() as db:
                db.execute(heartbeats.update().values(
                    heartbeat=datetime.now() - timedelta(hours=1)))
            optuna.storages.fail_stale_trials(other)
        return x

    lines: list[str] = []
    assert run_trials(study, objective, 3, log=lines.append) == 3
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    retry = trials[1]  # the other worker's callback queued it, so it ran next
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == trials[0].params
    assert lines == ["trial 0 was failed as stale by another worker while it ran (no heartbeat "
                     "within the grace period; hint: NASGRAPH_GRACE_PERIOD); its retry runs it "
                     "again"]
