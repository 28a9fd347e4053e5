"""Library-wide rules of sora_c.h: versions, elements, sora_c_free, logging, last error, NULL arguments."""
from __future__ import annotations

import re
import threading

import pytest

from .conftest import (INVALID_ARGUMENT, OK, Context, code_name, expect, ffi, last_error, lib,
                       run_in_thread, run_isolated)

# ---- versions -------------------------------------------------------------------


def test_abi_major_matches_header():
    version = lib.sora_c_abi_version()
    assert version >> 16 == lib.SORA_C_ABI_MAJOR


def test_abi_minor_covers_header():
    # Minor versions only add: a library older than the header may lack functions.
    version = lib.sora_c_abi_version()
    assert version & 0xFFFF >= lib.SORA_C_ABI_MINOR
    assert version >> 32 == 0


def test_abi_version_is_stable():
    assert len({lib.sora_c_abi_version() for _ in range(5)}) == 1


def test_engine_version_non_empty():
    ptr = lib.sora_c_engine_version()
    assert ptr != ffi.NULL
    text = ffi.string(ptr).decode("utf-8")
    assert text.strip(), "sora_c_engine_version() is empty"
    assert re.search(r"\d+\.\d+", text), "no version number in %r" % text
    # The string belongs to the library: the same text every time, from any thread.
    assert ffi.string(lib.sora_c_engine_version()).decode("utf-8") == text
    assert run_in_thread(lambda: ffi.string(lib.sora_c_engine_version()).decode("utf-8")) == text


# ---- elements ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"webrtcbin", b"vp8enc", b"opusenc", b"appsrc"])
def test_element_available(name):
    assert lib.sora_c_element_available(name) == 1


@pytest.mark.parametrize("name", [b"no-such-element", b"webrtcbin-but-not", b" webrtcbin"])
def test_element_not_available(name):
    assert lib.sora_c_element_available(name) == 0


def test_element_available_null_and_empty():
    assert lib.sora_c_element_available(ffi.NULL) == 0
    assert lib.sora_c_element_available(b"") == 0


# ---- sora_c_free -------------------------------------------------------------------


def test_free_null_is_safe():
    for _ in range(3):
        lib.sora_c_free(ffi.NULL)


# ---- logging -------------------------------------------------------------------------


def test_log_severity_valid_values():
    for severity in (lib.SORA_LOG_ERROR, lib.SORA_LOG_WARNING, lib.SORA_LOG_NONE):
        expect(lib.sora_c_set_log_severity(severity), OK, "sora_c_set_log_severity(%d)" % severity)


@pytest.mark.parametrize("severity", [-1, 5, 1000])
def test_log_severity_invalid(severity):
    expect(lib.sora_c_set_log_severity(severity), INVALID_ARGUMENT, "sora_c_set_log_severity(%d)" % severity)


def test_log_line():
    expect(lib.sora_c_set_log_severity(lib.SORA_LOG_NONE), OK, "sora_c_set_log_severity(NONE)")
    for severity in (lib.SORA_LOG_VERBOSE, lib.SORA_LOG_INFO, lib.SORA_LOG_WARNING, lib.SORA_LOG_ERROR,
                     lib.SORA_LOG_NONE):
        expect(lib.sora_c_log(severity, "abi suite: log line \u2713".encode("utf-8")), OK, "sora_c_log")


def test_log_invalid():
    expect(lib.sora_c_log(lib.SORA_LOG_INFO, ffi.NULL), INVALID_ARGUMENT, "sora_c_log(NULL)")
    expect(lib.sora_c_log(-1, b"x"), INVALID_ARGUMENT, "sora_c_log(-1)")
    expect(lib.sora_c_log(5, b"x"), INVALID_ARGUMENT, "sora_c_log(5)")


# ---- last error -------------------------------------------------------------------------


def test_last_error_empty_on_a_fresh_thread():
    def fresh():
        ptr = lib.sora_c_last_error()
        return None if ptr == ffi.NULL else ffi.string(ptr)

    assert run_in_thread(fresh) == b""


def test_last_error_set_by_a_failure():
    def fail():
        rc = lib.sora_context_post(ffi.NULL, 1)
        return rc, last_error()

    rc, message = run_in_thread(fail)
    assert rc == INVALID_ARGUMENT
    assert message


def test_last_error_is_replaced_by_the_next_failure():
    def two_failures():
        lib.sora_c_log(lib.SORA_LOG_INFO, ffi.NULL)
        first = last_error()
        lib.sora_c_set_log_severity(77)
        return first, last_error()

    first, second = run_in_thread(two_failures)
    assert first and second and first != second


def test_last_error_survives_a_non_failing_query():
    # Functions that cannot fail (abi/engine version, element lookup, free) do not touch it.
    def run():
        lib.sora_context_post(ffi.NULL, 1)
        before = last_error()
        lib.sora_c_abi_version()
        lib.sora_c_engine_version()
        lib.sora_c_free(ffi.NULL)
        return before, last_error()

    before, after = run_in_thread(run)
    assert before and after == before


def test_successful_call_clears_last_error(ctx):
    def run():
        lib.sora_context_post(ffi.NULL, 1)
        assert last_error()
        rc = lib.sora_context_post(ctx.ptr, 7)
        return rc, last_error()

    rc, message = run_in_thread(run)
    assert rc == OK
    assert message == "", "a successful sora_context_post left last error %r" % message


def test_last_error_is_thread_local():
    a_failed = threading.Event()
    b_done = threading.Event()
    seen = {}

    def thread_a():
        seen["a_rc"] = lib.sora_context_destroy(ffi.NULL)
        seen["a_before"] = last_error()
        a_failed.set()
        b_done.wait(10)
        seen["a_after"] = last_error()

    def thread_b():
        a_failed.wait(10)
        seen["b_fresh"] = last_error()
        seen["b_rc"] = lib.sora_c_set_log_severity(-5)
        seen["b_own"] = last_error()
        b_done.set()

    ta = threading.Thread(target=thread_a, daemon=True)
    tb = threading.Thread(target=thread_b, daemon=True)
    ta.start()
    tb.start()
    ta.join(15)
    tb.join(15)
    assert not ta.is_alive() and not tb.is_alive()
    assert seen["a_rc"] == INVALID_ARGUMENT and seen["a_before"]
    assert seen["b_fresh"] == "", "thread B sees thread A's error %r" % seen["b_fresh"]
    assert seen["b_rc"] == INVALID_ARGUMENT and seen["b_own"]
    assert seen["a_after"] == seen["a_before"], "thread B's failure changed thread A's last error"


def test_last_error_is_valid_utf8():
    def run():
        lib.sora_c_log(lib.SORA_LOG_INFO, ffi.NULL)
        return ffi.string(lib.sora_c_last_error())

    raw = run_in_thread(run)
    raw.decode("utf-8")
    assert b"\0" not in raw


# ---- NULL handles / NULL out-pointers never crash ------------------------------------
# Every call runs in a child interpreter (one fresh thread per call), so a build
# that dereferences NULL fails the matching test instead of killing the run.

_PRELUDE = r"""
charpp = ffi.new("char **")
ctxpp = ffi.new("sora_context **")
peerpp = ffi.new("sora_peer **")
vspp = ffi.new("sora_video_source **")
aspp = ffi.new("sora_audio_source **")
i32p = ffi.new("int32_t *")
buf = ffi.new("uint8_t[]", 4096)
samples = ffi.new("int16_t[]", 4096)
cfg = ffi.new("sora_peer_config *")
cfg.loopback_only = 1
vp8 = ffi.new("char[]", b"VP8")
opus = ffi.new("char[]", b"OPUS")
pv = ffi.new("sora_codec_params *"); pv.codec = vp8; pv.payload_type = 96; pv.clock_rate = 90000
pa = ffi.new("sora_codec_params *"); pa.codec = opus; pa.payload_type = 111; pa.clock_rate = 48000; pa.channels = 2
dcinit = ffi.new("sora_data_channel_init *")
dcinit.ordered = 1; dcinit.max_packet_life_time = -1; dcinit.max_retransmits = -1; dcinit.id = -1
SDP = (b"v=0\r\no=- 1 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
       b"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 OPUS/48000/2\r\n")
CAND = b"candidate:1 1 UDP 2015364095 127.0.0.1 40000 typ host"
ctx_router = EventRouter(lambda e: None)
peer_router = EventRouter(lambda e: None)
peer_router2 = EventRouter(lambda e: None)
assert lib.sora_context_create(ctx_router.callbacks, ctxpp) == 0
ctx = ctxpp[0]
assert lib.sora_peer_create(ctx, cfg, peer_router.callbacks, peerpp) == 0
peer = peerpp[0]
assert lib.sora_video_source_create(ctx, vspp) == 0
vs = vspp[0]
assert lib.sora_audio_source_create(ctx, 1, 48000, aspp) == 0
aus = aspp[0]
peerpp2 = ffi.new("sora_peer **")
assert lib.sora_peer_create(ctx, cfg, peer_router2.callbacks, peerpp2) == 0
peer2 = peerpp2[0]
u64 = ffi.new("uint64_t *")
sink_router = EventRouter(lambda e: None)
try:
    sink_cfg = ffi.new("sora_sink_config *")
    sinkpp = ffi.new("sora_sink **")
    fwdpp = ffi.new("sora_forward **")
    xfpp = ffi.new("sora_transform **")
    xfinfo = ffi.new("sora_encoded_frame_info *")
    xf_router = EventRouter(lambda e: None)
    assert lib.sora_transform_create(ctx, xf_router.callbacks, xfpp) == 0
    xf = xfpp[0]
except Exception:  # a binding built from an older header: those calls report it themselves
    pass
"""

_EPILOGUE = r"""
assert lib.sora_context_destroy(ctx) == 0
"""

# (name, expression, expected result, must set a last-error message)
NULL_CALLS = [
    # NULL handles
    ("sora_context_post(NULL)", "lib.sora_context_post(NULL, 1)", INVALID_ARGUMENT, True),
    ("sora_context_destroy(NULL)", "lib.sora_context_destroy(NULL)", INVALID_ARGUMENT, True),
    ("sora_context_is_dispatcher_thread(NULL)", "lib.sora_context_is_dispatcher_thread(NULL)", 0, False),
    ("sora_peer_create(ctx=NULL)", "lib.sora_peer_create(NULL, cfg, peer_router2.callbacks, peerpp)",
     INVALID_ARGUMENT, True),
    ("sora_peer_add_transceiver(NULL)", "lib.sora_peer_add_transceiver(NULL, b'video', 3, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_set_direction(NULL)", "lib.sora_peer_set_direction(NULL, 0, 3)", INVALID_ARGUMENT, True),
    ("sora_peer_set_remote_description(NULL)", "lib.sora_peer_set_remote_description(NULL, b'offer', SDP)",
     INVALID_ARGUMENT, True),
    ("sora_peer_create_offer(NULL)", "lib.sora_peer_create_offer(NULL, charpp)", INVALID_ARGUMENT, True),
    ("sora_peer_create_answer(NULL)", "lib.sora_peer_create_answer(NULL, charpp)", INVALID_ARGUMENT, True),
    ("sora_peer_get_local_description(NULL)", "lib.sora_peer_get_local_description(NULL, charpp)",
     INVALID_ARGUMENT, True),
    ("sora_peer_add_ice_candidate(NULL)", "lib.sora_peer_add_ice_candidate(NULL, 0, CAND)", INVALID_ARGUMENT, True),
    ("sora_peer_attach_video_source(NULL)", "lib.sora_peer_attach_video_source(NULL, vs, 0, pv)",
     INVALID_ARGUMENT, True),
    ("sora_peer_attach_audio_source(NULL)", "lib.sora_peer_attach_audio_source(NULL, aus, 0, pa)",
     INVALID_ARGUMENT, True),
    ("sora_peer_request_key_frame(NULL)", "lib.sora_peer_request_key_frame(NULL)", INVALID_ARGUMENT, True),
    ("sora_peer_create_data_channel(NULL)", "lib.sora_peer_create_data_channel(NULL, b'x', dcinit, i32p)",
     INVALID_ARGUMENT, True),
    ("sora_peer_send_data(NULL)", "lib.sora_peer_send_data(NULL, 0, buf, 4, 1)", INVALID_ARGUMENT, True),
    ("sora_peer_close_data_channel(NULL)", "lib.sora_peer_close_data_channel(NULL, 0)", INVALID_ARGUMENT, True),
    ("sora_peer_data_channel_buffered_amount(NULL)", "lib.sora_peer_data_channel_buffered_amount(NULL, 0, u64)",
     INVALID_ARGUMENT, True),
    ("sora_peer_data_channel_buffered_amount(out=NULL)", "lib.sora_peer_data_channel_buffered_amount(peer, 0, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_open_data_channel_count(NULL)", "lib.sora_peer_open_data_channel_count(NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_get_stats(NULL)", "lib.sora_peer_get_stats(NULL, charpp)", INVALID_ARGUMENT, True),
    ("sora_peer_close(NULL)", "lib.sora_peer_close(NULL)", INVALID_ARGUMENT, True),
    ("sora_peer_destroy(NULL)", "lib.sora_peer_destroy(NULL)", INVALID_ARGUMENT, True),
    ("sora_video_source_create(ctx=NULL)", "lib.sora_video_source_create(NULL, vspp)", INVALID_ARGUMENT, True),
    ("sora_video_source_push_bgr(NULL)", "lib.sora_video_source_push_bgr(NULL, buf, 2, 2, 6, -1)",
     INVALID_ARGUMENT, True),
    ("sora_video_source_push_i420(NULL)",
     "lib.sora_video_source_push_i420(NULL, buf, 2, buf, 1, buf, 1, 2, 2, -1)", INVALID_ARGUMENT, True),
    ("sora_video_source_frame_count(NULL)", "lib.sora_video_source_frame_count(NULL)", INVALID_ARGUMENT, True),
    ("sora_video_source_destroy(NULL)", "lib.sora_video_source_destroy(NULL)", INVALID_ARGUMENT, True),
    ("sora_audio_source_create(ctx=NULL)", "lib.sora_audio_source_create(NULL, 1, 48000, aspp)",
     INVALID_ARGUMENT, True),
    ("sora_audio_source_push(NULL)", "lib.sora_audio_source_push(NULL, samples, 16, -1)", INVALID_ARGUMENT, True),
    ("sora_audio_source_destroy(NULL)", "lib.sora_audio_source_destroy(NULL)", INVALID_ARGUMENT, True),
    ("sora_c_element_available(NULL)", "lib.sora_c_element_available(NULL)", 0, False),
    ("sora_c_log(message=NULL)", "lib.sora_c_log(lib.SORA_LOG_INFO, NULL)", INVALID_ARGUMENT, True),
    ("sora_c_free(NULL)", "lib.sora_c_free(NULL)", None, False),
    ("sora_c_release(NULL)", "lib.sora_c_release(NULL)", None, False),
    ("sora_sink_create(peer=NULL)", "lib.sora_sink_create(NULL, 1, sink_cfg, sink_router.callbacks, sinkpp)",
     INVALID_ARGUMENT, True),
    ("sora_sink_dropped(NULL)", "lib.sora_sink_dropped(NULL)", INVALID_ARGUMENT, True),
    ("sora_sink_destroy(NULL)", "lib.sora_sink_destroy(NULL)", INVALID_ARGUMENT, True),
    ("sora_forward_create(src=NULL)", "lib.sora_forward_create(NULL, 1, peer2, 0, 96, fwdpp)",
     INVALID_ARGUMENT, True),
    ("sora_forward_create(dst=NULL)", "lib.sora_forward_create(peer, 1, NULL, 0, 96, fwdpp)",
     INVALID_ARGUMENT, True),
    ("sora_forward_destroy(NULL)", "lib.sora_forward_destroy(NULL)", INVALID_ARGUMENT, True),
    ("sora_peer_set_video_encoder(NULL)", "lib.sora_peer_set_video_encoder(NULL, b'H264', b'x264enc')",
     INVALID_ARGUMENT, True),
    ("sora_peer_set_video_encoder(codec=NULL)", "lib.sora_peer_set_video_encoder(peer, NULL, b'x264enc')",
     INVALID_ARGUMENT, True),
    ("sora_transform_create(ctx=NULL)", "lib.sora_transform_create(NULL, xf_router.callbacks, xfpp)",
     INVALID_ARGUMENT, True),
    ("sora_transform_create(out=NULL)", "lib.sora_transform_create(ctx, xf_router.callbacks, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_set_send_transform(NULL)", "lib.sora_peer_set_send_transform(NULL, 0, xf)", INVALID_ARGUMENT, True),
    ("sora_peer_set_track_transform(NULL)", "lib.sora_peer_set_track_transform(NULL, 1, xf)",
     INVALID_ARGUMENT, True),
    ("sora_transform_enqueue(NULL)", "lib.sora_transform_enqueue(NULL, buf, NULL, 0, 0)", INVALID_ARGUMENT, True),
    ("sora_transform_enqueue(frame=NULL)", "lib.sora_transform_enqueue(xf, NULL, NULL, 0, 0)",
     INVALID_ARGUMENT, True),
    ("sora_transform_frame_info(NULL)", "lib.sora_transform_frame_info(NULL, xfinfo)", INVALID_ARGUMENT, True),
    ("sora_transform_frame_info(info=NULL)", "lib.sora_transform_frame_info(buf, NULL)", INVALID_ARGUMENT, True),
    ("sora_transform_short_circuit(NULL)", "lib.sora_transform_short_circuit(NULL)", INVALID_ARGUMENT, True),
    ("sora_transform_dropped(NULL)", "lib.sora_transform_dropped(NULL)", INVALID_ARGUMENT, True),
    ("sora_transform_destroy(NULL)", "lib.sora_transform_destroy(NULL)", INVALID_ARGUMENT, True),
    ("sora_peer_request_remote_key_frame(NULL)", "lib.sora_peer_request_remote_key_frame(NULL, 1)",
     INVALID_ARGUMENT, True),
    ("sora_peer_track_rid(NULL)", "lib.sora_peer_track_rid(NULL, 1, charpp, ffi.new('uint32_t *'))",
     INVALID_ARGUMENT, True),
    ("sora_peer_track_rid(rid_out=NULL)", "lib.sora_peer_track_rid(peer, 1, NULL, NULL)", INVALID_ARGUMENT, True),
    ("sora_peer_attach_video_simulcast(NULL)",
     "lib.sora_peer_attach_video_simulcast(NULL, vs, 0, pv, ffi.NULL, 1)", INVALID_ARGUMENT, True),
    ("sora_peer_attach_video_simulcast(source=NULL)",
     "lib.sora_peer_attach_video_simulcast(peer, NULL, 0, pv, ffi.NULL, 1)", INVALID_ARGUMENT, True),
    ("sora_peer_attach_video_simulcast(params=NULL)",
     "lib.sora_peer_attach_video_simulcast(peer, vs, 0, NULL, ffi.NULL, 1)", INVALID_ARGUMENT, True),
    ("sora_peer_attach_video_simulcast(encodings=NULL)",
     "lib.sora_peer_attach_video_simulcast(peer, vs, 0, pv, NULL, 1)", INVALID_ARGUMENT, True),
    ("sora_peer_set_degradation_preference(NULL)", "lib.sora_peer_set_degradation_preference(NULL, 1)",
     INVALID_ARGUMENT, True),
    ("sora_peer_set_remb(NULL)", "lib.sora_peer_set_remb(NULL, 300000)", INVALID_ARGUMENT, True),
    # NULL out-pointers and NULL arguments next to a valid handle
    ("sora_context_create(out=NULL)", "lib.sora_context_create(ctx_router.callbacks, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_create(out=NULL)", "lib.sora_peer_create(ctx, cfg, peer_router2.callbacks, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_create_offer(out=NULL)", "lib.sora_peer_create_offer(peer, NULL)", INVALID_ARGUMENT, True),
    ("sora_peer_create_answer(out=NULL)", "lib.sora_peer_create_answer(peer, NULL)", INVALID_ARGUMENT, True),
    ("sora_peer_get_local_description(out=NULL)", "lib.sora_peer_get_local_description(peer, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_get_stats(out=NULL)", "lib.sora_peer_get_stats(peer, NULL)", INVALID_ARGUMENT, True),
    ("sora_peer_create_data_channel(id_out=NULL)", "lib.sora_peer_create_data_channel(peer, b'x', dcinit, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_create_data_channel(label=NULL)", "lib.sora_peer_create_data_channel(peer, NULL, dcinit, i32p)",
     INVALID_ARGUMENT, True),
    ("sora_peer_add_transceiver(kind=NULL)", "lib.sora_peer_add_transceiver(peer, NULL, 3, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_set_remote_description(type=NULL)", "lib.sora_peer_set_remote_description(peer, NULL, SDP)",
     INVALID_ARGUMENT, True),
    ("sora_peer_set_remote_description(sdp=NULL)", "lib.sora_peer_set_remote_description(peer, b'offer', NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_add_ice_candidate(candidate=NULL)", "lib.sora_peer_add_ice_candidate(peer, 0, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_attach_video_source(source=NULL)", "lib.sora_peer_attach_video_source(peer, NULL, 0, pv)",
     INVALID_ARGUMENT, True),
    ("sora_peer_attach_video_source(params=NULL)", "lib.sora_peer_attach_video_source(peer, vs, 0, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_peer_attach_audio_source(source=NULL)", "lib.sora_peer_attach_audio_source(peer, NULL, 0, pa)",
     INVALID_ARGUMENT, True),
    ("sora_peer_attach_audio_source(params=NULL)", "lib.sora_peer_attach_audio_source(peer, aus, 0, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_video_source_create(out=NULL)", "lib.sora_video_source_create(ctx, NULL)", INVALID_ARGUMENT, True),
    ("sora_video_source_push_bgr(data=NULL)", "lib.sora_video_source_push_bgr(vs, NULL, 2, 2, 6, -1)",
     INVALID_ARGUMENT, True),
    ("sora_video_source_push_i420(y=NULL)", "lib.sora_video_source_push_i420(vs, NULL, 2, buf, 1, buf, 1, 2, 2, -1)",
     INVALID_ARGUMENT, True),
    ("sora_video_source_push_i420(u=NULL)", "lib.sora_video_source_push_i420(vs, buf, 2, NULL, 1, buf, 1, 2, 2, -1)",
     INVALID_ARGUMENT, True),
    ("sora_video_source_push_i420(v=NULL)", "lib.sora_video_source_push_i420(vs, buf, 2, buf, 1, NULL, 1, 2, 2, -1)",
     INVALID_ARGUMENT, True),
    ("sora_audio_source_create(out=NULL)", "lib.sora_audio_source_create(ctx, 1, 48000, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_audio_source_push(samples=NULL)", "lib.sora_audio_source_push(aus, NULL, 16, -1)", INVALID_ARGUMENT, True),
    ("sora_sink_create(out=NULL)", "lib.sora_sink_create(peer, 1, sink_cfg, sink_router.callbacks, NULL)",
     INVALID_ARGUMENT, True),
    ("sora_forward_create(out=NULL)", "lib.sora_forward_create(peer, 1, peer2, 0, 96, NULL)",
     INVALID_ARGUMENT, True),
]

# Functions without a handle or pointer argument to pass NULL to.
NO_NULL_CHECK = {"sora_c_abi_version", "sora_c_last_error", "sora_c_engine_version", "sora_c_set_log_severity",
                 "sora_c_prepare"}


def test_every_header_function_has_a_null_check():
    """Keeps this table complete as sora_c.h grows: add a NULL_CALLS entry for each new function."""
    from .test_header import FUNCTIONS

    covered = {name.split("(")[0] for name, _, _, _ in NULL_CALLS} | NO_NULL_CHECK
    missing = [f for f in FUNCTIONS if f not in covered]
    assert not missing, "sora_c.h functions without a NULL-argument check in tests/abi/test_library.py: %r" % missing


@pytest.fixture(scope="module")
def null_results():
    return run_isolated([(name, expr) for name, expr, _, _ in NULL_CALLS], _PRELUDE, _EPILOGUE)


@pytest.mark.parametrize("name,expected,needs_message", [(n, e, m) for n, _, e, m in NULL_CALLS],
                         ids=[n for n, _, _, _ in NULL_CALLS])
def test_null_argument(null_results, name, expected, needs_message):
    result = null_results.result(name)
    rc = result["rc"]
    assert rc == expected, "%s returned %s, expected %s (last error %r)" % (
        name, code_name(rc) if rc is not None else None, code_name(expected) if expected is not None else None,
        result["err"])
    assert result["err"] is not None, "sora_c_last_error() returned NULL"
    if needs_message:
        assert result["err"], "%s failed without a sora_c_last_error() message" % name


def test_null_argument_run_completed(null_results):
    """After every NULL call the library still works: the child destroyed its context and exited cleanly."""
    assert null_results.done, "the child did not finish (exit status %s); stderr tail:\n%s" % (
        null_results.returncode, null_results.stderr[-2000:])
    assert null_results.returncode == 0


def test_failed_create_leaves_no_handle(ctx):
    """A failing create hands out no handle: the out-pointer is NULL afterwards."""
    aspp = ffi.new("sora_audio_source **")
    expect(lib.sora_audio_source_create(ctx.ptr, 0, 48000, aspp), INVALID_ARGUMENT, "audio source, 0 channels")
    assert aspp[0] == ffi.NULL


def test_error_codes_are_distinct():
    codes = [lib.SORA_OK, lib.SORA_ERR_INVALID_ARGUMENT, lib.SORA_ERR_INVALID_STATE, lib.SORA_ERR_ENGINE,
             lib.SORA_ERR_TIMEOUT, lib.SORA_ERR_NOT_FOUND, lib.SORA_ERR_UNSUPPORTED, lib.SORA_ERR_NO_MEMORY]
    assert codes[0] == 0
    assert all(c < 0 for c in codes[1:])
    assert len(set(codes)) == len(codes)


def _fail_call(i):
    if i % 2:
        return lib.sora_c_set_log_severity(100 + i)
    return lib.sora_c_log(lib.SORA_LOG_INFO, ffi.NULL)


def test_calls_on_many_threads_keep_their_own_errors():
    """Failures on 8 threads at once: each thread always reads the message of its own call."""
    reference = {i: run_in_thread(lambda i=i: (_fail_call(i), last_error())) for i in range(8)}
    barrier = threading.Barrier(8)
    out = {}

    def worker(i):
        barrier.wait(10)
        for _ in range(200):
            got = (_fail_call(i), last_error())
            if got != reference[i]:
                out[i] = got
                return
        out[i] = "ok"

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert all(out.get(i) == "ok" for i in range(8)), (out, reference)


def test_context_usable_from_a_thread_that_did_not_create_it():
    c = Context()
    try:
        assert run_in_thread(lambda: lib.sora_context_post(c.ptr, 1)) == OK
        assert c.rec.wait_for(lambda evs: len(evs) == 1)
    finally:
        c.destroy()
    assert c.rec.destroy_count == 1
    c.rec.check()
