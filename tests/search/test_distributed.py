"""Many workers on one PostgreSQL study, end to end against a real server: exact trial counts,
a worker killed mid-trial, the database stopped mid-search."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nasgraph.search.storage import with_driver
from tests.postgres import postgres  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[2]
SPACE = Path(__file__).with_name("tiny_space.py")  # trials of about a second
TRIALS = 24
DONE = (TrialState.COMPLETE, TrialState.PRUNED)

pytestmark = pytest.mark.slow


def _args(url: str, runs_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nasgraph.cli", "search", str(SPACE), "--budget", "20k",
            "--trials", str(TRIALS), "--epochs", "1", "--final-seeds", "0", "--study", "dist",
            "--storage", url, "--runs-dir", str(runs_dir), "--device", "cpu", *extra]


def _env(**settings: float) -> dict[str, str]:
    env = dict(os.environ, COLUMNS="200")
    env.update({f"NASGRAPH_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="dist", storage=with_driver(url)).trials


def _check_exact(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    done = [t for t in trials if t.state in DONE]
    assert len(done) == TRIALS, Counter(t.state.name for t in trials)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    return done


def test_three_workers_share_one_study(postgres, tmp_path):  # noqa: F811
    proc = _start(_args(postgres.url, tmp_path, "--workers", "3"), _env())
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    done = _check_exact(_trials(postgres.url))
    workers = Counter(t.user_attrs["worker"] for t in done)
    assert len(workers) == 3, workers  # every worker did some
    assert "best" in out and "(24 trials" in out
    # failed trials are excess ones only (started together at the end), never errors
    assert all(t.user_attrs.get("excess") for t in _trials(postgres.url)
               if t.state == TrialState.FAIL)
    show = subprocess.run([sys.executable, "-m", "nasgraph.cli", "study", "show", "dist",
                           "--storage", postgres.url, "--top", "30"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env=_env())
    assert show.returncode == 0, show.stderr
    assert sum(show.stdout.count(s) for s in ("complete", "pruned", "over budget")) == TRIALS


def _running_trial_of(url: str, worker: str, runs_dir: Path) -> int | None:
    try:
        trials = _trials(url)
    except KeyError:  # the study does not exist yet
        return None
    for t in trials:
        if (t.state == TrialState.RUNNING and t.user_attrs.get("worker") == worker
                and (runs_dir / "dist" / "trials" / f"{t.number:04d}" / "graph.json").is_file()):
            return t.number
    return None


def test_killed_worker_trial_is_failed_and_retried(postgres, tmp_path):  # noqa: F811
    env = _env(heartbeat_interval=1, grace_period=3)
    # three "machines": one runs folder each
    procs = [_start(_args(postgres.url, tmp_path / f"m{i}"), env) for i in range(3)]
    victim, worker = procs[0], f"{socket.gethostname()}:{procs[0].pid}"
    killed = None
    deadline = time.monotonic() + 300
    while killed is None:
        assert time.monotonic() < deadline and victim.poll() is None, "no trial to kill"
        number = _running_trial_of(postgres.url, worker, tmp_path / "m0")
        if number is None:
            time.sleep(0.05)
            continue
        victim.send_signal(signal.SIGSTOP)  # frozen: its trial cannot finish meanwhile
        if _trials(postgres.url)[number].state == TrialState.RUNNING:
            victim.kill()
            killed = number
        else:
            victim.send_signal(signal.SIGCONT)
    victim.communicate()
    for proc in procs[1:]:
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err
    trials = _trials(postgres.url)
    _check_exact(trials)
    assert trials[killed].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].params == trials[killed].params
    assert retries[0].state in DONE or retries[0].user_attrs.get("excess")
    assert retries[0].user_attrs["worker"] != worker
    # the machine that wrote the report rebuilt the graphs of trials others ran
    for runs in (tmp_path / "m1", tmp_path / "m2"):
        assert (runs / "dist" / "leaderboard.md").is_file()


def test_database_outage_is_survived(postgres, tmp_path):  # noqa: F811
    env = _env(heartbeat_interval=1, grace_period=30, storage_retry=90)
    proc = _start(_args(postgres.url, tmp_path, "--workers", "2"), env)
    deadline = time.monotonic() + 300
    while True:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        try:
            before = {t.number: t.state for t in _trials(postgres.url) if t.state in DONE}
        except KeyError:
            before = {}
        if len(before) >= 4:
            break
        time.sleep(0.2)
    postgres.stop()
    # meanwhile, a reader says so in one line, at once: a first connection is not retried
    show = subprocess.run([sys.executable, "-m", "nasgraph.cli", "study", "show", "dist",
                           "--storage", postgres.url], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=_env(storage_retry=90))
    assert show.returncode == 2
    assert show.stderr.count("\n") == 1 and show.stderr.startswith("error: ")
    assert f"storage {postgres.url}: cannot connect" in show.stderr
    time.sleep(5)
    postgres.start()
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    assert "connection lost" in err and "connection back" in err
    trials = _trials(postgres.url)
    _check_exact(trials)
    for number, state in before.items():  # no finished trial lost
        assert trials[number].state == state
