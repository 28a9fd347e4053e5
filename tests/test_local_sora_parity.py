"""The local server's parity behaviours (issue 12, items 1-4) with our SDK as the client.

The official SDK's side of the same behaviours is tests/test_official_parity.py; item 5 (rejected
m-lines) is tests/test_local_sora_rejected_mlines.py.
"""
from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import pytest

import sora_sdk
from sora_sdk.testing.codec_sdp import OpusParamsError, check_opus_params, opus_fmtp, sora_codec_lines
from tests.conftest import Recorder, wait_until
from tests.media_pump import RATE, Pump

pytestmark = pytest.mark.timeout(120)


def _offer(rec) -> dict:
    return json.loads(rec.of("set_offer")[0][0])


def _sender(sora, url, channel, **options):
    video = sora.create_video_source()
    audio = sora.create_audio_source(1, RATE)
    conn = sora.create_connection(signaling_urls=[url], role="sendonly", channel_id=channel, video_source=video,
                                  audio_source=audio, **options)
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(15), rec.events
    return conn, rec, Pump(video, audio, [(10, 200, 30), (200, 10, 30)])


# --------------------------------------------------------------------------- 1 + 2
def test_opus_params_reach_our_client_in_the_offer(local_sora, sora):
    params = {"maxplaybackrate": 16000, "stereo": False, "sprop_stereo": False, "usedtx": True, "ptime": 20}
    conn, rec, pump = _sender(sora, local_sora.signaling_url, "opus-ours", video_codec_type="VP8",
                                         audio_opus_params=params)
    try:
        sdp = _offer(rec)["sdp"]
        assert "a=rtpmap:111 opus/48000/2" in sdp.splitlines() and "OPUS" not in sdp
        fmtp = next(l for l in sdp.splitlines() if l.startswith("a=fmtp:111 "))
        assert fmtp == "a=fmtp:111 minptime=10;useinbandfec=1;stereo=0;sprop-stereo=0;maxplaybackrate=16000;" \
                       "ptime=20;usedtx=1", fmtp
        def audio_codec():
            stats = json.loads(conn.get_stats())
            codecs = {s["id"]: s for s in stats if s["type"] == "codec"}
            out = [s for s in stats if s["type"] == "outbound-rtp" and s["kind"] == "audio" and "codecId" in s]
            return codecs.get(out[0]["codecId"]) if out else None

        assert wait_until(audio_codec, 10), json.loads(conn.get_stats())
        assert audio_codec()["mimeType"] == "audio/opus"
    finally:
        pump.stop()
        conn.disconnect()


def test_opus_fmtp_rules():
    assert opus_fmtp(None) == "minptime=10;useinbandfec=1"
    assert opus_fmtp({"channels": 1}) == "minptime=10;useinbandfec=1;stereo=0;sprop-stereo=0"
    assert opus_fmtp({"channels": 2, "stereo": False}) == "minptime=10;useinbandfec=1;stereo=0;sprop-stereo=1"
    assert opus_fmtp({"useinbandfec": False, "minptime": 20}) == "minptime=20;useinbandfec=0"
    for bad in ("x", [], {"maxplaybackrate": 7999}, {"usedtx": 1}, {"ptime": True}, {"channels": 3}):
        with pytest.raises(OpusParamsError):
            check_opus_params(bad)
    assert check_opus_params({"unknown": 1, "usedtx": True}) == {"usedtx": True}
    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 OPUS/48000/2\r\na=fmtp:111 old=1\r\n"
           "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 RTX/90000\r\n"
           "a=fmtp:97 apt=96\r\n")
    out = sora_codec_lines(sdp, {"usedtx": True}).splitlines()
    assert out[2:4] == ["a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1"], out
    assert "a=fmtp:111 old=1" not in out and "a=rtpmap:97 rtx/90000" in out and "a=fmtp:97 apt=96" in out


def test_bad_opus_params_close_the_connection(local_sora, sora):
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="sendonly", channel_id="bad-opus",
                                  audio_opus_params={"maxplaybackrate": "fast"})
    rec = Recorder(conn)
    conn.connect()
    assert rec.disconnected.wait(15), rec.events
    assert rec.of("ws_close") and rec.of("ws_close")[0][1] == "INVALID-AUDIO-OPUS-PARAMS", rec.events


# --------------------------------------------------------------------------- 3
def _api(local_sora, target, body):
    url = urlparse(local_sora.api_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    try:
        conn.request("POST", "/", json.dumps(body), {"x-sora-target": target, "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def test_rest_api_versions_with_our_sender(local_sora, sora):
    conn, rec, pump = _sender(sora, local_sora.signaling_url, "api-ours", video_codec_type="VP8")
    try:
        body = {"channel_id": "api-ours", "connection_id": rec.connection_id}

        def plis():
            out = [s for s in json.loads(conn.get_stats()) if s["type"] == "outbound-rtp" and s["kind"] == "video"]
            return out[0].get("pliCount", 0) if out else 0

        # (the server forwards a request to the tracks that reached it: wait for the video one)
        media = local_sora._registry.channel("api-ours").media
        assert wait_until(lambda: "video" in getattr(media._senders.get(rec.connection_id), "tracks", {}), 10)
        before = plis()
        assert _api(local_sora, "Sora_20241218.RequestKeyFrame", body) == (200, {})
        assert wait_until(lambda: plis() > before, 5), (before, plis())  # our sender got the PLI
        status, stats = _api(local_sora, "Sora_20170529.GetStatsConnection", body)
        assert status == 200 and isinstance(stats, list) and stats
        status, listed = _api(local_sora, "Sora_20201013.ListChannelConnections", {"channel_id": "api-ours"})
        assert status == 200 and [c["connection_id"] for c in listed] == [rec.connection_id]
        status, _ = _api(local_sora, "Sora_20160711.PushChannel", {"channel_id": "api-ours", "data": {"n": 1}})
        assert status == 200 and wait_until(lambda: rec.of("push"), 5)
        for target in ("Sora_20170529.RequestKeyFrame", "Sora_20241218.Nope", "RequestKeyFrame"):
            status, reply = _api(local_sora, target, body)
            assert status == 400 and reply["error_type"] == "INVALID-TARGET" and reply["message"], (target, reply)
        assert _api(local_sora, "Sora_20151104.DisconnectConnection", body) == (200, {})
        assert rec.disconnected.wait(10)
        assert "DISCONNECTED-API" in rec.disconnect[1], rec.disconnect
    finally:
        pump.stop()
        conn.disconnect()


# --------------------------------------------------------------------------- 4
@pytest.mark.parametrize("codec", ["VP9", "AV1"])
def test_our_vp9_and_av1_simulcast_get_l1t1_and_send_three_layers(local_sora, sora, codec):
    conn, rec, pump = _sender(sora, local_sora.signaling_url, "sc-" + codec, video_codec_type=codec,
                                         simulcast=True, video_bit_rate=900)
    try:
        offer = _offer(rec)
        assert [e.get("scalabilityMode") for e in offer["encodings"]] == ["L1T1"] * 3, offer["encodings"]

        def layers():
            return {s["rid"]: s for s in json.loads(conn.get_stats())
                    if s["type"] == "outbound-rtp" and "rid" in s and s.get("packetsSent", 0) > 0}

        assert wait_until(lambda: sorted(layers()) == ["r0", "r1", "r2"], 15), layers()
        assert all(s["scalabilityMode"] == "L1T1" for s in layers().values()), layers()
        media = local_sora._registry.channel("sc-" + codec).media
        assert wait_until(lambda: media.wait_idle() and sorted(
            media._senders[rec.connection_id].layers) == ["r0", "r1", "r2"], 10)
    finally:
        pump.stop()
        conn.disconnect()
