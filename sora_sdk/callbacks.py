"""Callback properties shared by connections and sinks, and the one place a callback's exception is handled."""
from __future__ import annotations

import logging

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


def invoke(owner, name: str, *args) -> None:
    """Call owner's callback `name` if set; an exception is logged and does not propagate."""
    callback = owner._callbacks.get(name)
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("exception raised in %s.%s (processing continues)", type(owner).__name__, name)
