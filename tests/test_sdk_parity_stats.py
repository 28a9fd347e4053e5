"""Our SDK's statistics as libwebrtc reports them (issue 12, items 6, 8, 9; item 10 is in test_simulcast.py).

* ``codec`` entries: one per payload type in use, sent and received, with mimeType, clockRate, payloadType
  (and sdpFmtpLine when the description has one); inbound-rtp / outbound-rtp ``codecId`` points to it.
* outbound video ``qualityLimitationDurations`` (seconds in none / cpu / bandwidth / other) and
  ``qualityLimitationResolutionChanges``.
* ``targetBitrate``: the encoder's target, the bandwidth controller's allocation less the packet overhead,
  so strictly below the cap (``video_bit_rate``).

The same fields from the official SDK (libwebrtc) are checked in tests/test_official_parity.py.
"""
from __future__ import annotations

import json
import threading
import time

import pytest

import sora_sdk
from sora_sdk.enums import SoraDegradationPreference
from tests.conftest import Recorder, wait_until
from tests.media_pump import RATE, Pump
from tests.test_bandwidth_estimation import Frames

from scripted_server import (answer, expect, hang_guard, make_client, make_server, notify_created,  # noqa: F401
                             offer, server_context, sora)

pytestmark = pytest.mark.timeout(120)


def _stats(conn) -> list:
    return json.loads(conn.get_stats())


def test_codec_entries_for_every_stream_sent_and_received(local_sora):
    with sora_sdk.Sora() as instance:
        video = instance.create_video_source()
        audio = instance.create_audio_source(1, RATE)
        sender = instance.create_connection(signaling_urls=[local_sora.signaling_url], role="sendonly",
                                            channel_id="codecs", video_source=video, audio_source=audio,
                                            video_codec_type="VP9", video_bit_rate=300)
        srec = Recorder(sender)
        sender.connect()
        assert srec.connected.wait(15), srec.events
        pump = Pump(video, audio, [(10, 200, 30), (200, 10, 30)])
        receiver = instance.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly",
                                              channel_id="codecs")
        rrec = Recorder(receiver)
        sinks = []
        receiver.on_track = lambda track: sinks.append(
            sora_sdk.SoraVideoSink(track) if track.kind == "video" else sora_sdk.SoraAudioSink(track, RATE, 1))
        receiver.connect()
        try:
            assert rrec.connected.wait(15), rrec.events

            def inbound():
                stats = _stats(receiver)
                return stats, {s["kind"]: s for s in stats if s["type"] == "inbound-rtp"
                               and s.get("packetsReceived", 0) > 0}

            assert wait_until(lambda: len(inbound()[1]) == 2, 15), inbound()
            for conn, direction, want in ((receiver, "inbound-rtp", {"audio": (111, 48000), "video": (98, 90000)}),
                                          (sender, "outbound-rtp", {"audio": (111, 48000), "video": (98, 90000)})):
                stats = _stats(conn)
                codecs = {s["id"]: s for s in stats if s["type"] == "codec"}
                streams = {s["kind"]: s for s in stats if s["type"] == direction}
                assert sorted(streams) == ["audio", "video"], streams
                for kind, (pt, clock) in want.items():
                    codec = codecs[streams[kind]["codecId"]]
                    assert codec["payloadType"] == pt and codec["clockRate"] == clock, (direction, codec)
                    assert codec["mimeType"] == {"audio": "audio/opus", "video": "video/VP9"}[kind], codec
                # one codec entry per payload type and direction
                assert len(codecs) == len({(c["payloadType"]) for c in codecs.values()}), codecs
            # the received Opus carries the offer's a=fmtp (the local server's minptime=10;useinbandfec=1)
            stats, streams = inbound()
            codecs = {s["id"]: s for s in stats if s["type"] == "codec"}
            assert codecs[streams["audio"]["codecId"]]["sdpFmtpLine"] == "minptime=10;useinbandfec=1"
            assert codecs[streams["audio"]["codecId"]]["channels"] == 2
        finally:
            pump.stop()
            receiver.disconnect()
            sender.disconnect()
            sinks.clear()


def test_target_bitrate_and_quality_limitation_fields(sora, make_server, make_client):
    """video_bit_rate 800, MAINTAIN_FRAMERATE; the receiver's REMB drops to 120 kbps: the controller halves
    the picture; the stats account the time in "bandwidth" and count the resolution change."""
    release = threading.Event()
    server = make_server([expect("connect"), offer(audio=False), answer(), notify_created(),
                          lambda s: release.wait(40)])
    video = sora.create_video_source()
    conn, _ = make_client(server, role="sendonly", video_source=video, video_codec_type="VP8", video_bit_rate=800,
                          degradation_preference=SoraDegradationPreference.MAINTAIN_FRAMERATE)
    frames = Frames(video.on_captured)
    try:
        conn.connect()
        session = server.wait_session()
        assert wait_until(lambda: conn.connection_state == "connected", 10), conn.connection_state

        def video_out() -> dict:
            return next((s for s in _stats(conn) if s["type"] == "outbound-rtp" and s["kind"] == "video"), {})

        assert wait_until(lambda: video_out().get("packetsSent", 0) > 30
                          and video_out().get("qualityLimitationDurations", {}).get("none", 0) > 1.0, 10), video_out()
        out = video_out()
        # libwebrtc's targetBitrate: strictly below the 800 kbps cap (the packet overhead is not the encoder's)
        assert 700_000 < out["targetBitrate"] < 800_000, out
        durations = out["qualityLimitationDurations"]
        assert sorted(durations) == ["bandwidth", "cpu", "none", "other"], durations
        assert durations["bandwidth"] == durations["cpu"] == durations["other"] == 0.0, durations
        assert out["qualityLimitationReason"] == "none" and out["qualityLimitationResolutionChanges"] == 0, out
        width = out["frameWidth"]

        assert wait_until(lambda: session.peer is not None, 5)
        cut = time.monotonic()
        session.peer.set_remb(120_000)
        assert wait_until(lambda: video_out().get("qualityLimitationReason") == "bandwidth", 5), video_out()
        assert wait_until(lambda: video_out().get("frameWidth", width) < width, 10), video_out()
        time.sleep(1.0)
        out = video_out()
        elapsed = time.monotonic() - cut
        assert out["qualityLimitationResolutionChanges"] >= 1, out
        assert 0.8 <= out["qualityLimitationDurations"]["bandwidth"] <= elapsed + 0.5, (elapsed, out)
        assert 90_000 <= out["targetBitrate"] < 120_000, out
        # the durations only grow, and account for the time the stream has been up
        before = out["qualityLimitationDurations"]
        time.sleep(0.6)
        after = video_out()["qualityLimitationDurations"]
        assert all(after[k] >= before[k] for k in before) and sum(after.values()) > sum(before.values()), \
            (before, after)
    finally:
        release.set()
        frames.stop()
        conn.disconnect()
