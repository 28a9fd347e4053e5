"""Simulcast and spotlight end to end through the local Sora server: our SDK sends one 640x480 source as
three VP8 layers, the server forwards one layer per receiver (chosen by simulcast_rid, or by spotlight
focus), our SDK receivers decode it. Real WebRTC over loopback; every wait is bounded."""
from __future__ import annotations

import json
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

import sora_sdk
from tests.conftest import Recorder, wait_until

W, H = 640, 480
# (each layer's size as libwebrtc encodes it: aligned down to 16, see sora_sdk.stats.simulcast_layer_size)
SIZES = {"r0": (160, 112), "r1": (320, 240), "r2": (W, H)}
FPS = 15
BIT_RATE = 600  # kbps, shared by the layers
WAIT = 20.0


class VideoPump:
    """Feeds a video source 640x480 frames with a moving box at FPS."""

    def __init__(self, video) -> None:
        self.video = video
        self.frame = np.full((H, W, 3), (40, 160, 220), np.uint8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulcast-pump", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(1 / FPS):
            x = (i * 12) % (W - 64)
            self.frame[:64] = 0
            self.frame[8:56, x:x + 64] = 255
            self.video.on_captured(self.frame)
            i += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Client:
    """A connection that records its signaling messages, notifies and the size of every decoded video frame
    per sender (stream_id)."""

    def __init__(self, sora, url: str, channel_id: str, role: str, send: bool = False, sinks: bool = True,
                 **options) -> None:
        self.pump: Optional[VideoPump] = None
        self.with_sinks = sinks
        self.tracks: List = []
        self.video = sora.create_video_source() if send else None
        if send:
            options.update(video_source=self.video, video_codec_type="VP8", video_bit_rate=BIT_RATE, audio=False)
        else:
            options.setdefault("audio", False)
        self.conn = sora.create_connection(signaling_urls=[url], role=role, channel_id=channel_id, **options)
        self.rec = Recorder(self.conn)
        self.lock = threading.Lock()
        self.sizes: Dict[str, List[Tuple[float, Tuple[int, int]]]] = {}  # stream id -> [(time, size)]
        self.sinks: List = []
        self.signaling: List[Tuple[str, dict]] = []
        self.conn.on_track = self._on_track
        self.conn.on_signaling_message = self._on_signaling
        self.conn.connect()
        assert self.rec.connected.wait(15), self.rec.events
        if send:
            self.pump = VideoPump(self.video)

    @property
    def connection_id(self) -> str:
        return self.rec.connection_id

    def _on_signaling(self, via, direction, text) -> None:
        side = "sent" if direction == sora_sdk.SoraSignalingDirection.SENT else "received"
        self.signaling.append((side, json.loads(text)))

    def message(self, side: str, kind: str) -> dict:
        return next(m for s, m in self.signaling if s == side and m.get("type") == kind)

    def _on_track(self, track) -> None:
        if track.kind != "video":
            return
        self.tracks.append(track)
        if self.with_sinks:
            self.attach(track)

    def attach(self, track) -> None:
        """Decode `track` (its sink asks the sender for a key frame: RTCP PLI)."""
        sink = sora_sdk.SoraVideoSink(track)

        def on_frame(frame, sid=track.stream_id) -> None:
            with self.lock:
                self.sizes.setdefault(sid, []).append((time.monotonic(), (frame.width, frame.height)))

        sink.on_frame = on_frame
        self.sinks.append(sink)

    def frames(self, sender: "Client", since: float = 0.0) -> int:
        with self.lock:
            return sum(1 for t, _ in self.sizes.get(sender.connection_id, []) if t >= since)

    def first_at(self, sender: "Client", size: Tuple[int, int], since: float) -> Optional[float]:
        """When the first frame of `sender` at `size` arrived after `since`."""
        with self.lock:
            return next((t for t, s in self.sizes.get(sender.connection_id, []) if t >= since and s == size), None)

    def size(self, sender: "Client") -> Optional[Tuple[int, int]]:
        with self.lock:
            frames = self.sizes.get(sender.connection_id)
            return frames[-1][1] if frames else None

    def wait_size(self, sender: "Client", size: Tuple[int, int], frames: int = 5, timeout: float = WAIT) -> bool:
        """`frames` consecutive frames of `sender` at `size` arrived."""
        def ok() -> bool:
            with self.lock:
                last = [s for _, s in self.sizes.get(sender.connection_id, [])[-frames:]]
            return len(last) == frames and all(s == size for s in last)
        return wait_until(ok, timeout)

    def notifies(self, event_type: str) -> List[dict]:
        return [n for n in self.rec.notifies if n.get("event_type") == event_type]

    def leave(self) -> None:
        if self.pump is not None:
            self.pump.stop()
        self.conn.disconnect()


@pytest.fixture
def clients(local_sora, sora):
    made: List[Client] = []

    def make(channel_id: str, role: str, send: bool = False, **options) -> Client:
        client = Client(sora, local_sora.signaling_url, channel_id, role, send, **options)
        made.append(client)
        return client
    yield make
    for client in reversed(made):
        try:
            client.leave()
        except Exception:
            pass


def _lines(sdp: str) -> List[str]:
    return [line.strip() for line in sdp.splitlines()]


def test_each_receiver_gets_its_simulcast_rid(local_sora, clients):
    # one receiver before the sender (its slot comes in a re-offer), the others after (in their first offer)
    r2 = clients("sc", "recvonly", simulcast=True, simulcast_rid="r2")
    sender = clients("sc", "sendonly", send=True, simulcast=True)
    offer = sender.message("received", "offer")
    assert offer["simulcast"] is True
    assert [e["rid"] for e in offer["encodings"]] == ["r0", "r1", "r2"]
    assert [e["scaleResolutionDownBy"] for e in offer["encodings"]] == [4, 2, 1]
    rates = [e["maxBitrate"] for e in offer["encodings"]]  # the bit rate shared by area (r0 at least 30 kbps)
    assert rates[0] >= 30000 and abs(rates[1] * 4 - rates[2]) <= 4, rates
    assert abs(sum(rates) - BIT_RATE * 1000) <= 30000, rates
    lines = _lines(offer["sdp"])
    assert ["a=rid:r0 recv", "a=rid:r1 recv", "a=rid:r2 recv"] == [l for l in lines if l.startswith("a=rid:")]
    assert "a=simulcast:recv r0;r1;r2" in lines
    assert any(l.startswith("a=extmap:") and l.endswith("sdes:rtp-stream-id") for l in lines)
    answer = _lines(sender.message("sent", "answer")["sdp"])
    assert "a=simulcast:send r0;r1;r2" in answer
    time.sleep(0.3)
    r0 = clients("sc", "recvonly", simulcast=True, simulcast_rid="r0")
    r1 = clients("sc", "recvonly", simulcast=True, simulcast_rid="r1")
    plain = clients("sc", "recvonly")  # neither simulcast nor simulcast_rid: the default layer, r0
    for receiver, rid in ((r0, "r0"), (r1, "r1"), (r2, "r2"), (plain, "r0")):
        assert receiver.wait_size(sender, SIZES[rid]), (rid, receiver.size(sender), receiver.frames(sender))
    media = local_sora._registry.channel("sc").media
    for receiver, rid in ((r0, "r0"), (r1, "r1"), (r2, "r2"), (plain, "r0")):
        video = [s for s in media.forwards(receiver.connection_id) if s["kind"] == "video"]
        assert [(s["rid"], s["forwarding"]) for s in video] == [(rid, True)]
    # a key-frame request of a receiver reaches the layer it gets: its decoder restarts at once
    assert local_sora.request_key_frame(sender.connection_id)
    # every receiver's m-line announced one SSRC, and that SSRC is what arrives
    for receiver in (r0, r1, r2, plain):
        inbound = [s for s in json.loads(receiver.conn.get_stats()) if s.get("type") == "inbound-rtp"
                   and s.get("kind") == "video"]
        announced = {s["ssrc"] for s in media.forwards(receiver.connection_id) if s["kind"] == "video"}
        assert {s["ssrc"] for s in inbound} == announced, (inbound, announced)


def test_paused_layer_falls_back_to_the_nearest_lower(local_sora, clients):
    def hook(connect):
        if connect.get("role") == "sendonly":
            return {"simulcast_encodings": [{"rid": "r0", "scaleResolutionDownBy": 4},
                                            {"rid": "r1", "scaleResolutionDownBy": 2},
                                            {"rid": "r2", "active": False}]}
        return None
    local_sora.auth_hook = hook
    want_r2 = clients("paused", "recvonly", simulcast_rid="r2")
    sender = clients("paused", "sendonly", send=True, simulcast=True)
    offer = sender.message("received", "offer")
    assert [e.get("active", True) for e in offer["encodings"]] == [True, True, False]
    assert "a=simulcast:recv r0;r1;~r2" in _lines(offer["sdp"])
    assert "a=simulcast:send r0;r1;~r2" in _lines(sender.message("sent", "answer")["sdp"])
    want_r0 = clients("paused", "recvonly", simulcast_rid="r0")
    assert want_r2.wait_size(sender, SIZES["r1"]), want_r2.size(sender)
    assert want_r0.wait_size(sender, SIZES["r0"]), want_r0.size(sender)
    media = local_sora._registry.channel("paused").media
    assert [s["rid"] for s in media.forwards(want_r2.connection_id) if s["kind"] == "video"] == ["r1"]


def test_missing_layer_falls_back_then_switches_up_when_it_arrives(local_sora, clients, monkeypatch):
    """A layer that is not there (yet) is replaced by the nearest lower one; once the wanted one arrives the
    receiver is switched to it on the same track (no renegotiation)."""
    from sora_sdk.testing import media as media_module
    sender = clients("late", "sendonly", send=True, simulcast=True)
    router = local_sora._registry.channel("late").media
    assert wait_until(lambda: sender.connection_id in router._senders and
                      len(router._senders[sender.connection_id].layers) == 3, WAIT)
    r2_ssrc = router._senders[sender.connection_id].layers["r2"][1]
    # r2 stops arriving, as far as the server can tell: its packets vanish from the server peer's stats
    real = media_module._received_packets
    monkeypatch.setattr(media_module, "_received_packets",
                        lambda session: {k: v for k, v in real(session).items() if k != r2_ssrc})
    with router._lock:
        router._senders[sender.connection_id].stale.add("r2")
    receiver = clients("late", "recvonly", simulcast_rid="r2")
    assert receiver.wait_size(sender, SIZES["r1"]), receiver.size(sender)
    monkeypatch.setattr(media_module, "_received_packets", real)
    started = time.monotonic()
    assert receiver.wait_size(sender, SIZES["r2"]), receiver.size(sender)  # the poll sees r2's packets grow
    switch = receiver.first_at(sender, SIZES["r2"], started) - started
    assert len([t for t in receiver.conn._tracks.values() if t.kind == "video"]) == 1
    assert not [m for s, m in receiver.signaling if m.get("type") == "re-offer"]
    print("layer back -> first r2 frame: %.2f s (LAYER_POLL %.1f s)" % (switch, media_module.LAYER_POLL))


def test_spotlight_focus_unfocus_none_and_focus_change(local_sora, clients):
    first = clients("spot", "sendonly", send=True, spotlight=True)
    second = clients("spot", "sendonly", send=True, spotlight=True)
    offer = second.message("received", "offer")
    assert offer["simulcast"] is True and offer["spotlight"] is True and len(offer["encodings"]) == 3
    # defaults: one focused sender, focused at r2, the others at r0
    default = clients("spot", "recvonly", spotlight=True)
    # focused at r1, unfocused not at all
    none = clients("spot", "recvonly", spotlight=True, spotlight_number=1, spotlight_focus_rid="r1",
                   spotlight_unfocus_rid="none")
    assert default.wait_size(first, SIZES["r2"]), default.size(first)
    assert default.wait_size(second, SIZES["r0"]), default.size(second)
    assert none.wait_size(first, SIZES["r1"]), none.size(first)
    assert none.frames(second) == 0
    for receiver in (default, none):
        assert wait_until(lambda: len(receiver.notifies("spotlight.focused")) == 1, 5), receiver.rec.notifies
        focused = receiver.notifies("spotlight.focused")[0]
        assert focused["connection_id"] == first.connection_id and focused["fixed"] is False
        assert focused["channel_id"] == "spot" and focused["video"] is True
        assert not receiver.notifies("spotlight.unfocused")

    # the API focuses the second sender
    started = time.monotonic()
    assert local_sora.spotlight_focus("spot", second.connection_id)
    assert default.wait_size(second, SIZES["r2"]), default.size(second)
    switch = default.first_at(second, SIZES["r2"], started) - started
    assert default.wait_size(first, SIZES["r0"]), default.size(first)
    assert none.wait_size(second, SIZES["r1"]), none.size(second)
    stop = time.monotonic()
    time.sleep(0.5)
    assert none.frames(first, since=stop) == 0  # unfocused: no longer forwarded
    for receiver in (default, none):
        assert wait_until(lambda: len(receiver.notifies("spotlight.focused")) == 2, 5), receiver.rec.notifies
        assert receiver.notifies("spotlight.focused")[1]["connection_id"] == second.connection_id
        assert receiver.notifies("spotlight.focused")[1]["fixed"] is True
        assert [n["connection_id"] for n in receiver.notifies("spotlight.unfocused")] == [first.connection_id]
    assert local_sora._registry.channel("spot").media.focused(default.connection_id) == [second.connection_id]
    # one video track per sender throughout: the layers changed on the same m-lines
    assert sorted(t.stream_id for t in default.conn._tracks.values() if t.kind == "video") == \
        sorted([first.connection_id, second.connection_id])
    print("spotlight focus change -> first full-size frame of the newly focused sender: %.2f s" % switch)


def test_a_receivers_key_frame_request_reaches_the_layer_it_gets(local_sora, clients):
    sender = clients("pli", "sendonly", send=True, simulcast=True)
    receiver = clients("pli", "recvonly", sinks=False, simulcast_rid="r1")
    media = local_sora._registry.channel("pli").media
    assert wait_until(lambda: [s["forwarding"] for s in media.forwards(receiver.connection_id)] == [True], WAIT)
    assert wait_until(lambda: len(receiver.tracks) == 1, WAIT)
    time.sleep(1.5)  # the forward's own key-frame request is long done
    rids = {ssrc: rid for rid, (_, ssrc) in media._senders[sender.connection_id].layers.items()}

    def requests() -> Dict[str, int]:  # key-frame requests the server sent to the sender, per layer
        return {rids[s["ssrc"]]: s.get("pli-count", 0) + s.get("fir-count", 0)
                for s in local_sora.stats(sender.connection_id)
                if s.get("type") == "inbound-rtp" and s.get("ssrc") in rids}
    before = requests()
    receiver.attach(receiver.tracks[0])  # the decoder starts with a PLI from the receiver
    assert receiver.wait_size(sender, SIZES["r1"]), (receiver.size(sender), receiver.frames(sender))
    assert wait_until(lambda: requests()["r1"] > before["r1"], 5), (before, requests())
    after = requests()
    assert after["r0"] == before["r0"] and after["r2"] == before["r2"], (before, after)


def test_sendrecv_simulcast_clients_get_each_others_layer(local_sora, clients):
    first = clients("mesh-sc", "sendrecv", send=True, simulcast=True, simulcast_rid="r1")
    second = clients("mesh-sc", "sendrecv", send=True, simulcast=True, simulcast_rid="r0")
    for client in (first, second):
        assert "a=simulcast:send r0;r1;r2" in _lines(client.message("sent", "answer")["sdp"])
    assert first.wait_size(second, SIZES["r1"]), first.size(second)
    assert second.wait_size(first, SIZES["r0"]), second.size(first)
