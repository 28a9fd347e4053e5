"""Callback properties shared by connections and sinks, and the one place a callback's exception is handled."""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("sora_sdk")


class CallbackProperty:
    """A callback property: unset reads as None; setting None or a non-callable raises TypeError.

    Values live in the owner's `_callbacks` dict.
    """

    def __init__(self, name: str, doc: str = "") -> None:
        self.name = name
        self.__doc__ = doc

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return obj._callbacks.get(self.name)

    def __set__(self, obj, value) -> None:
        if value is None or not callable(value):
            raise TypeError("%s must be a callable, got %s" % (self.name, type(value).__name__))
        obj._callbacks[self.name] = value


_state = threading.local()  # depth: how many user callbacks this thread is inside


def in_callback() -> bool:
    """True on a thread that is running a user callback (of any connection, sink or transformer)."""
    return getattr(_state, "depth", 0) > 0


class _ErrorLog:
    """Logs a callback's exceptions: the first of each interval with its traceback, then one line per interval
    with how many more were raised (a per-frame callback that raises would otherwise print 30 tracebacks a second)."""

    INTERVAL = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen = {}  # (owner class, callback) -> [interval start, suppressed count, last message]

    def report(self, owner_name: str, name: str, exc: BaseException) -> None:
        key = (owner_name, name)
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.INTERVAL:
                entry[1] += 1
                entry[2] = "%s: %s" % (type(exc).__name__, exc)
                return
            suppressed = entry[1] if entry is not None else 0
            last = entry[2] if entry is not None else ""
            self._seen[key] = [now, 0, ""]
        if suppressed:
            log.error("exception raised in %s.%s %d more time(s) in the last %.0f s (last: %s)", key[0], name, suppressed,
                      self.INTERVAL, last)
        log.error("exception raised in %s.%s (processing continues)", key[0], name,
                  exc_info=(type(exc), exc, exc.__traceback__))


_errors = _ErrorLog()


def invoke(owner, name: str, *args) -> None:
    """Call owner's callback `name` if set; an exception is logged (rate-limited) and does not propagate."""
    invoke_in(owner._callbacks, type(owner).__name__, name, *args)


def invoke_in(callbacks: dict, owner_name: str, name: str, *args) -> None:
    """invoke() with the callbacks dict and the owner's class name given."""
    callback = callbacks.get(name)
    if callback is None:
        return
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        callback(*args)
    except Exception as exc:
        _errors.report(owner_name, name, exc)
    finally:
        _state.depth -= 1
