"""End to end through the local Sora server's SFU: our SDK sends real encoded media, the
server forwards it (RTP unchanged), our SDK receives and decodes it. Loopback only."""
from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Dict, List, Optional
from urllib.parse import urlparse

import numpy as np
import pytest

import sora_sdk
from tests.conftest import Recorder, connected_video_sender, wait_until
from tests.media_pump import BAND, H, RATE, TONE, W, Pump

# Two-colour frames (BGR): the left half and the right half of each sender's picture, below a
# band where a box moves (so the encoder has something to send).
COLOURS = [((40, 160, 220), (200, 60, 30)), ((200, 30, 90), (30, 200, 90))]
TOLERANCE = 14  # per channel, after I420 conversion and lossy coding


class Sender:
    def __init__(self, sora, url: str, channel_id: str, codec: str = "VP8", colours=COLOURS[0]) -> None:
        self.video = sora.create_video_source()
        self.audio = sora.create_audio_source(1, RATE)
        self.conn = sora.create_connection(signaling_urls=[url], role="sendonly", channel_id=channel_id,
                                           video_source=self.video, audio_source=self.audio,
                                           video_codec_type=codec, video_bit_rate=500)
        self.rec = Recorder(self.conn)
        self.colours = colours
        self.pump: Optional[Pump] = None
        self.conn.connect()
        assert self.rec.connected.wait(15), self.rec.events
        self.pump = Pump(self.video, self.audio, colours)

    @property
    def connection_id(self) -> str:
        return self.rec.connection_id

    def stats(self) -> list:
        return json.loads(self.conn.get_stats())

    def leave(self) -> None:
        if self.pump is not None:
            self.pump.stop()
        self.conn.disconnect()


class StreamRecord:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.last_time = 0.0
        self.size = (0, 0)
        self.halves = None


class Receiver:
    """A recvonly client that decodes every track it gets: video per stream_id, audio per stream_id."""

    def __init__(self, sora, url: str, channel_id: str, role: str = "recvonly", **options) -> None:
        self.conn = sora.create_connection(signaling_urls=[url], role=role, channel_id=channel_id, **options)
        self.rec = Recorder(self.conn)
        self.tracks: List = []
        self.video: Dict[str, StreamRecord] = {}
        self.audio: Dict[str, object] = {}
        self.sinks: List = []
        self.signaling: List = []
        self.conn.on_track = self._on_track
        self.conn.on_signaling_message = lambda via, direction, text: self.signaling.append((via, direction, text))
        self.conn.connect()
        assert self.rec.connected.wait(15), self.rec.events

    @property
    def connection_id(self) -> str:
        return self.rec.connection_id

    def _on_track(self, track) -> None:
        self.tracks.append(track)
        if track.kind == "video":
            record = StreamRecord()
            self.video[track.stream_id] = record
            sink = sora_sdk.SoraVideoSink(track)

            def on_frame(frame, record=record) -> None:
                data = frame.data()[BAND + 8:]
                left = data[:, : frame.width // 2 - 16].reshape(-1, 3).mean(0)
                right = data[:, frame.width // 2 + 16:].reshape(-1, 3).mean(0)
                with record.lock:
                    record.count += 1
                    record.last_time = time.monotonic()
                    record.size = (frame.width, frame.height)
                    record.halves = (left, right)

            sink.on_frame = on_frame
            self.sinks.append(sink)
        else:
            sink = sora_sdk.SoraAudioSink(track, RATE, 1)
            self.audio[track.stream_id] = sink
            self.sinks.append(sink)

    def frames(self, stream_id: str) -> int:
        record = self.video.get(stream_id)
        return record.count if record is not None else 0

    def re_offers(self) -> List[str]:
        out = []
        for _via, direction, text in self.signaling:
            message = json.loads(text)
            if direction == sora_sdk.SoraSignalingDirection.RECEIVED and message.get("type") == "re-offer":
                out.append(message["sdp"])
        return out

    def stats(self) -> list:
        return json.loads(self.conn.get_stats())


def _assert_picture(receiver: Receiver, sender: Sender, frames: int = 10, timeout: float = 10) -> None:
    sid = sender.connection_id
    assert wait_until(lambda: receiver.frames(sid) >= frames, timeout), \
        (receiver.frames(sid), [(t.kind, t.stream_id) for t in receiver.tracks])
    record = receiver.video[sid]
    with record.lock:
        size, halves = record.size, record.halves
    assert size == (W, H)
    for got, want in zip(halves, sender.colours):
        assert np.all(np.abs(np.asarray(got) - np.asarray(want)) <= TOLERANCE), (halves, sender.colours)


def _assert_tone(receiver: Receiver, sender: Sender, timeout: float = 10) -> None:
    sink = receiver.audio[sender.connection_id]
    ok, samples = sink.read(RATE // 5, timeout)  # skip the start (decoder warm-up)
    assert ok
    ok, samples = sink.read(RATE // 10, timeout)
    assert ok and samples.shape == (RATE // 10, 1)
    signal = samples[:, 0].astype(np.float64)
    rms = float(np.sqrt(np.mean(signal ** 2)))
    assert rms > 2000, rms  # the sine's RMS is 8000 / sqrt(2) ~ 5657
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    peak = float(np.fft.rfftfreq(len(signal), 1 / RATE)[int(np.argmax(spectrum))])
    assert abs(peak - TONE) < 20, peak


def _assert_tracks(receiver: Receiver, sender: Sender, timeout: float = 10) -> None:
    sid = sender.connection_id
    assert wait_until(lambda: sorted(t.kind for t in receiver.tracks if t.stream_id == sid) == ["audio", "video"],
                      timeout), [(t.kind, t.stream_id) for t in receiver.tracks]


@pytest.fixture
def cleanup():
    items: List = []
    yield items
    for item in reversed(items):
        try:
            item.leave() if isinstance(item, (Sender, SendRecv)) else item.conn.disconnect()
        except Exception:
            pass


@pytest.mark.parametrize("order", ["receiver-first", "sender-first"])
def test_receiver_gets_the_senders_audio_and_video(local_sora, sora, cleanup, order):
    if order == "receiver-first":
        receiver = Receiver(sora, local_sora.signaling_url, "media")
        cleanup.append(receiver)
        sender = Sender(sora, local_sora.signaling_url, "media", "VP8")
        cleanup.append(sender)
    else:
        sender = Sender(sora, local_sora.signaling_url, "media", "VP8")
        cleanup.append(sender)
        time.sleep(0.5)  # its tracks reach the server: the receiver gets them in its first offer
        receiver = Receiver(sora, local_sora.signaling_url, "media")
        cleanup.append(receiver)
    _assert_tracks(receiver, sender)
    _assert_picture(receiver, sender)
    _assert_tone(receiver, sender)
    offer = json.loads(receiver.rec.of("set_offer")[0][0])["sdp"]
    if order == "sender-first":
        assert "a=msid:%s " % sender.connection_id in offer and not receiver.re_offers()
    else:
        assert "a=msid:%s " % sender.connection_id not in offer  # only the receiver's own placeholders
        assert any("a=msid:%s " % sender.connection_id in sdp for sdp in receiver.re_offers())
    slots = local_sora._registry.channel("media").media.forwards(receiver.connection_id)
    assert sorted((s["kind"], s["payload_type"], s["forwarding"]) for s in slots) == \
        [("audio", 111, True), ("video", 96, True)]


@pytest.mark.parametrize("codec", ["VP8", "VP9", "H264"])
def test_two_receivers_decode_each_codec(local_sora, sora, cleanup, codec):
    first = Receiver(sora, local_sora.signaling_url, "codecs")
    cleanup.append(first)
    sender = Sender(sora, local_sora.signaling_url, "codecs", codec)
    cleanup.append(sender)
    second = Receiver(sora, local_sora.signaling_url, "codecs")
    cleanup.append(second)
    for receiver in (first, second):
        _assert_tracks(receiver, sender)
        _assert_picture(receiver, sender)
    for receiver in (first, second):
        _assert_tone(receiver, sender)
    payload_types = {s["kind"]: s["payload_type"] for s in local_sora._registry.channel("codecs").media.forwards()}
    assert payload_types == {"audio": 111, "video": {"VP8": 96, "VP9": 98, "H264": 102}[codec]}


def test_two_senders_keep_their_stream_ids(local_sora, sora, cleanup):
    receiver = Receiver(sora, local_sora.signaling_url, "pair")
    cleanup.append(receiver)
    senders = [Sender(sora, local_sora.signaling_url, "pair", codec, colours)
               for codec, colours in (("VP8", COLOURS[0]), ("VP8", COLOURS[1]))]
    cleanup.extend(senders)
    late = Receiver(sora, local_sora.signaling_url, "pair")
    cleanup.append(late)
    for r in (receiver, late):
        for sender in senders:
            _assert_tracks(r, sender)
            _assert_picture(r, sender)


def test_sender_leaving_stops_its_tracks_and_the_receiver_goes_on(local_sora, sora, cleanup):
    receiver = Receiver(sora, local_sora.signaling_url, "leave")
    cleanup.append(receiver)
    sender = Sender(sora, local_sora.signaling_url, "leave", "VP8")
    cleanup.append(sender)
    _assert_picture(receiver, sender)
    sid = sender.connection_id
    offers_before = len(receiver.re_offers())
    sender.leave()
    assert wait_until(lambda: any(n.get("event_type") == "connection.destroyed" and n.get("connection_id") == sid
                                  for n in receiver.rec.notifies), 10)
    # The server re-offers with the sender's m-lines inactive and stops forwarding.
    assert wait_until(lambda: len(receiver.re_offers()) > offers_before, 10)
    last = receiver.re_offers()[-1]
    sections = last.split("\r\nm=")[1:]
    theirs = [s for s in sections if "a=mid:" in s and any(
        t.stream_id == sid and ("a=mid:%s\r\n" % t._mid) in s + "\r\n" for t in receiver.tracks)]
    assert len(theirs) == 2 and all("a=inactive" in s for s in theirs), last
    assert wait_until(lambda: all(not s["forwarding"] for s in local_sora._registry.channel("leave").media.forwards()), 5)
    time.sleep(0.5)
    count = receiver.frames(sid)
    time.sleep(1.0)
    assert receiver.frames(sid) == count
    # The receiver is still connected and gets the next sender.
    assert receiver.conn.connection_state == "connected"
    newcomer = Sender(sora, local_sora.signaling_url, "leave", "VP8", COLOURS[1])
    cleanup.append(newcomer)
    _assert_tracks(receiver, newcomer)
    _assert_picture(receiver, newcomer)
    _assert_tone(receiver, newcomer)


def _rtp(stats: list, kind: str) -> Dict[int, dict]:
    return {s["ssrc"]: s for s in stats if s["type"] == kind and s.get("ssrc") is not None}


def test_payload_bytes_pass_unchanged(local_sora, sora, cleanup):
    receiver = Receiver(sora, local_sora.signaling_url, "bytes")
    cleanup.append(receiver)
    sender = Sender(sora, local_sora.signaling_url, "bytes", "VP8")
    cleanup.append(sender)
    _assert_picture(receiver, sender)
    time.sleep(0.5)
    out0, in0 = _rtp(sender.stats(), "outbound-rtp"), _rtp(receiver.stats(), "inbound-rtp")
    frames0 = receiver.frames(sender.connection_id)
    time.sleep(3.0)
    out1, in1 = _rtp(sender.stats(), "outbound-rtp"), _rtp(receiver.stats(), "inbound-rtp")
    frames1 = receiver.frames(sender.connection_id)
    # The sender's media SSRCs (its answer's RTX SSRCs aside: retransmissions end at the server).
    answer = local_sora._registry.session(sender.connection_id).answer_sdp
    rtx = {int(line.split()[2]) for line in answer.splitlines() if line.startswith("a=ssrc-group:FID ")}
    out1 = {ssrc: entry for ssrc, entry in out1.items() if ssrc not in rtx}
    assert len(out1) == 2, out1
    for ssrc, sent in out1.items():
        # The SSRC is kept, so the receiver's inbound stream has the sender's SSRC.
        assert ssrc in in1 and ssrc in in0 and ssrc in out0, (sorted(out1), sorted(in1))
        sent_delta = sent["bytesSent"] - out0[ssrc]["bytesSent"]
        received_delta = in1[ssrc]["bytesReceived"] - in0[ssrc]["bytesReceived"]
        assert sent_delta > 2000, sent_delta
        assert abs(received_delta - sent_delta) <= 0.05 * sent_delta, (sent["kind"], sent_delta, received_delta)
        packets_sent = sent["packetsSent"] - out0[ssrc]["packetsSent"]
        packets_received = in1[ssrc]["packetsReceived"] - in0[ssrc]["packetsReceived"]
        assert abs(packets_received - packets_sent) <= max(5, 0.05 * packets_sent)
    assert frames1 - frames0 >= 60  # ~30 fps decoded


def test_frame_counters_in_stats(local_sora, sora, cleanup):
    """framesEncoded/keyFramesEncoded on the sender, framesDecoded/keyFramesDecoded, the decoded size and rate on
    the receiver's inbound video stream (counted where the sink decodes)."""
    receiver = Receiver(sora, local_sora.signaling_url, "counters")
    cleanup.append(receiver)
    sender = Sender(sora, local_sora.signaling_url, "counters", "VP8")
    cleanup.append(sender)
    _assert_picture(receiver, sender)

    def video(stats: list, kind: str) -> dict:
        return next((s for s in stats if s["type"] == kind and s.get("kind") == "video" and
                     (kind == "outbound-rtp" or "framesDecoded" in s)), {})
    out0, in0 = video(sender.stats(), "outbound-rtp"), video(receiver.stats(), "inbound-rtp")
    frames0 = receiver.frames(sender.connection_id)
    time.sleep(2.0)
    out1, in1 = video(sender.stats(), "outbound-rtp"), video(receiver.stats(), "inbound-rtp")
    frames1 = receiver.frames(sender.connection_id)
    assert out1["keyFramesEncoded"] >= 1 and out1["framesEncoded"] - out0["framesEncoded"] >= 40, (out0, out1)
    assert in1["keyFramesDecoded"] >= 1, in1
    decoded = in1["framesDecoded"] - in0["framesDecoded"]
    assert decoded >= frames1 - frames0 >= 40, (decoded, frames1 - frames0)  # the sink may drop, never invent
    assert decoded <= out1["framesEncoded"] - out0["framesEncoded"] + 5, (decoded, out0, out1)
    assert (in1["frameWidth"], in1["frameHeight"]) == (W, H), in1
    assert 15 < in1["framesPerSecond"] < 40, in1
    assert in1["keyFramesDecoded"] <= in1["framesDecoded"] and out1["keyFramesEncoded"] <= out1["framesEncoded"]


def _server_plis(local_sora, connection_id: str) -> int:
    total = 0
    for entry in local_sora.stats(connection_id) or []:
        if entry.get("type") == "inbound-rtp":
            total += (entry.get("gst-rtpsource-stats") or {}).get("sent-pli-count", 0)
    return total


def test_request_key_frame_sends_a_pli_to_the_sender(local_sora, sora, cleanup):
    receiver = Receiver(sora, local_sora.signaling_url, "kf")
    cleanup.append(receiver)
    sender = Sender(sora, local_sora.signaling_url, "kf", "VP8")
    cleanup.append(sender)
    _assert_picture(receiver, sender)
    sid = sender.connection_id

    def quiet() -> bool:  # no key-frame requests of the server's own for a while
        count = _server_plis(local_sora, sid)
        time.sleep(0.7)
        return _server_plis(local_sora, sid) == count

    assert wait_until(quiet, 8, interval=0)
    before = _server_plis(local_sora, sid)
    assert local_sora.request_key_frame(sid) is True
    assert wait_until(lambda: _server_plis(local_sora, sid) > before, 5), before
    # and through the REST API
    time.sleep(0.6)
    assert wait_until(quiet, 8, interval=0)
    before = _server_plis(local_sora, sid)
    url = urlparse(local_sora.api_url)
    http_conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    body = json.dumps({"channel_id": "kf", "connection_id": sid})
    http_conn.request("POST", "/", body, {"x-sora-target": "Sora_20151104.RequestKeyFrame",
                                          "Content-Type": "application/json"})
    response = http_conn.getresponse()
    assert response.status == 200, response.read()
    http_conn.close()
    assert wait_until(lambda: _server_plis(local_sora, sid) > before, 5), before
    _assert_picture(receiver, sender)


def test_re_offer_goes_over_the_signaling_data_channel(local_sora, sora, cleanup):
    receiver = Receiver(sora, local_sora.signaling_url, "dc", data_channel_signaling=True)
    cleanup.append(receiver)
    assert wait_until(lambda: receiver.rec.of("switched"), 10)
    sender = Sender(sora, local_sora.signaling_url, "dc", "VP8")
    cleanup.append(sender)
    _assert_tracks(receiver, sender)
    _assert_picture(receiver, sender)
    received = [(via, json.loads(text).get("type")) for via, direction, text in receiver.signaling
                if direction == sora_sdk.SoraSignalingDirection.RECEIVED]
    sent = [(via, json.loads(text).get("type")) for via, direction, text in receiver.signaling
            if direction == sora_sdk.SoraSignalingDirection.SENT]
    assert (sora_sdk.SoraSignalingType.DATACHANNEL, "re-offer") in received
    assert (sora_sdk.SoraSignalingType.DATACHANNEL, "re-answer") in sent


class SendRecv(Receiver):
    """A sendrecv client: sends like Sender, receives like Receiver."""

    def __init__(self, sora, url: str, channel_id: str, codec: str, colours) -> None:
        self.colours = colours
        self.video_source = sora.create_video_source()
        self.audio_source = sora.create_audio_source(1, RATE)
        super().__init__(sora, url, channel_id, role="sendrecv", video_source=self.video_source,
                         audio_source=self.audio_source, video_codec_type=codec, video_bit_rate=500)
        self.pump = Pump(self.video_source, self.audio_source, colours)

    def leave(self) -> None:
        self.pump.stop()
        self.conn.disconnect()


def test_sendrecv_clients_receive_each_other(local_sora, sora, cleanup):
    first = SendRecv(sora, local_sora.signaling_url, "mesh", "VP8", COLOURS[0])
    cleanup.append(first)
    second = SendRecv(sora, local_sora.signaling_url, "mesh", "VP8", COLOURS[1])
    cleanup.append(second)
    for me, other in ((first, second), (second, first)):
        _assert_tracks(me, other)
        _assert_picture(me, other)
        _assert_tone(me, other)
        assert me.connection_id not in me.video  # nobody gets their own media back


def _threads() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_sinks_closed_mid_call_leave_no_branch_behind(local_sora, sora, cleanup):
    """A sink closed while the connection goes on takes its branch (queue thread, depayloader, decoder) off the
    track: opening and closing sinks does not add threads, and the sinks that stay keep receiving."""
    sender = Sender(sora, local_sora.signaling_url, "closing")
    cleanup.append(sender)
    receiver = Receiver(sora, local_sora.signaling_url, "closing")
    cleanup.append(receiver)
    sid = sender.connection_id
    assert wait_until(lambda: receiver.frames(sid) >= 5, 15), receiver.frames(sid)
    track = next(t for t in receiver.tracks if t.kind == "video" and t.stream_id == sid)
    before = _threads()
    for _ in range(8):
        got = threading.Event()
        sink = sora_sdk.SoraVideoSink(track)
        sink.on_frame = lambda frame, got=got: got.set()
        assert got.wait(10)
        sink.close()
    assert wait_until(lambda: _threads() <= before + 3, 5), (before, _threads())
    count = receiver.frames(sid)
    assert wait_until(lambda: receiver.frames(sid) >= count + 10, 10), (count, receiver.frames(sid))


def test_pauses_in_the_video_lose_no_packets(local_sora, sora, cleanup):
    """A sender that stops capturing for 0.7 s now and then (longer than any queue on the way holds), with
    frames of several packets: the receiver gets every packet and needs no key frame. Queues bounded in time took
    each pause for a backlog and dropped packets of the first frame after it, in the server's forward and in the
    receiver's sink."""
    video, conn, rec = connected_video_sender(sora, local_sora.signaling_url, "pauses", video_codec_type="VP8",
                                              video_bit_rate=3000)
    receiver = Receiver(sora, local_sora.signaling_url, "pauses", audio=False)
    cleanup.append(receiver)
    paused = threading.Event()
    stop = threading.Event()
    noise = np.random.default_rng(7).integers(0, 256, (8, 480, 640, 3), dtype=np.uint8)  # ~8 KB frames

    def feed() -> None:
        n = 0
        while not stop.wait(1 / 30):
            if not paused.is_set():
                video.on_captured(noise[n % len(noise)])
                n += 1

    feeder = threading.Thread(target=feed, name="test-pauses-feeder", daemon=True)
    feeder.start()
    try:
        sid = rec.connection_id
        assert wait_until(lambda: receiver.frames(sid) >= 10, 15), receiver.frames(sid)

        def counters():
            inbound = [s for s in receiver.stats() if s["type"] == "inbound-rtp" and s["kind"] == "video"]
            outbound = [s for s in json.loads(conn.get_stats())
                        if s["type"] == "outbound-rtp" and s["kind"] == "video"]
            return inbound[0].get("packetsLost", 0), outbound[0].get("keyFramesEncoded", 0)

        time.sleep(1.0)  # past the start's key frames
        before = counters()
        for _ in range(8):
            paused.set()
            time.sleep(0.7)
            paused.clear()
            count = receiver.frames(sid)
            assert wait_until(lambda: receiver.frames(sid) >= count + 10, 10), (count, receiver.frames(sid))
        assert counters() == before, (before, counters())
    finally:
        stop.set()
        feeder.join(5)
        conn.disconnect()
