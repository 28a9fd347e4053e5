"""Fuzz: 100,000 malformed/adversarial server inputs against the SDK's signaling handling, zero crashes.

Parts (counts scale with RELIABILITY_FUZZ_SCALE, default 1):

* pure parsers, in process (mutation fuzzer, rel_mutate.py): every server message
  goes through what the SDK computes from it before the engine is involved
  (UTF-8/JSON/type checks, offer validation, ICE servers, SDP parsing, mids,
  SSRC table, data-channel list, simulcast planning, redirect URL parsing);
* the same parsers with hypothesis-generated JSON;
* the WebSocket client's frame parser (raw frames over a socketpair) and its
  HTTP upgrade-response check;
* the message handlers of real connected connections (real peer, ICE up): messages
  are posted to the Sora dispatcher exactly as the WebSocket reader / the data
  channel events do (``_on_ws_message`` / ``_on_dc_message``);
* real sockets: a scripted WebSocket server sends mutated offers and messages to
  real connections; after each message a ping must be answered (the message was
  handled) or the connection must end with exactly one on_disconnect.

A crash is: an exception escaping SDK code (a parser raising something other
than its documented error, the dispatcher logging "error in work posted ...",
a thread dying), a connection that neither answers nor ends within a bound, or
more or less than one on_disconnect. Crashes are collected (not raised at the
first one) and reported with their smallest input; the test fails if any.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import threading
import time
import zlib
from typing import Any, Dict, List, Optional, Tuple

import pytest

import sora_sdk
from sora_sdk import SoraSignalingErrorCode as Code
from sora_sdk import connection as connection_mod
from sora_sdk import sdp as sdp_mod
from sora_sdk import websocket as wsm
from sora_sdk.datachannels import DataChannels
from sora_sdk.enums import SoraSignalingDirection
from sora_sdk.errors import SoraError
from sora_sdk.peer import plan_simulcast

from rel_mutate import SDP_LINES, TYPES, Mutator
from scripted_server import Recorder, ScriptAborted, ScriptedServer, expect, answer, notify_created, offer

SCALE = float(os.environ.get("RELIABILITY_FUZZ_SCALE", "1"))
SEED = int(os.environ.get("RELIABILITY_FUZZ_SEED", "5"))
PYPY = platform.python_implementation() == "PyPy"


def count(n: int) -> int:
    return max(1, int(n * SCALE))


N_PURE = count(84_000)
N_HYPOTHESIS = count(1_000)  # hypothesis generates ~10-30 ms per example here: a small share
N_FRAMES = count(7_000)
N_HTTP = count(2_000)
N_HANDLER = count(4_000)
N_SOCKET = count(2_000)

# A handled message is answered in milliseconds; a hang is for ever. The bound only has to separate the two on a
# busy 2-core machine (webrtcbin may take a while for a mutated offer with many m-lines).
HANG_BOUND = 10.0

pytestmark = pytest.mark.timeout(900)


# --------------------------------------------------------------------------- crash book-keeping
class Crashes:
    def __init__(self) -> None:
        self.by_signature: Dict[Tuple[str, str], List[Any]] = {}
        self.lock = threading.Lock()

    def add(self, part: str, signature: str, example: Any) -> None:
        """`example`: the input (bytes) or a description (str); the shortest one is kept."""
        key = (part, signature)
        with self.lock:
            entry = self.by_signature.setdefault(key, [0, example])
            entry[0] += 1
            if len(example) < len(entry[1]):
                entry[1] = example

    def add_exception(self, part: str, exc: BaseException, example: Any) -> None:
        self.add(part, exception_signature(exc), example)

    def total(self) -> int:
        return sum(v[0] for v in self.by_signature.values())

    def lines(self) -> List[str]:
        out = []
        for (part, signature), (n, example) in sorted(self.by_signature.items()):
            text = example if isinstance(example, str) else repr(example)
            out.append("[%s] x%d %s\n    smallest input: %s" % (part, n, signature, text[:600]))
        return out


def exception_signature(exc: BaseException) -> str:
    """'Type at file:line: message', naming the innermost frame and, if that is not SDK code, the innermost SDK frame."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    where = "?"
    if frames:
        where = "%s:%d" % (os.path.basename(frames[-1][0]), frames[-1][1])
        sdk = [f for f in frames if os.sep + "sora_sdk" + os.sep in f[0]]
        if sdk and sdk[-1] != frames[-1]:
            where += " (from %s:%d)" % (os.path.basename(sdk[-1][0]), sdk[-1][1])
    return "%s at %s: %s" % (type(exc).__name__, where, str(exc)[:120])


def minimize(payload: bytes, signature: str, run) -> bytes:
    """Greedy reduction of a crashing message (drop JSON keys, SDP lines, shorten strings) keeping its signature."""
    def same(candidate: Any) -> bool:
        data = candidate if isinstance(candidate, bytes) else json.dumps(candidate).encode("utf-8", "surrogatepass")
        try:
            run(data)
        except Exception as exc:  # noqa: BLE001
            return exception_signature(exc) == signature
        return False

    try:
        tree = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return payload
    if not isinstance(tree, dict) or not same(tree):
        return payload
    for key in [k for k in tree if k != "type"]:
        trial = dict(tree)
        del trial[key]
        if same(trial):
            tree = trial
    if isinstance(tree.get("sdp"), str):
        for _ in range(3):
            lines = tree["sdp"].replace("\r\n", "\n").replace("\r", "\n").split("\n")
            changed = False
            i = 0
            while i < len(lines):
                trial = dict(tree, sdp="\r\n".join(lines[:i] + lines[i + 1:]) + "\r\n")
                if same(trial):
                    lines = lines[:i] + lines[i + 1:]
                    tree = trial
                    changed = True
                else:
                    i += 1
            if not changed:
                break
    for key, value in list(tree.items()):
        if key not in ("type", "sdp") and isinstance(value, (dict, list)):
            for sub in list(value) if isinstance(value, dict) else []:
                trial = dict(tree, **{key: {k: v for k, v in value.items() if k != sub}})
                if same(trial):
                    tree = trial
                    value = tree[key]
    return json.dumps(tree, ensure_ascii=False).encode("utf-8", "surrogatepass")


def shrink(crashes: "Crashes", part: str) -> None:
    for (where, signature), entry in list(crashes.by_signature.items()):
        if where == part and isinstance(entry[1], bytes):
            entry[1] = minimize(entry[1], signature, parse_like_sdk)


@pytest.fixture(scope="module")
def crashes(report):
    book = Crashes()
    yield book
    report.add("fuzz", "crash signatures", len(book.by_signature))
    for line in book.lines():
        report.note("fuzz", "CRASH " + line.replace("\n    ", " — "))


@pytest.fixture(scope="module")
def fuzz_counts(report):
    counts: Dict[str, Any] = {}
    yield counts
    total = sum(v for k, v in counts.items() if k.endswith("inputs"))
    report.add("fuzz", "inputs in all (target 100,000)", "{:,}".format(total))
    for key, value in counts.items():
        report.add("fuzz", key, value)


# --------------------------------------------------------------------------- seed corpus
def _synthetic_seeds(sdp: str) -> List[str]:
    seeds = [
        {"type": "ping"}, {"type": "ping", "stats": True},
        {"type": "push", "data": {"hello": "world"}},
        {"type": "notify", "event_type": "connection.created", "connection_id": "C" * 26, "role": "sendonly",
         "channel_connections": 2, "data": [{"connection_id": "C" * 26, "role": "sendonly"}]},
        {"type": "notify", "event_type": "spotlight.changed", "spotlight_id": "x", "fixed": False},
        {"type": "switched", "ignore_disconnect_websocket": False},
        {"type": "switched", "ignore_disconnect_websocket": True},
        {"type": "redirect", "location": "ws://127.0.0.1:1/signaling"},
        {"type": "re-offer", "sdp": sdp}, {"type": "update", "sdp": sdp},
        {"type": "close", "code": 1000, "reason": "NO-ERROR"}, {"type": "req-stats"},
        {"jsonrpc": "2.0", "id": 1, "result": {"ok": True}},
        {"type": "offer", "sdp": sdp, "connection_id": "C" * 26, "config": {"iceServers": [
            {"urls": ["stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"], "username": "u",
             "credential": "p"}]}, "simulcast": True, "mid": {"video": "video0", "audio": "audio1"},
         "encodings": [{"rid": "r0", "active": True, "scaleResolutionDownBy": 4.0, "maxBitrate": 100000},
                       {"rid": "r1", "active": True, "scaleResolutionDownBy": 2.0, "maxFramerate": 15},
                       {"rid": "r2", "active": False, "scaleResolutionDownTo": {"maxWidth": 640, "maxHeight": 480},
                        "scalabilityMode": "L1T3"}],
         "data_channels": [{"label": "signaling", "compress": True}, {"label": "#chat", "compress": False}]},
    ]
    return [json.dumps(s, separators=(",", ":")) for s in seeds]


@pytest.fixture(scope="module")
def corpus(report):
    """Real messages of the local Sora server (offers, re-offers, notify, ping, switched, push) + synthetic ones."""
    from sora_sdk.testing import LocalSora

    texts: List[str] = []
    lock = threading.Lock()

    def keep(text: str) -> None:
        with lock:
            if text not in texts:
                texts.append(text)

    with LocalSora(ping_interval=0.2, ping_stats=True) as server:
        sora = sora_sdk.Sora()
        try:
            video = sora.create_video_source()
            audio = sora.create_audio_source(1, 48000)
            made = []

            def start(**kwargs: Any) -> None:
                conn = sora.create_connection(signaling_urls=[server.signaling_url], **kwargs)
                conn.on_signaling_message = lambda kind, direction, text: (
                    keep(text) if direction == SoraSignalingDirection.RECEIVED else None)
                conn.on_notify = keep
                conn.on_push = keep
                conn.on_switched = keep
                conn.connect()
                made.append(conn)

            start(role="sendonly", channel_id="seed", video_source=video, audio_source=audio, simulcast=True,
                  video_codec_type="VP8")
            start(role="recvonly", channel_id="seed", spotlight=False)
            start(role="sendrecv", channel_id="seed-dc", audio=False, video=False, data_channel_signaling=True,
                  data_channels=[{"label": "#chat", "direction": "sendrecv", "compress": True}])
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                with lock:
                    kinds = {json.loads(t).get("type") for t in texts}
                if {"offer", "re-offer", "notify", "ping", "switched"} <= kinds:
                    break
                time.sleep(0.05)
            server.push("seed", {"pushed": [1, 2, 3]})
            time.sleep(0.3)
            for conn in made:
                conn.disconnect()
        finally:
            sora.close()
    offers = [t for t in texts if json.loads(t).get("type") == "offer"]
    assert offers, texts
    seeds = texts + _synthetic_seeds(json.loads(offers[0])["sdp"])
    report.add("fuzz", "seed messages (real server messages + synthetic)", "%d + %d" % (len(texts),
                                                                                      len(seeds) - len(texts)))
    return seeds


# --------------------------------------------------------------------------- pure parsers
def parse_like_sdk(payload: bytes) -> str:
    """What the SDK computes from one server message before the engine is involved; returns an outcome.

    Mirrors SoraConnection._on_ws_message / _handle_offer / _handle_reoffer / _handle_redirect /
    _on_dc_message but only calls the SDK's own parsing functions. Must never raise.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "not-utf8"
    try:
        message = json.loads(text)
    except RecursionError:
        return "too-deep"
    except ValueError:
        return "not-json"
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "no-type"
    kind = message["type"]
    if kind == "offer":
        problem = connection_mod._invalid_offer(message)
        if problem is not None:
            return "invalid-offer"
        connection_mod._ice_servers(message["config"])
        sections = sdp_mod.parse(message["sdp"])
        for section in sections:
            section.media_codecs()
            _ = section.stream_id, section.track_id, section.extmaps, section.rids
        sdp_mod.mids(message["sdp"])
        sdp_mod.ssrc_table(message["sdp"], message["sdp"])
        channels = DataChannels()
        channels.apply_offer(message.get("data_channels"))
        for label in ("signaling", "notify", "#chat"):
            channels.listed(label)
            try:
                channels.decode(label, zlib.compress(b"{}"))
            except zlib.error:
                pass
        encodings = message.get("encodings") if message.get("simulcast") is True else None
        mids = message.get("mid") if isinstance(message.get("mid"), dict) else {}
        if isinstance(encodings, list) and encodings and mids.get("video") is not None:
            try:
                plan_simulcast(encodings, 500)
            except SoraError:
                return "offer-bad-simulcast"
        return "offer"
    if kind in ("re-offer", "update"):
        if isinstance(message.get("sdp"), str):
            sdp_mod.parse(message["sdp"])
            return "reoffer"
        return "reoffer-without-sdp"
    if kind == "redirect":
        location = message.get("location")
        if isinstance(location, str) and location:
            try:
                wsm.parse_url(location)
            except ValueError:
                return "redirect-bad-url"
        return "redirect"
    return "ignored-or-simple"


def test_fuzz_pure_parsers(corpus, crashes, fuzz_counts):
    mutator = Mutator(corpus, SEED)
    outcomes: Dict[str, int] = {}
    started = time.monotonic()
    for _ in range(N_PURE):
        payload = mutator.message()
        try:
            outcome = parse_like_sdk(payload)
        except Exception as exc:  # noqa: BLE001 - any exception is a finding
            crashes.add_exception("pure", exc, payload)
            outcome = "CRASH"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    took = time.monotonic() - started
    shrink(crashes, "pure")
    fuzz_counts["pure parsers: inputs"] = N_PURE
    fuzz_counts["pure parsers: seconds"] = "%.1f" % took
    fuzz_counts["pure parsers: outcomes"] = ", ".join("%s %d" % kv for kv in sorted(outcomes.items()))
    assert outcomes.get("offer", 0) > N_PURE // 50, outcomes  # the mutator still reaches deep into offers
    assert not [k for k in crashes.by_signature if k[0] == "pure"], "\n".join(crashes.lines())


def test_fuzz_pure_parsers_hypothesis(corpus, crashes, fuzz_counts):
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=16)
    sdp_text = st.lists(st.sampled_from(SDP_LINES) | st.text(max_size=40),
                        max_size=30).map(lambda lines: "\r\n".join(lines))
    typed = st.fixed_dictionaries(
        {"type": st.sampled_from(TYPES)},
        optional={"sdp": sdp_text | json_values, "connection_id": st.text(max_size=30) | json_values,
                  "config": st.fixed_dictionaries({}, optional={"iceServers": json_values}) | json_values,
                  "data": json_values, "stats": json_values, "mid": st.fixed_dictionaries(
                      {"video": st.text(max_size=5)}) | json_values,
                  "data_channels": json_values, "simulcast": st.booleans() | json_values,
                  "encodings": st.lists(st.dictionaries(st.sampled_from(
                      ["rid", "active", "scaleResolutionDownBy", "scaleResolutionDownTo", "maxBitrate",
                       "maxFramerate", "ssrc", "scalabilityMode"]), json_values | st.text(max_size=3), max_size=6),
                      max_size=9) | json_values,
                  "location": st.text(max_size=40) | json_values})
    payloads = st.one_of(typed.map(lambda v: json.dumps(v).encode()), json_values.map(lambda v: json.dumps(v).encode()),
                         st.binary(max_size=100), st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")))
    seen = [0]

    @settings(max_examples=N_HYPOTHESIS, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(payload=payloads)
    def check(payload):
        seen[0] += 1
        try:
            parse_like_sdk(payload)
        except Exception as exc:  # noqa: BLE001
            crashes.add_exception("hypothesis", exc, payload)

    started = time.monotonic()
    check()
    shrink(crashes, "hypothesis")
    fuzz_counts["hypothesis parsers: inputs"] = seen[0]
    fuzz_counts["hypothesis parsers: seconds"] = "%.1f" % (time.monotonic() - started)
    assert not [k for k in crashes.by_signature if k[0] == "hypothesis"], "\n".join(crashes.lines())


# --------------------------------------------------------------------------- WebSocket layer
def feed_frames(data: bytes) -> str:
    """Raw bytes from the server into a client WebSocket; it must end with a WebSocketError, never another error."""
    ours, theirs = socket.socketpair()
    ws = wsm.WebSocket(ours, client_side=True, initial_data=data)
    theirs.shutdown(socket.SHUT_WR)  # the server sends nothing more: EOF after `data`
    outcome = "?"
    try:
        for _ in range(16):
            ws.recv(timeout=2.0)
        outcome = "messages"
    except wsm.WebSocketClosed:
        outcome = "closed"
    except wsm.ProtocolError:
        outcome = "protocol-error"
    except wsm.WebSocketEOF:
        outcome = "eof"
    finally:
        ws.abort()
        theirs.close()
    return outcome


def test_fuzz_websocket_frames_and_handshake(corpus, crashes, fuzz_counts):
    mutator = Mutator(corpus, SEED + 1)
    outcomes: Dict[str, int] = {}
    started = time.monotonic()
    for i in range(N_FRAMES):
        payload = mutator.message() if i % 2 else None
        data = mutator.frame(payload)
        try:
            outcome = feed_frames(data)
        except Exception as exc:  # noqa: BLE001
            crashes.add_exception("ws-frames", exc, data)
            outcome = "CRASH"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    accept = wsm.accept_key(key)
    for _ in range(N_HTTP):
        head = mutator.http_head(accept)
        try:
            wsm._check_upgrade_response(head, key)
            outcome = "handshake-ok"
        except wsm.HandshakeError:
            outcome = "handshake-error"
        except Exception as exc:  # noqa: BLE001 - the SDK reports anything else as INTERNAL_ERROR, not a handshake failure
            crashes.add_exception("ws-handshake", exc, head)
            outcome = "CRASH"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    fuzz_counts["WebSocket frames + upgrade responses: inputs"] = N_FRAMES + N_HTTP
    fuzz_counts["WebSocket frames + upgrade responses: seconds"] = "%.1f" % (time.monotonic() - started)
    fuzz_counts["WebSocket outcomes"] = ", ".join("%s %d" % kv for kv in sorted(outcomes.items()))
    assert not [k for k in crashes.by_signature if k[0].startswith("ws-")], "\n".join(crashes.lines())


# --------------------------------------------------------------------------- real connections
def _safe_redirect(payload: bytes, mutator: Mutator) -> bytes:
    """Redirect messages may only point at loopback addresses that refuse or garbage (never a real host)."""
    if b"redirect" not in payload:
        return payload
    try:
        message = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return payload
    if isinstance(message, dict) and message.get("type") == "redirect":
        message["location"] = mutator.rng.choice([
            "ws://127.0.0.1:1/signaling", "wss://127.0.0.1:1/x", "", None, 5, "http://127.0.0.1:1/",
            "ws://[::1]:1/", "ws://127.0.0.1:99999/", "::::", "ws://", "ws://127.0.0.1:1/\x00"])
        return json.dumps(message).encode()
    return payload


ALLOWED_ENDS = {Code.CLOSE_SUCCEEDED, Code.CLOSE_FAILED, Code.INTERNAL_ERROR, Code.INVALID_PARAMETER,
                Code.WEBSOCKET_HANDSHAKE_FAILED, Code.WEBSOCKET_ONERROR, Code.PEER_CONNECTION_STATE_FAILED,
                Code.ICE_FAILED}


FATAL = ("not-utf8", "not-json", "no-type", "too-deep")


def live_message(mutator: Mutator, fatal_share: float = 0.05) -> bytes:
    """A message for a live connection: mostly ones that do not end it at once (those the pure part covers)."""
    while True:
        payload = _safe_redirect(mutator.message(), mutator)
        try:
            outcome = parse_like_sdk(payload)
        except Exception:  # noqa: BLE001 - a parser crash: exactly what the live parts should see too
            return payload
        if outcome not in FATAL or mutator.rng.random() < fatal_share:
            return payload


def _check_single_disconnect(rec, crashes, part, example) -> Optional[Code]:
    try:
        rec.wait("on_disconnect", 10)  # the state turns "closed" just before on_disconnect runs
    except TimeoutError:
        pass
    ends = rec.of("on_disconnect")
    if len(ends) != 1:
        crashes.add(part, "%d on_disconnect calls" % len(ends), example)
        return None
    code, message = ends[0]
    if code not in ALLOWED_ENDS or not isinstance(message, str) or not message:
        crashes.add(part, "unexpected end %r %r" % (code, message), example)
    return code


def test_fuzz_message_handlers_of_live_connections(corpus, crashes, fuzz_counts, error_watch):
    """Messages posted to the dispatcher of real connected connections, as the WebSocket reader and the
    data-channel events deliver them; a connection that ends is replaced by a new one."""
    mutator = Mutator(corpus, SEED + 2)
    sora = sora_sdk.Sora()
    server = ScriptedServer([expect("connect"), offer(), answer(), notify_created()])
    labels = ["signaling", "notify", "push", "stats", "rpc", "#chat", "#", "", "e2ee", "signaling\x00"]
    outcomes: Dict[str, int] = {}
    connections = 0
    conn = rec = None
    started = time.monotonic()

    def fresh():
        nonlocal connections
        c = sora.create_connection(signaling_urls=[server.url], role="recvonly", channel_id="fuzz",
                                   websocket_close_timeout=1, disconnect_wait_timeout=1)
        r = Recorder(c)
        c.connect()
        r.wait("on_notify", 15)
        connections += 1
        if mutator.rng.random() < 0.5:  # some with DC signaling active and compressed labels, as after `switched`
            c._channels.apply_offer([{"label": label, "compress": mutator.rng.random() < 0.5} for label in labels])
        return c, r

    try:
        for i in range(N_HANDLER):
            if conn is None:
                conn, rec = fresh()
            mark = error_watch.snapshot()
            done = threading.Event()
            via_dc = mutator.rng.random() < 0.3
            payload = live_message(mutator)
            if via_dc:
                label = mutator.rng.choice(labels)
                if conn._channels._compress.get(label) and mutator.rng.random() < 0.7:
                    payload = zlib.compress(payload)
                channel_id = mutator.rng.choice([0, 1, 2, 3, 65535, -1])
                target = conn
                conn._context.post(lambda: target._on_dc_message(channel_id, label, payload))
            else:
                ws = conn._ws
                if ws is None:  # the previous message closed the WebSocket (switched + ignore_disconnect_websocket)
                    conn.disconnect()
                    _check_single_disconnect(rec, crashes, "handlers", "(after a WebSocket-closing message)")
                    conn = None
                    conn, rec = fresh()
                    ws = conn._ws
                target = conn
                conn._context.post(lambda: target._on_ws_message(ws, payload))
            conn._context.post(done.set)
            if not done.wait(20):
                crashes.add("handlers", "dispatcher did not process a message within 20 s", payload)
                break
            errors = error_watch.sdk_errors(mark)
            for message, detail in errors:
                crashes.add("handlers", "%s: %s" % (message, detail), payload)
            if errors:
                outcomes["CRASH"] = outcomes.get("CRASH", 0) + 1
            if conn.connection_state == "closed":
                code = _check_single_disconnect(rec, crashes, "handlers", payload)
                outcomes[str(getattr(code, "name", code))] = outcomes.get(str(getattr(code, "name", code)), 0) + 1
                conn = None
            elif errors:  # left in whatever state the exception left it: end it
                conn.disconnect()
                conn = None
            else:
                outcomes["handled, still connected"] = outcomes.get("handled, still connected", 0) + 1
        if conn is not None:
            conn.disconnect()
    finally:
        sora.close()
        server.stop()
    fuzz_counts["live handlers: inputs"] = N_HANDLER
    fuzz_counts["live handlers: connections used"] = connections
    fuzz_counts["live handlers: seconds"] = "%.1f" % (time.monotonic() - started)
    fuzz_counts["live handlers: outcomes"] = ", ".join("%s %d" % kv for kv in sorted(outcomes.items()))
    assert not [k for k in crashes.by_signature if k[0] == "handlers"], "\n".join(crashes.lines())


# ---- real sockets
VP8_ENCODINGS = [{"rid": "r0", "active": True, "scaleResolutionDownBy": 4.0},
                 {"rid": "r1", "active": True, "scaleResolutionDownBy": 2.0},
                 {"rid": "r2", "active": True}]


class SocketFuzz:
    """The scripted server's side: per session a (maybe mutated) offer, then messages each followed by a ping."""

    def __init__(self, mutator: Mutator, budget: int, crashes: Crashes, watch) -> None:
        self.mutator = mutator
        self.watch = watch
        self.seen = watch.snapshot()
        self.left = budget
        self.sent = 0
        self.crashes = crashes
        self.lock = threading.Lock()
        self.hangs = 0
        self.inputs: Dict[int, List[bytes]] = {}  # session index -> the fuzz inputs it sent

    def take(self) -> Optional[bytes]:
        with self.lock:
            if self.left <= 0:
                return None
            self.left -= 1
            self.sent += 1
            return live_message(self.mutator, 0.02)

    def reply_or_hang(self, session, type_: str, start: int, payload: Any, hang: str):
        """The client's `type_` message from index `start`, or None after HANG_BOUND (counted as a hang with the
        `hang` % HANG_BOUND text unless the connection ended). `payload` is attributed either way."""
        try:
            reply = session.wait_message(type_, timeout=HANG_BOUND, start=start)
        except TimeoutError:
            if not session.ended.is_set():
                self.crashes.add("sockets", hang % HANG_BOUND, payload)
                self.hangs += 1
            self.attribute(payload)
            return None
        except ScriptAborted:
            self.attribute(payload)
            raise
        self.attribute(payload)
        return reply

    def attribute(self, example: Any) -> None:
        """SDK errors logged since the last call are crashes caused by `example` (the client answered a ping
        sent after it, or ended, so its handling is over)."""
        errors = self.watch.sdk_errors(self.seen)
        self.seen += len(self.watch.since(self.seen))
        for message, detail in errors:
            self.crashes.add("sockets", "%s: %s" % (message, detail), example)

    def send(self, session, payload: bytes) -> None:
        try:
            payload.decode("utf-8")
            session.send_frame(wsm.OP_TEXT, payload)
        except UnicodeDecodeError:
            session.send_frame(wsm.OP_BINARY, payload)

    def script(self, session) -> None:
        rng = self.mutator.rng
        try:
            session.wait_message("connect", timeout=10)
            direction = rng.choice(["recvonly", "sendonly", "sendrecv"])
            sdp = session.make_offer(direction)
            extra: Dict[str, Any] = {}
            if rng.random() < 0.5:
                extra = {"simulcast": True, "encodings": json.loads(json.dumps(VP8_ENCODINGS))}
            message = session.offer_message(sdp, **extra)
            mutated = rng.random() < 0.25
            if mutated:
                with self.lock:
                    if self.left <= 0:
                        mutated = False
                    else:
                        self.left -= 1
                        self.sent += 1
            payload = json.dumps(message).encode()
            if mutated:
                tree = self.mutator.mutate_tree(json.loads(json.dumps(message)))
                payload = _safe_redirect(json.dumps(tree).encode("utf-8", "surrogatepass"), self.mutator)
                self.inputs.setdefault(session.index, []).append(payload)
                self.send(session, payload)
                if not (isinstance(tree, dict) and tree.get("type") == "offer"):
                    # not an offer any more: ignored before the offer (or it ended the connection); the real one follows
                    session.send(message)
            else:
                session.send(message)
            reply = self.reply_or_hang(session, "answer", 0, payload,
                                       "offer neither answered nor the connection ended within %.0f s")
            if reply is None:
                return
            try:
                session.apply_answer(reply.json["sdp"])
            except Exception:  # noqa: BLE001 - a mutated offer may get an answer our server peer cannot apply
                pass
            for _ in range(rng.randint(1, 60)):
                payload = self.take()
                if payload is None:
                    break
                mark = len(session.messages)
                self.inputs.setdefault(session.index, []).append(payload)
                self.send(session, payload)
                session.send('{"type":"ping"}')
                if self.reply_or_hang(session, "pong", mark, payload,
                                      "ping after a message unanswered for %.0f s (connection alive)") is None:
                    return
        except (ScriptAborted, wsm.WebSocketError, OSError):
            return
        finally:
            try:
                session.close(1000, "SENTINEL", timeout=1.0)
            except (wsm.WebSocketError, OSError):
                pass


def test_fuzz_real_sockets(corpus, crashes, fuzz_counts, error_watch):
    mutator = Mutator(corpus, SEED + 3)
    fuzz = SocketFuzz(mutator, N_SOCKET, crashes, error_watch)
    sora = sora_sdk.Sora()
    video = sora.create_video_source()
    audio = sora.create_audio_source(1, 48000)
    server = ScriptedServer(fuzz.script)
    outcomes: Dict[str, int] = {}
    sessions = 0
    started = time.monotonic()
    try:
        while fuzz.left > 0:
            role = ["recvonly", "sendonly", "sendrecv"][sessions % 3]
            kwargs: Dict[str, Any] = {}
            if role != "recvonly":
                kwargs = {"video_source": video, "audio_source": audio, "video_codec_type": "VP8"}
            conn = sora.create_connection(signaling_urls=[server.url], role=role, channel_id="fuzz-sockets",
                                          websocket_close_timeout=1, disconnect_wait_timeout=1, **kwargs)
            rec = Recorder(conn)
            conn.connect()
            sessions += 1
            try:
                session = server.wait_session(sessions - 1, timeout=15)
                if not session.script_done.wait(60 * 6 + 10):
                    crashes.add("sockets", "the server script did not end within 370 s", "(session %d)" % sessions)
            except TimeoutError:
                crashes.add("sockets", "no WebSocket session within 15 s", "(session %d)" % sessions)
            try:
                rec.wait_disconnect(timeout=5)
            except TimeoutError:
                # e.g. `switched` + ignore_disconnect_websocket without data channels: alive without signaling,
                # as told; our disconnect() must still end it, within its bound
                conn.disconnect()
            code = _check_single_disconnect(rec, crashes, "sockets", "(session %d)" % sessions)
            name = str(getattr(code, "name", code))
            outcomes[name] = outcomes.get(name, 0) + 1
            inputs = fuzz.inputs.get(sessions - 1) or []
            fuzz.attribute(inputs[-1] if inputs else "(session %d, after its last input)" % sessions)
            conn.disconnect()
    finally:
        server.stop()
        sora.close()
    fuzz_counts["real sockets: inputs"] = fuzz.sent
    fuzz_counts["real sockets: sessions (connections)"] = sessions
    fuzz_counts["real sockets: seconds"] = "%.1f" % (time.monotonic() - started)
    fuzz_counts["real sockets: how sessions ended"] = ", ".join("%s %d" % kv for kv in sorted(outcomes.items()))
    assert not [k for k in crashes.by_signature if k[0] == "sockets"], "\n".join(crashes.lines())


def test_process_healthy_after_fuzz():
    """A normal connection still works in this process after all of the above."""
    from sora_sdk.testing import LocalSora

    with LocalSora() as server:
        sora = sora_sdk.Sora()
        try:
            conn = sora.create_connection(signaling_urls=[server.signaling_url], role="recvonly",
                                          channel_id="after-fuzz")
            rec = Recorder(conn)
            conn.connect()
            rec.wait("on_notify", 15)
            conn.disconnect()
            assert rec.of("on_disconnect") == [(Code.CLOSE_SUCCEEDED,
                                                "Succeeded to close WebSocket (DC signaling is not enabled)")]
        finally:
            sora.close()
