"""The engine context: one shim context and its dispatcher thread.

Everything that calls user code runs on the dispatcher thread: engine events
(ICE, data channels, tracks) and work posted from other Python threads (the
WebSocket readers) with `post()`. That keeps all callbacks of one `Sora`
serialised, as in the official SDK, and never on a GStreamer thread.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from contextlib import contextmanager

from ._ffi import EventRouter, check, ffi, lib

log = logging.getLogger("sora_sdk")

CLOSE_WAIT = 5.0  # seconds close() waits for shim calls still running on other threads before it defers the destroy


class Context:
    def __init__(self) -> None:
        self._posted = collections.deque()
        self._router = EventRouter(self._on_event)
        out = ffi.new("sora_context **")
        check(lib.sora_context_create(self._router.callbacks, out), "engine context")
        self._ptr = out[0]
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when the last user leaves
        self._users = 0
        self._depth = threading.local()  # this thread's nesting of use()
        self._closed = False
        self._destroy_deferred = False  # close() left the destroy to the last call still using the context
        self._dispatcher_ident = None  # threading.get_ident() of the dispatcher thread, known from its first event
        self.post(lambda: None)

    @property
    def ptr(self):
        if self._closed:
            from .errors import SoraInvalidState

            raise SoraInvalidState("the Sora instance is closed")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._closed

    @contextmanager
    def use(self):
        """Keep the engine context alive while a shim call uses one of its handles.

        close() waits for every such call to end before the shim frees anything, so a
        call that passed the "closed?" check can never touch freed memory (PyPy runs
        finalizers on any thread, so a sink may be closed just as the Sora is closed).
        """
        if not self._enter():
            from .errors import SoraInvalidState

            raise SoraInvalidState("the Sora instance is closed")
        try:
            yield self._ptr
        finally:
            self._leave()

    def call(self, fn, *args, closed=None):
        """`fn(*args)` (a shim call on one of this context's handles) inside use(); `closed` without calling
        it once the context is closed (it has then freed every handle)."""
        if not self._enter():
            return closed
        try:
            return fn(*args)
        finally:
            self._leave()

    def _enter(self) -> bool:
        if not self._acquire():
            return False
        self._depth.n = getattr(self._depth, "n", 0) + 1
        return True

    def _leave(self) -> None:
        self._depth.n -= 1
        self._release()

    def _acquire(self) -> bool:
        """_enter() for a shim call that never calls back into Python (so close() cannot be called on this thread
        while it runs, and its nesting need not be counted): on_captured()'s hot path."""
        with self._lock:
            if self._closed:
                return False
            self._users += 1
        return True

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users:
                return
            self._idle.notify_all()
            destroy, self._destroy_deferred = self._destroy_deferred, False
        if destroy:
            self._destroy()

    def post(self, fn) -> bool:
        """Run `fn()` on the dispatcher thread, after everything already queued."""
        with self._lock:
            if self._closed:
                return False
            self._posted.append(fn)
            rc = lib.sora_context_post(self._ptr, 0)
        if rc < 0:
            return False
        return True

    def on_dispatcher_thread(self) -> bool:
        return self._dispatcher_ident == threading.get_ident()

    def _on_event(self, event) -> None:
        self._dispatcher_ident = threading.get_ident()
        fn = self._posted.popleft()
        try:
            fn()
        except Exception:
            log.exception("error in work posted to the dispatcher thread")

    def close(self, wait: float = CLOSE_WAIT) -> None:
        """Destroy every peer and source of this context and stop its thread (idempotent, any thread).

        From now on no shim call starts (use() raises, call() returns its `closed` value). Calls already running
        on other threads get up to `wait` seconds to end; if some are still running then (a callback that
        blocks, a call that waits on one), the last of them to leave destroys the context, never earlier.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            own = getattr(self._depth, "n", 0)  # calls of this very thread cannot end while it waits here
            deadline = time.monotonic() + wait
            while self._users > own:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._idle.wait(left)
            if self._users:
                log.debug("engine context closed while %d call(s) still use it: the last one destroys it",
                          self._users)
                self._destroy_deferred = True
                return
        self._destroy()

    def _destroy(self) -> None:
        ptr = self._ptr
        if self.on_dispatcher_thread():
            # The dispatcher cannot join itself: finish from a helper thread.
            threading.Thread(target=lib.sora_context_destroy, args=(ptr,), name="sora-context-close",
                             daemon=True).start()
        else:
            check(lib.sora_context_destroy(ptr), "engine context")
