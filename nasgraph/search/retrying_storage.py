"""A study database that survives a lost connection: every storage call that fails because
the server is unreachable is retried with exponential backoff, for a bounded time.

    >>> from nasgraph.search.retrying_storage import RetryingStorage
    >>> storage = RetryingStorage("postgresql://user@host/db")  # doctest: +SKIP

A database restart, a network blip or a failover then costs the workers a pause, not their
trials. When the server stays away longer than the retry time (`NASGRAPH_STORAGE_RETRY`
seconds, default 120), the call raises `StorageUnavailable`, one line naming the server; every
trial already finished is in the database, and re-running the command resumes. The first
connection is not retried: a server that never answered is more likely a wrong URL, and
saying so at once beats two minutes of silence.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState

from nasgraph.errors import NasgraphError

RETRY_SECONDS = 120.0  # how long a call waits for the database before giving up
MAX_BACKOFF = 4.0


class StorageUnavailable(NasgraphError):
    """The study database could not be reached within the retry time."""


def retry_seconds() -> float:
    return float(os.environ.get("NASGRAPH_STORAGE_RETRY", RETRY_SECONDS))


def redact(url: str) -> str:
    """The URL as a user writes it, without its password: `postgresql://user:***@host/db`."""
    url = re.sub(r"^(\w+)\+\w+://", r"\1://", url)  # the driver nasgraph chose
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def connection_lost(error: BaseException) -> bool:
    """Whether `error` (or an error it wraps) says the database could not be reached, as
    opposed to a bad query or bad data, which retrying cannot fix."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__ or e.__context__
    return False


def first_line(error: BaseException) -> str:
    e: BaseException = error
    while e.__cause__ is not None and isinstance(e, optuna.exceptions.StorageInternalError):
        e = e.__cause__
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


class RetryingStorage(RDBStorage):
    """An Optuna `RDBStorage` whose calls are retried while the database is unreachable.

    Only the outermost call retries (storage methods call one another), so the time bound
    holds per call. After one call has given up, the others fail at once: the worker is
    stopping, and each further wait would only delay the one line that says why.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._shown_url = redact(url)
        self._local = threading.local()
        self._gave_up: StorageUnavailable | None = None
        self._outage_since: float | None = None
        self._lock = threading.Lock()
        try:  # not retried: a server that never answered is more likely a wrong URL
            super().__init__(url, **kwargs)
        except Exception as e:
            if not connection_lost(e):
                raise
            raise StorageUnavailable(f"storage {self._shown_url}: cannot connect "
                                     f"({first_line(e)}); hint: check the URL and that the "
                                     "server runs") from None

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["_local"], state["_lock"]
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        super().__setstate__(state)

    def _retrying(self, call: Callable, name: str) -> Callable:
        @functools.wraps(call)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._local, "depth", 0)
            if depth:
                return call(*args, **kwargs)
            self._local.depth = 1
            try:
                return self._with_retries(call, name, args, kwargs)
            finally:
                self._local.depth = 0
        return wrapper

    def _with_retries(self, call: Callable, name: str, args: tuple, kwargs: dict) -> Any:
        limit = retry_seconds()
        start = time.monotonic()
        delay = 0.25
        attempt = 0
        while True:
            if self._gave_up is not None:
                raise self._gave_up
            try:
                result = call(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retried write whose first attempt did commit (the reply was lost)
                if attempt and name == "set_trial_state_values":
                    trial = RDBStorage.get_trial(self, args[0])
                    if trial.state == args[1] or (args[1] == TrialState.RUNNING
                                                  and trial.state.is_finished()):
                        return True
                raise
            except Exception as e:
                if not connection_lost(e):
                    raise
                waited = time.monotonic() - start
                if waited >= limit:
                    self._give_up(e, waited)
                    raise self._gave_up from None  # type: ignore[misc]
                self._note_outage(e)
                time.sleep(min(delay, max(0.0, limit - waited)) * random.uniform(0.8, 1.2))
                delay = min(2 * delay, MAX_BACKOFF)
                attempt += 1
                continue
            self._note_recovery()
            return result

    def _note_outage(self, e: BaseException) -> None:
        with self._lock:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                sys.stderr.write(f"storage {self._shown_url}: connection lost ({first_line(e)})"
                                 f"; retrying for up to {retry_seconds():g} s\n")

    def _note_recovery(self) -> None:
        if self._outage_since is None:
            return
        with self._lock:
            if self._outage_since is not None:
                sys.stderr.write(f"storage {self._shown_url}: connection back after "
                                 f"{time.monotonic() - self._outage_since:.1f} s\n")
                self._outage_since = None

    def _give_up(self, e: BaseException, waited: float) -> None:
        with self._lock:
            if self._gave_up is None:
                self._gave_up = StorageUnavailable(
                    f"storage {self._shown_url}: unreachable for {waited:.0f} s "
                    f"({first_line(e)}); finished trials are kept in the database; hint: "
                    "start the server (or fix the URL), then re-run the same command to resume")

    def record_heartbeat(self, trial_id: int) -> None:
        # Runs in the heartbeat thread: giving up there must not print a thread traceback;
        # the worker's own next call reports the outage.
        with contextlib.suppress(StorageUnavailable):
            self._retrying(super().record_heartbeat, "record_heartbeat")(trial_id)


_CALLS = [
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "get_all_trials", "get_best_trial", "get_n_trials", "_get_stale_trial_ids",
    # what Optuna's cache in front of every RDB storage calls directly
    "_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param",
]


def _set_trial_state_values(storage: RDBStorage, trial_id: int, state: TrialState,
                            values: Any = None) -> bool:
    """`RDBStorage.set_trial_state_values`, except that on SQLite a worker takes a queued
    trial (WAITING -> RUNNING) with one conditional UPDATE, and gets False when another
    worker took it first. Optuna reads the state, then writes it, and locks the row with
    SELECT ... FOR UPDATE, which SQLite ignores: two workers could both take the same queued
    trial (optuna/optuna#4002), and the one that reported second died on "Cannot tell a
    COMPLETE trial", leaving the search one worker short."""
    if state != TrialState.RUNNING or values is not None or \
            storage.engine.dialect.name != "sqlite":
        return RDBStorage.set_trial_state_values(storage, trial_id, state, values)
    trials = models.TrialModel
    with _create_scoped_session(storage.scoped_session) as session:
        taken = session.execute(
            sqlalchemy.update(trials)
            .where(trials.trial_id == trial_id, trials.state == TrialState.WAITING)
            .values(state=TrialState.RUNNING, datetime_start=datetime.now())
            .execution_options(synchronize_session=False))
    return taken.rowcount == 1


_OWN = {"set_trial_state_values": _set_trial_state_values}


def _retried_method(name: str) -> Callable:
    plain = _OWN.get(name, getattr(RDBStorage, name))

    @functools.wraps(plain)
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(functools.partial(plain, self), name)(*args, **kwargs)
    return method


for _name in _CALLS:
    setattr(RetryingStorage, _name, _retried_method(_name))
