"""The local server never aborts when a receiver rejects m-lines (issue 12, item 5).

A receiver that cannot decode a codec answers its m-line with port 0 (``m=video 0``), as libwebrtc
does for a codec its preference leaves out. webrtcbin (GStreamer 1.22) then aborted the whole
server process (``trans->mline == -1 || trans->mline == media_idx`` in
``sdp_media_from_transceiver``) while building the next re-offer, once a sender left.

The server runs in its own process here (``python -m sora_sdk.testing``), so that an abort is
seen as what it is: every step checks the process is alive and, if it died, the test fails
with its exit status (e.g. -6, SIGABRT) and the end of its log. The receiver is a raw client:
WebSocket + a webrtcbin answerer whose (re-)answers reject every video m-line of one codec.
Senders are our SDK, sending real media.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional

import pytest

from sora_sdk.peer import Peer
from sora_sdk.websocket import WebSocketClient, WebSocketClosed, WebSocketError
from tests.conftest import Recorder
from tests.media_pump import RATE, Pump
from tests.test_local_sora_signaling import ctx  # noqa: F401  (the module's engine context fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.timeout(120)] if importlib.util.find_spec("pytest_timeout") else []


class ServerProcess:
    """`python -m sora_sdk.testing` in a child process; `check()` fails the test if it died."""

    def __init__(self, *args: str) -> None:
        self.log = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen([sys.executable, "-m", "sora_sdk.testing", "--port", "0", "-v",
                                      "--video-codec-type", "VP8"] + list(args), cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=self.log, start_new_session=True)
        self.signaling_url = None
        deadline = time.monotonic() + 30
        while self.signaling_url is None:
            line = self.proc.stdout.readline().decode()
            if not line:
                self.check()
                raise AssertionError("the server printed no signaling_url")
            if line.startswith("signaling_url="):
                self.signaling_url = line.split("=", 1)[1].strip()
            assert time.monotonic() < deadline

    def tail(self, size: int = 3000) -> str:
        self.log.seek(0, os.SEEK_END)
        end = self.log.tell()
        self.log.seek(max(0, end - size))
        return self.log.read().decode("utf-8", "replace")

    def check(self, what: str = "") -> None:
        code = self.proc.poll()
        if code is not None:
            name = signal.Signals(-code).name if code < 0 else "exit %d" % code
            raise AssertionError("the local Sora server process DIED (%s, status %s) %s; its log ends:\n%s"
                                 % (name, code, what, self.tail()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc.stdout.close()
        self.log.close()


def reject_codec(sdp: str, codec: str) -> str:
    """`sdp` (an answer) with every video m-line whose first codec is `codec` rejected (port 0, out of
    the BUNDLE group), as libwebrtc answers an m-line it cannot decode."""
    lines = sdp.replace("\r\n", "\n").strip("\n").split("\n")
    sections: List[List[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    rejected = []
    for section in sections[1:]:
        head = section[0].split()
        if head[0] != "m=video" or len(head) < 4:
            continue
        first = next((l for l in section if l.startswith("a=rtpmap:%s " % head[3])), "")
        if first.split(" ", 1)[-1].upper().startswith(codec + "/"):
            head[1] = "0"
            section[0] = " ".join(head)
            mid = next((l[6:] for l in section if l.startswith("a=mid:")), None)
            rejected.append(mid)
            section[:] = [l for l in section if not l.startswith(("a=bundle-only", "a=candidate", "a=end-of-"))]
    out = []
    for line in sections[0]:
        if line.startswith("a=group:BUNDLE"):
            line = " ".join(x for x in line.split() if x not in rejected)
        out.append(line)
    for section in sections[1:]:
        out.extend(section)
    return "\r\n".join(out) + "\r\n"


class RejectingReceiver:
    """recvonly over a raw WebSocket with a webrtcbin answerer; every video m-line of `rejected` is refused."""

    def __init__(self, ctx, url: str, channel_id: str, rejected: str) -> None:
        self.rejected = rejected
        self.ws = WebSocketClient.connect(url, timeout=5.0)
        self.peer: Optional[Peer] = None
        self.ctx = ctx
        self.offers: List[str] = []
        self.answers: List[str] = []
        self.errors: List[str] = []
        self.closed = threading.Event()
        self.connection_id = None
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self.ws.send_text(json.dumps({"type": "connect", "role": "recvonly", "channel_id": channel_id}))
        self._reader.start()

    def _send(self, message) -> None:
        try:
            self.ws.send_text(json.dumps(message))
        except WebSocketError:
            pass

    def _answer(self, sdp: str) -> str:
        self.peer.set_remote_description("offer", sdp)
        return reject_codec(self.peer.create_answer(), self.rejected)

    def _read(self) -> None:
        while True:
            try:
                _, payload = self.ws.recv()
            except (WebSocketClosed, WebSocketError):
                break
            message = json.loads(payload)
            kind = message.get("type")
            try:
                if kind == "offer":
                    self.connection_id = message["connection_id"]
                    self.peer = Peer(self.ctx, on_event=self._on_event)
                    with self._lock:
                        self.offers.append(message["sdp"])
                        answer = self._answer(message["sdp"])
                        self.answers.append(answer)
                    self._send({"type": "answer", "sdp": answer})
                elif kind == "re-offer":
                    with self._lock:
                        self.offers.append(message["sdp"])
                        answer = self._answer(message["sdp"])
                        self.answers.append(answer)
                    self._send({"type": "re-answer", "sdp": answer})
                elif kind == "ping":
                    self._send({"type": "pong"})
            except Exception as exc:  # reported by the test
                self.errors.append("%s: %r" % (kind, exc))
        self.closed.set()

    def _on_event(self, event) -> None:
        if event.name == "ice-candidate":
            candidate = event.str0[2:] if event.str0.startswith("a=") else event.str0
            self._send({"type": "candidate", "candidate": candidate})

    def m_lines(self) -> List[str]:
        """The `m=` lines of the last answer."""
        with self._lock:
            last = self.answers[-1] if self.answers else ""
        return [l for l in last.splitlines() if l.startswith("m=")]

    def close(self) -> None:
        self.ws.abort()
        self.closed.wait(5)
        if self.peer is not None:
            self.peer.close()


class Sender:
    def __init__(self, sora, url: str, channel_id: str, codec: str) -> None:
        self.video = sora.create_video_source()
        self.audio = sora.create_audio_source(1, RATE)
        self.conn = sora.create_connection(signaling_urls=[url], role="sendonly", channel_id=channel_id,
                                           video_source=self.video, audio_source=self.audio,
                                           video_codec_type=codec, video_bit_rate=300)
        self.rec = Recorder(self.conn)
        self.conn.connect()
        assert self.rec.connected.wait(15), self.rec.events
        self.pump = Pump(self.video, self.audio, [(10, 200, 30), (200, 10, 30)])
        self.left = False

    def leave(self) -> None:
        if not self.left:
            self.left = True
            self.pump.stop()
            self.conn.disconnect()


@pytest.fixture
def server():
    process = ServerProcess()
    yield process
    process.close()


def settle(server: ServerProcess, receiver: Optional[RejectingReceiver], what: str) -> None:
    """Wait until the receiver has answered every (re-)offer and none came for a second, checking
    the server is alive throughout."""
    deadline = time.monotonic() + 20
    quiet_since, seen = time.monotonic(), -1
    while True:
        server.check(what)
        if receiver is None:
            if time.monotonic() - quiet_since > 1.0:
                return
        else:
            assert not receiver.errors, receiver.errors
            count = len(receiver.offers)
            if count != seen or len(receiver.answers) != count:
                seen, quiet_since = count, time.monotonic()
            elif time.monotonic() - quiet_since > 1.0:
                return
        assert time.monotonic() < deadline, "%s: no quiet second (%s)" % (what, receiver and len(receiver.offers))
        time.sleep(0.05)


# Each sequence: (action, codec) steps. "join X" adds a sender of codec X, "leave X" ends it, "recv" starts
# the receiver (which rejects VP8). Every order of one rejected sender, one accepted sender and the
# receiver, with the accepted one leaving (the reported abort) or the rejected one leaving.
SEQUENCES = {
    "reported": ["join VP8", "recv", "join H264", "leave H264"],
    "rejected-leaves": ["join VP8", "recv", "join H264", "leave VP8"],
    "both-leave": ["join VP8", "recv", "join H264", "leave H264", "leave VP8"],
    "recv-first": ["recv", "join VP8", "join H264", "leave H264", "leave VP8"],
    "accepted-first": ["join H264", "recv", "join VP8", "leave H264", "join VP9", "leave VP8"],
    "rejoin": ["recv", "join VP8", "leave VP8", "join VP8", "join H264", "leave H264", "leave VP8"],
}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_rejected_m_line_then_join_and_leave(server, ctx, sora, name):
    channel = "reject-%s" % name
    senders = {}
    receiver: Optional[RejectingReceiver] = None
    try:
        for step in SEQUENCES[name]:
            action, _, codec = step.partition(" ")
            if action == "recv":
                receiver = RejectingReceiver(ctx, server.signaling_url, channel, "VP8")
            elif action == "join":
                senders.setdefault(codec, []).append(Sender(sora, server.signaling_url, channel, codec))
            else:
                senders[codec][-1].leave()
            server.check("after %r" % step)
            settle(server, receiver, "after %r" % step)
        assert receiver is not None and len(receiver.offers) >= 2, server.tail()
        # Each offer keeps the m-lines of the one before in place (a rejected one included) ...
        for before, after in zip(receiver.offers, receiver.offers[1:]):
            old = [l.split()[0] for l in before.splitlines() if l.startswith("m=")]
            new = [l.split()[0] for l in after.splitlines() if l.startswith("m=")]
            assert new[:len(old)] == old, (old, new)
        # ... and the server still answers a new receiver: it is alive and serving.
        assert not receiver.errors, receiver.errors
    finally:
        server.check("at the end")
        for group in senders.values():
            for sender in group:
                sender.leave()
        if receiver is not None:
            receiver.close()
    server.check("after everyone left")
