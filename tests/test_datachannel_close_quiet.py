"""A normal close of a data-channel session logs nothing at WARNING (issue 11, item 6).

The local server logged "engine error: Could not write to resource. (sctpenc1)" at the end of every
data-channel session: once the client has gone, its SCTP encoder's writes fail, which is how a connection ends.
"""
from __future__ import annotations

import logging

import pytest

from tests.conftest import Recorder, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("how", ["client-disconnect", "server-disconnect"])
def test_normal_close_logs_no_warning(local_sora, sora, caplog, how):
    caplog.set_level(logging.DEBUG, logger="sora_sdk")
    conns = []
    for _ in range(2):
        conn = sora.create_connection(signaling_urls=[local_sora.signaling_url], role="sendrecv",
                                      channel_id="quiet-close", audio=False, video=False,
                                      data_channel_signaling=True,
                                      data_channels=[{"label": "#chat", "direction": "sendrecv"}])
        rec = Recorder(conn)
        conn.connect()
        assert rec.connected.wait(15), rec.events
        assert wait_until(lambda: rec.of("switched"), 10), rec.events
        conns.append((conn, rec))
    assert conns[0][0].send_data_channel("#chat", b"hello") is True
    assert wait_until(lambda: ("#chat", b"hello") in conns[1][1].of("message"))
    for conn, rec in conns:
        if how == "client-disconnect":
            conn.disconnect()
        else:
            assert local_sora.disconnect(rec.connection_id)
        assert wait_until(lambda: rec.of("disconnect"), 15), rec.events
    assert wait_until(lambda: not local_sora.connections("quiet-close"), 10)
    # (the engine's late write errors arrive after the session ended)
    wait_until(lambda: False, 1.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, warnings
