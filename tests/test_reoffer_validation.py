"""Re-offers that cannot follow the current session end the connection: ICE_FAILED for a changed mid or removed
m-lines (as libwebrtc's SetRemoteDescription refuses them; webrtcbin would abort the process on a changed mid:
`_create_answer_task: assertion failed: (g_strcmp0 (mid, last_mid) == 0)`), INTERNAL_ERROR for a NUL; and
two directions on one m-line. The local server, given an answer whose direction RFC 3264 does not allow for its
offer, ends that connection."""
from __future__ import annotations

import json

import pytest

import sora_sdk
from tests.conftest import Recorder


@pytest.mark.parametrize("change,code,expected", [
    (lambda sdp: sdp.replace("a=mid:audio0", "a=mid:zzz", 1), "ICE_FAILED", "changes the mid of m-line 0"),
    (lambda sdp: sdp.split("m=video")[0], "ICE_FAILED", "removes m-lines"),
    (lambda sdp: sdp.replace("a=rtcp-mux", "a=rtcp-mux\x00", 1), "INTERNAL_ERROR", "NUL character"),
    # two directions on one m-line: webrtcbin 1.26 reads it as none and aborts when the answer is applied
    (lambda sdp: sdp.replace("a=mid:audio0", "a=mid:audio0\r\na=inactive", 1), "ICE_FAILED",
     "m-line 0 has 2 direction attributes"),
])
def test_bad_reoffer_ends_the_connection(local_sora, sora, change, code, expected):
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly", channel_id="reoffer")
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(15), rec.events
    offer = json.loads(rec.of("set_offer")[0][0])["sdp"]
    bad = change(offer)
    assert bad != offer
    conn._context.post(lambda: conn._handle_server_input("a WebSocket message", conn._on_ws_message, conn._ws,
                                                         json.dumps({"type": "re-offer", "sdp": bad}).encode()))
    assert rec.disconnected.wait(10), rec.events
    got, message = rec.of("disconnect")[0]
    assert got == sora_sdk.SoraSignalingErrorCode[code] and expected in message, (got, message)


def test_local_sora_refuses_an_answer_direction_the_offer_does_not_allow(local_sora, sora):
    """A re-answer that answers the server's sendonly m-line with sendrecv (RFC 3264 allows recvonly or inactive)
    ends that connection (INVALID-ANSWER) instead of reaching webrtcbin; the server goes on serving."""
    conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly", channel_id="badans")
    rec = Recorder(conn)
    conn.connect()
    assert rec.connected.wait(15), rec.events
    answer = conn._descriptions[1]
    assert "a=recvonly" in answer
    bad = answer.replace("a=recvonly", "a=sendrecv", 1)
    conn._context.post(lambda: conn._send_ws(json.dumps({"type": "re-answer", "sdp": bad})))
    assert rec.disconnected.wait(10), rec.events
    other = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="recvonly", channel_id="badans")
    rec_other = Recorder(other)
    other.connect()
    assert rec_other.connected.wait(15), rec_other.events
    other.disconnect()
