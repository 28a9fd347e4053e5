"""Bandwidth feedback of the local server: the OFFICIAL Sora Python SDK (libwebrtc) as a sender reaches and
keeps to its ``video_bit_rate``.

The server's offer to a sending client negotiates transport-wide congestion control (the transport-wide-cc
extmap, ``a=rtcp-fb:<pt> transport-cc``) and carries ``b=AS:<video_bit_rate>`` on the video m-line
(sora_sdk/testing/media.py: receive_caps, bandwidth_offer). GStreamer's rtpsession then sends RTCP
transport-cc feedback for what it receives (counted in the server peer's "sora-rtcp-sent" statistics), so
libwebrtc's delay-based estimate ramps up at once instead of creeping up from its 300 kbps start rate on
receiver reports, and b=AS caps it. Measured (VP8 640x480@30 with camera-like noise): ~880 kbps of 1000
and ~2300 of 2500 within 10 s; without the feedback ~450 and ~350 kbps at 10 s.

Runs like tests/test_official_interop.py (and skips as it does): the official client in a network
namespace, the server on the root-side veth address.
"""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tests import test_official_interop as interop
from tests.conftest import Recorder, wait_until

pytestmark = pytest.mark.timeout(300)

# The fixtures of the interop suite (the official venv, the network namespace, one server per test).
official_python = interop.official_python
netns = interop.netns
env = interop.env
ours = interop.ours

TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
# Camera-like content: the two-colour picture with fresh noise of +-24 on every frame, so that the encoder
# spends what it is allowed (the plain test picture needs ~200 kbps at most).
NOISY_VGA = {"width": 640, "height": 480, "fps": 30, "noise": 24}
REACH = 0.70      # of video_bit_rate, within REACH_S after connection.created
REACH_S = 25.0  # libwebrtc ramps in 2-16 s here; it may sit at its first probe result for ~10 s
CEILING = 1.20    # of video_bit_rate, never above (2 s windows), after reaching
WINDOW = 2.0


def video_section(sdp: str) -> List[str]:
    """The lines of the first video m-section of `sdp`."""
    out: List[str] = []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            if out:
                break
            if line.startswith("m=video"):
                out.append(line)
        elif out:
            out.append(line)
    return out


def rtcp_sent(stats: Optional[List[Dict[str, Any]]]) -> Dict[str, int]:
    entry = next((s for s in stats or [] if s.get("gst-name") == "sora-rtcp-sent"), None)
    assert entry is not None, stats
    return entry


def video_bytes_sent(stats: List[Dict[str, Any]]) -> Optional[int]:
    out = [s for s in stats if s.get("type") == "outbound-rtp" and s.get("kind") == "video"]
    return sum(s.get("bytesSent", 0) for s in out) if out else None


def sender_state(stats: List[Dict[str, Any]]) -> str:
    """What limits the official sender now (for the test's printout)."""
    out = next((s for s in stats if s.get("type") == "outbound-rtp" and s.get("kind") == "video"), {})
    pair = next((s for s in stats if s.get("type") == "candidate-pair" and s.get("availableOutgoingBitrate")), {})
    return "estimate %s target %s %sx%s@%s limited by %s" % (
        pair.get("availableOutgoingBitrate"), out.get("targetBitrate"), out.get("frameWidth"),
        out.get("frameHeight"), out.get("framesPerSecond"), out.get("qualityLimitationReason"))


def window_kbps(samples: List[Tuple[float, int]], end: int) -> Optional[float]:
    """kbps over the WINDOW seconds that end with samples[end]."""
    t1, b1 = samples[end]
    start = next((i for i in range(end, -1, -1) if t1 - samples[i][0] >= WINDOW), None)
    if start is None:
        return None
    t0, b0 = samples[start]
    return (b1 - b0) * 8 / (t1 - t0) / 1000


@pytest.mark.parametrize("rate", [1000, 2500])
def test_official_sender_reaches_and_keeps_to_video_bit_rate(env, rate):
    channel = "bw-%d" % rate
    client = env.official("sendonly", channel, send=dict(NOISY_VGA), video_codec_type="VP8", video_bit_rate=rate)
    cid = client.connected()["connection_id"]
    connected = time.monotonic()

    # the negotiation: b=AS and TWCC offered, TWCC answered
    offer = video_section(client.of("set_offer")[0]["offer"]["sdp"])
    assert "b=AS:%d" % rate in offer, offer
    assert any(l.startswith("a=extmap:") and l.endswith(TWCC_URI) for l in offer), offer
    assert any(l.startswith("a=rtcp-fb:") and l.endswith(" transport-cc") for l in offer), offer
    answers = [e for e in client.of("signaling") if e.get("type") == "answer"]
    answer = video_section(answers[0]["message"]["sdp"])
    assert any(l.startswith("a=extmap:") and l.endswith(TWCC_URI) for l in answer), answer

    server_before = interop.inbound_by_kind(env.server.stats(cid)).get("video", 0)
    samples: List[Tuple[float, int]] = []
    rates: List[Tuple[float, float]] = []  # (seconds since connected, kbps of the window ending there)
    reached = None
    deadline = connected + REACH_S + 5.0
    states = []
    while time.monotonic() < deadline:
        stats = client.request("stats")["stats"]
        sent = video_bytes_sent(stats)
        now = time.monotonic()
        if len(samples) % 4 == 0:
            states.append("%.1fs %s" % (now - connected, sender_state(stats)))
        if sent is not None:
            samples.append((now, sent))
            kbps = window_kbps(samples, len(samples) - 1)
            if kbps is not None:
                rates.append((now - connected, kbps))
                if reached is None and kbps >= REACH * rate:
                    reached = now - connected
                    deadline = min(deadline, max(now + 5.0, connected + 10.0))  # then watch the ceiling
        time.sleep(0.5)
    server_bytes = interop.inbound_by_kind(env.server.stats(cid)).get("video", 0) - server_before
    client_bytes = video_bytes_sent(client.request("stats")["stats"]) or 0  # after the server's count
    server_kbps = server_bytes * 8 / (time.monotonic() - connected) / 1000
    shown = ", ".join("%.1fs %.0f" % r for r in rates)
    print("[result] official VP8 sender, video_bit_rate %d: reached %.0f%% at %s s; kbps by 2 s window: %s; "
          "server received %.0f kbps on average (%d of the sender's %d bytes); %s"
          % (rate, REACH * 100, "%.1f" % reached if reached is not None else "never", shown, server_kbps,
             server_bytes, client_bytes, "; ".join(states)))
    assert reached is not None and reached <= REACH_S, (rate, shown)
    top = max(kbps for _, kbps in rates)
    assert top <= CEILING * rate, (rate, top, shown)

    # the server received what the sender says it sent (the sender's count starts a little earlier), and fed
    # back transport-cc all along (no REMB). Not a share of `rate`: libwebrtc may start at 320x240 on noisy
    # content and its quality scaler then lowers the rate on its own after the ramp (seen once: 757 -> 250 kbps)
    assert 0.8 * client_bytes <= server_bytes <= 1.05 * client_bytes, (rate, server_bytes, client_bytes)
    assert server_kbps <= CEILING * rate, (rate, server_kbps)
    feedback = rtcp_sent(env.server.stats(cid))
    assert feedback["transport-cc"] >= 10 * (time.monotonic() - connected) and feedback["remb"] == 0, feedback
    env.finish(client)


def test_server_feedback_and_clean_forwards(env, ours):
    """The server peer of a sender sends transport-cc feedback as packets arrive; a receiver's offer carries no
    TWCC (its forwards are sent without the sender's header extensions) and it decodes the forward."""
    channel = "bw-feedback"
    client = env.official("sendonly", channel, send=dict(NOISY_VGA), video_codec_type="VP8", video_bit_rate=1000)
    cid = client.connected()["connection_id"]
    assert wait_until(lambda: rtcp_sent(env.server.stats(cid))["transport-cc"] > 0, 10), env.server.stats(cid)
    first = rtcp_sent(env.server.stats(cid))
    time.sleep(2.0)
    second = rtcp_sent(env.server.stats(cid))
    # about one feedback per received video frame (rtpsession sends one at each marker bit)
    assert second["transport-cc"] - first["transport-cc"] >= 20, (first, second)
    assert second["remb"] == 0 and second["receiver-reports"] >= 1, second

    # the official side's estimate left libwebrtc's 300 kbps start rate behind
    pairs = [s for s in client.request("stats")["stats"] if s.get("type") == "candidate-pair"
             and s.get("availableOutgoingBitrate")]
    assert pairs and max(p["availableOutgoingBitrate"] for p in pairs) > 600000, pairs

    receiver = interop.OurReceiver(ours, env.server.signaling_url, channel)
    offer = [e[1] for e in receiver.rec.events if e[0] == "set_offer"][0]
    assert TWCC_URI not in offer and "b=AS:" not in offer
    assert wait_until(lambda: receiver.frames(cid) >= 10, 15), receiver.video
    (info,) = [c for c in env.server.connections(channel) if c["role"] == "recvonly"]
    assert rtcp_sent(env.server.stats(info["connection_id"]))["transport-cc"] == 0
    env.finish(client)


def test_our_sender_is_offered_twcc_and_b_as(local_sora, sora):
    """Without the official SDK: the offer to our SDK carries b=AS and the TWCC extmap; the server sends
    transport-cc feedback exactly when our SDK's answer took the extmap up (its packets then carry the
    transport-wide numbers), and the media flows either way."""
    import numpy as np

    video = sora.create_video_source()
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="sendonly", channel_id="bw-ours",
                                  video_source=video, audio=False, video_codec_type="VP8", video_bit_rate=700)
    rec = Recorder(conn)
    answers: List[str] = []

    def on_signaling(via, direction, text) -> None:
        message = json.loads(text)
        if message.get("type") == "answer":
            answers.append(message["sdp"])

    conn.on_signaling_message = on_signaling
    conn.connect()
    try:
        assert rec.connected.wait(15), rec.events
        offer = video_section(json.loads(rec.of("set_offer")[0][0])["sdp"])
        assert "b=AS:700" in offer and any(l.endswith(TWCC_URI) for l in offer), offer
        frame = np.zeros((240, 320, 3), np.uint8)
        cid = rec.connection_id

        def received() -> int:
            return interop.inbound_by_kind(local_sora.stats(cid)).get("video", 0)

        deadline = time.monotonic() + 10
        while received() == 0 and time.monotonic() < deadline:
            frame[:] = (frame + 7) % 255
            video.on_captured(frame)
            time.sleep(1 / 30)
        assert received() > 0
        time.sleep(0.5)
        feedback = rtcp_sent(local_sora.stats(cid))
        twcc = any(l.startswith("a=extmap:") and l.endswith(TWCC_URI) for l in video_section(answers[0]))
        print("[result] our SDK answers the TWCC extmap: %s; server feedback %s" % (twcc, feedback))
        assert (feedback["transport-cc"] > 0) == twcc and feedback["remb"] == 0, (twcc, feedback)
    finally:
        conn.disconnect()


def test_re_offers_keep_b_as(local_sora, sora):
    """A sendrecv connection's re-offers (a sender joined) carry b=AS again: a description without it would
    lift a libwebrtc sender's limit."""
    import numpy as np

    offers: List[str] = []
    conns = []
    try:
        for i in range(2):
            video = sora.create_video_source()
            conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="sendrecv",
                                          channel_id="bw-reoffer", video_source=video, audio=False,
                                          video_codec_type="VP8", video_bit_rate=600)
            rec = Recorder(conn)
            if i == 0:
                def on_signaling(via, direction, text) -> None:
                    message = json.loads(text)
                    if message.get("type") == "re-offer":
                        offers.append(message["sdp"])
                conn.on_signaling_message = on_signaling
            conns.append(conn)
            conn.connect()
            assert rec.connected.wait(15), rec.events
            video.on_captured(np.zeros((240, 320, 3), np.uint8))
        assert wait_until(lambda: offers, 15)
        assert "b=AS:600" in video_section(offers[0]), offers[0]
    finally:
        for conn in conns:
            conn.disconnect()
