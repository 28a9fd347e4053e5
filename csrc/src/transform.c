/* Encoded-frame transforms (the application's SoraFrameTransformer).
 *
 * A transform point is a cut in a branch: an appsink that takes the encoded frames out of the pipeline and
 * an appsrc that puts them back. It sits between encoder and payloader on the send side, and between
 * depayloader and decoder in a sink on the receive side. Frames go from the appsink (streaming thread) to the
 * transform's own thread, which hands them to the application as SORA_EVENT_ENCODED_FRAME; the application
 * gives each back with sora_transform_enqueue (changed or not), or drops it with sora_c_release. After
 * sora_transform_short_circuit frames pass straight through without reaching the application. */
#include <string.h>

#include "internal.h"

#define TRANSFORM_CUT "sora-transform-cut"
#define TRANSFORM_CAPACITY 240 /* frames waiting for the application; the oldest go beyond that */

typedef struct transform_point {
  gint refs; /* the branch (appsink callbacks) + each frame in flight */
  GMutex lock;
  GstElement *appsrc;  /* owned; NULL once stopped */
  GstElement *appsink; /* owned; upstream key-frame requests are re-sent from its sink pad */
  GstCaps *caps;       /* what the appsrc announces now */
  sora_transform *transform;
  sora_encoded_frame_info info; /* direction, payload type, ssrc, clock rate; per frame fields are filled later */
  gchar *mime_type;
} transform_point;

struct sora_transform {
  sora_handle_base base;
  gint refs; /* the owner + each point */
  GMutex lock;
  GCond cond;
  GQueue queue; /* encoded_frame* waiting for the application */
  gboolean stopping;
  gboolean short_circuit;
  gint64 dropped;
  GThread *thread;
};

typedef struct encoded_frame {
  sora_frame_head head; /* sora_c_release frees it */
  GstBuffer *buffer;
  GstMapInfo map;
  transform_point *point;
  sora_encoded_frame_info info;
} encoded_frame;

static void transform_unref(sora_transform *t);

/* ---- points ---------------------------------------------------------------- */

static void point_unref(gpointer data) {
  transform_point *p = data;
  if (!g_atomic_int_dec_and_test(&p->refs)) return;
  if (p->appsrc) gst_object_unref(p->appsrc);
  if (p->appsink) gst_object_unref(p->appsink);
  if (p->caps) gst_caps_unref(p->caps);
  g_free(p->mime_type);
  g_mutex_clear(&p->lock);
  transform_unref(p->transform);
  g_free(p);
}

/* Push `buffer` (owned) on the point's appsrc, announcing `caps` first when they changed. */
static int point_push(transform_point *p, GstBuffer *buffer, GstCaps *caps) {
  g_mutex_lock(&p->lock);
  GstElement *appsrc = p->appsrc ? gst_object_ref(p->appsrc) : NULL;
  gboolean new_caps = caps && (!p->caps || !gst_caps_is_equal(p->caps, caps));
  if (appsrc && new_caps) gst_caps_replace(&p->caps, caps);
  g_mutex_unlock(&p->lock);
  if (!appsrc) {
    gst_buffer_unref(buffer);
    return sora_fail(SORA_ERR_INVALID_STATE, "the branch of this frame is gone");
  }
  if (new_caps) gst_app_src_set_caps(GST_APP_SRC(appsrc), caps);
  GstFlowReturn flow = gst_app_src_push_buffer(GST_APP_SRC(appsrc), buffer);
  gst_object_unref(appsrc);
  if (flow != GST_FLOW_OK && flow != GST_FLOW_FLUSHING && flow != GST_FLOW_EOS)
    return sora_fail(SORA_ERR_ENGINE, "the engine refused the frame (%s)", gst_flow_get_name(flow));
  return SORA_OK;
}

static void frame_release(void *ref) {
  encoded_frame *f = ref;
  gst_buffer_unmap(f->buffer, &f->map);
  gst_buffer_unref(f->buffer);
  point_unref(f->point);
  g_free(f);
}

/* The sample's buffer (a new reference) with its timestamps turned into running time: the appsrc that puts
 * it back starts its own segment at 0, while encoders may use another (x264enc starts at 1000 hours). */
static GstBuffer *stamp_running_time(GstSample *sample) {
  GstBuffer *buffer = gst_sample_get_buffer(sample);
  if (!buffer) return NULL;
  buffer = gst_buffer_ref(buffer);
  const GstSegment *seg = gst_sample_get_segment(sample);
  if (!seg || seg->format != GST_FORMAT_TIME) return buffer;
  GstClockTime pts = GST_BUFFER_PTS(buffer), dts = GST_BUFFER_DTS(buffer);
  GstClockTime rpts = GST_CLOCK_TIME_IS_VALID(pts) ? gst_segment_to_running_time(seg, GST_FORMAT_TIME, pts) : pts;
  GstClockTime rdts = GST_CLOCK_TIME_IS_VALID(dts) ? gst_segment_to_running_time(seg, GST_FORMAT_TIME, dts) : dts;
  if (rpts == pts && rdts == dts) return buffer;
  buffer = gst_buffer_make_writable(buffer); /* a shallow copy: the memory is shared */
  GST_BUFFER_PTS(buffer) = rpts;
  GST_BUFFER_DTS(buffer) = rdts;
  return buffer;
}

static GstFlowReturn point_new_sample(GstAppSink *appsink, gpointer data) {
  transform_point *p = data;
  sora_transform *t = p->transform;
  GstSample *sample = gst_app_sink_pull_sample(appsink);
  if (!sample) return GST_FLOW_OK;
  GstCaps *caps = gst_sample_get_caps(sample);
  GstBuffer *buffer = stamp_running_time(sample);
  if (!buffer) {
    gst_sample_unref(sample);
    return GST_FLOW_OK;
  }
  g_mutex_lock(&t->lock);
  gboolean through = t->short_circuit || t->stopping;
  g_mutex_unlock(&t->lock);
  if (through) {
    point_push(p, buffer, caps);
    gst_sample_unref(sample);
    return GST_FLOW_OK;
  }
  encoded_frame *f = g_new0(encoded_frame, 1);
  f->head.release = frame_release;
  f->buffer = buffer;
  if (!gst_buffer_map(f->buffer, &f->map, GST_MAP_READ)) {
    gst_buffer_unref(f->buffer);
    g_free(f);
    gst_sample_unref(sample);
    return GST_FLOW_OK;
  }
  g_atomic_int_inc(&p->refs);
  f->point = p;
  f->info = p->info;
  f->info.key_frame = !GST_BUFFER_FLAG_IS_SET(buffer, GST_BUFFER_FLAG_DELTA_UNIT);
  f->info.pts_us = GST_BUFFER_PTS_IS_VALID(buffer) ? (int64_t)(GST_BUFFER_PTS(buffer) / 1000) : -1;
  if (GST_BUFFER_PTS_IS_VALID(buffer) && f->info.clock_rate > 0)
    f->info.rtp_timestamp = (uint32_t)gst_util_uint64_scale(GST_BUFFER_PTS(buffer), (guint64)f->info.clock_rate,
                                                            GST_SECOND);
  if (caps && gst_caps_get_size(caps)) {
    const GstStructure *st = gst_caps_get_structure(caps, 0);
    gint w = 0, h = 0;
    if (gst_structure_get_int(st, "width", &w) && gst_structure_get_int(st, "height", &h)) {
      f->info.width = w;
      f->info.height = h;
    }
  }
  g_mutex_lock(&p->lock);
  if (caps && (!p->caps || !gst_caps_is_equal(p->caps, caps))) {
    /* Announce the caps now, so an enqueue from any thread finds them. */
    GstElement *appsrc = p->appsrc ? gst_object_ref(p->appsrc) : NULL;
    gst_caps_replace(&p->caps, caps);
    g_mutex_unlock(&p->lock);
    if (appsrc) {
      gst_app_src_set_caps(GST_APP_SRC(appsrc), caps);
      gst_object_unref(appsrc);
    }
  } else {
    g_mutex_unlock(&p->lock);
  }
  gst_sample_unref(sample);
  g_mutex_lock(&t->lock);
  while (g_queue_get_length(&t->queue) >= TRANSFORM_CAPACITY) {
    frame_release(g_queue_pop_head(&t->queue));
    t->dropped++;
  }
  g_queue_push_tail(&t->queue, f);
  g_cond_signal(&t->cond);
  g_mutex_unlock(&t->lock);
  return GST_FLOW_OK;
}

/* Key-frame requests reaching the appsrc go on upstream of the cut (to the encoder or the depayloader). */
static GstPadProbeReturn point_upstream_event(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  transform_point *p = data;
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT(info);
  if (event && gst_video_event_is_force_key_unit(event)) {
    GstPad *sinkpad = gst_element_get_static_pad(p->appsink, "sink");
    gst_pad_push_event(sinkpad, gst_event_ref(event));
    gst_object_unref(sinkpad);
  }
  return GST_PAD_PROBE_OK;
}

int sora_transform_make_point(sora_transform *t, int32_t direction, const char *mime_type, int32_t payload_type,
                              uint32_t ssrc, int32_t clock_rate, GstElement **sink_out, GstElement **src_out) {
  GstElement *appsink = gst_element_factory_make("appsink", NULL);
  GstElement *appsrc = gst_element_factory_make("appsrc", NULL);
  if (!appsink || !appsrc) {
    if (appsink) gst_object_unref(appsink);
    if (appsrc) gst_object_unref(appsrc);
    return sora_fail(SORA_ERR_UNSUPPORTED, "appsink/appsrc are missing");
  }
  g_object_set(appsink, "sync", FALSE, "async", FALSE, "enable-last-sample", FALSE, "max-buffers", 0, NULL);
  g_object_set(appsrc, "is-live", TRUE, "format", GST_FORMAT_TIME, "do-timestamp", FALSE,
               "max-bytes", (guint64)(16 << 20), "block", FALSE, NULL);
  g_object_set_data(G_OBJECT(appsink), TRANSFORM_CUT, GINT_TO_POINTER(1));
  if (mime_type && (g_str_equal(mime_type, "video/H264") || g_str_equal(mime_type, "video/H265"))) {
    /* Whole access units in Annex B form, as libwebrtc hands them to a transform: bytes appended to a frame
     * stay at its end, where a length-prefixed (avc) layout would break. */
    GstCaps *caps = gst_caps_new_simple(g_str_equal(mime_type, "video/H264") ? "video/x-h264" : "video/x-h265",
                                        "stream-format", G_TYPE_STRING, "byte-stream", "alignment", G_TYPE_STRING,
                                        "au", NULL);
    g_object_set(appsink, "caps", caps, NULL);
    gst_caps_unref(caps);
  }
  transform_point *p = g_new0(transform_point, 1);
  p->refs = 1; /* the appsink callbacks */
  g_mutex_init(&p->lock);
  p->appsrc = gst_object_ref(appsrc);
  p->appsink = gst_object_ref(appsink);
  g_atomic_int_inc(&t->refs);
  p->transform = t;
  p->info.direction = direction;
  p->info.payload_type = payload_type;
  p->info.ssrc = ssrc;
  p->info.clock_rate = clock_rate;
  p->mime_type = g_strdup(mime_type ? mime_type : "");
  p->info.mime_type = p->mime_type;
  GstPad *srcpad = gst_element_get_static_pad(appsrc, "src");
  g_atomic_int_inc(&p->refs);
  gst_pad_add_probe(srcpad, GST_PAD_PROBE_TYPE_EVENT_UPSTREAM, point_upstream_event, p, point_unref);
  gst_object_unref(srcpad);
  GstAppSinkCallbacks cbs = {0};
  cbs.new_sample = point_new_sample;
  gst_app_sink_set_callbacks(GST_APP_SINK(appsink), &cbs, p, point_unref);
  *sink_out = appsink;
  *src_out = appsrc;
  return SORA_OK;
}

char *sora_mime_type(const char *kind, const char *codec) {
  if (codec && g_ascii_strcasecmp(codec, "OPUS") == 0) return g_strdup_printf("%s/opus", kind);
  char *upper = g_ascii_strup(codec ? codec : "", -1);
  char *mime = g_strdup_printf("%s/%s", kind, upper);
  g_free(upper);
  return mime;
}

void sora_transform_start_cuts(GstElement *pipeline, GstElement **chain, gint n) {
  /* A decodebin downstream changes state asynchronously (until it sees data), which leaves the pipeline's
   * current state at PAUSED for a while; a cut synced to that would preroll and hold the very data decodebin
   * waits for. The cut's two elements go straight to the pipeline's target state instead. */
  GstState target = GST_STATE_TARGET(pipeline);
  for (gint i = 0; i + 1 < n; i++) {
    if (!sora_transform_is_cut(chain[i])) continue;
    gst_element_set_state(chain[i + 1], target);
    gst_element_set_state(chain[i], target);
  }
}

gboolean sora_transform_is_cut(GstElement *element) {
  return element && g_object_get_data(G_OBJECT(element), TRANSFORM_CUT) != NULL;
}

/* ---- the handle -------------------------------------------------------------- */

static void transform_unref(sora_transform *t) {
  if (!g_atomic_int_dec_and_test(&t->refs)) return;
  encoded_frame *f;
  while ((f = g_queue_pop_head(&t->queue))) frame_release(f);
  g_mutex_clear(&t->lock);
  g_cond_clear(&t->cond);
  g_free(t);
}

sora_transform *sora_transform_ref(sora_transform *t) {
  g_atomic_int_inc(&t->refs);
  return t;
}

void sora_transform_release(sora_transform *t) {
  if (t) transform_unref(t);
}

static void transform_free(sora_handle_base *base) { transform_unref((sora_transform *)base); }

static gpointer transform_main(gpointer data) {
  sora_transform *t = data;
  for (;;) {
    g_mutex_lock(&t->lock);
    while (!t->stopping && g_queue_is_empty(&t->queue)) g_cond_wait(&t->cond, &t->lock);
    encoded_frame *f = t->stopping ? NULL : g_queue_pop_head(&t->queue);
    gboolean through = t->short_circuit;
    g_mutex_unlock(&t->lock);
    if (!f) break;
    if (through || !t->base.callbacks.on_event) {
      sora_transform_enqueue(t, f, NULL, 0, f->info.rtp_timestamp);
      continue;
    }
    sora_event ev = {.type = SORA_EVENT_ENCODED_FRAME, .data = f->map.data, .size = f->map.size, .ref = f,
                     .i0 = f->info.key_frame, .i1 = f->info.direction, .i2 = f->info.pts_us,
                     .str0 = f->info.mime_type};
    t->base.callbacks.on_event(t->base.callbacks.user_data, &ev); /* the callee owns the frame now */
  }
  return NULL;
}

SORA_C_API int sora_transform_create(sora_context *ctx, const sora_callbacks *callbacks, sora_transform **out) {
  sora_clear_error();
  if (!ctx || !out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "context and out must not be NULL");
  *out = NULL;
  if (ctx->stopping) return sora_fail(SORA_ERR_INVALID_STATE, "context is being destroyed");
  sora_transform *t = g_new0(sora_transform, 1);
  sora_handle_init(&t->base, ctx, callbacks, transform_free);
  t->refs = 1;
  g_mutex_init(&t->lock);
  g_cond_init(&t->cond);
  g_queue_init(&t->queue);
  t->thread = g_thread_new("sora-transform", transform_main, t);
  g_mutex_lock(&ctx->lock);
  ctx->transforms = g_list_prepend(ctx->transforms, t);
  g_mutex_unlock(&ctx->lock);
  *out = t;
  return SORA_OK;
}

SORA_C_API int sora_transform_enqueue(sora_transform *t, void *frame, const uint8_t *data, size_t size,
                                      uint32_t rtp_timestamp) {
  sora_clear_error();
  if (!t || !frame) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "transform and frame must not be NULL");
  encoded_frame *f = frame;
  if (f->head.release != frame_release) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "not an encoded frame");
  if (!data && size) {
    frame_release(f);
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "data is NULL but size is %zu", size);
  }
  GstBuffer *out;
  if (!data) {
    out = gst_buffer_ref(f->buffer);
  } else {
    out = gst_buffer_new_allocate(NULL, size, NULL);
    gst_buffer_fill(out, 0, data, size);
    gst_buffer_copy_into(out, f->buffer, GST_BUFFER_COPY_FLAGS | GST_BUFFER_COPY_TIMESTAMPS | GST_BUFFER_COPY_META,
                         0, -1);
  }
  if (rtp_timestamp != f->info.rtp_timestamp && f->info.clock_rate > 0 && GST_BUFFER_PTS_IS_VALID(out)) {
    /* A changed RTP timestamp moves the frame's clock time by the same amount (modulo 2^32 ticks). */
    gint64 ticks = (gint32)(rtp_timestamp - f->info.rtp_timestamp);
    gint64 shift = ticks * (gint64)GST_SECOND / f->info.clock_rate;
    out = gst_buffer_make_writable(out);
    GstClockTime pts = GST_BUFFER_PTS(out);
    GST_BUFFER_PTS(out) = shift < 0 && (GstClockTime)(-shift) > pts ? 0 : pts + shift;
  }
  transform_point *p = f->point;
  g_atomic_int_inc(&p->refs);
  g_mutex_lock(&p->lock);
  GstCaps *caps = p->caps ? gst_caps_ref(p->caps) : NULL;
  g_mutex_unlock(&p->lock);
  frame_release(f);
  int rc = point_push(p, out, caps);
  if (caps) gst_caps_unref(caps);
  point_unref(p);
  return rc;
}

SORA_C_API int sora_transform_frame_info(void *frame, sora_encoded_frame_info *info) {
  sora_clear_error();
  if (!frame || !info) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "frame and info must not be NULL");
  encoded_frame *f = frame;
  if (f->head.release != frame_release) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "not an encoded frame");
  *info = f->info;
  return SORA_OK;
}

SORA_C_API int sora_transform_short_circuit(sora_transform *t) {
  sora_clear_error();
  if (!t) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "transform is NULL");
  g_mutex_lock(&t->lock);
  t->short_circuit = TRUE;
  g_cond_signal(&t->cond);
  g_mutex_unlock(&t->lock);
  return SORA_OK;
}

SORA_C_API int64_t sora_transform_dropped(sora_transform *t) {
  sora_clear_error();
  if (!t) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "transform is NULL");
  g_mutex_lock(&t->lock);
  gint64 n = t->dropped;
  g_mutex_unlock(&t->lock);
  return n;
}

void sora_transform_destroy_all(sora_context *ctx) {
  for (;;) {
    g_mutex_lock(&ctx->lock);
    sora_transform *t = ctx->transforms ? ctx->transforms->data : NULL;
    g_mutex_unlock(&ctx->lock);
    if (!t) break;
    sora_transform_destroy(t);
  }
}

SORA_C_API int sora_transform_destroy(sora_transform *t) {
  sora_clear_error();
  if (!t) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "transform is NULL");
  sora_context *ctx = t->base.ctx;
  g_mutex_lock(&ctx->lock);
  gboolean listed = g_list_find(ctx->transforms, t) != NULL;
  ctx->transforms = g_list_remove(ctx->transforms, t);
  g_mutex_unlock(&ctx->lock);
  if (!listed) return sora_fail(SORA_ERR_INVALID_STATE, "transform was already destroyed");
  g_mutex_lock(&t->lock);
  t->stopping = TRUE; /* from now on frames pass straight through */
  g_cond_broadcast(&t->cond);
  g_mutex_unlock(&t->lock);
  if (t->thread != g_thread_self())
    g_thread_join(t->thread);
  else
    g_thread_unref(t->thread);
  t->thread = NULL;
  /* Frames still waiting go on unchanged. */
  for (;;) {
    g_mutex_lock(&t->lock);
    encoded_frame *f = g_queue_pop_head(&t->queue);
    g_mutex_unlock(&t->lock);
    if (!f) break;
    sora_transform_enqueue(t, f, NULL, 0, f->info.rtp_timestamp);
  }
  sora_queue_destroy(&t->base);
  return SORA_OK;
}
