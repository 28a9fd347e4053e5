"""Channels of the local Sora server and the connections in them.

A connection is *attached* to its channel as soon as its `connect` is accepted
(so the offer can carry the channel's session_id) and *joined* once its answer
has been applied; only joined connections count in notifies, are listed by the
API and receive `#` DataChannel messages.

Everything that reaches other connections of a channel goes through here:
`connection.created` / `connection.destroyed` notifies, pushes, the `#` label
relay, and media forwarding -- see media.MediaRouter.
"""
from __future__ import annotations

import datetime
import secrets
import threading
from collections import OrderedDict
from typing import Any, Dict, List, Optional

from .media import MediaRouter

# Sora's ids: 26 characters, upper-case letters and digits (Crockford base32).
_ID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SENDER_ID_LENGTH = 26


def new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(26))


def timestamp() -> str:
    """UTC time in Sora's notify format, e.g. 2025-01-01T00:00:00.000Z."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (now.microsecond // 1000)


class Channel:
    def __init__(self, channel_id: str) -> None:
        self.channel_id = channel_id
        self.session_id = new_id()
        self.created_at = timestamp()
        self.attached: "OrderedDict[str, Any]" = OrderedDict()  # connection_id -> session
        self.joined: "OrderedDict[str, Any]" = OrderedDict()
        self.media = MediaRouter(self)
        self.notify_lock = threading.RLock()

    def counts(self) -> Dict[str, int]:
        roles = [s.role for s in self.joined.values()]
        return {
            "channel_connections": len(roles),
            "channel_sendrecv_connections": roles.count("sendrecv"),
            "channel_sendonly_connections": roles.count("sendonly"),
            "channel_recvonly_connections": roles.count("recvonly"),
        }


class ChannelRegistry:
    """Every channel of one server, guarded by one lock (never held while sending)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: Dict[str, Channel] = {}
        self._sessions: Dict[str, Any] = {}  # connection_id -> session, attached or joined

    # ---- membership ----
    def attach(self, session) -> Channel:
        with self._lock:
            channel = self._channels.get(session.channel_id)
            if channel is None:
                channel = Channel(session.channel_id)
                self._channels[session.channel_id] = channel
            channel.attached[session.connection_id] = session
            self._sessions[session.connection_id] = session
            return channel

    def join(self, session) -> Optional[List[Any]]:
        """Mark `session` joined; send `connection.created` to it and to the others.

        Returns the joined sessions (itself included) or None if it was detached meanwhile.
        """
        with self._lock:
            channel = self._channels.get(session.channel_id)
        if channel is None:
            return None
        # One fan-out at a time per channel, so every connection sees the
        # created/destroyed notifies in membership order.
        with channel.notify_lock:
            with self._lock:
                if session.connection_id not in channel.attached:
                    return None
                channel.joined[session.connection_id] = session
                members = list(channel.joined.values())
                counts = channel.counts()
            base = _connection_fields(session, channel)
            base.update(counts)
            own = dict(base)
            own["data"] = [_member_entry(m) for m in members]
            session.send_notify(_notify("connection.created", own))
            for other in members:
                if other is not session:
                    other.send_notify(_notify("connection.created", dict(base)))
        channel.media.connection_joined(session)
        return members

    def detach(self, session) -> None:
        """Remove `session`; if it had joined, send `connection.destroyed` to the rest."""
        with self._lock:
            channel = self._channels.get(session.channel_id)
        if channel is None:
            with self._lock:
                self._sessions.pop(session.connection_id, None)
            return
        with channel.notify_lock:
            with self._lock:
                self._sessions.pop(session.connection_id, None)
                channel.attached.pop(session.connection_id, None)
                was_joined = channel.joined.pop(session.connection_id, None) is not None
                others = list(channel.joined.values())
                counts = channel.counts()
                if not channel.attached and not channel.joined \
                        and self._channels.get(session.channel_id) is channel:
                    del self._channels[session.channel_id]
            if was_joined:
                fields = _connection_fields(session, channel)
                fields.update(counts)
                for other in others:
                    other.send_notify(_notify("connection.destroyed", dict(fields)))
        # Also for a connection that never joined: its offer may have had forwarded tracks.
        channel.media.connection_left(session)

    # ---- look-ups ----
    def session(self, connection_id: str):
        with self._lock:
            return self._sessions.get(connection_id)

    def all_sessions(self) -> List[Any]:
        with self._lock:
            return list(self._sessions.values())

    def joined(self, channel_id: str) -> List[Any]:
        with self._lock:
            channel = self._channels.get(channel_id)
            return list(channel.joined.values()) if channel is not None else []

    def channel(self, channel_id: str) -> Optional[Channel]:
        with self._lock:
            return self._channels.get(channel_id)

    def channel_ids(self) -> List[str]:
        with self._lock:
            return list(self._channels)

    # ---- fan-out ----
    def push(self, channel_id: str, data) -> int:
        """Send `{"type":"push","data":data}` to every joined connection; returns how many."""
        members = self.joined(channel_id)
        for member in members:
            member.send_push(data)
        return len(members)

    def relay(self, sender, label: str, payload: bytes) -> int:
        """Deliver a `#label` message of `sender` to the other joined connections with that label.

        The sender must be allowed to send on the label (direction sendonly or sendrecv)
        and a receiver must be allowed to receive (recvonly or sendrecv).
        """
        spec = sender.user_channels.get(label)
        if spec is None or spec.get("direction") == "recvonly":
            return 0
        with self._lock:
            channel = self._channels.get(sender.channel_id)
            if channel is None or sender.connection_id not in channel.joined:
                return 0
            targets = [s for s in channel.joined.values() if s is not sender]
        count = 0
        for target in targets:
            tspec = target.user_channels.get(label)
            if tspec is None or tspec.get("direction") == "sendonly":
                continue
            if target.deliver_user_message(label, payload, sender.connection_id):
                count += 1
        return count


def _connection_fields(session, channel: Channel) -> Dict[str, Any]:
    fields: Dict[str, Any] = {
        "role": session.role,
        "channel_id": channel.channel_id,
        "session_id": channel.session_id,
        "client_id": session.client_id,
        "bundle_id": session.bundle_id,
        "connection_id": session.connection_id,
        "audio": session.audio,
        "video": session.video,
        "minutes": session.minutes(),
    }
    if session.notify_metadata is not None:
        fields["metadata"] = session.notify_metadata
    if session.authn_metadata is not None:
        fields["authn_metadata"] = session.authn_metadata
    if session.authz_metadata is not None:
        fields["authz_metadata"] = session.authz_metadata
    fields["turn_transport_type"] = "udp"
    return fields


def _member_entry(session) -> Dict[str, Any]:
    entry: Dict[str, Any] = {
        "connection_id": session.connection_id,
        "client_id": session.client_id,
        "bundle_id": session.bundle_id,
        "role": session.role,
    }
    if session.notify_metadata is not None:
        entry["metadata"] = session.notify_metadata
    return entry


def _notify(event_type: str, fields: Dict[str, Any]) -> Dict[str, Any]:
    msg: Dict[str, Any] = {"type": "notify", "event_type": event_type}
    msg.update(fields)
    msg["timestamp"] = timestamp()
    return msg
