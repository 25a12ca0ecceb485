"""A re-entrant lock held by a module (observers, quantizers) to serialize
recording from several threads. A deepcopy or pickle of the module gets a fresh
lock instead of failing on (or sharing) the original."""

from __future__ import annotations

import threading


class ThreadLock:
    """Holds a ``threading.RLock`` in ``.lock``; copied and pickled as a new one."""

    def __init__(self) -> None:
        self.lock = threading.RLock()

    def __deepcopy__(self, memo) -> "ThreadLock":
        return ThreadLock()

    def __reduce__(self):
        return (ThreadLock, ())


def module_lock(module: object) -> threading.RLock:
    """The lock in ``module._lock``, created first for a module unpickled from a
    version that had none."""
    lock = module.__dict__.get("_lock")
    if lock is None:
        lock = module.__dict__["_lock"] = ThreadLock()
    return lock.lock
