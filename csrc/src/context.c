/* The context: one dispatcher thread that delivers every event in order. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef enum { ITEM_EVENT, ITEM_DESTROY, ITEM_STOP } item_kind;

typedef struct {
  item_kind kind;
  sora_handle_base *target;
  sora_event event; /* strings and data below are owned copies */
} queue_item;

static void item_free(queue_item *item) {
  g_free((char *)item->event.str0);
  g_free((char *)item->event.str1);
  g_free((char *)item->event.str2);
  g_free((uint8_t *)item->event.data);
  g_free(item);
}

/* ---- the context's memory ------------------------------------------------------------------------------
 * The owner holds one reference and every handle made from the context one more, released after the handle's
 * on_destroy and free. sora_context_destroy stops the dispatcher and drops the owner's reference; a sink that
 * outlives it (its owner destroys it later, its thread may still be inside a frame callback) still finds the
 * lock and queue it needs, and the memory goes with the last reference. */
sora_context *sora_context_ref(sora_context *ctx) {
  g_atomic_int_inc(&ctx->refs);
  return ctx;
}

void sora_context_unref(sora_context *ctx) {
  if (!g_atomic_int_dec_and_test(&ctx->refs)) return;
  g_async_queue_unref(ctx->queue);
  g_mutex_clear(&ctx->lock);
  g_mutex_clear(&ctx->media_lock);
  g_free(ctx);
}

void sora_handle_init(sora_handle_base *base, sora_context *ctx, const sora_callbacks *cb, sora_free_fn free_fn) {
  base->ctx = base == &ctx->base ? ctx : sora_context_ref(ctx);
  if (cb) base->callbacks = *cb;
  base->free_fn = free_fn;
  base->destroy_queued = FALSE;
}

/* on_destroy, then the handle's memory, then its reference on the context. */
static void run_destroy(sora_handle_base *target) {
  sora_context *ctx = target->ctx;
  gboolean is_context = target == &ctx->base;
  if (target->callbacks.on_destroy) target->callbacks.on_destroy(target->callbacks.user_data);
  if (target->free_fn) target->free_fn(target);
  if (!is_context) sora_context_unref(ctx);
}

void sora_queue_event(sora_handle_base *target, const sora_event *event) {
  sora_context *ctx = target->ctx;
  queue_item *item = g_new0(queue_item, 1);
  item->kind = ITEM_EVENT;
  item->target = target;
  item->event = *event;
  item->event.str0 = g_strdup(event->str0);
  item->event.str1 = g_strdup(event->str1);
  item->event.str2 = g_strdup(event->str2);
  item->event.data = event->size ? g_memdup2(event->data, event->size) : NULL;
  g_mutex_lock(&ctx->lock);
  gboolean dropped = target->destroy_queued || ctx->stopped;
  if (!dropped) g_async_queue_push(ctx->queue, item);
  g_mutex_unlock(&ctx->lock);
  if (dropped) item_free(item);
}

void sora_queue_destroy(sora_handle_base *target) {
  sora_context *ctx = target->ctx;
  queue_item *item = g_new0(queue_item, 1);
  item->kind = ITEM_DESTROY;
  item->target = target;
  g_mutex_lock(&ctx->lock);
  gboolean already = target->destroy_queued;
  target->destroy_queued = TRUE;
  /* Once the dispatcher has stopped, a handle destroyed later gets its on_destroy on the destroying thread. */
  gboolean now = !already && ctx->stopped;
  if (!already && !now) g_async_queue_push(ctx->queue, item);
  g_mutex_unlock(&ctx->lock);
  if (already || now) g_free(item);
  if (now) run_destroy(target);
}

static gpointer dispatcher_main(gpointer data) {
  sora_context *ctx = data;
  for (;;) {
    queue_item *item = g_async_queue_pop(ctx->queue);
    if (item->kind == ITEM_STOP) {
      g_free(item);
      break;
    }
    sora_handle_base *target = item->target;
    if (item->kind == ITEM_EVENT) {
      if (target->callbacks.on_event) target->callbacks.on_event(target->callbacks.user_data, &item->event);
    } else {
      run_destroy(target);
    }
    item_free(item);
  }
  return NULL;
}

/* ---- engine warm-up ----------------------------------------------------------------
 * The first connection of a process needs the engine started (gst_init, ~13 ms), the DTLS certificate (dtlscert.c,
 * with the dtls plugin and OpenSSL: ~10 ms) and the transport's plugins loaded with their element classes made:
 * srtp (libsrtp2 initialises NSS, whose softoken runs its power-up self-tests: ~40 ms), nice, webrtc, rtpmanager,
 * sctp. sora_c_prepare (the Python package calls it when it loads the shim, so this overlaps the rest of its import)
 * or else the first sora_context_create starts a thread that does it all; sora_context_create waits only for the
 * certificate. Context destroy and process
 * exit join it. */
static GMutex warm_lock;
static GThread *warm_thread;
static gboolean warm_started;

static gpointer warm_main(gpointer data) {
  (void)data;
  sora_engine_init();
  if (!gst_is_initialized()) return NULL;
  sora_dtls_certificate_init();
  static const char *const names[] = {"dtlssrtpenc", "dtlssrtpdec", "nicesrc", "nicesink", "webrtcbin",
                                      "rtpstorage", "rtprtxsend", "rtprtxreceive", "rtpfunnel", "sctpenc", "sctpdec"};
  for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
    GstElement *element = gst_element_factory_make(names[i], NULL);
    if (element) gst_object_unref(gst_object_ref_sink(element));
  }
  sora_sctp_wake_install();
  return NULL;
}

static void warm_join(void) {
  g_mutex_lock(&warm_lock);
  GThread *thread = warm_thread;
  warm_thread = NULL;
  g_mutex_unlock(&warm_lock);
  if (thread) g_thread_join(thread);
}

static void warm_up(void) {
  g_mutex_lock(&warm_lock);
  if (!warm_started && !g_getenv("SORA_SDK_NO_WARM_UP")) {
    warm_started = TRUE;
    warm_thread = g_thread_try_new("sora-warm-up", warm_main, NULL, NULL);
    if (warm_thread) {
      atexit(warm_join);
    }
  }
  g_mutex_unlock(&warm_lock);
}

SORA_C_API void sora_c_prepare(void) { warm_up(); }

SORA_C_API int sora_context_create(const sora_callbacks *callbacks, sora_context **out) {
  sora_clear_error();
  if (!out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "out is NULL");
  *out = NULL;
  sora_engine_init();
  if (!gst_is_initialized()) return sora_fail(SORA_ERR_ENGINE, "GStreamer could not be initialised");
  GstElementFactory *webrtc = gst_element_factory_find("webrtcbin");
  if (!webrtc)
    return sora_fail(SORA_ERR_ENGINE, "GStreamer element 'webrtcbin' is missing (install gstreamer1.0-plugins-bad and gstreamer1.0-nice)");
  gst_object_unref(webrtc);
  sora_context *ctx = g_new0(sora_context, 1);
  ctx->refs = 1;
  sora_handle_init(&ctx->base, ctx, callbacks, NULL);
  g_mutex_init(&ctx->lock);
  g_mutex_init(&ctx->media_lock);
  ctx->queue = g_async_queue_new();
  GError *err = NULL;
  ctx->thread = g_thread_try_new("sora-dispatch", dispatcher_main, ctx, &err);
  if (!ctx->thread) {
    int rc = sora_fail(SORA_ERR_ENGINE, "cannot start the dispatcher thread: %s", err ? err->message : "?");
    g_clear_error(&err);
    g_async_queue_unref(ctx->queue);
    g_free(ctx);
    return rc;
  }
  /* The process's DTLS certificate, before connect() needs it (dtlscert.c: ~1 ms, not GStreamer's RSA key). */
  sora_dtls_certificate_init();
  warm_up();
  *out = ctx;
  return SORA_OK;
}

SORA_C_API int sora_context_post(sora_context *ctx, int64_t token) {
  sora_clear_error();
  if (!ctx) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "context is NULL");
  if (ctx->stopping) return sora_fail(SORA_ERR_INVALID_STATE, "context is being destroyed");
  sora_event ev = {.type = SORA_EVENT_POST, .i0 = token};
  sora_queue_event(&ctx->base, &ev);
  return SORA_OK;
}

SORA_C_API int sora_context_is_dispatcher_thread(sora_context *ctx) {
  return ctx && ctx->thread == g_thread_self();
}

SORA_C_API int sora_context_destroy(sora_context *ctx) {
  sora_clear_error();
  if (!ctx) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "context is NULL");
  if (ctx->thread == g_thread_self())
    return sora_fail(SORA_ERR_INVALID_STATE, "a context cannot be destroyed from its own dispatcher thread");
  ctx->stopping = TRUE;
  warm_join();
  sora_peer_destroy_all(ctx);
  sora_source_destroy_all(ctx);
  sora_transform_destroy_all(ctx);
  sora_queue_destroy(&ctx->base);
  queue_item *stop = g_new0(queue_item, 1);
  stop->kind = ITEM_STOP;
  g_mutex_lock(&ctx->lock);
  ctx->stopped = TRUE; /* STOP is the last item: later events are dropped, later destroys run inline */
  g_async_queue_push(ctx->queue, stop);
  g_mutex_unlock(&ctx->lock);
  g_thread_join(ctx->thread);
  ctx->thread = NULL;
  sora_context_unref(ctx); /* the owner's reference; sinks still alive hold theirs */
  return SORA_OK;
}
