"""Audio RTP timing as a libwebrtc receiver sees it (issue 11, item 1).

Our SDK sends Opus through the local server to the OFFICIAL Sora Python SDK (libwebrtc, in a network
namespace, see tests/official_peer.py). libwebrtc's NetEq conceals every sample it has to invent, and counts
them in its own inbound-rtp `concealedSamples` / `totalSamplesReceived`. When our RTP timestamps followed the
wall-clock time of each push instead of the sample count, it concealed 30 % of the samples.

Each case pushes a 440 Hz sine in real time in chunks of one size (10, 20, 100 ms, 441 samples) or with pauses,
and reads the receiver's concealment over a measured window after a warm-up.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tests.conftest import Recorder, wait_until
from tests.media_pump import RATE, AudioPusher, assert_concealment, measure_concealment
from tests.test_official_interop import Env, env, netns, official_python, ours  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(300)

WARMUP = 1.5  # s before the measured window (NetEq's start, the first packets' jitter estimate)
WINDOW = 5.0  # s measured


def audio_inbound(stats: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    for entry in stats:
        if entry.get("type") == "inbound-rtp" and entry.get("kind") == "audio":
            return entry
    return None


def concealment(env: Env, ours, channel: str, chunk: int, pauses: Tuple[Tuple[float, float], ...] = (),
                warmup: float = WARMUP, jitter: float = 0.0, rate: int = RATE) -> Dict[str, float]:
    """Send audio pushed in `chunk`-sample pieces to an official recvonly; its concealment over WINDOW s."""
    sora, cleanup = ours
    audio = sora.create_audio_source(1, rate)
    conn = sora.create_connection(signaling_urls=[env.server.signaling_url], role="sendonly", channel_id=channel,
                                  audio_source=audio, video=False)
    rec = Recorder(conn)
    cleanup.append(conn.disconnect)
    conn.connect()
    assert rec.connected.wait(15), rec.events
    client = env.official("recvonly", channel, recv=True)
    client.connected()
    sid = rec.connection_id
    client.wait("track", lambda e: e["kind"] == "audio" and e["stream_id"] == sid, 15)
    pusher = AudioPusher(audio, chunk, pauses, jitter, rate)
    cleanup.append(pusher.stop)

    def inbound() -> Optional[Dict[str, Any]]:
        return audio_inbound(client.request("stats")["stats"])

    def read():
        stats = inbound()
        return stats["totalSamplesReceived"], stats["concealedSamples"]

    assert wait_until(lambda: (inbound() or {}).get("totalSamplesReceived", 0) > 0, 10), client.describe()
    time.sleep(warmup)
    result = measure_concealment(read, pusher, WINDOW)
    pusher.stop()
    print("[audio timing] libwebrtc receiver, %s: %s" % (channel, result))
    env.finish(client)
    return result


@pytest.mark.parametrize("chunk,jitter", [(480, 0.0), (960, 0.0), (4800, 0.0), (441, 0.0), (960, 0.06)],
                         ids=["10ms", "20ms", "100ms", "441samples", "20ms-jitter60ms"])
def test_libwebrtc_conceals_under_one_percent(env, ours, chunk, jitter):
    result = concealment(env, ours, "audio-timing-%d-%d" % (chunk, jitter * 1000), chunk, jitter=jitter)
    assert_concealment(result)


def test_libwebrtc_conceals_under_one_percent_with_pauses(env, ours):
    """Pauses in pushing (the application stops capturing): the timeline restarts after each one.

    The receiver conceals while nothing arrives, so the pauses fall before the measured window; the window
    checks that the stream is clean again after them (a timeline left behind by the pauses shows up as a
    jitter buffer that keeps stretching and squeezing)."""
    pauses = ((0.3, 0.25), (0.6, 0.5), (0.9, 0.15), (1.2, 0.04), (1.25, 0.3))
    result = concealment(env, ours, "audio-timing-pauses", 960, pauses, warmup=sum(p for _, p in pauses) + 2.0)
    assert_concealment(result)


@pytest.mark.parametrize("rate,chunk", [(44100, 441), (16000, 160)], ids=["44.1kHz-10ms", "16kHz-10ms"])
def test_libwebrtc_conceals_under_one_percent_resampled(env, ours, rate, chunk):
    """A source at another rate (resampled to Opus's 48 kHz on the way): the timeline counts its samples."""
    result = concealment(env, ours, "audio-timing-%d" % rate, chunk, rate=rate)
    assert_concealment(result)
