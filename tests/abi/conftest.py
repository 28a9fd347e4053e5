"""Shared machinery of the ABI conformance suite (tests/abi/).

The suite drives the shim through the raw cffi binding (`lib.*`). The only
piece of the Python package it relies on is `sora_sdk._ffi`: the loader
(which honours SORA_SDK_LIBRARY) and its EventRouter, because cffi API mode
can only call back into Python through the `extern "Python"` functions that
module defines.

Rules of this file:
  - every wait has a timeout (threading.Condition / Event), so a test stops
    by itself even when a build never delivers an event;
  - callbacks never raise: a broken expectation inside a callback is stored
    in `Recorder.errors` and asserted by the test on the main thread;
  - handles are released at teardown, through the context when possible.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sora_sdk._ffi import EventRouter, ffi, lib, library_path  # noqa: E402

HEADER = os.path.join(ROOT, "csrc", "include", "sora_c.h")

OK = lib.SORA_OK
INVALID_ARGUMENT = lib.SORA_ERR_INVALID_ARGUMENT
INVALID_STATE = lib.SORA_ERR_INVALID_STATE
ENGINE = lib.SORA_ERR_ENGINE
NOT_FOUND = lib.SORA_ERR_NOT_FOUND
UNSUPPORTED = lib.SORA_ERR_UNSUPPORTED

CODE_NAMES = {
    0: "SORA_OK",
    -1: "SORA_ERR_INVALID_ARGUMENT",
    -2: "SORA_ERR_INVALID_STATE",
    -3: "SORA_ERR_ENGINE",
    -4: "SORA_ERR_TIMEOUT",
    -5: "SORA_ERR_NOT_FOUND",
    -6: "SORA_ERR_UNSUPPORTED",
    -7: "SORA_ERR_NO_MEMORY",
}

# Generous for a loaded 2-core machine; each test stays well under 15 s.
CONNECT_TIMEOUT = 10.0
EVENT_TIMEOUT = 8.0

VP8_CAPS = b"application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"
OPUS_CAPS = (b"application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,"
             b"encoding-params=(string)2")

ICE_GATHERING_STATES = {"new", "gathering", "complete"}
ICE_CONNECTION_STATES = {"new", "checking", "connected", "completed", "failed", "disconnected", "closed"}
CONNECTION_STATES = {"new", "connecting", "connected", "disconnected", "failed", "closed"}


# ---- small helpers ---------------------------------------------------------

def last_error() -> str:
    """sora_c_last_error() of the calling thread, as text."""
    ptr = lib.sora_c_last_error()
    assert ptr != ffi.NULL, "sora_c_last_error() returned NULL"
    return ffi.string(ptr).decode("utf-8")


def code_name(rc: int) -> str:
    return CODE_NAMES.get(rc, str(rc))


def expect(rc: int, code: int, what: str = "") -> None:
    """Assert that a call returned `code`; failing codes must come with a message."""
    msg = last_error()
    assert rc == code, "%s returned %s, expected %s (last error %r)" % (
        what or "call", code_name(rc), code_name(code), msg)
    if code < 0:
        assert msg, "%s failed with %s but sora_c_last_error() is empty" % (what or "call", code_name(rc))


def ok(rc: int, what: str = "") -> None:
    expect(rc, OK, what)


def take(ptr) -> str:
    """Read a caller-owned string returned by the shim and release it with sora_c_free."""
    assert ptr != ffi.NULL, "the shim returned SORA_OK with a NULL string"
    try:
        return ffi.string(ptr).decode("utf-8")
    finally:
        lib.sora_c_free(ptr)


def wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def run_in_thread(fn, timeout: float = 20.0):
    """Run fn() on a fresh thread (fresh thread-local last error); return its result."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the call did not return within %.0f s" % timeout
    if "error" in box:
        raise box["error"]
    return box["result"]


def candidate_address(candidate: str) -> str:
    """The connection address of an ICE candidate line ("candidate:..." or "a=candidate:...")."""
    text = candidate[2:] if candidate.startswith("a=") else candidate
    parts = text.split()
    assert len(parts) >= 8 and parts[0].startswith("candidate:") and parts[6] == "typ", \
        "malformed ICE candidate %r" % candidate
    return parts[4]


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def sdp_media_kinds(sdp: str) -> list:
    return [line.split()[0][2:] for line in sdp.splitlines() if line.startswith("m=")]


def sdp_mids(sdp: str) -> list:
    return [line[len("a=mid:"):].strip() for line in sdp.splitlines() if line.startswith("a=mid:")]


# ---- callbacks ----------------------------------------------------------------

class _StickyRouter(EventRouter):
    """An EventRouter whose targets survive on_destroy.

    sora_sdk._ffi clears a router's targets after on_destroy; this suite wants
    to *see* a (forbidden) event or second on_destroy that arrives later, so
    the targets cannot be unset here.
    """

    @property
    def on_event(self):
        return self._sticky_on_event

    @on_event.setter
    def on_event(self, fn):
        if fn is not None:
            self._sticky_on_event = fn

    @property
    def on_destroy(self):
        return self._sticky_on_destroy

    @on_destroy.setter
    def on_destroy(self, fn):
        if fn is not None:
            self._sticky_on_destroy = fn


class Recorder:
    """The sora_callbacks of one handle: records every event and on_destroy.

    `ctx_ptr` (set once the context exists) lets each callback check
    sora_context_is_dispatcher_thread() where it runs; the context outlives
    every callback (its destroy joins the dispatcher), so the call is safe.
    `hook(event)` runs after recording, on the dispatcher thread.
    """

    def __init__(self, name: str = "", ctx_ptr=None, hook=None) -> None:
        self.name = name
        self.ctx_ptr = ctx_ptr
        self.hook = hook
        self.cond = threading.Condition()
        self.events = []          # sora_sdk._ffi.Event copies, in arrival order
        self.threads = set()      # thread idents the callbacks ran on
        self.not_dispatcher = []  # callbacks that ran where is_dispatcher_thread() was 0
        self.destroy_count = 0
        self.events_after_destroy = []
        self.errors = []          # exceptions raised by hooks
        self.router = _StickyRouter(self._on_event, self._on_destroy)
        self.callbacks = self.router.callbacks

    # dispatcher thread
    def _note_thread(self, what: str) -> None:
        self.threads.add(threading.get_ident())
        if self.ctx_ptr is not None and lib.sora_context_is_dispatcher_thread(self.ctx_ptr) != 1:
            self.not_dispatcher.append(what)

    def _on_event(self, event) -> None:
        try:
            self._note_thread("event %d" % event.type)
            with self.cond:
                if self.destroy_count:
                    self.events_after_destroy.append(event)
                self.events.append(event)
                self.cond.notify_all()
            if self.hook is not None:
                self.hook(event)
        except BaseException as exc:  # noqa: BLE001 - reported by check()
            self.errors.append(exc)

    def _on_destroy(self) -> None:
        try:
            self._note_thread("on_destroy")
            with self.cond:
                self.destroy_count += 1
                self.cond.notify_all()
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)

    # any thread
    def wait_for(self, predicate, timeout: float = EVENT_TIMEOUT) -> bool:
        """Wait until predicate(events) is true; returns False on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
            return True

    def wait_destroyed(self, timeout: float = EVENT_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.destroy_count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
            return True

    def of_type(self, event_type: int) -> list:
        with self.cond:
            return [e for e in self.events if e.type == event_type]

    def states(self, event_type: int) -> list:
        return [e.str0 for e in self.of_type(event_type)]

    def check(self) -> None:
        """Assert the rules every handle's callbacks must satisfy."""
        assert not self.errors, "%s: a callback hook raised %r" % (self.name, self.errors[0])
        assert not self.not_dispatcher, \
            "%s: callbacks ran off the dispatcher thread: %s" % (self.name, self.not_dispatcher[:5])
        assert self.destroy_count <= 1, "%s: on_destroy ran %d times" % (self.name, self.destroy_count)
        assert not self.events_after_destroy, \
            "%s: events after on_destroy: %r" % (self.name, self.events_after_destroy[:5])


# ---- handles ------------------------------------------------------------------

class Context:
    """A raw sora_context with a Recorder; destroy() is idempotent."""

    def __init__(self) -> None:
        self.rec = Recorder("context")
        out = ffi.new("sora_context **")
        ok(lib.sora_context_create(self.rec.callbacks, out), "sora_context_create")
        assert out[0] != ffi.NULL
        self.ptr = out[0]
        self.rec.ctx_ptr = self.ptr
        self.alive = True
        self.peers = []

    def destroy(self) -> None:
        if self.alive:
            self.alive = False
            ok(run_in_thread(lambda: lib.sora_context_destroy(self.ptr), timeout=30.0),
               "sora_context_destroy")

    def peer(self, name: str = "peer", loopback_only: bool = True) -> "Peer":
        p = Peer(self, name, loopback_only)
        self.peers.append(p)
        return p

    def dispatcher_ident(self, timeout: float = EVENT_TIMEOUT) -> int:
        """Thread ident of the dispatcher, learnt from a posted token."""
        token = 0x5EED0000 + len(self.rec.events)
        ok(lib.sora_context_post(self.ptr, token), "sora_context_post")
        assert self.rec.wait_for(lambda evs: any(e.type == lib.SORA_EVENT_POST and e.i0 == token for e in evs),
                                 timeout), "posted token never arrived"
        assert len(self.rec.threads) == 1, "context callbacks ran on several threads"
        return next(iter(self.rec.threads))


class Peer:
    """A raw sora_peer. ICE candidates it gathers are relayed to `remote` from the callback."""

    def __init__(self, ctx: Context, name: str, loopback_only: bool = True) -> None:
        self.ctx = ctx
        self.name = name
        self.remote = None
        self.relay_errors = []
        self.rec = Recorder(name, ctx.ptr, self._hook)
        self.cfg = ffi.new("sora_peer_config *")
        self.cfg.loopback_only = 1 if loopback_only else 0
        out = ffi.new("sora_peer **")
        ok(lib.sora_peer_create(ctx.ptr, self.cfg, self.rec.callbacks, out), "sora_peer_create")
        assert out[0] != ffi.NULL
        self.ptr = out[0]
        self.destroy_called = False

    def _hook(self, event) -> None:
        # Runs on the dispatcher thread, which is also the only thread that frees
        # a peer (after its on_destroy): checking destroy_count here is race-free.
        remote = self.remote
        if event.type == lib.SORA_EVENT_ICE_CANDIDATE and remote is not None and not remote.rec.destroy_count:
            rc = lib.sora_peer_add_ice_candidate(remote.ptr, int(event.i0), event.str0.encode())
            if rc not in (OK, INVALID_STATE):  # INVALID_STATE: the remote was closed meanwhile
                self.relay_errors.append((rc, last_error(), event.str0))

    # calls ---------------------------------------------------------------
    def add_transceiver(self, kind: bytes, direction: int, caps=None) -> int:
        return lib.sora_peer_add_transceiver(self.ptr, kind, direction, ffi.NULL if caps is None else caps)

    def create_offer(self) -> str:
        out = ffi.new("char **")
        ok(lib.sora_peer_create_offer(self.ptr, out), "%s: sora_peer_create_offer" % self.name)
        return take(out[0])

    def create_answer(self) -> str:
        out = ffi.new("char **")
        ok(lib.sora_peer_create_answer(self.ptr, out), "%s: sora_peer_create_answer" % self.name)
        return take(out[0])

    def local_description(self) -> str:
        out = ffi.new("char **")
        ok(lib.sora_peer_get_local_description(self.ptr, out), "%s: local description" % self.name)
        return take(out[0])

    def set_remote(self, sdp_type: str, sdp: str) -> None:
        ok(lib.sora_peer_set_remote_description(self.ptr, sdp_type.encode(), sdp.encode()),
           "%s: set remote %s" % (self.name, sdp_type))

    def create_data_channel(self, label: str) -> int:
        init = ffi.new("sora_data_channel_init *")
        init.ordered = 1
        init.max_packet_life_time = -1
        init.max_retransmits = -1
        init.id = -1
        out = ffi.new("int32_t *")
        ok(lib.sora_peer_create_data_channel(self.ptr, label.encode(), init, out), "create data channel")
        assert out[0] >= 0
        return out[0]

    def send(self, channel_id: int, data: bytes, binary: bool) -> int:
        buf = ffi.from_buffer("uint8_t[]", data) if data else ffi.NULL
        return lib.sora_peer_send_data(self.ptr, channel_id, buf, len(data), 1 if binary else 0)

    def stats(self) -> str:
        out = ffi.new("char **")
        ok(lib.sora_peer_get_stats(self.ptr, out), "%s: sora_peer_get_stats" % self.name)
        return take(out[0])

    def connected(self) -> bool:
        states = self.rec.states(lib.SORA_EVENT_CONNECTION_STATE)
        return bool(states) and states[-1] == "connected"

    def destroy(self) -> None:
        if not self.destroy_called and self.ctx.alive:
            self.destroy_called = True
            ok(lib.sora_peer_destroy(self.ptr), "%s: sora_peer_destroy" % self.name)


def codec_params(codec: bytes, payload_type: int, clock_rate: int, channels: int = 0):
    """A sora_codec_params plus the buffers it points to (keep the tuple alive)."""
    p = ffi.new("sora_codec_params *")
    name = ffi.new("char[]", codec)
    p.codec = name
    p.payload_type = payload_type
    p.clock_rate = clock_rate
    p.channels = channels
    return p, name


def negotiate(offerer: Peer, answerer: Peer, before_answer=None, timeout: float = CONNECT_TIMEOUT) -> tuple:
    """Offer/answer with trickled candidates; waits until both are "connected"."""
    offerer.remote, answerer.remote = answerer, offerer
    offer = offerer.create_offer()
    answerer.set_remote("offer", offer)
    if before_answer is not None:
        before_answer()
    answer = answerer.create_answer()
    offerer.set_remote("answer", answer)
    both = wait_until(lambda: offerer.connected() and answerer.connected(), timeout)
    assert not offerer.relay_errors and not answerer.relay_errors, \
        "relaying candidates failed: %r" % (offerer.relay_errors + answerer.relay_errors)
    assert both, "peers did not connect within %.0f s: %s %r / %s %r" % (
        timeout, offerer.name, offerer.rec.states(lib.SORA_EVENT_CONNECTION_STATE),
        answerer.name, answerer.rec.states(lib.SORA_EVENT_CONNECTION_STATE))
    return offer, answer


# ---- calls that may crash a non-conforming build: run them in a child ------------

_CHILD = r"""
import json, sys, threading
sys.path.insert(0, sys.argv[1])
from sora_sdk._ffi import EventRouter, ffi, lib
NULL = ffi.NULL
request = json.loads(sys.stdin.read())
ns = {"ffi": ffi, "lib": lib, "NULL": NULL, "EventRouter": EventRouter}
exec(request["prelude"], ns)
def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
for name, expr in request["calls"]:
    emit({"start": name})
    box = {}
    def run():
        try:
            rc = eval(expr, ns)
            box["rc"] = None if rc is None else int(rc)
            ptr = lib.sora_c_last_error()
            box["err"] = None if ptr == NULL else ffi.string(ptr).decode("utf-8", "replace")
        except Exception as exc:
            box["exc"] = repr(exc)
    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if t.is_alive():
        emit({"hung": name})
        sys.stdout.flush()
        import os
        os._exit(3)
    box["name"] = name
    emit(box)
exec(request["epilogue"], ns)
emit({"done": True})
"""


class Isolated:
    """Results of run_isolated(): `result(name)` gives {"rc", "err"} or fails the test."""

    def __init__(self, results: dict, crashed_at, returncode: int, stderr: str, done: bool) -> None:
        self.results = results
        self.crashed_at = crashed_at
        self.returncode = returncode
        self.stderr = stderr
        self.done = done

    def result(self, name: str) -> dict:
        if name not in self.results:
            if self.crashed_at == name:
                pytest.fail("%s crashed or hung the process (exit status %s); stderr tail:\n%s"
                            % (name, self.returncode, self.stderr[-2000:]))
            pytest.fail("%s was not reached: the child process died at %s (exit status %s); stderr tail:\n%s"
                        % (name, self.crashed_at or "its set-up", self.returncode, self.stderr[-2000:]))
        r = self.results[name]
        if "exc" in r:
            pytest.fail("%s raised in Python: %s" % (name, r["exc"]))
        return r


def run_isolated(calls, prelude: str = "", epilogue: str = "", timeout: float = 120.0) -> Isolated:
    """Evaluate each (name, python expression) in a child interpreter, each on a fresh thread.

    A crash (e.g. a NULL dereference in a non-conforming build) then fails the
    tests of that call and of the calls after it, instead of killing pytest.
    The expressions see `lib`, `ffi`, `NULL` and whatever `prelude` defines.
    """
    request = json.dumps({"prelude": prelude, "epilogue": epilogue, "calls": list(calls)})
    proc = subprocess.run([sys.executable, "-c", _CHILD, ROOT], input=request.encode(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, cwd=ROOT)
    results, started, done = {}, None, False
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if "start" in obj:
            started = obj["start"]
        elif "name" in obj:
            results[obj["name"]] = obj
            started = None
        elif obj.get("done"):
            done = True
    return Isolated(results, started, proc.returncode, proc.stderr.decode("utf-8", "replace"), done)


# ---- fixtures -------------------------------------------------------------------

@pytest.fixture
def ctx():
    """A fresh context; destroyed (with everything in it) at teardown, then checked."""
    c = Context()
    try:
        yield c
    finally:
        for p in c.peers:
            p.remote = None
        c.destroy()
        for p in c.peers:
            assert p.rec.destroy_count == 1, "%s: on_destroy ran %d times" % (p.name, p.rec.destroy_count)
            p.rec.check()
        assert c.rec.destroy_count == 1, "context on_destroy ran %d times" % c.rec.destroy_count
        c.rec.check()


@pytest.fixture
def peer(ctx):
    return ctx.peer("peer")


def pytest_report_header(config):
    try:
        version = lib.sora_c_abi_version()
        engine = ffi.string(lib.sora_c_engine_version()).decode("utf-8", "replace")
        return "sora_c shim: %s (ABI %d.%d, %s)" % (library_path(), version >> 16, version & 0xFFFF, engine)
    except Exception as exc:  # noqa: BLE001 - only a report line
        return "sora_c shim: %s (%s)" % (library_path(), exc)

