"""Replays the captured ``connect`` messages of the official SDK.

For every scenario of tests/data/first-messages-by-scenario.json the table
SCENARIOS below gives the ``create_connection`` keyword arguments that
produced it (role and channel_id are taken from the capture itself, they are
just tags of the capture harness).  Our message must equal the captured one
value for value, with the same types and the same key order.
"""

from __future__ import annotations

import json
import os

import pytest

from sora_sdk.connect_message import (
    ConnectionOptions,
    default_environment,
    normalize_connection_options,
)
from sora_sdk.enums import SoraDegradationPreference

# The team's captures of the official wheel, kept in the repository (tests/data/README.md).
CAPTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FIRST_MESSAGES = os.path.join(CAPTURES, "first-messages-by-scenario.json")
EDGE_CASES = os.path.join(CAPTURES, "edge-cases.json")

URL = ["ws://127.0.0.1:5000/signaling"]

FORWARDING_FILTER = {
    # Deliberately not in wire order: the SDK must reorder the keys.
    "metadata": {"m": 1},
    "version": "2025.1.0",
    "rules": [
        [{"values": ["S8YEN0TSE13JDC2991NG4XZ150"], "operator": "is_in", "field": "connection_id"}],
        [
            {"field": "client_id", "operator": "is_in", "values": ["screen-share"]},
            {"operator": "is_in", "field": "kind", "values": ["audio"]},
        ],
    ],
    "action": "block",
    "priority": 128,
    "name": "test",
}

DATA_CHANNELS = [
    {"label": "#spam", "direction": "sendrecv"},
    {
        "header": [{"type": "sender_connection_id"}],
        "compress": True,
        "protocol": "abc",
        "max_retransmits": 3,
        "max_packet_life_time": 100,
        "ordered": False,
        "direction": "recvonly",
        "label": "#egg",
    },
]

BASIC = {"role": "sendonly"}
RECVONLY = {"role": "recvonly"}

# scenario -> create_connection kwargs (signaling_urls/channel_id added by the test)
SCENARIOS = {
    "all-options": dict(
        role="sendrecv", client_id="cid", bundle_id="bid",
        simulcast=True, simulcast_rid="r2",
        spotlight=True, spotlight_number=1, spotlight_focus_rid="r1", spotlight_unfocus_rid="none",
        metadata={"a": 1}, signaling_notify_metadata={"b": 2},
        video_codec_type="AV1", video_bit_rate=1000,
        audio_codec_type="OPUS", audio_bit_rate=32,
        audio_streaming_language_code="en-US",
        data_channel_signaling=True, ignore_disconnect_websocket=False,
        data_channels=[{"direction": "sendonly", "label": "#x"}],
        forwarding_filter=FORWARDING_FILTER,
    ),
    "audio-false-with-bitrate": dict(BASIC, audio=False, audio_codec_type="OPUS",
                                     audio_bit_rate=64),
    "audio-streaming-language-code": dict(BASIC, audio_streaming_language_code="ja-JP"),
    "audio-video-false": dict(BASIC, audio=False, video=False),
    "client-bundle-id": dict(BASIC, client_id="my-client", bundle_id="my-bundle"),
    "codec-av1": dict(BASIC, video_codec_type="AV1"),
    "codec-bitrates": dict(BASIC, video_codec_type="VP9", video_bit_rate=500,
                           audio_codec_type="OPUS", audio_bit_rate=64),
    "codec-h265-params": dict(BASIC, video_codec_type="H265", video_h265_params={"level_id": 156}),
    "codec-params": dict(
        BASIC,
        video_vp9_params={"profile_id": 0},
        video_av1_params={"profile": 0},
        video_h264_params={"profile_level_id": "42e01f"},
        audio_opus_params={"usedtx": True, "maxplaybackrate": 16000, "stereo": False},
    ),
    "data-channels": dict(BASIC, data_channel_signaling=True, ignore_disconnect_websocket=True,
                          data_channels=DATA_CHANNELS),
    "forwarding-filter": dict(BASIC, forwarding_filter=FORWARDING_FILTER),
    "forwarding-filters": dict(BASIC, forwarding_filters=[
        FORWARDING_FILTER,
        {"rules": [[{"field": "kind", "operator": "is_not_in", "values": ["video"]}]],
         "action": "allow"},
    ]),
    "handshake-403": BASIC,
    "handshake-bad-scheme": dict(BASIC, signaling_urls=["http://127.0.0.1:5000/signaling"]),
    "handshake-dead-port": BASIC,
    "metadata-list": dict(BASIC, metadata=[1, 2, 3]),
    "metadata-str": dict(BASIC, metadata="plain-string"),
    # Client-side settings only: none of them shows up in the message.
    "misc-no-effect": dict(
        BASIC, insecure=True, ca_cert=b"-----BEGIN CERTIFICATE-----\n", client_cert=None,
        proxy_url="http://127.0.0.1:3128", proxy_username="u", proxy_password="p",
        proxy_agent="agent", websocket_connection_timeout=7, websocket_close_timeout=1,
        disconnect_wait_timeout=2, data_channel_signaling_timeout=10,
        degradation_preference=SoraDegradationPreference.MAINTAIN_FRAMERATE,
        audio_source=object(), video_source=object(),
    ),
    "multi-url-one-dead": dict(BASIC, signaling_urls=["ws://127.0.0.1:1/signaling"] + URL),
    "multi-url-two-live": dict(BASIC, signaling_urls=URL + ["ws://127.0.0.1:5001/signaling"]),
    "offer-datachannel": dict(RECVONLY, data_channel_signaling=True,
                              ignore_disconnect_websocket=False,
                              data_channels=[{"label": "#spam", "direction": "sendrecv"}]),
    "offer-disconnect-noclose": RECVONLY,
    "offer-missing-config": RECVONLY,
    "offer-missing-connection-id": RECVONLY,
    "offer-recvonly": RECVONLY,
    "offer-reoffer": BASIC,
    "offer-sendonly": BASIC,
    "offer-server-close-1000": RECVONLY,
    "offer-simulcast": dict(BASIC, simulcast=True, audio=False),
    "offer-switched": dict(RECVONLY, data_channel_signaling=True, ignore_disconnect_websocket=True),
    "role-invalid": dict(role="bogus"),
    "role-recvonly": RECVONLY,
    "role-sendonly": BASIC,
    "role-sendrecv": dict(role="sendrecv"),
    "server-abrupt": BASIC,
    "server-close-4000": BASIC,
    "server-garbage": BASIC,
    "server-hold-then-client-disconnect": BASIC,
    "server-notype": BASIC,
    "server-redirect": BASIC,
    "server-unknowntype": BASIC,
    "signaling-notify-metadata": dict(BASIC, signaling_notify_metadata={"nick": "alice"}),
    "simulcast-false": dict(BASIC, simulcast=False, spotlight=False,
                            data_channel_signaling=False, ignore_disconnect_websocket=False),
    "simulcast-request-rid": dict(BASIC, simulcast=True, simulcast_request_rid="r0"),
    "simulcast": dict(BASIC, simulcast=True, simulcast_rid="r1"),
    "spotlight": dict(BASIC, spotlight=True, spotlight_number=3,
                      spotlight_focus_rid="r2", spotlight_unfocus_rid="r0"),
    "user-agent": dict(BASIC, user_agent="MyAgent/1.0"),
}

# Scenarios where no connect message was captured, with the reason.
# (scenario, version or None for every version) -> reason
NO_MESSAGE = {
    # The WebSocket handshake never completed, so nothing was sent.
    ("handshake-403", None): "handshake",
    ("handshake-bad-scheme", None): "handshake",
    ("handshake-dead-port", None): "handshake",
    # create_connection() raised in every version: the capture does not record
    # the exact dict; METADATA_REJECTED below is the documented rejection case.
    ("metadata-dict", None): "rejected",
    # The keyword did not exist yet in these versions (TypeError, exit 1).
    ("codec-h265-params", "2025.4.0"): "new-keyword",
    ("codec-h265-params", "2025.5.0.dev18"): "new-keyword",
    ("simulcast-request-rid", "2025.4.0"): "new-keyword",
}

METADATA_REJECTED = {"f": 1.1}


class Pairs(list):
    """A parsed JSON object: its (key, value) pairs in text order."""


def _loads(text):
    return json.loads(text, object_pairs_hook=Pairs)


def _load_ordered(path):
    """Parse a JSON file keeping object key order (objects become Pairs)."""
    with open(path, encoding="utf-8") as handle:
        return _loads(handle.read())


def _strict(tree):
    """A comparable form of a parsed tree that keeps types and key order.

    ``1 == 1.0 == True`` in Python, so every scalar is tagged with its type.
    """
    if isinstance(tree, Pairs):
        return ("object", [(key, _strict(value)) for key, value in tree])
    if isinstance(tree, list):
        return ("array", [_strict(item) for item in tree])
    return (type(tree).__name__, tree)


def _captures():
    captures = _load_ordered(FIRST_MESSAGES)
    return [(name, dict(versions)) for name, versions in captures]


def _cases():
    cases = []
    for name, versions in _captures():
        for version, record in versions.items():
            cases.append(pytest.param(name, version, dict(record), id="%s@%s" % (name, version)))
    return cases


def _options_for(name, message_pairs):
    kwargs = dict(SCENARIOS[name])
    kwargs.setdefault("signaling_urls", URL)
    kwargs["channel_id"] = dict(message_pairs)["channel_id"]
    return normalize_connection_options(**kwargs)


def test_every_captured_scenario_has_kwargs():
    names = [name for name, _ in _captures()]
    assert len(names) == 48
    missing = set(names) - set(SCENARIOS) - {"metadata-dict"}
    assert not missing
    assert not set(SCENARIOS) - set(names)


@pytest.mark.parametrize("name,version,record", _cases())
def test_replay_captured_connect(name, version, record):
    captured = record["first_message"]
    if captured is None:
        reason = NO_MESSAGE.get((name, version)) or NO_MESSAGE.get((name, None))
        assert reason is not None, "unexpected missing message"
        assert record["user_agent_header(s)"] == [] or reason == "handshake"
        if reason == "rejected":
            assert record["client_exit_code"] == 1
            with pytest.raises(TypeError, match="^Invalid JSON value in metadata$"):
                normalize_connection_options(URL, "sendonly", "c", metadata=METADATA_REJECTED)
        elif reason == "new-keyword":
            # Our SDK implements the newest API, so the keyword is accepted.
            assert record["client_exit_code"] == 1
            options = normalize_connection_options(URL, "sendonly", "c", **{
                k: v for k, v in SCENARIOS[name].items() if k != "role"})
            assert options.connect_message(sora_client="s", libwebrtc="l", environment="e")
        else:
            assert record["client_exit_code"] == 0
        return

    fields = dict(captured)
    options = _options_for(name, captured)
    text = options.connect_message(
        sora_client=fields["sora_client"],
        libwebrtc=fields["libwebrtc"],
        environment=fields["environment"],
    )
    assert isinstance(options, ConnectionOptions)
    assert " " not in text.replace(fields["environment"], "").replace(
        fields["libwebrtc"], "").replace(fields["sora_client"], "")
    assert "\n" not in text
    ours = _loads(text)
    assert _strict(ours) == _strict(captured)
    if name == "user-agent":
        assert record["user_agent_header(s)"] == [options.user_agent]


def test_float_wire_format_is_byte_exact():
    case = dict(_load_ordered(EDGE_CASES))["cases"]
    case = dict(dict(case)["float_wire_format"])
    expected = case["raw_connect_text"]
    metadata = json.loads(json.dumps(dict(case["metadata_in"])))  # plain dict again
    opus = dict(case["audio_opus_params_in"])
    options = normalize_connection_options(
        URL, "sendonly", "basic~floatmeta", metadata=metadata, video_bit_rate=1500,
        audio_opus_params=opus)
    text = options.connect_message(
        sora_client="Sora Python SDK 2026.1.0.dev15",
        libwebrtc="Shiguredo-Build M150.7871@{#3} (150.7871.3.1 1f975dfd)",
        environment="[x86_64] Debian GNU/Linux 12 (bookworm)",
    )
    assert text == expected


# ---------------------------------------------------------------- presence rules

def _message(**kwargs):
    kwargs.setdefault("signaling_urls", URL)
    kwargs.setdefault("role", "sendonly")
    kwargs.setdefault("channel_id", "ch")
    options = normalize_connection_options(**kwargs)
    return _loads(options.connect_message(sora_client="s", libwebrtc="l", environment="e"))


def _keys(message):
    return [key for key, _ in message]


def test_minimal_message_key_order():
    assert _keys(_message()) == ["type", "role", "channel_id", "sora_client", "libwebrtc",
                                 "environment", "video", "audio"]


def test_redirect_flag_position():
    options = normalize_connection_options(URL, "sendonly", "ch", client_id="c")
    text = options.connect_message(sora_client="s", libwebrtc="l", environment="e", redirect=True)
    assert text == ('{"type":"connect","role":"sendonly","channel_id":"ch","sora_client":"s",'
                    '"libwebrtc":"l","environment":"e","redirect":true,"client_id":"c",'
                    '"video":true,"audio":true}')


def test_full_key_order():
    message = _message(
        client_id="c", bundle_id="b", simulcast=True, simulcast_rid="r0",
        simulcast_request_rid="r1", spotlight=True, spotlight_number=2,
        spotlight_focus_rid="r2", spotlight_unfocus_rid="r0", metadata=None,
        signaling_notify_metadata={}, video_codec_type="VP8", audio_codec_type="OPUS",
        audio_streaming_language_code="ja-JP", data_channel_signaling=False,
        ignore_disconnect_websocket=False, data_channels=[{"label": "#a", "direction": "sendonly"}],
        forwarding_filter={"rules": []}, forwarding_filters=[],
    )
    assert _keys(message) == [
        "type", "role", "channel_id", "sora_client", "libwebrtc", "environment",
        "client_id", "bundle_id", "simulcast", "simulcast_rid", "simulcast_request_rid",
        "spotlight", "spotlight_number", "spotlight_focus_rid", "spotlight_unfocus_rid",
        "signaling_notify_metadata", "video", "audio", "audio_streaming_language_code",
        "data_channel_signaling", "ignore_disconnect_websocket", "data_channels",
        "forwarding_filter", "forwarding_filters",
    ]


def test_omitted_values():
    message = dict(_message(client_id="", bundle_id="", simulcast_rid="", spotlight_number=0,
                            video_bit_rate=0, audio_bit_rate=0, data_channels=[],
                            audio_streaming_language_code="", video_codec_type=""))
    assert set(message) == {"type", "role", "channel_id", "sora_client", "libwebrtc",
                            "environment", "video", "audio"}
    assert message["video"] is True and message["audio"] is True


def test_media_object_order_and_false():
    message = dict(_message(video_h265_params={"x": 1}, video_h264_params={"y": 2},
                            video_bit_rate=100, video_codec_type="H265",
                            video_vp9_params={"z": 3}, video_av1_params={"w": 4},
                            audio=True, audio_opus_params={"ptime": 20}, audio_bit_rate=16))
    assert _keys(message["video"]) == ["codec_type", "bit_rate", "vp9_params", "av1_params",
                                       "h264_params", "h265_params"]
    assert message["audio"] == [("bit_rate", 16), ("opus_params", [("ptime", 20)])]
    message = dict(_message(video=False, video_codec_type="VP9", video_bit_rate=5))
    assert message["video"] is False


def test_options_defaults_and_passthrough():
    source = object()
    options = normalize_connection_options(URL, "recvonly", "ch", video_source=source,
                                           degradation_preference=2)
    assert options.video_source is source
    assert options.degradation_preference is SoraDegradationPreference.MAINTAIN_RESOLUTION
    timeouts = (options.websocket_connection_timeout, options.websocket_close_timeout,
                options.disconnect_wait_timeout, options.data_channel_signaling_timeout)
    assert timeouts == (30, 3, 5, 180)
    assert options.insecure is False
    assert options.signaling_urls == URL


# ---------------------------------------------------------------- errors

EDGE_TYPES = {
    # edge-cases.json "types" case -> the call that produced it
    "urls_empty": dict(signaling_urls=[]),
    "urls_str": dict(signaling_urls="ws://127.0.0.1/signaling"),
    "urls_tuple": dict(signaling_urls=("ws://127.0.0.1/signaling",)),
    "urls_nonstr": dict(signaling_urls=[1]),
    "metadata_tuple": dict(metadata=(1, 2)),
    "metadata_intkey": dict(metadata={1: "a"}),
    "metadata_bigint": dict(metadata={"big": 2 ** 31}),
    "metadata_maxint": dict(metadata={"j": 2 ** 31 - 1}),
    "metadata_bytes": dict(metadata=b"x"),
    "dc_missing_direction": dict(data_channels=[{"label": "#a"}]),
    "dc_not_list": dict(data_channels={"label": "#a", "direction": "sendonly"}),
    "dc_bad_ordered_type": dict(data_channels=[{"label": "#a", "direction": "sendonly",
                                                "ordered": "yes"}]),
    "ff_missing_rules": dict(forwarding_filter={"action": "block"}),
    "ff_priority_str": dict(forwarding_filter={"rules": [], "priority": "1"}),
    "role_none": dict(role=None),
    "video_bit_rate_str": dict(video_bit_rate="100"),
    "video_bit_rate_float": dict(video_bit_rate=100.0),
    "client_cert_str": dict(client_cert="-----BEGIN CERTIFICATE-----"),
    "degradation_int": dict(degradation_preference=1),
}


def _edge_type_results():
    cases = dict(_load_ordered(EDGE_CASES))["cases"]
    types_case = dict(dict(cases)["types"])
    return dict(dict(types_case["last_result"])["results"])


@pytest.mark.parametrize("case", sorted(EDGE_TYPES))
def test_official_type_errors(case):
    observed = _edge_type_results()[case]
    kwargs = dict(signaling_urls=URL, role="sendonly", channel_id="ch")
    kwargs.update(EDGE_TYPES[case])
    if observed == "accepted":
        normalize_connection_options(**kwargs)
        return
    kind, _, message = observed.partition(": ")
    expected_type = {"TypeError": TypeError, "RuntimeError": RuntimeError}[kind]
    with pytest.raises(expected_type) as info:
        normalize_connection_options(**kwargs)
    assert type(info.value) is expected_type
    if message.startswith("create_connection(): incompatible"):
        # nanobind's generic text; ours names the parameter instead.
        name = next(iter(EDGE_TYPES[case]))
        assert "`%s`" % name in str(info.value)
    else:
        assert str(info.value) == message


def test_video_bit_rate_string_is_converted():
    assert normalize_connection_options(URL, "s", "c", video_bit_rate="100").video_bit_rate == 100


@pytest.mark.parametrize("kwargs,message", [
    (dict(channel_id=None), "`channel_id` must be str, not NoneType"),
    (dict(client_id=1), "`client_id` must be str or None, not int"),
    (dict(audio=1), "`audio` must be bool or None, not int"),
    (dict(simulcast="true"), "`simulcast` must be bool or None, not str"),
    (dict(spotlight_number="x"), "`spotlight_number` must be int or None, not str"),
    (dict(websocket_close_timeout=1.5), "`websocket_close_timeout` must be int or None, not float"),
    (dict(ca_cert=bytearray(b"x")), "`ca_cert` must be bytes or None, not bytearray"),
    (dict(insecure="yes"), "`insecure` must be bool or None, not str"),
    (dict(user_agent=b"ua"), "`user_agent` must be str or None, not bytes"),
    (dict(degradation_preference="BALANCED"),
     "`degradation_preference` must be SoraDegradationPreference or None, not str"),
    (dict(degradation_preference=9), "`degradation_preference` has no member with value 9"),
    (dict(audio_bit_rate=2 ** 31), "`audio_bit_rate` is out of the C int range"),
])
def test_scalar_type_errors(kwargs, message):
    full = dict(signaling_urls=URL, role="sendonly", channel_id="ch")
    full.update(kwargs)
    with pytest.raises(TypeError) as info:
        normalize_connection_options(**full)
    assert message in str(info.value)


@pytest.mark.parametrize("param,value", [
    ("signaling_notify_metadata", {"f": 0.1}),
    ("video_vp9_params", [1, (2,)]),
    ("audio_opus_params", {"x": 2 ** 40}),
])
def test_json_params_use_their_own_name(param, value):
    with pytest.raises(TypeError, match="^Invalid JSON value in %s$" % param):
        normalize_connection_options(URL, "sendonly", "c", **{param: value})


@pytest.mark.parametrize("data_channels", [
    [{"label": 1, "direction": "sendonly"}],
    [{"label": "#a", "direction": "sendonly", "max_retransmits": True}],
    [{"label": "#a", "direction": "sendonly", "max_packet_life_time": 1.5}],
    [{"label": "#a", "direction": "sendonly", "header": {"type": "x"}}],
    [{"label": "#a", "direction": "sendonly", "compress": None}],
    ["#a"],
])
def test_invalid_data_channels(data_channels):
    with pytest.raises(TypeError, match="^Invalid data_channels$"):
        normalize_connection_options(URL, "sendonly", "c", data_channels=data_channels)


@pytest.mark.parametrize("param,value", [
    ("forwarding_filter", {"rules": [{"field": "kind"}]}),
    ("forwarding_filter", {"rules": [[{"field": "kind", "operator": "is_in"}]]}),
    ("forwarding_filter", {"rules": [[{"field": "kind", "operator": "is_in", "values": [1]}]]}),
    ("forwarding_filter", [{"rules": []}]),
    ("forwarding_filter", {"rules": [], "name": None}),
    ("forwarding_filters", {"rules": []}),
    ("forwarding_filters", [{"rules": []}, {"action": "allow"}]),
])
def test_invalid_forwarding_filters(param, value):
    with pytest.raises(TypeError, match="^Invalid forwarding_filter$"):
        normalize_connection_options(URL, "sendonly", "c", **{param: value})


def test_data_channel_unknown_keys_are_dropped():
    options = normalize_connection_options(URL, "sendonly", "c", data_channels=[
        {"extra": 1, "direction": "recvonly", "label": "#a", "ordered": True}])
    assert list(options.data_channels[0].items()) == [
        ("label", "#a"), ("direction", "recvonly"), ("ordered", True)]


def test_unknown_keyword_is_rejected():
    with pytest.raises(TypeError):
        normalize_connection_options(URL, "sendonly", "c", multistream=True)


def test_default_environment_shape():
    environment = default_environment()
    assert environment.startswith("[")
    assert "] " in environment
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    assert environment.endswith(line.split("=", 1)[1].strip().strip('"'))
