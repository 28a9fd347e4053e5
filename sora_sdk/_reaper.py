"""Work that finalizers hand off: a dropped SoraConnection or Sora is ended here, never inside __del__.

A finalizer runs wherever the last reference goes or the garbage collector runs, possibly while that thread
holds one of the SDK's locks, so it only queues (queue.SimpleQueue.put is safe there) and one daemon thread
does the work, in order.
"""
from __future__ import annotations

import logging
import queue
import sys
import threading

log = logging.getLogger("sora_sdk")

_work: "queue.SimpleQueue" = queue.SimpleQueue()
_started = False
_start_lock = threading.Lock()


def _main() -> None:
    while True:
        fn = _work.get()
        try:
            fn()
        except Exception:
            log.exception("error while releasing a dropped Sora object")
        del fn


def later(fn) -> None:
    """Run `fn()` on the reaper thread (started on first use)."""
    global _started
    if sys.is_finalizing():
        return  # the interpreter is going away: its exit handler has closed every Sora already
    _work.put(fn)
    if not _started:
        # Not under _start_lock if a finalizer interrupted this very thread holding it: one more try later.
        if _start_lock.acquire(blocking=False):
            try:
                if not _started:
                    try:
                        threading.Thread(target=_main, name="sora-reaper", daemon=True).start()
                    except RuntimeError:
                        return  # the interpreter is shutting down: the exit handler closes what is left
                    _started = True
            finally:
                _start_lock.release()
