"""The REST API of the local Sora server.

Requests are ``POST`` with the header ``x-sora-target: Sora_<version>.<Action>``
and a JSON object body; responses are JSON. Each action is served under the
version Sora's API names it with (as Sora's documentation and the official SDKs'
end-to-end tests call them), and, for programs written against earlier
versions of this server, also under ``Sora_20151104``:

* ``Sora_20151104.DisconnectConnection`` {channel_id, connection_id} -> {}
  (the client's WebSocket is closed with 1000 "DISCONNECTED-API")
* ``Sora_20160711.PushChannel`` {channel_id, data} -> {}
* ``Sora_20160711.PushConnection`` {channel_id, connection_id, data} -> {}
* ``Sora_20241218.RequestKeyFrame`` {channel_id, connection_id} -> {}
* ``Sora_20170529.GetStatsConnection`` {channel_id, connection_id} -> stats of the server peer
* ``Sora_20201013.ListChannelConnections`` {channel_id} -> [connection, ...]
* ``Sora_20201013.ListConnections`` {} -> [connection, ...] (every channel)

Errors are ``400`` (or ``404`` for an unknown connection) with
``{"error_type": ..., "message": ...}``; a target that is not one of the above
(an unknown action, or a known one under another version) is ``400``
``INVALID-TARGET``.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from .session import decode_json

# The version every action is also served under (this server's first form).
LEGACY_VERSION = "20151104"
MAX_BODY = 1 << 20


class ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def _require_str(body: Dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ApiError(400, "INVALID-PARAMETER", "%s must be a non-empty string" % key)
    return value


def _session(sora, body: Dict[str, Any]):
    channel_id = _require_str(body, "channel_id")
    connection_id = _require_str(body, "connection_id")
    session = sora._registry.session(connection_id)
    if session is None or session.channel_id != channel_id:
        raise ApiError(404, "CONNECTION-NOT-FOUND", "no connection %s in channel %s" % (connection_id, channel_id))
    return session


def _data(body: Dict[str, Any]):
    if "data" not in body:
        raise ApiError(400, "INVALID-PARAMETER", "data is required")
    data = body["data"]
    if not isinstance(data, dict):
        raise ApiError(400, "INVALID-PARAMETER", "data must be a JSON object")
    return data


def _disconnect(sora, body):
    session = _session(sora, body)
    session.terminate(1000, "DISCONNECTED-API")
    return {}


def _push_channel(sora, body):
    channel_id = _require_str(body, "channel_id")
    sora.push(channel_id, _data(body))
    return {}


def _push_connection(sora, body):
    data = _data(body)
    session = _session(sora, body)
    session.send_push(data)
    return {}


def _request_key_frame(sora, body):
    session = _session(sora, body)
    sora.request_key_frame(session.connection_id)
    return {}


def _get_stats(sora, body):
    session = _session(sora, body)
    return sora.stats(session.connection_id)


def _list_channel(sora, body):
    channel_id = _require_str(body, "channel_id")
    return sora.connections(channel_id)


def _list_all(sora, body):
    return sora.connections()


# action -> (its version in Sora's API, handler)
ACTIONS = {
    "DisconnectConnection": ("20151104", _disconnect),
    "PushChannel": ("20160711", _push_channel),
    "PushConnection": ("20160711", _push_connection),
    "RequestKeyFrame": ("20241218", _request_key_frame),
    "GetStatsConnection": ("20170529", _get_stats),
    "ListChannelConnections": ("20201013", _list_channel),
    "ListConnections": ("20201013", _list_all),
}


def targets() -> Dict[str, str]:
    """Every accepted ``x-sora-target`` -> its action."""
    out = {}
    for action, (version, _) in ACTIONS.items():
        for accepted in (version, LEGACY_VERSION):
            out["Sora_%s.%s" % (accepted, action)] = action
    return out


TARGETS = targets()


def handle(sora, method: str, headers: Dict[str, str], body: bytes) -> Tuple[int, Any]:
    """Run one API request; returns (HTTP status, JSON-serialisable body)."""
    try:
        if method != "POST":
            raise ApiError(405, "METHOD-NOT-ALLOWED", "the API only accepts POST")
        target = headers.get("x-sora-target", "")
        name = TARGETS.get(target)
        if name is None:
            raise ApiError(400, "INVALID-TARGET", "unknown x-sora-target %r (known: %s)"
                           % (target[:100], ", ".join("Sora_%s.%s" % (v, a) for a, (v, _) in ACTIONS.items())))
        action = ACTIONS[name][1]
        try:
            parsed = decode_json(body) if body.strip() else {}
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApiError(400, "INVALID-JSON", "body is not JSON: %s" % exc)
        if not isinstance(parsed, dict):
            raise ApiError(400, "INVALID-JSON", "body must be a JSON object")
        return 200, action(sora, parsed)
    except ApiError as exc:
        return exc.status, {"error_type": exc.error_type, "message": exc.message}
    except Exception as exc:  # a bug or an engine failure: still answer
        return 500, {"error_type": "INTERNAL-ERROR", "message": str(exc)}
