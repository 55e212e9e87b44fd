"""Ctrl-C in a search: the first one asks to stop at the next safe point, between epochs.

    >>> from nasgraph.search.interrupts import ctrl_c_at_stop_points, stop_point
    >>> with ctrl_c_at_stop_points():
    ...     stop_point()  # raises KeyboardInterrupt once Ctrl-C was pressed

An interrupt that lands inside a database write can leave an SQLite transaction open, and
the database locked for the rest of the process: the interrupted trial could not even be
recorded as failed. So the trial loop and the trainers call `stop_point()` where stopping is
safe, and only a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

_stop = threading.Event()


def stop_point() -> None:
    """Raise KeyboardInterrupt if Ctrl-C asked the search to stop: the trial loop calls
    this between trials, the trainers after each epoch."""
    if _stop.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_at_stop_points() -> Iterator[None]:
    """Within: the first Ctrl-C only asks to stop, at the next `stop_point()`; a second one
    interrupts at once, as usual. Outside the main thread, where Python delivers no
    signals, this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask_to_stop(signum: int, frame: Any) -> None:
        _stop.set()
        signal.signal(signal.SIGINT, previous)
        sys.stderr.write("stopping after this epoch (Ctrl-C again to stop now)\n")

    _stop.clear()
    previous = signal.signal(signal.SIGINT, ask_to_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _stop.clear()
