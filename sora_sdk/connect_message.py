"""Validation of ``Sora.create_connection`` arguments and the ``connect`` message.

:func:`normalize_connection_options` checks every keyword of
``Sora.create_connection`` with the official SDK's rules and error messages
and returns a :class:`ConnectionOptions`.  Its
:meth:`ConnectionOptions.connect_message` writes the first signaling message
with the key order and presence rules of the C++ SDK (signaling.md §3).
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from typing import Any, List, Optional

from .enums import SoraDegradationPreference
from .json_value import C_INT_MAX, C_INT_MIN, dumps, to_json_value

__all__ = [
    "DEFAULT_WEBSOCKET_CONNECTION_TIMEOUT",
    "DEFAULT_WEBSOCKET_CLOSE_TIMEOUT",
    "DEFAULT_DISCONNECT_WAIT_TIMEOUT",
    "DEFAULT_DATA_CHANNEL_SIGNALING_TIMEOUT",
    "ConnectionOptions",
    "normalize_connection_options",
    "default_environment",
]

#: Client-side timeouts in seconds (official defaults).
DEFAULT_WEBSOCKET_CONNECTION_TIMEOUT = 30
DEFAULT_WEBSOCKET_CLOSE_TIMEOUT = 3
DEFAULT_DISCONNECT_WAIT_TIMEOUT = 5
DEFAULT_DATA_CHANNEL_SIGNALING_TIMEOUT = 180


@dataclass
class ConnectionOptions:
    """Validated ``create_connection`` arguments plus client-side settings.

    JSON-like values (``metadata``, codec params, ``data_channels``,
    forwarding filters) are stored as plain JSON trees; ``data_channels`` and
    forwarding filters are already in wire key order.  Sources and frame
    transformers are stored untouched.  Timeouts hold the effective values
    (defaults applied).
    """

    signaling_urls: List[str]
    role: str
    channel_id: str
    client_id: Optional[str] = None
    bundle_id: Optional[str] = None
    metadata: Any = None
    signaling_notify_metadata: Any = None
    audio_source: Any = None
    video_source: Any = None
    audio_frame_transformer: Any = None
    video_frame_transformer: Any = None
    audio: Optional[bool] = None
    video: Optional[bool] = None
    audio_codec_type: Optional[str] = None
    video_codec_type: Optional[str] = None
    video_bit_rate: Optional[int] = None
    audio_bit_rate: Optional[int] = None
    video_vp9_params: Any = None
    video_av1_params: Any = None
    video_h264_params: Any = None
    video_h265_params: Any = None
    audio_opus_params: Any = None
    simulcast: Optional[bool] = None
    spotlight: Optional[bool] = None
    spotlight_number: Optional[int] = None
    simulcast_rid: Optional[str] = None
    simulcast_request_rid: Optional[str] = None
    spotlight_focus_rid: Optional[str] = None
    spotlight_unfocus_rid: Optional[str] = None
    forwarding_filter: Optional[dict] = None
    forwarding_filters: Optional[list] = None
    data_channels: Optional[list] = None
    data_channel_signaling: Optional[bool] = None
    ignore_disconnect_websocket: Optional[bool] = None
    data_channel_signaling_timeout: int = DEFAULT_DATA_CHANNEL_SIGNALING_TIMEOUT
    disconnect_wait_timeout: int = DEFAULT_DISCONNECT_WAIT_TIMEOUT
    websocket_close_timeout: int = DEFAULT_WEBSOCKET_CLOSE_TIMEOUT
    websocket_connection_timeout: int = DEFAULT_WEBSOCKET_CONNECTION_TIMEOUT
    audio_streaming_language_code: Optional[str] = None
    insecure: bool = False
    client_cert: Optional[bytes] = None
    client_key: Optional[bytes] = None
    ca_cert: Optional[bytes] = None
    proxy_url: Optional[str] = None
    proxy_username: Optional[str] = None
    proxy_password: Optional[str] = None
    proxy_agent: Optional[str] = None
    degradation_preference: Optional[SoraDegradationPreference] = None
    user_agent: Optional[str] = None

    def connect_message(
        self, *, sora_client: str, libwebrtc: str, environment: str, redirect: bool = False
    ) -> str:
        """Return the compact JSON text of the ``connect`` message.

        ``redirect=True`` adds ``"redirect": true`` (the re-sent connect after
        a ``redirect`` message).
        """
        message = {
            "type": "connect",
            "role": self.role,
            "channel_id": self.channel_id,
            "sora_client": sora_client,
            "libwebrtc": libwebrtc,
            "environment": environment,
        }
        if redirect:
            message["redirect"] = True
        _put_if(message, "client_id", self.client_id, bool(self.client_id))
        _put_if(message, "bundle_id", self.bundle_id, bool(self.bundle_id))
        _put_if(message, "simulcast", self.simulcast, self.simulcast is not None)
        _put_if(message, "simulcast_rid", self.simulcast_rid, bool(self.simulcast_rid))
        _put_if(message, "simulcast_request_rid", self.simulcast_request_rid,
                bool(self.simulcast_request_rid))
        _put_if(message, "spotlight", self.spotlight, self.spotlight is not None)
        _put_if(message, "spotlight_number", self.spotlight_number,
                (self.spotlight_number or 0) > 0)
        _put_if(message, "spotlight_focus_rid", self.spotlight_focus_rid,
                bool(self.spotlight_focus_rid))
        _put_if(message, "spotlight_unfocus_rid", self.spotlight_unfocus_rid,
                bool(self.spotlight_unfocus_rid))
        _put_if(message, "metadata", self.metadata, self.metadata is not None)
        _put_if(message, "signaling_notify_metadata", self.signaling_notify_metadata,
                self.signaling_notify_metadata is not None)
        message["video"] = self._media_entry(self.video, [
            ("codec_type", self.video_codec_type),
            ("bit_rate", self.video_bit_rate),
            ("vp9_params", self.video_vp9_params),
            ("av1_params", self.video_av1_params),
            ("h264_params", self.video_h264_params),
            ("h265_params", self.video_h265_params),
        ])
        message["audio"] = self._media_entry(self.audio, [
            ("codec_type", self.audio_codec_type),
            ("bit_rate", self.audio_bit_rate),
            ("opus_params", self.audio_opus_params),
        ])
        _put_if(message, "audio_streaming_language_code", self.audio_streaming_language_code,
                bool(self.audio_streaming_language_code))
        _put_if(message, "data_channel_signaling", self.data_channel_signaling,
                self.data_channel_signaling is not None)
        _put_if(message, "ignore_disconnect_websocket", self.ignore_disconnect_websocket,
                self.ignore_disconnect_websocket is not None)
        _put_if(message, "data_channels", self.data_channels, bool(self.data_channels))
        _put_if(message, "forwarding_filter", self.forwarding_filter,
                self.forwarding_filter is not None)
        _put_if(message, "forwarding_filters", self.forwarding_filters,
                self.forwarding_filters is not None)
        return dumps(message)

    @staticmethod
    def _media_entry(enabled: Optional[bool], fields: list) -> Any:
        """``false`` when disabled, else an object of the set fields or ``true``.

        Empty strings, zero bit rates and ``None`` params are left out.
        """
        if enabled is False:
            return False
        entry = {key: value for key, value in fields if value is not None and value != ""
                 and not (key == "bit_rate" and value == 0)}
        return entry or True


def _put_if(message: dict, key: str, value: Any, present: bool) -> None:
    if present:
        message[key] = value


# --------------------------------------------------------------------------
# Scalar argument checks (nanobind's conversions, with clearer messages)
# --------------------------------------------------------------------------

def _type_error(name: str, expected: str, value: Any, optional: bool = True) -> TypeError:
    suffix = " or None" if optional else ""
    return TypeError("create_connection(): `%s` must be %s%s, not %s"
                     % (name, expected, suffix, type(value).__name__))


def _opt_str(name: str, value: Any) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    raise _type_error(name, "str", value)


def _req_str(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _type_error(name, "str", value, optional=False)


def _opt_bool(name: str, value: Any) -> Optional[bool]:
    if value is None or isinstance(value, bool):
        return value
    raise _type_error(name, "bool", value)


def _opt_bytes(name: str, value: Any) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    raise _type_error(name, "bytes", value)


def _opt_int(name: str, value: Any) -> Optional[int]:
    """An ``int`` parameter, converted like nanobind does.

    ``int`` and ``bool`` pass; floats are refused; other objects go through
    ``int()`` (the official SDK accepted ``video_bit_rate="100"``).  The result
    must fit a C ``int``.
    """
    if value is None:
        return None
    if isinstance(value, float):
        raise _type_error(name, "int", value)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _type_error(name, "int", value) from None
    if not C_INT_MIN <= number <= C_INT_MAX:
        raise TypeError("create_connection(): `%s` is out of the C int range: %d" % (name, number))
    return number


def _opt_json(name: str, value: Any) -> Any:
    return None if value is None else to_json_value(value, name)


def _opt_degradation(value: Any) -> Optional[SoraDegradationPreference]:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return SoraDegradationPreference(value)
        except ValueError:
            raise TypeError("create_connection(): `degradation_preference` has no member "
                            "with value %d" % value) from None
    raise _type_error("degradation_preference", "SoraDegradationPreference", value)


def _timeout(name: str, value: Any, default: int) -> int:
    number = _opt_int(name, value)
    return default if number is None else number


# --------------------------------------------------------------------------
# Structured arguments
# --------------------------------------------------------------------------

def _normalize_signaling_urls(value: Any) -> List[str]:
    tree = to_json_value(value, "signaling_urls")
    if not isinstance(tree, list):
        raise TypeError("`signaling_urls` should be a list of strings")
    if not tree:
        raise TypeError("`signaling_urls` should not be empty")
    if not all(isinstance(url, str) for url in tree):
        raise TypeError("`signaling_urls` should be a list of strings")
    return tree


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_list(value: Any) -> bool:
    return isinstance(value, list)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_any(value: Any) -> bool:
    return True


# (key, type check, required), in wire order.
_DATA_CHANNEL_FIELDS = (
    ("label", _is_str, True),
    ("direction", _is_str, True),
    ("ordered", _is_bool, False),
    ("max_packet_life_time", _is_int, False),
    ("max_retransmits", _is_int, False),
    ("protocol", _is_str, False),
    ("compress", _is_bool, False),
    ("header", _is_list, False),
)

_FORWARDING_FILTER_FIELDS = (
    ("name", _is_str, False),
    ("priority", _is_int, False),
    ("action", _is_str, False),
    ("rules", _is_list, True),  # structure checked by _forwarding_rules()
    ("version", _is_str, False),
    ("metadata", _is_any, False),
)

_FORWARDING_RULE_FIELDS = (
    ("field", _is_str, True),
    ("operator", _is_str, True),
    ("values", _is_str_list, True),
)


def _pick_fields(tree: Any, fields: tuple) -> Optional[dict]:
    """Return ``tree``'s known keys in wire order, or None if it is invalid.

    Unknown keys are dropped; a present key must pass its check (a JSON
    ``null`` does not pass, as in the C++ SDK, except for ``metadata``).
    """
    if not isinstance(tree, dict):
        return None
    result = {}
    for key, check, required in fields:
        if key not in tree:
            if required:
                return None
            continue
        if not check(tree[key]):
            return None
        result[key] = tree[key]
    return result


def _forwarding_rules(value: Any) -> Optional[list]:
    """Validate ``rules`` (a list of OR-groups, each a list of AND-rules)."""
    if not isinstance(value, list):
        return None
    groups = []
    for group in value:
        if not isinstance(group, list):
            return None
        rules = [_pick_fields(rule, _FORWARDING_RULE_FIELDS) for rule in group]
        if any(rule is None for rule in rules):
            return None
        groups.append(rules)
    return groups


def _forwarding_filter_item(tree: Any) -> dict:
    item = _pick_fields(tree, _FORWARDING_FILTER_FIELDS)
    rules = None if item is None else _forwarding_rules(item["rules"])
    if rules is None:
        raise TypeError("Invalid forwarding_filter")
    item["rules"] = rules
    return item


def _normalize_forwarding_filter(value: Any) -> Optional[dict]:
    if value is None:
        return None
    return _forwarding_filter_item(to_json_value(value, "forwarding_filter"))


def _normalize_forwarding_filters(value: Any) -> Optional[list]:
    if value is None:
        return None
    tree = to_json_value(value, "forwarding_filters")
    if not isinstance(tree, list):
        raise TypeError("Invalid forwarding_filter")
    return [_forwarding_filter_item(item) for item in tree]


def _normalize_data_channels(value: Any) -> Optional[list]:
    if value is None:
        return None
    tree = to_json_value(value, "data_channels")
    if not isinstance(tree, list):
        raise TypeError("Invalid data_channels")
    result = []
    for item in tree:
        entry = _pick_fields(item, _DATA_CHANNEL_FIELDS)
        if entry is None:
            raise TypeError("Invalid data_channels")
        result.append(entry)
    return result


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------

def normalize_connection_options(
    signaling_urls: Any,
    role: Any,
    channel_id: Any,
    client_id: Any = None,
    bundle_id: Any = None,
    metadata: Any = None,
    signaling_notify_metadata: Any = None,
    audio_source: Any = None,
    video_source: Any = None,
    audio_frame_transformer: Any = None,
    video_frame_transformer: Any = None,
    audio: Any = None,
    video: Any = None,
    audio_codec_type: Any = None,
    video_codec_type: Any = None,
    video_bit_rate: Any = None,
    audio_bit_rate: Any = None,
    video_vp9_params: Any = None,
    video_av1_params: Any = None,
    video_h264_params: Any = None,
    video_h265_params: Any = None,
    audio_opus_params: Any = None,
    simulcast: Any = None,
    spotlight: Any = None,
    spotlight_number: Any = None,
    simulcast_rid: Any = None,
    simulcast_request_rid: Any = None,
    spotlight_focus_rid: Any = None,
    spotlight_unfocus_rid: Any = None,
    forwarding_filter: Any = None,
    forwarding_filters: Any = None,
    data_channels: Any = None,
    data_channel_signaling: Any = None,
    ignore_disconnect_websocket: Any = None,
    data_channel_signaling_timeout: Any = None,
    disconnect_wait_timeout: Any = None,
    websocket_close_timeout: Any = None,
    websocket_connection_timeout: Any = None,
    audio_streaming_language_code: Any = None,
    insecure: Any = None,
    client_cert: Any = None,
    client_key: Any = None,
    ca_cert: Any = None,
    proxy_url: Any = None,
    proxy_username: Any = None,
    proxy_password: Any = None,
    proxy_agent: Any = None,
    degradation_preference: Any = None,
    user_agent: Any = None,
) -> ConnectionOptions:
    """Validate ``Sora.create_connection`` arguments (same order and names).

    Raises the official SDK's exceptions for bad input (``TypeError`` for
    ``signaling_urls``, JSON-like values, ``data_channels`` and forwarding
    filters, ``RuntimeError("std::bad_cast")`` for non-str dict keys) and a
    ``TypeError`` naming the parameter for a wrong scalar type.
    """
    return ConnectionOptions(
        signaling_urls=_normalize_signaling_urls(signaling_urls),
        role=_req_str("role", role),
        channel_id=_req_str("channel_id", channel_id),
        client_id=_opt_str("client_id", client_id),
        bundle_id=_opt_str("bundle_id", bundle_id),
        metadata=_opt_json("metadata", metadata),
        signaling_notify_metadata=_opt_json("signaling_notify_metadata", signaling_notify_metadata),
        audio_source=audio_source,
        video_source=video_source,
        audio_frame_transformer=audio_frame_transformer,
        video_frame_transformer=video_frame_transformer,
        audio=_opt_bool("audio", audio),
        video=_opt_bool("video", video),
        audio_codec_type=_opt_str("audio_codec_type", audio_codec_type),
        video_codec_type=_opt_str("video_codec_type", video_codec_type),
        video_bit_rate=_opt_int("video_bit_rate", video_bit_rate),
        audio_bit_rate=_opt_int("audio_bit_rate", audio_bit_rate),
        video_vp9_params=_opt_json("video_vp9_params", video_vp9_params),
        video_av1_params=_opt_json("video_av1_params", video_av1_params),
        video_h264_params=_opt_json("video_h264_params", video_h264_params),
        video_h265_params=_opt_json("video_h265_params", video_h265_params),
        audio_opus_params=_opt_json("audio_opus_params", audio_opus_params),
        simulcast=_opt_bool("simulcast", simulcast),
        spotlight=_opt_bool("spotlight", spotlight),
        spotlight_number=_opt_int("spotlight_number", spotlight_number),
        simulcast_rid=_opt_str("simulcast_rid", simulcast_rid),
        simulcast_request_rid=_opt_str("simulcast_request_rid", simulcast_request_rid),
        spotlight_focus_rid=_opt_str("spotlight_focus_rid", spotlight_focus_rid),
        spotlight_unfocus_rid=_opt_str("spotlight_unfocus_rid", spotlight_unfocus_rid),
        forwarding_filter=_normalize_forwarding_filter(forwarding_filter),
        forwarding_filters=_normalize_forwarding_filters(forwarding_filters),
        data_channels=_normalize_data_channels(data_channels),
        data_channel_signaling=_opt_bool("data_channel_signaling", data_channel_signaling),
        ignore_disconnect_websocket=_opt_bool("ignore_disconnect_websocket",
                                              ignore_disconnect_websocket),
        data_channel_signaling_timeout=_timeout(
            "data_channel_signaling_timeout", data_channel_signaling_timeout,
            DEFAULT_DATA_CHANNEL_SIGNALING_TIMEOUT),
        disconnect_wait_timeout=_timeout(
            "disconnect_wait_timeout", disconnect_wait_timeout, DEFAULT_DISCONNECT_WAIT_TIMEOUT),
        websocket_close_timeout=_timeout(
            "websocket_close_timeout", websocket_close_timeout, DEFAULT_WEBSOCKET_CLOSE_TIMEOUT),
        websocket_connection_timeout=_timeout(
            "websocket_connection_timeout", websocket_connection_timeout,
            DEFAULT_WEBSOCKET_CONNECTION_TIMEOUT),
        audio_streaming_language_code=_opt_str("audio_streaming_language_code",
                                               audio_streaming_language_code),
        insecure=bool(_opt_bool("insecure", insecure)),
        client_cert=_opt_bytes("client_cert", client_cert),
        client_key=_opt_bytes("client_key", client_key),
        ca_cert=_opt_bytes("ca_cert", ca_cert),
        proxy_url=_opt_str("proxy_url", proxy_url),
        proxy_username=_opt_str("proxy_username", proxy_username),
        proxy_password=_opt_str("proxy_password", proxy_password),
        proxy_agent=_opt_str("proxy_agent", proxy_agent),
        degradation_preference=_opt_degradation(degradation_preference),
        user_agent=_opt_str("user_agent", user_agent),
    )


# --------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------

def _os_release_pretty_name() -> Optional[str]:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and key.strip() == "PRETTY_NAME":
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    value = value[1:-1]
                    for escaped in ("\\\\", '\\"', "\\'", "\\$", "\\`"):
                        value = value.replace(escaped, escaped[1])
                return value
    return None


def default_environment() -> str:
    """The ``environment`` field: ``"[<uname -m>] <OS name and version>"``.

    Linux: ``PRETTY_NAME`` of os-release (e.g. ``[x86_64] Debian GNU/Linux 12
    (bookworm)``); macOS: ``[arm64] macOS <version>``; Windows:
    ``[x64] Windows <major>.<minor> Build <build>``.
    """
    machine = platform.machine() or "unknown"
    if sys.platform == "win32":
        version = sys.getwindowsversion()  # type: ignore[attr-defined]
        arch = "x64" if machine.upper() in ("AMD64", "X86_64") else machine
        return "[%s] Windows %d.%d Build %d" % (arch, version.major, version.minor, version.build)
    if sys.platform == "darwin":
        return "[%s] macOS %s" % (machine, platform.mac_ver()[0])
    name = _os_release_pretty_name() or ("%s %s" % (platform.system(), platform.release())).strip()
    return "[%s] %s" % (machine, name)
