"""Re-offers that cannot follow the current session end the connection: ICE_FAILED for a changed mid or removed
m-lines (as libwebrtc's SetRemoteDescription refuses them; webrtcbin would abort the process on a changed mid:
`_create_answer_task: assertion failed: (g_strcmp0 (mid, last_mid) == 0)`), INTERNAL_ERROR for a NUL."""
from __future__ import annotations

import json

import pytest

import sora_sdk
from tests.conftest import Recorder


@pytest.mark.parametrize("change,code,expected", [
    (lambda sdp: sdp.replace("a=mid:audio0", "a=mid:zzz", 1), "ICE_FAILED", "changes the mid of m-line 0"),
    (lambda sdp: sdp.split("m=video")[0], "ICE_FAILED", "removes m-lines"),
    (lambda sdp: sdp.replace("a=rtcp-mux", "a=rtcp-mux\x00", 1), "INTERNAL_ERROR", "NUL character"),
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
