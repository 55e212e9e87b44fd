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

import importlib.util
import os
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from nasgraph.errors import NasgraphError
from nasgraph.search.retrying_storage import RetryingStorage, StorageUnavailable, first_line, redact

HEARTBEAT_INTERVAL = 2  # seconds between a running trial's heartbeats
GRACE_PERIOD = 8  # seconds without a heartbeat after which a running trial is dead


def heartbeat_settings() -> tuple[float, float]:
    """(interval, grace period) in seconds: the defaults above, or the environment's
    NASGRAPH_HEARTBEAT_INTERVAL and NASGRAPH_GRACE_PERIOD."""
    interval = float(os.environ.get("NASGRAPH_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL))
    grace = float(os.environ.get("NASGRAPH_GRACE_PERIOD", GRACE_PERIOD))
    if not 0 < interval < grace:
        raise NasgraphError(f"heartbeat interval {interval:g} s and grace period {grace:g} s: "
                            "expected 0 < interval < grace; hint: NASGRAPH_HEARTBEAT_INTERVAL, "
                            "NASGRAPH_GRACE_PERIOD")
    return interval, grace


def with_driver(url: str) -> str:
    """`postgresql://` with the PostgreSQL driver that is installed (psycopg 3, else
    psycopg2): SQLAlchemy's default for the bare scheme depends on its version."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    rest = url.partition("://")[2]
    for module, dialect in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{dialect}://{rest}"
    return url


def engine_options(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    # pre-ping: a pooled connection that died with a server restart is replaced, not used
    options: dict = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        options["connect_args"] = {"connect_timeout": 10}
    return options


def default_url(study_dir: str | Path) -> str:
    """The SQLite URL of a study folder."""
    return f"sqlite:///{Path(study_dir) / 'study.db'}"


def open_storage(url: str | None, study_dir: str | Path) -> RDBStorage:
    """The storage at `url` (an Optuna RDB URL), or the study folder's SQLite file."""
    if url is None:
        Path(study_dir).mkdir(parents=True, exist_ok=True)
        url = default_url(study_dir)
    url = with_driver(url)
    interval, grace = heartbeat_settings()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RetryingStorage(url, engine_kwargs=engine_options(url),
                                    heartbeat_interval=interval, grace_period=grace,
                                    heartbeat_stale_trial_callback=(
                                        RetryHeartbeatStaleTrialCallback(max_retry=1)))
    except StorageUnavailable:
        raise
    except sqlalchemy.exc.DatabaseError as e:  # a file that is not a database, say
        raise NasgraphError(f"storage {redact(url)}: not a readable study database "
                            f"({first_line(e)})") from None
    except (ImportError, optuna.exceptions.StorageInternalError, ValueError,
            sqlalchemy.exc.ArgumentError) as e:
        raise NasgraphError(f"--storage {redact(url)!r}: cannot open it ({first_line(e)}); "
                            "hint: an Optuna storage URL such as postgresql://user@host/db or "
                            "sqlite:///path/study.db") from None
