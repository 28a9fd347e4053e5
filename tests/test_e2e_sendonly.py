"""End to end: our SDK sends real encoded media to the local Sora server over loopback."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

import sora_sdk
from tests.conftest import Recorder, wait_until


def _pump(video, audio, seconds: float) -> int:
    frame = np.zeros((240, 320, 3), np.uint8)
    samples = np.zeros((480, 1), np.int16)
    count = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        frame[:, :, :] = (count * 7) % 256
        frame[100:140, (count * 5) % 280:(count * 5) % 280 + 40] = 255
        video.on_captured(frame)
        audio.on_data(samples)
        count += 1
        time.sleep(1 / 30)
    return count


def _stats(conn) -> list:
    return json.loads(conn.get_stats())


@pytest.mark.parametrize("codec", ["VP8", "VP9", "H264"])
def test_sendonly_video_and_audio_reach_the_server(local_sora, sora, codec):
    video = sora.create_video_source()
    audio = sora.create_audio_source(1, 48000)
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="sendonly", channel_id="e2e",
                                  video_source=video, audio_source=audio, video_codec_type=codec)
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(15), rec.events
    _pump(video, audio, 1.5)
    assert wait_until(lambda: conn.connection_state == "connected", 10)
    stats = _stats(conn)
    transport = [s for s in stats if s["type"] == "transport"]
    assert transport and transport[0]["dtlsState"] == "connected"
    outbound = {s["kind"]: s for s in stats if s["type"] == "outbound-rtp"}
    assert outbound["video"]["bytesSent"] > 0 and outbound["audio"]["bytesSent"] > 0
    codecs = {s["id"]: s for s in stats if s["type"] == "codec"}
    assert codecs[outbound["video"]["codecId"]]["mimeType"] == "video/" + codec
    assert codecs[outbound["audio"]["codecId"]]["mimeType"] == "audio/opus"
    assert outbound["video"]["frameWidth"] == 320 and outbound["video"]["frameHeight"] == 240
    pairs = [s for s in stats if s["type"] in ("local-candidate", "remote-candidate")]
    assert pairs and all(s["address"] == "127.0.0.1" for s in pairs)
    # the server saw the same connection and its media arriving
    listed = local_sora.connections("e2e")
    assert [c["connection_id"] for c in listed] == [rec.connection_id]
    conn.disconnect()
    assert rec.disconnect == (sora_sdk.SoraSignalingErrorCode.CLOSE_SUCCEEDED,
                              "Succeeded to close WebSocket (DC signaling is not enabled)")
    assert rec.of("ws_close") == [(1000, "TYPE-DISCONNECT")]
    assert len(rec.threads) == 1 and threading.main_thread().name not in rec.threads


def test_two_clients_see_each_other_and_leave(local_sora, sora):
    conns = []
    recs = []
    for _ in range(2):
        conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly",
                                      channel_id="pair")
        rec = Recorder(conn)
        conn.connect()
        assert rec.connected.wait(15), rec.events
        conns.append(conn)
        recs.append(rec)
    first, second = recs
    assert wait_until(lambda: any(n.get("event_type") == "connection.created"
                                  and n.get("connection_id") == second.connection_id for n in first.notifies))
    assert second.notifies[0]["channel_connections"] == 2
    conns[1].disconnect()
    assert wait_until(lambda: any(n.get("event_type") == "connection.destroyed"
                                  and n.get("connection_id") == second.connection_id for n in first.notifies))
    conns[0].disconnect()


def test_server_disconnect_api_reaches_on_disconnect(local_sora, sora):
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly", channel_id="api")
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(15)
    local_sora.disconnect(rec.connection_id)
    assert rec.disconnected.wait(10)
    code, message = rec.disconnect
    assert code == sora_sdk.SoraSignalingErrorCode.CLOSE_SUCCEEDED
    assert "DISCONNECTED-API" in message
    with pytest.raises(sora_sdk.SoraInvalidState):
        conn.get_stats()


def test_push_reaches_on_push(local_sora, sora):
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly", channel_id="push")
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(15)
    local_sora.push("push", {"hello": "world"})
    assert wait_until(lambda: rec.of("push"), 10)
    assert json.loads(rec.of("push")[0][0]) == {"type": "push", "data": {"hello": "world"}}
    conn.disconnect()
