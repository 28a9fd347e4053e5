"""RTCP that a peer must send on every engine version (issue 16).

GStreamer 1.26 sends no RTCP at all for an RTP session whose send branches were linked after the pipeline started
(send-time sender reports need the pipeline latency, which such branches never get): no sender report, and no PLI
when a receiving sink asks for a key frame, so a sendrecv client that joined after the other sender's key frame
decoded nothing. The shim times sender reports from capture instead; these tests read the RTCP the peers actually
sent (the engine stats' "sora-rtcp-sent" counts, csrc/src/rtcpfb.c).
"""
from __future__ import annotations

import time

from tests.conftest import wait_until
from tests.test_local_sora_media import COLOURS, Sender, SendRecv, cleanup  # noqa: F401 (cleanup: fixture)


def _rtcp_sent(conn) -> dict:
    raw = conn._peer.get_stats()
    return next((s for s in raw if s.get("gst-name") == "sora-rtcp-sent"), {})


def test_a_sender_sends_sender_reports(local_sora, sora, cleanup):  # noqa: F811
    sender = Sender(sora, local_sora.signaling_url, "rtcp-sr")
    cleanup.append(sender)
    assert wait_until(lambda: _rtcp_sent(sender.conn).get("sender-reports", 0) >= 2, 15), _rtcp_sent(sender.conn)


def test_a_sendrecv_client_that_joins_late_asks_for_a_key_frame(local_sora, sora, cleanup):  # noqa: F811
    first = SendRecv(sora, local_sora.signaling_url, "rtcp-pli", "VP8", COLOURS[0])
    cleanup.append(first)
    time.sleep(2.0)  # the first sender's opening key frame is long gone when the second one joins
    second = SendRecv(sora, local_sora.signaling_url, "rtcp-pli", "VP8", COLOURS[1])
    cleanup.append(second)
    sid = first.connection_id
    assert wait_until(lambda: second.frames(sid) >= 10, 15), (second.frames(sid), _rtcp_sent(second.conn))
    sent = _rtcp_sent(second.conn)
    # a key-frame request went out: PLI, or FIR when the depayloader asked for all headers
    assert sent.get("pli", 0) + sent.get("fir", 0) >= 1 and sent.get("sender-reports", 0) >= 1, sent
