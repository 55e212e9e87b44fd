"""Where a study lives: one function opens any Optuna storage URL, with heartbeats.

    >>> from nasgraph.search.storage import open_storage
    >>> storage = open_storage(None, "runs/demo")  # doctest: +SKIP

By default a study is a SQLite file, `runs/<study>/study.db`. Any Optuna RDB URL
(`postgresql://user@host/db`, `mysql://...`) works the same way, so many workers on many
machines can share one study. Running trials send a heartbeat; a trial whose worker died
(SIGKILL, a lost machine) is marked failed once its heartbeat is older than the grace
period, and its parameters are queued again, so a resumed search re-runs it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from nasgraph.errors import NasgraphError

HEARTBEAT_INTERVAL = 2  # seconds between a running trial's heartbeats
GRACE_PERIOD = 8  # seconds without a heartbeat after which a running trial is dead


def default_url(study_dir: str | Path) -> str:
    """The SQLite URL of a study folder."""
    return f"sqlite:///{Path(study_dir) / 'study.db'}"


def open_storage(url: str | None, study_dir: str | Path) -> RDBStorage:
    """The storage at `url` (an Optuna RDB URL), or the study folder's SQLite file."""
    if url is None:
        Path(study_dir).mkdir(parents=True, exist_ok=True)
        url = default_url(study_dir)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=engine_kwargs,
                          heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                              max_retry=1))
    except (ImportError, optuna.exceptions.StorageInternalError, ValueError) as e:
        raise NasgraphError(f"--storage {url!r}: cannot open it ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
