"""Context rules of sora_c.h: one dispatcher thread per context, in-order delivery, destroy semantics."""
from __future__ import annotations

import os
import threading
import time

import pytest

from .conftest import (INVALID_ARGUMENT, INVALID_STATE, OK, OPUS_CAPS, VP8_CAPS, Context, codec_params, expect, ffi,
                       last_error, lib, negotiate, run_in_thread, run_isolated)

POST = lib.SORA_EVENT_POST


def _tokens(rec):
    return [e.i0 for e in rec.events if e.type == POST]


def test_create_and_destroy():
    c = Context()
    c.destroy()
    assert c.rec.destroy_count == 1
    c.rec.check()


def test_on_destroy_runs_on_the_dispatcher_thread():
    c = Context()
    dispatcher = c.dispatcher_ident()
    c.destroy()
    assert c.rec.destroy_count == 1
    assert c.rec.threads == {dispatcher}
    c.rec.check()


def test_posted_tokens_arrive_in_order_on_one_other_thread(ctx):
    n = 500
    for i in range(n):
        expect(lib.sora_context_post(ctx.ptr, i), OK, "sora_context_post")
    assert ctx.rec.wait_for(lambda evs: len(evs) >= n), "only %d of %d tokens arrived" % (len(ctx.rec.events), n)
    assert _tokens(ctx.rec) == list(range(n))
    assert all(e.type == POST for e in ctx.rec.events)
    assert len(ctx.rec.threads) == 1, "POST events ran on %d threads" % len(ctx.rec.threads)
    assert threading.get_ident() not in ctx.rec.threads, "an event ran synchronously on the posting thread"
    ctx.rec.check()


@pytest.mark.parametrize("token", [0, -1, 1, 2 ** 31, -(2 ** 31) - 1, 2 ** 63 - 1, -(2 ** 63)])
def test_post_token_is_delivered_unchanged(ctx, token):
    expect(lib.sora_context_post(ctx.ptr, token), OK, "sora_context_post")
    assert ctx.rec.wait_for(lambda evs: len(evs) == 1)
    assert ctx.rec.events[0].i0 == token


def test_is_dispatcher_thread(ctx):
    seen = []
    ctx.rec.hook = lambda ev: seen.append(lib.sora_context_is_dispatcher_thread(ctx.ptr))
    expect(lib.sora_context_post(ctx.ptr, 1), OK, "sora_context_post")
    assert ctx.rec.wait_for(lambda evs: len(evs) == 1)
    assert wait_seen(seen, 1)
    assert seen == [1], "sora_context_is_dispatcher_thread() is %r on the dispatcher thread" % seen
    assert lib.sora_context_is_dispatcher_thread(ctx.ptr) == 0
    assert run_in_thread(lambda: lib.sora_context_is_dispatcher_thread(ctx.ptr)) == 0


def wait_seen(seen, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while len(seen) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(seen) >= n


def test_posts_from_many_threads_keep_each_threads_order(ctx):
    threads, per_thread = 6, 200
    barrier = threading.Barrier(threads)

    def producer(t):
        barrier.wait(10)
        for i in range(per_thread):
            assert lib.sora_context_post(ctx.ptr, t * 1000000 + i) == OK

    workers = [threading.Thread(target=producer, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(15)
    total = threads * per_thread
    assert ctx.rec.wait_for(lambda evs: len(evs) >= total), "%d of %d tokens arrived" % (len(ctx.rec.events), total)
    tokens = _tokens(ctx.rec)
    assert len(tokens) == total
    for t in range(threads):
        mine = [x - t * 1000000 for x in tokens if x // 1000000 == t]
        assert mine == list(range(per_thread)), "thread %d's tokens arrived out of order" % t
    assert len(ctx.rec.threads) == 1
    ctx.rec.check()


def test_each_context_has_its_own_dispatcher():
    a, b = Context(), Context()
    try:
        ta, tb = a.dispatcher_ident(), b.dispatcher_ident()
        assert ta != tb, "two contexts share one dispatcher thread"
        seen = []
        b.rec.hook = lambda ev: seen.append((lib.sora_context_is_dispatcher_thread(a.ptr),
                                             lib.sora_context_is_dispatcher_thread(b.ptr)))
        expect(lib.sora_context_post(b.ptr, 99), OK, "sora_context_post")
        assert wait_seen(seen, 1)
        assert seen[0] == (0, 1), "is_dispatcher_thread(a, b) on b's dispatcher: %r" % (seen[0],)
    finally:
        a.destroy()
        b.destroy()
    assert a.rec.destroy_count == 1 and b.rec.destroy_count == 1
    a.rec.check()
    b.rec.check()


def test_callback_may_call_into_the_library(ctx):
    """A callback posting the next token (re-entrant use from the dispatcher thread) works."""
    n = 100

    def chain(ev):
        if ev.i0 < n - 1:
            rc = lib.sora_context_post(ctx.ptr, ev.i0 + 1)
            if rc != OK:
                raise AssertionError("sora_context_post from the dispatcher returned %d" % rc)

    ctx.rec.hook = chain
    expect(lib.sora_context_post(ctx.ptr, 0), OK, "sora_context_post")
    assert ctx.rec.wait_for(lambda evs: len(evs) >= n)
    assert _tokens(ctx.rec) == list(range(n))
    ctx.rec.check()


def test_destroy_drains_queued_events():
    c = Context()
    n = 300
    for i in range(n):
        expect(lib.sora_context_post(c.ptr, i), OK, "sora_context_post")
    c.destroy()  # returns only after every queued event was delivered
    assert _tokens(c.rec) == list(range(n)), "destroy dropped queued events"
    assert c.rec.destroy_count == 1
    c.rec.check()  # includes: no event after on_destroy


def test_destroy_from_the_dispatcher_thread_is_refused():
    c = Context()
    result = {}

    def try_destroy(ev):
        if ev.i0 == 1:
            result["rc"] = lib.sora_context_destroy(c.ptr)
            result["err"] = last_error()
            result["post"] = lib.sora_context_post(c.ptr, 2)

    c.rec.hook = try_destroy
    try:
        expect(lib.sora_context_post(c.ptr, 1), OK, "sora_context_post")
        assert c.rec.wait_for(lambda evs: len(evs) >= 2), "the context stopped working after the refused destroy"
        assert result["rc"] == INVALID_STATE, "destroy on the dispatcher thread returned %d" % result["rc"]
        assert result["err"], "the refused destroy set no last error"
        assert result["post"] == OK
        assert _tokens(c.rec) == [1, 2]
    finally:
        c.rec.hook = None
        c.destroy()
    assert c.rec.destroy_count == 1
    c.rec.check()


def test_destroy_with_live_peers_and_sources():
    """Destroying the context releases live peers (one on_destroy each) and sources; then silence."""
    c = Context()
    a, b = c.peer("offerer"), c.peer("answerer")
    idle = c.peer("idle")
    expect(a.add_transceiver(b"video", lib.SORA_DIRECTION_RECVONLY, VP8_CAPS), OK, "add video transceiver")
    expect(a.add_transceiver(b"audio", lib.SORA_DIRECTION_RECVONLY, OPUS_CAPS), OK, "add audio transceiver")
    a.create_data_channel("dc")
    vspp = ffi.new("sora_video_source **")
    aspp = ffi.new("sora_audio_source **")
    expect(lib.sora_video_source_create(c.ptr, vspp), OK, "video source")
    expect(lib.sora_audio_source_create(c.ptr, 1, 48000, aspp), OK, "audio source")
    spare = ffi.new("sora_video_source **")
    expect(lib.sora_video_source_create(c.ptr, spare), OK, "unattached video source")
    vp8 = codec_params(b"VP8", 96, 90000)
    opus = codec_params(b"OPUS", 111, 48000, 2)

    def attach():
        expect(lib.sora_peer_attach_video_source(b.ptr, vspp[0], 0, vp8[0]), OK, "attach video")
        expect(lib.sora_peer_attach_audio_source(b.ptr, aspp[0], 1, opus[0]), OK, "attach audio")

    stop = threading.Event()
    frame = ffi.new("uint8_t[]", 64 * 48 * 3)
    pcm = ffi.new("int16_t[]", 480)
    pushes = []

    def pump():
        # Keep media flowing into the sources until the context is gone.
        while not stop.is_set():
            pushes.append(lib.sora_video_source_push_bgr(vspp[0], frame, 64, 48, 64 * 3, -1))
            lib.sora_audio_source_push(aspp[0], pcm, 480, -1)
            time.sleep(0.01)

    pumper = None
    try:
        negotiate(a, b, attach)
        pumper = threading.Thread(target=pump, daemon=True)
        pumper.start()
        time.sleep(0.3)
        stop.set()
        pumper.join(5)
    finally:
        stop.set()
        for p in c.peers:
            p.remote = None
        c.destroy()
    assert pushes and all(rc == OK for rc in pushes)
    counts = [len(p.rec.events) for p in c.peers] + [len(c.rec.events)]
    for p in c.peers:
        assert p.rec.destroy_count == 1, "%s: on_destroy ran %d times" % (p.name, p.rec.destroy_count)
        p.rec.check()
    assert c.rec.destroy_count == 1
    c.rec.check()
    time.sleep(0.5)
    assert [len(p.rec.events) for p in c.peers] + [len(c.rec.events)] == counts, "callbacks ran after destroy"
    assert [p.rec.destroy_count for p in c.peers] == [1, 1, 1]
    assert idle.rec.destroy_count == 1


def test_destroy_after_destroying_every_peer():
    c = Context()
    peers = [c.peer("p%d" % i) for i in range(3)]
    for p in peers:
        p.destroy()
    for p in peers:
        assert p.rec.wait_destroyed(), "%s: no on_destroy after sora_peer_destroy" % p.name
    c.destroy()
    for p in peers:
        assert p.rec.destroy_count == 1
        p.rec.check()
    assert c.rec.destroy_count == 1


def _task_count():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def test_repeated_contexts_do_not_leak_threads():
    """Each destroy stops its dispatcher thread."""
    warm = Context()
    warm.dispatcher_ident()
    warm.destroy()
    before = _task_count()
    if before is None:
        pytest.skip("no /proc/self/task here")
    for _ in range(10):
        c = Context()
        c.dispatcher_ident()
        c.destroy()
        assert c.rec.destroy_count == 1
    # Allow a few lazily started engine pool threads, not one per context.
    assert _task_count() - before < 5, "threads grew from %d to %d over 10 contexts" % (before, _task_count())


# ---- callbacks that are NULL: must not crash (run in a child) -------------------------

_NULL_CB_PRELUDE = r"""
def null_struct_context():
    out = ffi.new("sora_context **")
    rc = lib.sora_context_create(NULL, out)
    if rc != 0:
        return rc
    assert lib.sora_context_post(out[0], 1) == 0
    assert lib.sora_context_destroy(out[0]) == 0
    return 0

def null_function_pointers():
    cb = ffi.new("sora_callbacks *")   # user_data, on_event and on_destroy all NULL
    out = ffi.new("sora_context **")
    rc = lib.sora_context_create(cb, out)
    if rc != 0:
        return rc
    ctx = out[0]
    for i in range(10):
        assert lib.sora_context_post(ctx, i) == 0
    cfg = ffi.new("sora_peer_config *")
    cfg.loopback_only = 1
    pp = ffi.new("sora_peer **")
    assert lib.sora_peer_create(ctx, cfg, cb, pp) == 0
    assert lib.sora_peer_add_transceiver(pp[0], b"audio", 3, NULL) == 0
    s = ffi.new("char **")
    assert lib.sora_peer_create_offer(pp[0], s) == 0   # gathering events go nowhere
    lib.sora_c_free(s[0])
    import time
    time.sleep(0.3)
    assert lib.sora_peer_destroy(pp[0]) == 0
    pp2 = ffi.new("sora_peer **")
    assert lib.sora_peer_create(ctx, cfg, cb, pp2) == 0   # left for the context to destroy
    return lib.sora_context_destroy(ctx)
"""


@pytest.fixture(scope="module")
def null_callback_results():
    return run_isolated([("NULL sora_callbacks", "null_struct_context()"),
                         ("NULL callback functions", "null_function_pointers()")], _NULL_CB_PRELUDE)


def test_context_with_null_callbacks_struct(null_callback_results):
    rc = null_callback_results.result("NULL sora_callbacks")["rc"]
    assert rc in (OK, INVALID_ARGUMENT), "sora_context_create(NULL callbacks) returned %d" % rc


def test_handles_with_null_callback_functions(null_callback_results):
    rc = null_callback_results.result("NULL callback functions")["rc"]
    assert rc == OK, "a context/peer with NULL on_event/on_destroy failed with %d" % rc
