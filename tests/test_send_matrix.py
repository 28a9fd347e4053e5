"""Every combination of sources, `video` / `audio` options and role connects (issue 11, item 2).

A sender with only a video source once failed with "set direction: no transceiver at m-line 1": the C shim
took webrtcbin's transceiver *index* for the m-line. The official SDK connects in every combination and sends
what it has a source for, leaving the other m-lines without a track (`a=inactive` in its answer when it has
nothing to send or receive there, signaling.md section 5).

For each case (video=False with audio=False excepted: the server refuses it, for the official SDK too): one
short connection to LocalSora; the answer sends (a=sendonly/sendrecv with a=ssrc) exactly the
m-lines that have a source and a sending role, and every kind sent reaches the server as RTP.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(120)

ROLES = ["sendonly", "sendrecv", "recvonly"]
OPTIONS = [None, True, False]  # video= / audio=: left at its default, True, False
CASES = list(itertools.product([True, False], [True, False], OPTIONS, OPTIONS, ROLES))


def case_id(case) -> str:
    vsrc, asrc, video, audio, role = case
    return "%s-%s-video%s-audio%s-%s" % ("vsrc" if vsrc else "novsrc", "asrc" if asrc else "noasrc",
                                         "Default" if video is None else video,
                                         "Default" if audio is None else audio, role)


@pytest.fixture(scope="module")
def server():
    from sora_sdk.testing import LocalSora

    with LocalSora() as instance:
        yield instance


@pytest.fixture(scope="module")
def sora():
    import sora_sdk

    with sora_sdk.Sora() as instance:
        yield instance


def media_sections(sdp: str) -> List[Dict[str, Any]]:
    """Per m-line of `sdp`: kind, direction, whether it announces an SSRC."""
    out: List[Dict[str, Any]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            out.append({"kind": line[2:].split()[0], "direction": "sendrecv", "ssrc": False})
        elif out and line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            out[-1]["direction"] = line[2:]
        elif out and line.startswith("a=ssrc:"):
            out[-1]["ssrc"] = True
    return out


def inbound_kinds(stats: Optional[List[Dict[str, Any]]]) -> Dict[str, int]:
    """kind -> bytes the server received (its inbound-rtp entries; the kind from the RTP clock rate)."""
    out: Dict[str, int] = {}
    for entry in stats or []:
        source = entry.get("gst-rtpsource-stats") if entry.get("type") == "inbound-rtp" else None
        kind = {48000: "audio", 90000: "video"}.get(source.get("clock-rate")) if isinstance(source, dict) else None
        if kind and isinstance(entry.get("bytes-received"), int):
            out[kind] = max(out.get(kind, 0), entry["bytes-received"])
    return out


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_every_combination_connects(server, sora, case):
    vsrc, asrc, video, audio, role = case
    kwargs: Dict[str, Any] = {}
    video_source = sora.create_video_source() if vsrc else None
    audio_source = sora.create_audio_source(1, 48000) if asrc else None
    if video_source is not None:
        kwargs["video_source"] = video_source
    if audio_source is not None:
        kwargs["audio_source"] = audio_source
    if video is not None:
        kwargs["video"] = video
    if audio is not None:
        kwargs["audio"] = audio
    channel = "matrix-" + case_id(case)
    conn = sora.create_connection(signaling_urls=[server.signaling_url], role=role, channel_id=channel,
                                  **kwargs)
    events: List[Any] = []
    connected = threading.Event()
    ended = threading.Event()
    state: Dict[str, Any] = {}

    def on_set_offer(text: str) -> None:
        state["offer"] = json.loads(text)

    def on_notify(text: str) -> None:
        message = json.loads(text)
        if message.get("event_type") == "connection.created" and \
                message.get("connection_id") == (state.get("offer") or {}).get("connection_id"):
            connected.set()

    def on_signaling_message(via, direction, text: str) -> None:
        message = json.loads(text)
        if message.get("type") == "answer":
            state["answer"] = message["sdp"]

    def on_disconnect(code, message) -> None:
        events.append((code, message))
        ended.set()
        connected.set()

    conn.on_set_offer = on_set_offer
    conn.on_notify = on_notify
    conn.on_signaling_message = on_signaling_message
    conn.on_disconnect = on_disconnect
    conn.connect()
    try:
        if video is False and audio is False:
            # nothing to negotiate: the server refuses the connect (LocalSora as Sora), the client reports it
            assert ended.wait(15), events
            assert "INVALID-AUDIO-VIDEO" in events[0][1] and "local track" not in events[0][1], events
            return
        assert connected.wait(15) and not ended.is_set(), events
        offer = media_sections(state["offer"]["sdp"])
        answer = media_sections(state["answer"])
        assert [m["kind"] for m in answer] == [m["kind"] for m in offer]
        sends = role in ("sendonly", "sendrecv")
        expected = set()
        for kind, source, enabled in (("video", video_source, video), ("audio", audio_source, audio)):
            if sends and source is not None and enabled is not False:
                expected.add(kind)
        for offered, answered in zip(offer, answer):
            if offered["kind"] not in ("audio", "video"):
                continue
            sending = answered["direction"] in ("sendonly", "sendrecv")
            assert sending == (offered["kind"] in expected), (offered, answered, expected)
            assert not sending or answered["ssrc"], answered  # (libwebrtc receivers want a=ssrc / a=msid)
            if offered["direction"] == "recvonly" and not sending:
                assert answered["direction"] == "inactive", (offered, answered)  # as the official answers
        # what is sent reaches the server
        assert {m["kind"] for m in offer if m["kind"] in expected} == expected, (offer, expected)
        if expected:
            cid = state["offer"]["connection_id"]
            frame = np.full((48, 64, 3), 128, np.uint8)
            chunk = np.zeros((960, 1), np.int16)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and set(inbound_kinds(server.stats(cid))) < expected:
                for _ in range(3):
                    if video_source is not None:
                        video_source.on_captured(frame)
                    if audio_source is not None:
                        audio_source.on_data(chunk)
                    time.sleep(0.02)
            assert expected <= set(k for k, n in inbound_kinds(server.stats(cid)).items() if n > 0), \
                (expected, inbound_kinds(server.stats(cid)))
    finally:
        conn.disconnect()
    assert wait_until(ended.is_set, 10)
