/* The receive side: sinks decode a remote track into frames; forwards re-send its RTP on another peer. */
#include <string.h>

#include <libyuv.h>

#include "internal.h"

/* Encoded data a sink or a forward holds before it drops the oldest (a receiver that cannot keep up):
 * about 3 s of 2.5 Mbit/s video. */
#define SINK_QUEUE_BYTES (1u << 20)
#define FORWARD_QUEUE_BYTES (1u << 20)

/* ---- shared branch helpers ------------------------------------------------- */

/* Add `chain` to the peer's pipeline, link it in order and hang it on a new tee branch. */
static int add_branch(sora_peer *peer, GstElement *tee, GstElement **chain, gint n) {
  GstBin *bin = GST_BIN(sora_peer_pipeline(peer));
  for (gint i = 0; i < n; i++) gst_bin_add(bin, chain[i]);
  for (gint i = 0; i + 1 < n; i++) {
    if (sora_transform_is_cut(chain[i])) continue; /* the frames come back through the next element */
    if (!gst_element_link(chain[i], chain[i + 1])) {
      int rc = sora_fail(SORA_ERR_ENGINE, "cannot link %s to %s", GST_OBJECT_NAME(chain[i]),
                         GST_OBJECT_NAME(chain[i + 1]));
      for (gint j = 0; j < n; j++) gst_bin_remove(bin, chain[j]);
      return rc;
    }
  }
  for (gint i = n - 1; i >= 0; i--) gst_element_sync_state_with_parent(chain[i]);
  sora_transform_start_cuts(GST_ELEMENT(bin), chain, n);
  GstPad *teepad = gst_element_request_pad_simple(tee, "src_%u");
  GstPad *sinkpad = gst_element_get_static_pad(chain[0], "sink");
  GstPadLinkReturn r = gst_pad_link(teepad, sinkpad);
  gst_object_unref(sinkpad);
  gst_object_unref(teepad);
  if (r != GST_PAD_LINK_OK) return sora_fail(SORA_ERR_ENGINE, "cannot attach to the track (link result %d)", r);
  return SORA_OK;
}

/* Take a branch (its elements in order, chain[0] fed by a request pad of `tee`) out of a running pipeline: with
 * the peer entered, not on a streaming thread. Releasing the tee's pad waits for a push on it to end, and later
 * buffers are not sent to the branch; each element then stops (a queue's thread ends) and leaves the bin. */
static void remove_branch(sora_peer *peer, GstElement *tee, GstElement **chain, gint n) {
  GstPad *first = n > 0 && chain[0] ? gst_element_get_static_pad(chain[0], "sink") : NULL;
  GstPad *tee_pad = first ? gst_pad_get_peer(first) : NULL;
  if (tee_pad) {
    gst_element_release_request_pad(tee, tee_pad);
    gst_object_unref(tee_pad);
  }
  if (first) gst_object_unref(first);
  GstBin *bin = GST_BIN(sora_peer_pipeline(peer));
  for (gint i = 0; i < n; i++) {
    if (!chain[i]) continue;
    gst_element_set_locked_state(chain[i], TRUE);
    gst_element_set_state(chain[i], GST_STATE_NULL);
    if (GST_OBJECT_PARENT(chain[i]) == GST_OBJECT(bin)) gst_bin_remove(bin, chain[i]);
  }
}

/* Ask the remote sender for a key frame (the engine turns this into RTCP PLI). */
static void request_remote_key_frame(GstElement *tee) {
  GstPad *pad = gst_element_get_static_pad(tee, "sink");
  gst_pad_push_event(pad, gst_video_event_new_upstream_force_key_unit(GST_CLOCK_TIME_NONE, FALSE, 0));
  gst_object_unref(pad);
}

static const char *depayloader_for(const char *encoding) {
  static const struct {
    const char *encoding, *element;
  } map[] = {{"VP8", "rtpvp8depay"},   {"VP9", "rtpvp9depay"},   {"H264", "rtph264depay"},
             {"H265", "rtph265depay"}, {"OPUS", "rtpopusdepay"}, {"AV1", "sorartpav1depay"}};
  for (guint i = 0; encoding && i < G_N_ELEMENTS(map); i++)
    if (g_ascii_strcasecmp(encoding, map[i].encoding) == 0) return map[i].element;
  return NULL;
}

SORA_C_API int sora_peer_request_remote_key_frame(sora_peer *peer, int64_t track_id) {
  int rc = sora_peer_enter(peer);
  if (rc) return rc;
  GstElement *tee = NULL;
  GstCaps *caps = NULL;
  char *kind = NULL;
  rc = sora_peer_find_track(peer, track_id, &tee, &caps, &kind);
  if (rc == SORA_OK) {
    request_remote_key_frame(tee);
    gst_object_unref(tee);
    if (caps) gst_caps_unref(caps);
    g_free(kind);
  }
  sora_peer_leave(peer);
  return rc;
}

/* ---- sinks ------------------------------------------------------------------ */

typedef struct {
  sora_frame_head head;
  GstSample *sample;
  GstMapInfo map;
} frame_ref;

/* A frame the sink thread converted (BGR) or repacked (I420 with padded rows) into memory of its own. */
typedef struct {
  sora_frame_head head;
  uint8_t *pixels;
} pixels_ref;

struct sora_sink {
  sora_handle_base base;
  sora_child child;
  gint refs;    /* owner + appsink callbacks + the sink thread */
  gint pending; /* what must end before on_destroy is queued: the owner's destroy and the sink thread */
  GMutex lock;
  GCond cond;
  GQueue queue; /* GstSample* */
  guint capacity;
  gint64 dropped;
  gboolean stopping;
  gboolean delivering; /* the sink thread is inside a frame callback */
  gboolean destroyed;  /* sora_sink_destroy was called */
  GThread *thread;     /* joined (or released, on itself) when the memory goes */
  gint format;
  GstElement *valve; /* owned reference */
  sora_peer *peer;   /* a memory reference (sora_peer_ref) until sora_sink_destroy */
  GstElement *tee;   /* the track's tee and this sink's branch on it, in order: owned references that
                      * sora_sink_destroy drops (the appsink's callbacks hold a sink reference) */
  GstElement *branch[12];
  gint branch_len;
};

static void frame_ref_release(void *ref) {
  frame_ref *f = ref;
  gst_buffer_unmap(gst_sample_get_buffer(f->sample), &f->map);
  gst_sample_unref(f->sample);
  g_free(f);
}

static void pixels_ref_release(void *ref) {
  pixels_ref *p = ref;
  g_free(p->pixels);
  g_free(p);
}

SORA_C_API void sora_c_release(void *ref) {
  sora_frame_head *head = ref;
  if (head) head->release(ref);
}

static void sink_unref(gpointer data) {
  sora_sink *sink = data;
  if (!g_atomic_int_dec_and_test(&sink->refs)) return;
  /* The thread's own reference is its last act, so it has ended or is just returning. */
  if (sink->thread == g_thread_self())
    g_thread_unref(sink->thread);
  else if (sink->thread)
    g_thread_join(sink->thread);
  GstSample *s;
  while ((s = g_queue_pop_head(&sink->queue))) gst_sample_unref(s);
  g_mutex_clear(&sink->lock);
  g_cond_clear(&sink->cond);
  if (sink->valve) gst_object_unref(sink->valve);
  g_free(sink);
}

static void sink_free(sora_handle_base *base) { sink_unref(base); }

/* One of the two things on_destroy waits for has happened (the owner's destroy, the sink thread's end). */
static void sink_done(sora_sink *sink) {
  if (g_atomic_int_dec_and_test(&sink->pending)) sora_queue_destroy(&sink->base);
}

static GstFlowReturn sink_new_sample(GstAppSink *appsink, gpointer data) {
  sora_sink *sink = data;
  GstSample *sample = gst_app_sink_pull_sample(appsink);
  if (!sample) return GST_FLOW_OK;
  g_mutex_lock(&sink->lock);
  if (sink->stopping) {
    g_mutex_unlock(&sink->lock);
    gst_sample_unref(sample);
    return GST_FLOW_OK;
  }
  while (g_queue_get_length(&sink->queue) >= sink->capacity) {
    gst_sample_unref(g_queue_pop_head(&sink->queue));
    sink->dropped++;
  }
  g_queue_push_tail(&sink->queue, sample);
  g_cond_signal(&sink->cond);
  g_mutex_unlock(&sink->lock);
  return GST_FLOW_OK;
}

static void sink_emit(sora_sink *sink, sora_event *ev) {
  if (sink->base.callbacks.on_event)
    sink->base.callbacks.on_event(sink->base.callbacks.user_data, ev); /* the callee owns ev->ref now */
  else
    sora_c_release(ev->ref);
}

/* Audio, and I420 video whose buffer is already tightly packed: handed out without a copy. */
static void deliver_mapped(sora_sink *sink, GstSample *sample, sora_event *ev) {
  frame_ref *ref = g_new0(frame_ref, 1);
  ref->head.release = frame_ref_release;
  ref->sample = sample;
  if (!gst_buffer_map(gst_sample_get_buffer(sample), &ref->map, GST_MAP_READ)) {
    gst_sample_unref(sample);
    g_free(ref);
    return;
  }
  ev->data = ref->map.data;
  ev->size = ref->map.size;
  ev->ref = ref;
  sink_emit(sink, ev);
}

static gboolean i420_is_tight(const GstVideoFrame *f, gint w, gint h) {
  gint cw = (w + 1) / 2, ch = (h + 1) / 2;
  const guint8 *y = GST_VIDEO_FRAME_PLANE_DATA(f, 0);
  return GST_VIDEO_FRAME_PLANE_STRIDE(f, 0) == w && GST_VIDEO_FRAME_PLANE_STRIDE(f, 1) == cw &&
         GST_VIDEO_FRAME_PLANE_STRIDE(f, 2) == cw && (const guint8 *)GST_VIDEO_FRAME_PLANE_DATA(f, 1) == y + w * h &&
         (const guint8 *)GST_VIDEO_FRAME_PLANE_DATA(f, 2) == y + w * h + cw * ch;
}

/* Decoded I420 to the layout the header promises: BGR rows of width*3 bytes (libyuv, BT.601 limited range, the
 * matrix the sender converts with), or I420 planes back to back without row padding. Runs on the sink thread, so
 * only frames that are delivered are converted and the decoder's thread never waits for it. */
static void deliver_video(sora_sink *sink, GstSample *sample, sora_event *ev) {
  GstVideoInfo info;
  GstVideoFrame f;
  if (!gst_video_info_from_caps(&info, gst_sample_get_caps(sample)) ||
      GST_VIDEO_INFO_FORMAT(&info) != GST_VIDEO_FORMAT_I420 ||
      !gst_video_frame_map(&f, &info, gst_sample_get_buffer(sample), GST_MAP_READ)) {
    gst_sample_unref(sample);
    return;
  }
  gint w = GST_VIDEO_INFO_WIDTH(&info), h = GST_VIDEO_INFO_HEIGHT(&info), cw = (w + 1) / 2, ch = (h + 1) / 2;
  gboolean bgr = sink->format == SORA_SINK_VIDEO_BGR;
  if (!bgr && i420_is_tight(&f, w, h)) {
    gst_video_frame_unmap(&f);
    deliver_mapped(sink, sample, ev);
    return;
  }
  gsize ysize = (gsize)w * h, csize = (gsize)cw * ch, size = bgr ? ysize * 3 : ysize + 2 * csize;
  pixels_ref *ref = g_new0(pixels_ref, 1);
  ref->head.release = pixels_ref_release;
  ref->pixels = g_try_malloc(size);
  if (ref->pixels) {
    const guint8 *y = GST_VIDEO_FRAME_PLANE_DATA(&f, 0), *u = GST_VIDEO_FRAME_PLANE_DATA(&f, 1),
                 *v = GST_VIDEO_FRAME_PLANE_DATA(&f, 2);
    gint sy = GST_VIDEO_FRAME_PLANE_STRIDE(&f, 0), su = GST_VIDEO_FRAME_PLANE_STRIDE(&f, 1),
         sv = GST_VIDEO_FRAME_PLANE_STRIDE(&f, 2);
    if (bgr)
      I420ToRGB24(y, sy, u, su, v, sv, ref->pixels, w * 3, w, h); /* libyuv's RGB24 is B, G, R in memory */
    else
      I420Copy(y, sy, u, su, v, sv, ref->pixels, w, ref->pixels + ysize, cw, ref->pixels + ysize + csize, cw, w, h);
  }
  gst_video_frame_unmap(&f);
  gst_sample_unref(sample);
  if (!ref->pixels) {
    g_free(ref);
    return;
  }
  ev->data = ref->pixels;
  ev->size = size;
  ev->ref = ref;
  sink_emit(sink, ev);
}

static void sink_deliver(sora_sink *sink, GstSample *sample) {
  GstCaps *caps = gst_sample_get_caps(sample);
  GstBuffer *buf = gst_sample_get_buffer(sample);
  if (!caps || !buf) {
    gst_sample_unref(sample);
    return;
  }
  const GstStructure *st = gst_caps_get_structure(caps, 0);
  sora_event ev = {.i2 = GST_BUFFER_PTS_IS_VALID(buf) ? (gint64)(GST_BUFFER_PTS(buf) / 1000) : -1};
  gint a = 0, b = 0;
  gboolean audio = sink->format == SORA_SINK_AUDIO_S16;
  ev.type = audio ? SORA_EVENT_AUDIO_FRAME : SORA_EVENT_VIDEO_FRAME;
  gst_structure_get_int(st, audio ? "rate" : "width", &a);
  gst_structure_get_int(st, audio ? "channels" : "height", &b);
  ev.i0 = a;
  ev.i1 = b;
  if (audio)
    deliver_mapped(sink, sample, &ev);
  else
    deliver_video(sink, sample, &ev);
}

static gpointer sink_main(gpointer data) {
  sora_sink *sink = data;
  for (;;) {
    g_mutex_lock(&sink->lock);
    while (!sink->stopping && g_queue_is_empty(&sink->queue)) g_cond_wait(&sink->cond, &sink->lock);
    GstSample *sample = sink->stopping ? NULL : g_queue_pop_head(&sink->queue);
    sink->delivering = sample != NULL;
    g_mutex_unlock(&sink->lock);
    if (!sample) break;
    sink_deliver(sink, sample);
    g_mutex_lock(&sink->lock);
    sink->delivering = FALSE;
    g_cond_broadcast(&sink->cond);
    g_mutex_unlock(&sink->lock);
  }
  sink_done(sink);
  sink_unref(sink); /* the thread's reference */
  return NULL;
}

/* Stop delivery: no frame callback starts after this returns. The thread ends after the callback it may be in. */
static void sink_stop(sora_sink *sink) {
  g_mutex_lock(&sink->lock);
  sink->stopping = TRUE;
  g_cond_broadcast(&sink->cond);
  g_mutex_unlock(&sink->lock);
  if (sink->valve) g_object_set(sink->valve, "drop", TRUE, NULL); /* and stop decoding */
}

/* Wait until the sink thread is out of its frame callback, at most SINK_CALLBACK_WAIT_US (never on that thread:
 * a callback that destroys its own sink, or one that blocks, must not deadlock its caller). */
#define SINK_CALLBACK_WAIT_US (5 * G_TIME_SPAN_SECOND)
static void sink_wait_callback(sora_sink *sink) {
  if (sink->thread == g_thread_self()) return;
  gint64 deadline = g_get_monotonic_time() + SINK_CALLBACK_WAIT_US;
  g_mutex_lock(&sink->lock);
  while (sink->delivering && g_cond_wait_until(&sink->cond, &sink->lock, deadline)) {
  }
  g_mutex_unlock(&sink->lock);
}

static void sink_detach(sora_child *child) {
  sora_sink *sink = (sora_sink *)((char *)child - G_STRUCT_OFFSET(sora_sink, child));
  /* The peer is closing (maybe while a frame callback waits for it): stop, never wait here. */
  sink_stop(sink);
}

/* ---- what the sinks decode (inbound-rtp framesDecoded, keyFramesDecoded, frameWidth/Height, framesPerSecond) */

struct sora_decode_stats {
  gint refs;
  GMutex lock;
  guint32 ssrc;
  gpointer owner; /* the sink branch that counts (one of several sinks on a track); NULL: the next to see a frame */
  gint64 frames, key_frames;
  gint width, height;
  gint64 window_start; /* monotonic µs: frames counted in the current window of >= 1 s */
  gint64 window_frames;
  double rate; /* frames per second over the last whole window */
};

sora_decode_stats *sora_decode_stats_new(guint32 ssrc) {
  sora_decode_stats *stats = g_new0(sora_decode_stats, 1);
  stats->refs = 1;
  stats->ssrc = ssrc;
  g_mutex_init(&stats->lock);
  return stats;
}

sora_decode_stats *sora_decode_stats_ref(sora_decode_stats *stats) {
  g_atomic_int_inc(&stats->refs);
  return stats;
}

void sora_decode_stats_unref(gpointer data) {
  sora_decode_stats *stats = data;
  if (!stats || !g_atomic_int_dec_and_test(&stats->refs)) return;
  g_mutex_clear(&stats->lock);
  g_free(stats);
}

void sora_decode_stats_annotate(sora_decode_stats *stats, GstStructure *entry) {
  g_mutex_lock(&stats->lock);
  double rate = g_get_monotonic_time() - stats->window_start > 2 * G_TIME_SPAN_SECOND ? 0.0 : stats->rate;
  gst_structure_set(entry, "sora-frames-decoded", G_TYPE_INT64, stats->frames, "sora-key-frames-decoded",
                    G_TYPE_INT64, stats->key_frames, "sora-frames-per-second", G_TYPE_DOUBLE, rate, NULL);
  if (stats->width > 0 && stats->height > 0)
    gst_structure_set(entry, "sora-frame-width", G_TYPE_INT, stats->width, "sora-frame-height", G_TYPE_INT,
                      stats->height, NULL);
  g_mutex_unlock(&stats->lock);
}

/* The two probes of one sink branch share this; the branch owns the counters while it is the one counting. */
typedef struct {
  gint refs;
  sora_decode_stats *stats;
} decode_probe;

static void decode_probe_unref(gpointer data) {
  decode_probe *p = data;
  if (!g_atomic_int_dec_and_test(&p->refs)) return;
  g_mutex_lock(&p->stats->lock);
  if (p->stats->owner == p) p->stats->owner = NULL; /* another sink on the track may take over */
  g_mutex_unlock(&p->stats->lock);
  sora_decode_stats_unref(p->stats);
  g_free(p);
}

static gboolean decode_probe_counts(decode_probe *p) {
  if (!p->stats->owner) p->stats->owner = p;
  return p->stats->owner == p;
}

/* Before the decoder: the key frames (a depayloader marks the others as delta units). */
static GstPadProbeReturn on_decoder_input(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  decode_probe *p = data;
  gboolean key = !GST_BUFFER_FLAG_IS_SET(GST_PAD_PROBE_INFO_BUFFER(info), GST_BUFFER_FLAG_DELTA_UNIT);
  g_mutex_lock(&p->stats->lock);
  if (key && decode_probe_counts(p)) p->stats->key_frames++;
  g_mutex_unlock(&p->stats->lock);
  return GST_PAD_PROBE_OK;
}

/* After the decoder: decoded frames, their size, the rate. */
static GstPadProbeReturn on_decoder_output(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  decode_probe *p = data;
  sora_decode_stats *stats = p->stats;
  g_mutex_lock(&stats->lock);
  if (decode_probe_counts(p)) {
    if (info->type & GST_PAD_PROBE_TYPE_BUFFER) {
      gint64 now = g_get_monotonic_time();
      if (!stats->window_start) stats->window_start = now;
      if (now - stats->window_start >= G_TIME_SPAN_SECOND) {
        gint64 span = now - stats->window_start;
        stats->rate = span < 2 * G_TIME_SPAN_SECOND ? stats->window_frames * 1e6 / (double)span : 0.0;
        stats->window_start = now;
        stats->window_frames = 0;
      }
      stats->window_frames++;
      stats->frames++;
    } else if (GST_EVENT_TYPE(GST_PAD_PROBE_INFO_EVENT(info)) == GST_EVENT_CAPS) {
      GstCaps *caps = NULL;
      gst_event_parse_caps(GST_PAD_PROBE_INFO_EVENT(info), &caps);
      const GstStructure *st = caps && gst_caps_get_size(caps) ? gst_caps_get_structure(caps, 0) : NULL;
      if (st) {
        gst_structure_get_int(st, "width", &stats->width);
        gst_structure_get_int(st, "height", &stats->height);
      }
    }
  }
  g_mutex_unlock(&stats->lock);
  return GST_PAD_PROBE_OK;
}

/* Count what `decoder` takes in and what `after` (the element linked after it) receives. */
static void count_decoding(sora_peer *peer, guint32 ssrc, GstElement *decoder, GstElement *after) {
  decode_probe *p = g_new0(decode_probe, 1);
  p->refs = 2;
  p->stats = sora_peer_decode_stats(peer, ssrc);
  GstPad *in = gst_element_get_static_pad(decoder, "sink");
  GstPad *out = gst_element_get_static_pad(after, "sink");
  if (in) gst_pad_add_probe(in, GST_PAD_PROBE_TYPE_BUFFER, on_decoder_input, p, decode_probe_unref);
  else decode_probe_unref(p);
  if (out) gst_pad_add_probe(out, GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM, on_decoder_output,
                             p, decode_probe_unref);
  else decode_probe_unref(p);
  if (in) gst_object_unref(in);
  if (out) gst_object_unref(out);
}

static void on_decoded_pad(GstElement *decodebin, GstPad *pad, gpointer data) {
  (void)decodebin;
  GstElement *next = data;
  GstPad *sinkpad = gst_element_get_static_pad(next, "sink");
  if (!gst_pad_is_linked(sinkpad)) gst_pad_link(pad, sinkpad);
  gst_object_unref(sinkpad);
}

SORA_C_API int sora_sink_create(sora_peer *peer, int64_t track_id, const sora_sink_config *config,
                                const sora_callbacks *callbacks, sora_sink **out) {
  sora_clear_error();
  if (!out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "out is NULL");
  *out = NULL;
  sora_sink_config cfg = {0};
  if (config) cfg = *config;
  if (cfg.format < SORA_SINK_VIDEO_BGR || cfg.format > SORA_SINK_AUDIO_S16)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "unknown sink format %d", cfg.format);
  if (cfg.capacity < 0 || cfg.sample_rate < 0 || cfg.channels < 0 || cfg.channels > 8 || cfg.sample_rate > 192000)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "capacity, sample_rate and channels must be in range");
  int rc = sora_peer_enter(peer);
  if (rc) return rc;
  GstElement *tee = NULL;
  GstCaps *caps = NULL;
  char *kind = NULL;
  rc = sora_peer_find_track(peer, track_id, &tee, &caps, &kind);
  if (rc) {
    sora_peer_leave(peer);
    return rc;
  }
  gboolean audio = cfg.format == SORA_SINK_AUDIO_S16;
  const char *encoding = caps && gst_caps_get_size(caps) ? gst_structure_get_string(gst_caps_get_structure(caps, 0), "encoding-name") : NULL;
  const char *depay_name = depayloader_for(encoding);
  if (g_strcmp0(kind, audio ? "audio" : "video") != 0) {
    rc = sora_fail(SORA_ERR_INVALID_ARGUMENT, "track %" G_GINT64_FORMAT " is %s, not %s", track_id, kind,
                   audio ? "audio" : "video");
  } else if (!depay_name || !gst_element_factory_find(depay_name)) {
    rc = sora_fail(SORA_ERR_UNSUPPORTED, "cannot receive %s: no depayloader", encoding ? encoding : "this codec");
  }
  if (rc) goto out;
  GstElement *chain[10];
  gint n = 0;
  GstElement *queue = gst_element_factory_make("queue", NULL);
  sora_set_leaky_queue(queue, 0, SINK_QUEUE_BYTES);
  GstElement *valve = gst_element_factory_make("valve", NULL);
  GstElement *depay = gst_element_factory_make(depay_name, NULL);
  GstElement *dec = gst_element_factory_make(audio ? "opusdec" : "decodebin", NULL);
  GstElement *conv = gst_element_factory_make(audio ? "audioconvert" : "videoconvert", NULL);
  GstElement *resample = audio ? gst_element_factory_make("audioresample", NULL) : NULL;
  GstElement *filter = gst_element_factory_make("capsfilter", NULL);
  GstElement *appsink = gst_element_factory_make("appsink", NULL);
  if (!queue || !valve || !depay || !dec || !conv || (audio && !resample) || !filter || !appsink) {
    GstElement *all[] = {queue, valve, depay, dec, conv, resample, filter, appsink};
    for (guint i = 0; i < G_N_ELEMENTS(all); i++)
      if (all[i]) gst_object_unref(all[i]);
    rc = sora_fail(SORA_ERR_UNSUPPORTED, "engine elements for a %s sink are missing", kind);
    goto out;
  }
  GstCaps *want;
  if (audio) {
    want = gst_caps_new_simple("audio/x-raw", "format", G_TYPE_STRING, "S16LE", "layout", G_TYPE_STRING,
                               "interleaved", NULL);
    if (cfg.sample_rate) gst_caps_set_simple(want, "rate", G_TYPE_INT, cfg.sample_rate, NULL);
    if (cfg.channels) gst_caps_set_simple(want, "channels", G_TYPE_INT, cfg.channels, NULL);
  } else {
    /* BGR sinks too: their sink thread converts (deliver_video). */
    want = gst_caps_new_simple("video/x-raw", "format", G_TYPE_STRING, "I420", NULL);
  }
  g_object_set(filter, "caps", want, NULL);
  gst_caps_unref(want);
  /* async=FALSE: adding the sink must not make the running pipeline lose its state (and wait for a preroll
   * that a transform cut upstream could never deliver). */
  g_object_set(appsink, "sync", FALSE, "async", FALSE, "max-buffers", 2, "drop", TRUE, "enable-last-sample", FALSE,
               NULL);

  sora_sink *sink = g_new0(sora_sink, 1);
  sora_handle_init(&sink->base, sora_peer_context(peer), callbacks, sink_free);
  sink->child.detach = sink_detach;
  sink->refs = 3;
  sink->pending = 2;
  g_mutex_init(&sink->lock);
  g_cond_init(&sink->cond);
  g_queue_init(&sink->queue);
  sink->capacity = cfg.capacity > 0 ? (guint)cfg.capacity : (audio ? 50 : 2);
  sink->format = cfg.format;
  sink->valve = gst_object_ref(valve);
  GstAppSinkCallbacks cbs = {0};
  cbs.new_sample = sink_new_sample;
  gst_app_sink_set_callbacks(GST_APP_SINK(appsink), &cbs, sink, sink_unref);
  sink->thread = g_thread_new("sora-sink", sink_main, sink);

  chain[n++] = queue;
  chain[n++] = valve;
  chain[n++] = depay;
  sora_transform *transform = sora_peer_track_transform(peer, track_id);
  if (transform) {
    /* The application's transform sees the encoded frames between depayloader and decoder. */
    const GstStructure *st = gst_caps_get_structure(caps, 0);
    gint pt = -1, clock = 0;
    guint ssrc = 0;
    gst_structure_get_int(st, "payload", &pt);
    gst_structure_get_int(st, "clock-rate", &clock);
    gst_structure_get_uint(st, "ssrc", &ssrc);
    char *mime = sora_mime_type(kind, encoding);
    rc = sora_transform_make_point(transform, SORA_TRANSFORM_RECEIVER, mime, pt, ssrc, clock, &chain[n], &chain[n + 1]);
    g_free(mime);
    sora_transform_release(transform);
    if (rc == SORA_OK) n += 2;
  }
  chain[n++] = dec;
  if (audio) {
    chain[n++] = conv;
    chain[n++] = resample;
    chain[n++] = filter;
    chain[n++] = appsink;
    rc = add_branch(peer, tee, chain, n);
  } else {
    /* decodebin's pad appears once the stream is known: link the rest then. */
    GstBin *bin = GST_BIN(sora_peer_pipeline(peer));
    GstElement *rest[] = {conv, filter, appsink};
    for (guint i = 0; i < G_N_ELEMENTS(rest); i++) gst_bin_add(bin, rest[i]);
    gboolean linked = gst_element_link_many(conv, filter, appsink, NULL);
    for (gint i = G_N_ELEMENTS(rest) - 1; i >= 0; i--) gst_element_sync_state_with_parent(rest[i]);
    g_signal_connect(dec, "pad-added", G_CALLBACK(on_decoded_pad), conv);
    guint ssrc = 0;
    if (linked && gst_structure_get_uint(gst_caps_get_structure(caps, 0), "ssrc", &ssrc)) count_decoding(peer, ssrc, dec, conv);
    rc = linked ? add_branch(peer, tee, chain, n) : sora_fail(SORA_ERR_ENGINE, "cannot link the video converter");
  }
  if (rc) {
    /* Never handed out: no on_destroy. The thread drops its reference as it ends, appsink's goes with the
     * element, and the owner's goes here (with the context reference sora_handle_init took). */
    g_atomic_int_inc(&sink->pending); /* the thread's sink_done must not queue a destroy */
    sink_stop(sink);
    sora_context_unref(sink->base.ctx);
    sink_unref(sink);
    goto out;
  }
  sink->peer = sora_peer_ref(peer);
  sink->tee = gst_object_ref(tee);
  for (gint i = 0; i < n; i++) sink->branch[sink->branch_len++] = gst_object_ref(chain[i]);
  if (!audio) {
    GstElement *rest[] = {conv, filter, appsink};
    for (guint i = 0; i < G_N_ELEMENTS(rest); i++) sink->branch[sink->branch_len++] = gst_object_ref(rest[i]);
  }
  sora_peer_add_child(peer, &sink->child);
  request_remote_key_frame(tee);
  *out = sink;
out:
  if (tee) gst_object_unref(tee);
  if (caps) gst_caps_unref(caps);
  g_free(kind);
  sora_peer_leave(peer);
  return rc;
}

SORA_C_API int64_t sora_sink_dropped(sora_sink *sink) {
  sora_clear_error();
  if (!sink) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "sink is NULL");
  g_mutex_lock(&sink->lock);
  gint64 n = sink->dropped;
  g_mutex_unlock(&sink->lock);
  return n;
}

SORA_C_API int sora_sink_destroy(sora_sink *sink) {
  sora_clear_error();
  if (!sink) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "sink is NULL");
  g_mutex_lock(&sink->lock);
  gboolean again = sink->destroyed;
  sink->destroyed = TRUE;
  g_mutex_unlock(&sink->lock);
  if (again) return sora_fail(SORA_ERR_INVALID_STATE, "sink was already destroyed");
  sora_peer *peer = sink->peer;
  gboolean attached = FALSE;
  if (peer && sora_peer_enter(peer) == SORA_OK) {
    attached = sora_peer_remove_child(peer, &sink->child);
    sora_peer_leave(peer);
  }
  sink_stop(sink);
  sink_wait_callback(sink);
  /* The connection goes on: take the branch off the track, so that a closed sink no longer depayloads, decodes and
   * converts the stream (a peer being closed takes its whole pipeline down itself). */
  if (attached && sora_peer_enter(peer) == SORA_OK) {
    remove_branch(peer, sink->tee, sink->branch, sink->branch_len);
    sora_peer_leave(peer);
  }
  for (gint i = 0; i < sink->branch_len; i++) gst_object_unref(sink->branch[i]);
  sink->branch_len = 0;
  if (sink->tee) gst_object_unref(sink->tee);
  sink->tee = NULL;
  sink->peer = NULL;
  if (peer) sora_peer_unref(peer);
  sink_done(sink); /* on_destroy follows once the sink thread has left its last callback */
  return SORA_OK;
}

/* ---- forwards --------------------------------------------------------------- */

struct sora_forward {
  sora_child child;
  gint refs;
  GMutex lock;
  GstElement *appsrc; /* in the destination pipeline; owned reference, NULL once stopped */
  GstElement *valve;  /* in the source pipeline; owned reference */
  GstElement *queue;  /* the branch's first element (tee ! queue ! valve ! appsink); owned reference */
  GstElement *src_tee;
  gint payload_type;
  gboolean rewrite_pt;
  sora_fwd_out *out;  /* the destination m-line's stream (fwdout.c); a reference */
  sora_peer *src, *dst; /* src: a memory reference until sora_forward_destroy; dst: not used after create */
};

/* The m-line of a webrtcbin sink pad's transceiver, or -1. */
static gint pad_mline(GstPad *pad) {
  GstWebRTCRTPTransceiver *trans = NULL;
  if (g_object_class_find_property(G_OBJECT_GET_CLASS(pad), "transceiver"))
    g_object_get(pad, "transceiver", &trans, NULL);
  if (!trans) return -1;
  guint index = G_MAXUINT;
  g_object_get(trans, "mlineindex", &index, NULL);
  gst_object_unref(trans);
  return index == G_MAXUINT ? -1 : (gint)index;
}

/* The existing, unlinked sink pad of the transceiver at `mline`, if webrtcbin already made one. */
static GstPad *sink_pad_for_mline(GstElement *webrtc, gint mline) {
  GstPad *found = NULL;
  GstIterator *it = gst_element_iterate_sink_pads(webrtc);
  GValue item = G_VALUE_INIT;
  while (!found && gst_iterator_next(it, &item) == GST_ITERATOR_OK) {
    GstPad *pad = g_value_get_object(&item);
    if (pad_mline(pad) == mline && !gst_pad_is_linked(pad)) found = gst_object_ref(pad);
    g_value_reset(&item);
  }
  g_value_unset(&item);
  gst_iterator_free(it);
  return found;
}

static gboolean keep_forwarded_field(GQuark field, GValue *value, gpointer data) {
  (void)value;
  (void)data;
  const char *name = g_quark_to_string(field);
  /* a-*: the source m-line's SDP attributes, which 1.26 puts in a received stream's caps (a-mid, a-sendonly,
   * a-ice-ufrag, a-setup, a-fingerprint, a-ssrc-group, ...). On the destination's send pad 1.26 writes them into
   * that m-line of the next offer: a second mid ("Cannot change media 2 mid value from 'audio0'"), or a second
   * direction (a=inactive from the transceiver and a=sendonly from the caps), which webrtcbin then reads as no
   * direction and aborts on (g_assert_not_reached in _get_final_direction) when the answer comes. */
  return !g_str_has_prefix(name, "extmap-") && !g_str_has_prefix(name, "rid-") && !g_str_has_prefix(name, "a-");
}

static GQuark fwd_out_quark(void) { return g_quark_from_static_string("sora-forward-out"); }

/* The appsrc that a stopped forward left linked to the transceiver at `mline` (a reference), with its stream
 * (`*out`, a reference): a new forward to that m-line takes both over, so the receiver keeps one RTP stream. */
static GstElement *reusable_appsrc(GstElement *webrtc, gint mline, sora_fwd_out **out) {
  GstElement *found = NULL;
  GstIterator *it = gst_element_iterate_sink_pads(webrtc);
  GValue item = G_VALUE_INIT;
  while (!found && gst_iterator_next(it, &item) == GST_ITERATOR_OK) {
    GstPad *pad = g_value_get_object(&item);
    GstPad *peer = pad_mline(pad) == mline ? gst_pad_get_peer(pad) : NULL;
    GstElement *element = peer ? gst_pad_get_parent_element(peer) : NULL;
    sora_fwd_out *o = element ? g_object_get_qdata(G_OBJECT(element), fwd_out_quark()) : NULL;
    if (o && sora_fwd_out_is_free(o)) {
      found = element;
      *out = sora_fwd_out_ref(o);
    } else if (element) {
      gst_object_unref(element);
    }
    if (peer) gst_object_unref(peer);
    g_value_reset(&item);
  }
  g_value_unset(&item);
  gst_iterator_free(it);
  return found;
}

static void forward_unref(gpointer data) {
  sora_forward *f = data;
  if (!g_atomic_int_dec_and_test(&f->refs)) return;
  if (f->out) sora_fwd_out_unref(f->out);
  if (f->appsrc) gst_object_unref(f->appsrc);
  if (f->valve) gst_object_unref(f->valve);
  if (f->queue) gst_object_unref(f->queue);
  if (f->src_tee) gst_object_unref(f->src_tee);
  g_mutex_clear(&f->lock);
  g_free(f);
}

static GstFlowReturn forward_new_sample(GstAppSink *appsink, gpointer data) {
  sora_forward *f = data;
  GstSample *sample = gst_app_sink_pull_sample(appsink);
  if (!sample) return GST_FLOW_OK;
  g_mutex_lock(&f->lock);
  GstElement *appsrc = f->appsrc ? gst_object_ref(f->appsrc) : NULL;
  g_mutex_unlock(&f->lock);
  if (appsrc) {
    GstBuffer *buf = gst_buffer_ref(gst_sample_get_buffer(sample));
    GstElement *key_tee = NULL;
    if (sora_fwd_out_process(f->out, f, &buf, f->rewrite_pt ? f->payload_type : -1, &key_tee)) {
      GST_BUFFER_PTS(buf) = GST_CLOCK_TIME_NONE;
      GST_BUFFER_DTS(buf) = GST_CLOCK_TIME_NONE;
      gst_app_src_push_buffer(GST_APP_SRC(appsrc), buf);
    } else {
      gst_buffer_unref(buf); /* not this forward's turn, or waiting for a key frame */
    }
    if (key_tee) {
      request_remote_key_frame(key_tee);
      gst_object_unref(key_tee);
    }
    gst_object_unref(appsrc);
  }
  gst_sample_unref(sample);
  return GST_FLOW_OK;
}

/* A key-frame request from the receiving side goes on to the original sender (of the forward feeding it now). */
static GstPadProbeReturn forward_upstream_event(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT(info);
  if (event && gst_video_event_is_force_key_unit(event)) {
    GstElement *tee = sora_fwd_out_key_tee(data);
    if (tee) {
      request_remote_key_frame(tee);
      gst_object_unref(tee);
    }
  }
  return GST_PAD_PROBE_OK;
}

static void forward_stop(sora_forward *f) {
  g_mutex_lock(&f->lock);
  GstElement *appsrc = f->appsrc;
  f->appsrc = NULL;
  g_mutex_unlock(&f->lock);
  if (f->out) sora_fwd_out_release(f->out, f);
  if (f->valve) g_object_set(f->valve, "drop", TRUE, NULL);
  if (appsrc) gst_object_unref(appsrc);
}

/* Take a destroyed forward's branch off the source's tee while the source lives on (with the source entered, not
 * on a streaming thread). Left in place, every forward that ever ended kept a queue thread and its buffers for
 * the source's whole life: a long-lived sender in a channel that receivers join and leave grew by about two
 * threads and ~90 KiB per receiver (the local server's RSS, tests/reliability/check_lifetime.py). */
static void forward_remove_branch(sora_forward *f, sora_peer *src) {
  if (!f->queue || !f->valve) return;
  GstElement *chain[3] = {f->queue, f->valve, NULL};
  GstPad *valve_src = gst_element_get_static_pad(f->valve, "src");
  GstPad *sink_pad = valve_src ? gst_pad_get_peer(valve_src) : NULL;
  chain[2] = sink_pad ? gst_pad_get_parent_element(sink_pad) : NULL; /* the appsink (a reference) */
  if (sink_pad) gst_object_unref(sink_pad);
  if (valve_src) gst_object_unref(valve_src);
  remove_branch(src, f->src_tee, chain, 3);
  if (chain[2]) gst_object_unref(chain[2]); /* the appsink goes, and with it its callbacks' forward reference */
}

static void forward_detach_src(sora_child *child) {
  sora_forward *f = (sora_forward *)((char *)child - G_STRUCT_OFFSET(sora_forward, child));
  forward_stop(f);
}

SORA_C_API int sora_forward_create(sora_peer *src, int64_t track_id, sora_peer *dst, int32_t mline,
                                   int32_t payload_type, sora_forward **out) {
  sora_clear_error();
  if (!src || !dst || !out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "src, dst and out must not be NULL");
  *out = NULL;
  if (src == dst) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "a peer cannot forward to itself");
  if (mline < 0 || payload_type < 0 || payload_type > 127)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "m-line must be >= 0 and payload type 0..127");
  int rc = sora_peer_enter(src);
  if (rc) return rc;
  rc = sora_peer_enter(dst);
  if (rc) {
    sora_peer_leave(src);
    return rc;
  }
  GstElement *tee = NULL;
  GstCaps *caps = NULL;
  char *kind = NULL;
  rc = sora_peer_find_track(src, track_id, &tee, &caps, &kind);
  if (rc) goto out;
  GstCaps *rtp_caps = caps ? gst_caps_copy(caps) : gst_caps_new_empty_simple("application/x-rtp");
  gst_caps_set_simple(rtp_caps, "payload", G_TYPE_INT, payload_type, NULL);
  /* The SSRC stays (key-frame requests are routed by it); offsets belong to the original session. */
  GstStructure *st = gst_caps_get_structure(rtp_caps, 0);
  const char *drop[] = {"timestamp-offset", "seqnum-offset"};
  for (guint i = 0; i < G_N_ELEMENTS(drop); i++) gst_structure_remove_field(st, drop[i]);
  /* So are its header extensions and simulcast layers (the packets go out without extensions). */
  gst_structure_filter_and_map_in_place(st, keep_forwarded_field, NULL);
  gint old_pt = -1;
  if (caps && gst_caps_get_size(caps)) gst_structure_get_int(gst_caps_get_structure(caps, 0), "payload", &old_pt);

  const char *encoding = gst_structure_get_string(st, "encoding-name");
  gchar *encoding_copy = g_strdup(encoding);

  /* destination: appsrc ! webrtcbin.sink_<mline>; the appsrc of an earlier forward there is taken over */
  GstElement *dst_webrtc = sora_peer_webrtc(dst);
  sora_fwd_out *fout = NULL;
  GstElement *appsrc = reusable_appsrc(dst_webrtc, mline, &fout);
  if (appsrc) {
    gst_caps_unref(rtp_caps);
  } else {
    appsrc = gst_element_factory_make("appsrc", NULL);
    g_object_set(appsrc, "is-live", TRUE, "format", GST_FORMAT_TIME, "do-timestamp", TRUE, "caps", rtp_caps,
                 "max-bytes", (guint64)(4 << 20), "block", FALSE, NULL);
    gst_util_set_object_arg(G_OBJECT(appsrc), "leaky-type", "downstream");
    gst_bin_add(GST_BIN(sora_peer_pipeline(dst)), appsrc);
    char name[32];
    g_snprintf(name, sizeof name, "sink_%d", mline);
    GstPadTemplate *templ = gst_element_class_get_pad_template(GST_ELEMENT_GET_CLASS(dst_webrtc), "sink_%u");
    GstPad *sinkpad = sink_pad_for_mline(dst_webrtc, mline);
    if (!sinkpad) sinkpad = gst_element_request_pad(dst_webrtc, templ, name, rtp_caps);
    GstPad *srcpad = gst_element_get_static_pad(appsrc, "src");
    GstPadLinkReturn link = sinkpad ? gst_pad_link(srcpad, sinkpad) : GST_PAD_LINK_REFUSED;
    if (sinkpad) gst_object_unref(sinkpad);
    guint ssrc = 0;
    gint clock_rate = 0;
    gst_structure_get_uint(st, "ssrc", &ssrc);
    gst_structure_get_int(st, "clock-rate", &clock_rate);
    gst_caps_unref(rtp_caps);
    if (link != GST_PAD_LINK_OK) {
      gst_object_unref(srcpad);
      gst_bin_remove(GST_BIN(sora_peer_pipeline(dst)), appsrc);
      g_free(encoding_copy);
      rc = sora_fail(SORA_ERR_ENGINE, "the destination refused m-line %d (link result %d)", mline, link);
      goto out;
    }
    gst_element_sync_state_with_parent(appsrc);
    fout = sora_fwd_out_new(ssrc, clock_rate);
    g_object_set_qdata_full(G_OBJECT(appsrc), fwd_out_quark(), sora_fwd_out_ref(fout), sora_fwd_out_unref);
    gst_pad_add_probe(srcpad, GST_PAD_PROBE_TYPE_EVENT_UPSTREAM, forward_upstream_event, sora_fwd_out_ref(fout),
                      sora_fwd_out_unref);
    gst_object_unref(srcpad);
    gst_object_ref(appsrc); /* the forward's */
  }

  sora_forward *f = g_new0(sora_forward, 1);
  f->refs = 2; /* owner, appsink callbacks */
  g_mutex_init(&f->lock);
  f->child.detach = forward_detach_src;
  f->appsrc = appsrc;
  f->src_tee = gst_object_ref(tee);
  f->payload_type = payload_type;
  f->rewrite_pt = old_pt != payload_type;
  f->out = fout;
  f->src = src;
  f->dst = dst;
  sora_fwd_out_claim(fout, f, tee, encoding_copy);
  g_free(encoding_copy);

  /* source: tee ! queue ! valve ! appsink */
  GstElement *queue = gst_element_factory_make("queue", NULL);
  sora_set_leaky_queue(queue, 0, FORWARD_QUEUE_BYTES);
  GstElement *valve = gst_element_factory_make("valve", NULL);
  GstElement *appsink = gst_element_factory_make("appsink", NULL);
  /* not async: a branch added to a playing pipeline must not make it lose state (an appsink that never
   * prerolls, e.g. a forward stopped before its first packet, would stall every other branch) */
  g_object_set(appsink, "sync", FALSE, "async", FALSE, "enable-last-sample", FALSE, NULL);
  f->valve = gst_object_ref(valve);
  f->queue = gst_object_ref(queue);
  GstAppSinkCallbacks cbs = {0};
  cbs.new_sample = forward_new_sample;
  gst_app_sink_set_callbacks(GST_APP_SINK(appsink), &cbs, f, forward_unref);
  GstElement *chain[] = {queue, valve, appsink};
  rc = add_branch(src, tee, chain, G_N_ELEMENTS(chain));
  if (rc) {
    forward_stop(f);
    f->src = f->dst = NULL;
    forward_unref(f);
    goto out;
  }
  sora_peer_ref(src);
  sora_peer_add_child(src, &f->child);
  request_remote_key_frame(tee);
  *out = f;
out:
  if (tee) gst_object_unref(tee);
  if (caps) gst_caps_unref(caps);
  g_free(kind);
  sora_peer_leave(dst);
  sora_peer_leave(src);
  return rc;
}

SORA_C_API int sora_forward_destroy(sora_forward *f) {
  sora_clear_error();
  if (!f) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "forward is NULL");
  sora_peer *src = f->src;
  gboolean attached = FALSE;
  if (src && sora_peer_enter(src) == SORA_OK) {
    attached = sora_peer_remove_child(src, &f->child);
    sora_peer_leave(src);
  }
  forward_stop(f);
  if (attached && sora_peer_enter(src) == SORA_OK) { /* a source being closed takes the branch down itself */
    forward_remove_branch(f, src);
    sora_peer_leave(src);
  }
  f->src = NULL;
  if (src) sora_peer_unref(src);
  forward_unref(f);
  return SORA_OK;
}
