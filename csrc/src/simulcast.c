/* Simulcast sending: one video source encoded at several sizes on one m-line.
 *
 *   appsrc ! queue ! videoconvert ! tee
 *   tee ! queue ! videoscale ! capsfilter(size) ! encoder ! payloader(ssrc, rid + mid extensions) ! rtpfunnel
 *   rtpfunnel ! capsfilter(rid-X=send, a-simulcast, extmaps) ! webrtcbin sink_<mline>
 *
 * One layer branch per active encoding; paused encodings only appear in the caps (rid-X=send and "~X" in
 * a-simulcast), so the answer announces them while nothing encodes them. Each layer's size follows the
 * source: a probe on the layer's scaler sets the size caps whenever the source caps change.          */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include <gst/rtp/rtp.h>

#define URI_MID "urn:ietf:params:rtp-hdrext:sdes:mid"
#define URI_RID "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
#define MAX_LAYERS 8
/* A layer branch: queue ! videoscale ! capsfilter(size) [! capsfilter(I420)] ! encoder [! capsfilter] ! payloader */
#define LAYER_CHAIN 7

/* Per-layer state shared by the layer's pad probes (freed with the last probe). */
typedef struct {
  gint refs;
  GstElement *size_filter; /* owned reference */
  double scale;            /* 0: use max_width/max_height */
  gint max_width, max_height;
  gboolean even;             /* the encoder takes even sides only (x264): the layer's size is rounded down */
  GstClockTime min_interval; /* from max_framerate; 0 = no limit */
  GstClockTime last_pts;
} layer_state;

static void layer_unref(gpointer data) {
  layer_state *s = data;
  if (!g_atomic_int_dec_and_test(&s->refs)) return;
  gst_object_unref(s->size_filter);
  g_free(s);
}

/* The size a layer encodes a `width`x`height` source at, by the rule libwebrtc follows (measured with the
 * official SDK 2025.4.0's sender, tests/test_official_parity.py::test_official_simulcast_layer_sizes, and read
 * in libwebrtc's EncoderStreamFactory and VideoAdapter): every size is aligned down to LAYER_ALIGNMENT pixels
 * (the source first: 960x540 encodes 960x528 at full size);
 *  - scaleResolutionDownBy: size / scale rounded to nearest, at least 16 (EncoderStreamFactory's
 *    ScaleDownResolution), then aligned;
 *  - scaleResolutionDownTo {maxWidth, maxHeight} (a missing side follows the source's aspect): the source is
 *    cropped to the request's aspect (single-precision, as VideoAdapter::AdaptFrameResolution) and scaled by
 *    the fraction of VideoAdapter's FindScale (steps of 3/4 and 2/3, from 2/3 when both sides divide by 3)
 *    whose pixel count comes closest to the request's without exceeding it; the cropped size is rounded up
 *    to a multiple of (denominator x alignment) within the source. So 960x540 under 640x360 gives 480x256,
 *    1280x720 gives 640x352.
 * The engine scales the whole (aligned) source to that size: where libwebrtc crops (a request of another
 * aspect), the picture here is squeezed instead. sora_sdk/stats.py (simulcast_layer_size) follows the
 * same rule. */
#define LAYER_ALIGNMENT 16
#define LAYER_MIN_SIZE 16

static gint align_down(gint v) { return v >= LAYER_ALIGNMENT ? v / LAYER_ALIGNMENT * LAYER_ALIGNMENT : v; }

static gint scale_down(gint v, double by) {
  if (v <= LAYER_MIN_SIZE) return v;
  gint r = (gint)(v / by + 0.5);
  return r < LAYER_MIN_SIZE ? LAYER_MIN_SIZE : r;
}

static gint round_up_within(gint v, gint multiple, gint max) {
  gint r = (v + multiple - 1) / multiple * multiple;
  return r <= max ? r : max / multiple * multiple;
}

/* The fraction num/den of VideoAdapter's search for `target` pixels (target == the most allowed). */
static void find_scale(gint w, gint h, gint64 target, gint *num, gint *den) {
  gint64 pixels = (gint64)w * h;
  gint n = 1, d = 1, best_n = 1, best_d = 1;
  gint64 best_diff = G_MAXINT64;
  *num = *den = 1;
  if (target >= pixels) return;
  if (w % 3 == 0 && h % 3 == 0) n = d = 6;
  if (w % 9 == 0 && h % 9 == 0) n = d = 36;
  while ((gint64)n * n * pixels / ((gint64)d * d) > target) {
    if (n % 3 == 0 && d % 2 == 0) {
      n /= 3;
      d /= 2;
    } else {
      n *= 3;
      d *= 4;
    }
    gint64 out = (gint64)n * n * pixels / ((gint64)d * d);
    if (out <= target && target - out < best_diff) {
      best_diff = target - out;
      best_n = n;
      best_d = d;
    }
  }
  gint a = best_n, b = best_d;
  while (b) {
    gint t = a % b;
    a = b;
    b = t;
  }
  *num = best_n / a;
  *den = best_d / a;
}

static void layer_size(const layer_state *s, gint width, gint height, gint *out_w, gint *out_h) {
  gint w = align_down(width), h = align_down(height);
  if (s->max_width <= 0 && s->max_height <= 0) {
    double by = s->scale >= 1.0 ? s->scale : 1.0;
    *out_w = by > 1.0 ? align_down(scale_down(w, by)) : w;
    *out_h = by > 1.0 ? align_down(scale_down(h, by)) : h;
    return;
  }
  gint bw = s->max_width > 0 ? s->max_width : (gint)lround((double)s->max_height * w / h);
  gint bh = s->max_height > 0 ? s->max_height : (gint)lround((double)s->max_width * h / w);
  if (bw < 1) bw = 1;
  if (bh < 1) bh = 1;
  /* the request's aspect, oriented as the source (landscape or portrait) */
  gint long_side = MAX(bw, bh), short_side = MIN(bw, bh);
  float aspect = w > h ? (float)long_side / (float)short_side : (float)short_side / (float)long_side;
  gint crop_w = MIN(w, (gint)((float)h * aspect)), crop_h = MIN(h, (gint)((float)w / aspect));
  gint num, den;
  find_scale(crop_w, crop_h, (gint64)bw * bh, &num, &den);
  *out_w = round_up_within(crop_w, den * LAYER_ALIGNMENT, w) / den * num;
  *out_h = round_up_within(crop_h, den * LAYER_ALIGNMENT, h) / den * num;
}

/* Source caps seen by a layer's scaler: set the layer's output size before the scaler negotiates. */
static GstPadProbeReturn on_layer_caps(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  layer_state *s = data;
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT(info);
  if (GST_EVENT_TYPE(event) != GST_EVENT_CAPS) return GST_PAD_PROBE_OK;
  GstCaps *caps = NULL;
  gst_event_parse_caps(event, &caps);
  gint width = 0, height = 0;
  const GstStructure *st = caps && gst_caps_get_size(caps) ? gst_caps_get_structure(caps, 0) : NULL;
  if (!st || !gst_structure_get_int(st, "width", &width) || !gst_structure_get_int(st, "height", &height) ||
      width <= 0 || height <= 0)
    return GST_PAD_PROBE_OK;
  /* (the layer's input is already fitted to its encoder; a scaled size is made fit too) */
  gint w, h;
  layer_size(s, width, height, &w, &h);
  if (w < 1) w = 1;
  if (h < 1) h = 1;
  if (s->even) {
    w = MAX(w & ~1, 2);
    h = MAX(h & ~1, 2);
  }
  GstCaps *size = gst_caps_new_simple("video/x-raw", "width", G_TYPE_INT, w, "height", G_TYPE_INT, h,
                                      "pixel-aspect-ratio", GST_TYPE_FRACTION, 1, 1, NULL);
  g_object_set(s->size_filter, "caps", size, NULL);
  gst_caps_unref(size);
  return GST_PAD_PROBE_OK;
}

/* maxFramerate: drop frames that come sooner than the layer's frame interval (10 % slack for jitter). */
static GstPadProbeReturn on_layer_buffer(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  layer_state *s = data;
  GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER(info);
  GstClockTime pts = GST_BUFFER_PTS(buf);
  if (!GST_CLOCK_TIME_IS_VALID(pts)) return GST_PAD_PROBE_OK;
  if (GST_CLOCK_TIME_IS_VALID(s->last_pts) && pts > s->last_pts && pts - s->last_pts < s->min_interval * 9 / 10)
    return GST_PAD_PROBE_DROP;
  s->last_pts = pts;
  return GST_PAD_PROBE_OK;
}

/* ---- key-frame requests ------------------------------------------------------
 * The engine's RTCP turns a PLI/FIR into an upstream GstForceKeyUnit event tagged with the SSRC. webrtcbin's
 * own BUNDLE rtpfunnel routes such events by the SSRC in its input caps, which for a simulcast input cannot
 * name all layers, so it drops them. A probe on that funnel hands the events of our layers' SSRCs to our
 * funnel, which routes them to the layer's encoder.                                                      */
typedef struct {
  gint refs;
  GstPad *layers_src; /* our rtpfunnel's src pad (owned reference) */
  guint ssrcs[MAX_LAYERS];
  gint n;
} key_route;

/* On each engine funnel: the list (GSList) of routes whose probe it already carries. One quark for all routes,
 * so that making connections does not grow GLib's quark table. */
static GQuark routes_mark(void) { return g_quark_from_static_string("sora-simulcast-routes"); }
static GMutex routes_lock; /* the list is read and replaced from the caller's thread and the engine's */

static void route_unref(gpointer data) {
  key_route *r = data;
  if (!g_atomic_int_dec_and_test(&r->refs)) return;
  gst_object_unref(r->layers_src);
  g_free(r);
}

static void route_closure_unref(gpointer data, GClosure *closure) {
  (void)closure;
  route_unref(data);
}

static GstPadProbeReturn on_engine_funnel_event(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  key_route *r = data;
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT(info);
  if (GST_EVENT_TYPE(event) != GST_EVENT_CUSTOM_UPSTREAM || !gst_video_event_is_force_key_unit(event))
    return GST_PAD_PROBE_OK;
  guint ssrc;
  const GstStructure *st = gst_event_get_structure(event);
  if (!st || !gst_structure_get_uint(st, "ssrc", &ssrc)) return GST_PAD_PROBE_OK;
  for (gint i = 0; i < r->n; i++) {
    if (r->ssrcs[i] != ssrc) continue;
    gst_pad_send_event(r->layers_src, gst_event_ref(event));
    return GST_PAD_PROBE_DROP;
  }
  return GST_PAD_PROBE_OK;
}

static void route_watch(GstElement *element, key_route *r) {
  GstElementFactory *f = gst_element_get_factory(element);
  if (!f || g_strcmp0(GST_OBJECT_NAME(f), "rtpfunnel") != 0) return;
  g_mutex_lock(&routes_lock);
  GSList *routes = g_object_steal_qdata(G_OBJECT(element), routes_mark());
  gboolean seen = g_slist_find(routes, r) != NULL;
  if (!seen) routes = g_slist_prepend(routes, r);
  g_object_set_qdata_full(G_OBJECT(element), routes_mark(), routes, (GDestroyNotify)g_slist_free);
  g_mutex_unlock(&routes_lock);
  if (seen) return;
  GstPad *src = gst_element_get_static_pad(element, "src");
  if (!src) return;
  g_atomic_int_inc(&r->refs);
  gst_pad_add_probe(src, GST_PAD_PROBE_TYPE_EVENT_UPSTREAM, on_engine_funnel_event, r, route_unref);
  gst_object_unref(src);
}

static void on_engine_element_added(GstBin *bin, GstBin *sub, GstElement *element, gpointer data) {
  (void)bin;
  (void)sub;
  route_watch(element, data);
}

static void route_scan(const GValue *item, gpointer data) { route_watch(g_value_get_object(item), data); }

/* Route key-frame requests for `ssrcs` from the engine's funnel (now or once webrtcbin creates it) to ours. */
static void route_key_frames(GstElement *webrtc, GstElement *layers_funnel, const guint *ssrcs, gint n) {
  key_route *r = g_new0(key_route, 1);
  r->refs = 1; /* the signal handler's */
  r->layers_src = gst_element_get_static_pad(layers_funnel, "src");
  memcpy(r->ssrcs, ssrcs, sizeof(guint) * (gsize)n);
  r->n = n;
  g_signal_connect_data(webrtc, "deep-element-added", G_CALLBACK(on_engine_element_added), r,
                        route_closure_unref, 0);
  GstIterator *it = gst_bin_iterate_recurse(GST_BIN(webrtc));
  while (gst_iterator_foreach(it, route_scan, r) == GST_ITERATOR_RESYNC) gst_iterator_resync(it);
  gst_iterator_free(it);
}

static gboolean valid_rid(const char *rid) {
  if (!rid || !*rid || strlen(rid) > 32) return FALSE;
  for (const char *p = rid; *p; p++)
    if (!g_ascii_isalnum(*p) && *p != '-' && *p != '_') return FALSE;
  return TRUE;
}

/* The remote offer's mid and sdes:mid / rtp-stream-id extmap ids of m-line `mline` (ids only where *id is 0). */
static int read_offer(sora_peer *peer, int32_t mline, char **mid, gint *mid_id, gint *rid_id) {
  GstWebRTCSessionDescription *remote = NULL;
  g_object_get(sora_peer_webrtc(peer), "remote-description", &remote, NULL);
  if (!remote) return sora_fail(SORA_ERR_INVALID_STATE, "simulcast needs the remote offer applied first");
  int rc = SORA_OK;
  if ((guint)mline >= gst_sdp_message_medias_len(remote->sdp)) {
    rc = sora_fail(SORA_ERR_NOT_FOUND, "the offer has no m-line %d", mline);
  } else {
    const GstSDPMedia *m = gst_sdp_message_get_media(remote->sdp, mline);
    if (g_strcmp0(gst_sdp_media_get_media(m), "video") != 0)
      rc = sora_fail(SORA_ERR_INVALID_ARGUMENT, "m-line %d of the offer is not video", mline);
    *mid = g_strdup(gst_sdp_media_get_attribute_val(m, "mid"));
    gboolean want_mid = *mid_id <= 0, want_rid = *rid_id <= 0;
    for (guint i = 0; i < gst_sdp_media_attributes_len(m); i++) {
      const GstSDPAttribute *a = gst_sdp_media_get_attribute(m, i);
      if (g_strcmp0(a->key, "extmap") != 0 || !a->value) continue;
      gchar **parts = g_strsplit_set(a->value, " \t", 3); /* "<id>[/direction] <uri> [attributes]" */
      if (g_strv_length(parts) >= 2) {
        gint id = atoi(parts[0]);
        if (want_mid && strcmp(parts[1], URI_MID) == 0) *mid_id = id;
        if (want_rid && strcmp(parts[1], URI_RID) == 0) *rid_id = id;
      }
      g_strfreev(parts);
    }
    if (rc == SORA_OK && (!*mid || !**mid)) rc = sora_fail(SORA_ERR_INVALID_ARGUMENT, "m-line %d of the offer has no mid", mline);
    if (rc == SORA_OK && (*mid_id < 1 || *mid_id > 14 || *rid_id < 1 || *rid_id > 14))
      rc = sora_fail(SORA_ERR_UNSUPPORTED,
                     "simulcast needs the offer's sdes:mid and sdes:rtp-stream-id extmaps (ids 1..14), got %d and %d",
                     *mid_id, *rid_id);
  }
  gst_webrtc_session_description_free(remote);
  return rc;
}

/* The size fit (for AV1 also to I420), encoder (for H.264 a caps filter after it) and payloader of one layer at
 * `bps` (encoder.c; VP8, VP9, H.264, AV1: the shim's own AV1 payloader, which also turns key-frame requests into
 * key frames for av1enc). */
static int make_encoder(const char *codec, guint bps, GString *missing, GstElement **fit, GstElement **enc,
                        GstElement **post, GstElement **pay) {
  if (g_ascii_strcasecmp(codec, "VP8") != 0 && g_ascii_strcasecmp(codec, "VP9") != 0 &&
      g_ascii_strcasecmp(codec, "H264") != 0 && g_ascii_strcasecmp(codec, "AV1") != 0)
    return sora_fail(SORA_ERR_UNSUPPORTED, "simulcast with codec %s is not supported by this engine", codec);
  return sora_video_encoder_make(codec, NULL, bps, missing, fit, enc, post, pay);
}

/* Add the RTP header extension `factory` with `id` to a payloader, set up by `prop` = `value`. */
static gboolean add_extension(GstElement *pay, const char *factory, gint id, const char *prop, const char *value) {
  GstElement *e = gst_element_factory_make(factory, NULL);
  if (!e) return FALSE;
  gst_object_ref_sink(e);
  gst_rtp_header_extension_set_id(GST_RTP_HEADER_EXTENSION(e), (guint)id);
  g_object_set(e, prop, value, NULL);
  g_signal_emit_by_name(pay, "add-extension", e);
  gst_object_unref(e);
  return TRUE;
}

typedef struct {
  const char *rid;
  gboolean active;
  double scale;
  gint max_width, max_height;
  guint bps;
  double max_framerate;
  guint ssrc;
} layer_plan;

static void unref_all(GstElement **elements, gint n) {
  for (gint i = 0; i < n; i++)
    if (elements[i]) gst_object_unref(elements[i]);
}

/* Add elements to the pipeline and link them in order; on failure they are removed again. */
static int add_chain(GstBin *bin, GstElement **chain, gint n) {
  for (gint i = 0; i < n; i++) gst_bin_add(bin, chain[i]);
  for (gint i = 0; i + 1 < n; i++) {
    if (!gst_element_link(chain[i], chain[i + 1])) {
      int rc = sora_fail(SORA_ERR_ENGINE, "cannot link %s to %s", GST_OBJECT_NAME(chain[i]),
                         GST_OBJECT_NAME(chain[i + 1]));
      for (gint j = 0; j < n; j++) {
        gst_element_set_state(chain[j], GST_STATE_NULL);
        gst_bin_remove(bin, chain[j]);
      }
      return rc;
    }
  }
  return SORA_OK;
}

static int attach_simulcast(sora_peer *peer, sora_video_source *source, int32_t mline, const sora_codec_params *p,
                            const sora_simulcast_encoding *encodings, int32_t count) {
  if (!source) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "source is NULL");
  if (!p || !p->codec) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "codec params are NULL");
  if (!encodings) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "encodings is NULL");
  if (mline < 0) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "m-line must be >= 0");
  if (count < 1 || count > MAX_LAYERS)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "simulcast needs 1..%d encodings, got %d", MAX_LAYERS, count);
  if (p->payload_type < 0 || p->payload_type > 127)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "payload type must be 0..127, got %d", p->payload_type);

  /* ---- plan the layers ---- */
  layer_plan plan[MAX_LAYERS];
  double area_sum = 0;
  gint active = 0;
  for (gint i = 0; i < count; i++) {
    const sora_simulcast_encoding *e = &encodings[i];
    if (!valid_rid(e->rid))
      return sora_fail(SORA_ERR_INVALID_ARGUMENT, "encoding %d: rid must be 1..32 letters, digits, '-' or '_'", i);
    for (gint j = 0; j < i; j++)
      if (strcmp(plan[j].rid, e->rid) == 0)
        return sora_fail(SORA_ERR_INVALID_ARGUMENT, "encoding %d: rid \"%s\" is used twice", i, e->rid);
    if (!(e->scale_down_by == 0 || (isfinite(e->scale_down_by) && e->scale_down_by >= 1.0)))
      return sora_fail(SORA_ERR_INVALID_ARGUMENT, "encoding %s: scale_down_by must be 0 or >= 1", e->rid);
    if (e->max_width < 0 || e->max_height < 0 || e->max_bitrate_bps < 0 || !(e->max_framerate >= 0) ||
        !isfinite(e->max_framerate))
      return sora_fail(SORA_ERR_INVALID_ARGUMENT, "encoding %s: negative or invalid limit", e->rid);
    layer_plan *l = &plan[i];
    l->rid = e->rid;
    l->active = e->active != 0;
    l->scale = e->scale_down_by > 0 ? e->scale_down_by : (double)(1u << (count - 1 - i));
    l->max_width = e->max_width;
    l->max_height = e->max_height;
    l->bps = (guint)e->max_bitrate_bps;
    l->max_framerate = e->max_framerate;
    l->ssrc = e->ssrc;
    for (gint j = 0; j < i && l->ssrc; j++)
      if (plan[j].ssrc == l->ssrc) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "encoding %s: SSRC is used twice", e->rid);
    if (l->active) {
      active++;
      if (!l->bps) area_sum += 1.0 / (l->scale * l->scale);
    }
  }
  /* Random SSRCs for the layers that have none, distinct from the given ones. */
  for (gint i = 0; i < count; i++) {
    while (!plan[i].ssrc) {
      guint ssrc = g_random_int() | 1u;
      gboolean taken = FALSE;
      for (gint j = 0; j < count; j++) taken |= plan[j].ssrc == ssrc;
      if (!taken) plan[i].ssrc = ssrc;
    }
  }
  guint total = (p->bitrate_kbps > 0 ? (guint)p->bitrate_kbps : 1000) * 1000;
  for (gint i = 0; i < count; i++)
    if (plan[i].active && !plan[i].bps)
      plan[i].bps = MAX((guint)(total * (1.0 / (plan[i].scale * plan[i].scale)) / area_sum), 30000u);

  /* Everything that can be refused is checked before anything is built (a built send pad stays taken). */
  static const struct {
    const char *codec, *encoder, *payloader;
  } codecs[] = {{"VP8", "vp8enc", "rtpvp8pay"},
                {"VP9", "vp9enc", "rtpvp9pay"},
                {"H264", "x264enc", "rtph264pay"},
                {"AV1", "soraav1enc", "sorartpav1pay"}};
  gint known = -1;
  for (guint i = 0; i < G_N_ELEMENTS(codecs); i++)
    if (g_ascii_strcasecmp(p->codec, codecs[i].codec) == 0) known = (gint)i;
  if (known < 0) return sora_fail(SORA_ERR_UNSUPPORTED, "simulcast with codec %s is not supported by this engine", p->codec);
  const char *needed[] = {codecs[known].encoder, codecs[known].payloader, "rtpfunnel", "videoscale", "tee",
                          "rtphdrextmid", "rtphdrextstreamid"};
  for (guint i = 0; i < G_N_ELEMENTS(needed); i++) {
    GstElementFactory *f = gst_element_factory_find(needed[i]);
    if (!f) return sora_fail(SORA_ERR_UNSUPPORTED, "engine element %s is missing for %s simulcast", needed[i], p->codec);
    gst_object_unref(f);
  }

  gint mid_id = encodings[0].mid_extmap_id, rid_id = encodings[0].rid_extmap_id;
  char *mid = NULL;
  int rc = read_offer(peer, mline, &mid, &mid_id, &rid_id);
  if (rc) {
    g_free(mid);
    return rc;
  }
  char *encoding = g_ascii_strup(p->codec, -1);

  /* ---- the caps that make webrtcbin answer with a=rid / a=simulcast ---- */
  GString *sim = g_string_new("send ");
  for (gint i = 0; i < count; i++)
    g_string_append_printf(sim, "%s%s%s", i ? ";" : "", plan[i].active ? "" : "~", plan[i].rid);
  GstCaps *rtp_caps = gst_caps_new_simple("application/x-rtp", "media", G_TYPE_STRING, "video", "encoding-name",
                                          G_TYPE_STRING, encoding, "payload", G_TYPE_INT, p->payload_type,
                                          "clock-rate", G_TYPE_INT, p->clock_rate > 0 ? p->clock_rate : 90000, NULL);
  GstStructure *st = gst_caps_get_structure(rtp_caps, 0);
  char field[64];
  g_snprintf(field, sizeof field, "extmap-%d", mid_id);
  gst_structure_set(st, field, G_TYPE_STRING, URI_MID, NULL);
  g_snprintf(field, sizeof field, "extmap-%d", rid_id);
  gst_structure_set(st, field, G_TYPE_STRING, URI_RID, NULL);
  for (gint i = 0; i < count; i++) {
    g_snprintf(field, sizeof field, "rid-%s", plan[i].rid);
    gst_structure_set(st, field, G_TYPE_STRING, "send", NULL);
  }
  gst_structure_set(st, "a-simulcast", G_TYPE_STRING, sim->str, NULL);
  g_string_free(sim, TRUE);
  gint twcc_id = sora_bwe_prepare_send(sora_peer_webrtc(peer), mline, p->payload_type, rtp_caps, NULL, NULL);

  /* ---- funnel → caps → webrtcbin ---- */
  GstBin *bin = GST_BIN(sora_peer_pipeline(peer));
  GString *missing = g_string_new(NULL);
  GstElement *funnel = sora_make("rtpfunnel", missing), *out_filter = sora_make("capsfilter", missing);
  GstElement *src = sora_make("appsrc", missing), *in_queue = sora_make("queue", missing),
             *conv = sora_make("videoconvert", missing), *tee = sora_make("tee", missing);
  GstElement *head[] = {src, in_queue, conv, tee};
  if (missing->len) {
    rc = sora_fail(SORA_ERR_UNSUPPORTED, "engine elements missing for simulcast: %s", missing->str);
    unref_all(head, G_N_ELEMENTS(head));
    if (funnel) gst_object_unref(funnel);
    if (out_filter) gst_object_unref(out_filter);
    goto out;
  }
  g_object_set(out_filter, "caps", rtp_caps, NULL);
  /* one pacer for the layers together, as libwebrtc paces a sender's streams */
  guint total_bps = 0;
  for (gint i = 0; i < count; i++)
    if (plan[i].active) total_bps += plan[i].bps;
  GstElement *pace_queue = NULL, *pacer = NULL;
  sora_pacer_make(total_bps, &pace_queue, &pacer);
  GstElement *tail[4] = {funnel, out_filter};
  gint n_tail = 2;
  if (pacer) {
    tail[1] = pace_queue;
    tail[2] = pacer;
    tail[3] = out_filter;
    n_tail = 4;
  }
  sora_mark_send_branch(tail, n_tail, mline);
  if ((rc = add_chain(bin, tail, n_tail))) {
    unref_all(head, G_N_ELEMENTS(head));
    goto out;
  }
  GstWebRTCRTPTransceiver *trans = NULL;
  GstPad *sinkpad = sora_peer_request_send_pad(peer, mline, rtp_caps, &trans);
  GstPad *srcpad = gst_element_get_static_pad(out_filter, "src");
  GstPadLinkReturn link_rc = sinkpad ? gst_pad_link(srcpad, sinkpad) : GST_PAD_LINK_REFUSED;
  gst_object_unref(srcpad);
  if (sinkpad) gst_object_unref(sinkpad);
  if (link_rc != GST_PAD_LINK_OK) {
    rc = sora_fail(SORA_ERR_ENGINE, "webrtcbin refused a send pad for m-line %d (link result %d)", mline, link_rc);
    if (trans) gst_object_unref(trans);
    for (gint i = 0; i < n_tail; i++) {
      gst_element_set_state(tail[i], GST_STATE_NULL);
      gst_bin_remove(bin, tail[i]);
    }
    unref_all(head, G_N_ELEMENTS(head));
    goto out;
  }
  for (gint i = n_tail - 1; i >= 0; i--) gst_element_sync_state_with_parent(tail[i]);
  if (trans) {
    GstCaps *prefs = gst_caps_copy(rtp_caps);
    gst_structure_set(gst_caps_get_structure(prefs, 0), "rtcp-fb-nack-pli", G_TYPE_BOOLEAN, TRUE, "rtcp-fb-ccm-fir",
                      G_TYPE_BOOLEAN, TRUE, "rtcp-fb-transport-cc", G_TYPE_BOOLEAN, TRUE, NULL);
    g_object_set(trans, "codec-preferences", prefs, NULL);
    gst_caps_unref(prefs);
    gst_object_unref(trans);
  }
  if (active == 0) { /* everything paused: announced, nothing to encode */
    unref_all(head, G_N_ELEMENTS(head));
    goto out;
  }

  /* ---- source → tee ---- */
  g_object_set(src, "is-live", TRUE, "format", GST_FORMAT_TIME, "do-timestamp", TRUE, "max-buffers", (guint64)2,
               "block", FALSE, NULL);
  gst_util_set_object_arg(G_OBJECT(src), "leaky-type", "downstream");
  sora_set_leaky_queue(in_queue, 2, 0);
  g_object_set(tee, "allow-not-linked", TRUE, NULL);
  gst_object_ref(src);
  sora_mark_send_branch(head, G_N_ELEMENTS(head), mline);
  if ((rc = add_chain(bin, head, G_N_ELEMENTS(head)))) {
    gst_object_unref(src);
    goto out;
  }

  /* ---- one branch per active layer ---- */
  GList *encoders = NULL;
  /* Bandwidth estimation serves the layers by bitrate, lowest first (bwe.c). */
  gint bwe_group = sora_bwe_new_group(sora_peer_bwe(peer));
  for (gint i = 0; i < count && rc == SORA_OK; i++) {
    layer_plan *l = &plan[i];
    if (!l->active) continue;
    GstElement *queue = sora_make("queue", missing), *scale = sora_make("videoscale", missing),
               *size = sora_make("capsfilter", missing);
    GstElement *fit = NULL, *enc = NULL, *post = NULL, *pay = NULL;
    rc = make_encoder(encoding, l->bps, missing, &fit, &enc, &post, &pay);
    GstElement *chain[LAYER_CHAIN] = {queue, fit, scale, size, enc, post, pay};
    if (rc == SORA_OK && missing->len)
      rc = sora_fail(SORA_ERR_UNSUPPORTED, "engine elements missing for %s simulcast: %s", encoding, missing->str);
    if (rc) {
      unref_all(chain, LAYER_CHAIN);
      break;
    }
    sora_set_leaky_queue(queue, 2, 0);
    g_object_set(pay, "pt", (guint)p->payload_type, "mtu", 1200, "ssrc", l->ssrc, "auto-header-extension", FALSE,
                 NULL);
    if (!add_extension(pay, "rtphdrextmid", mid_id, "mid", mid) ||
        !add_extension(pay, "rtphdrextstreamid", rid_id, "rid", l->rid)) {
      rc = sora_fail(SORA_ERR_UNSUPPORTED, "the engine lacks the rtphdrextmid / rtphdrextstreamid extensions");
      unref_all(chain, LAYER_CHAIN);
      break;
    }
    if (twcc_id) sora_bwe_add_twcc_extension(pay, twcc_id);
    gint n = 0;
    GstElement *linked[LAYER_CHAIN];
    for (gint j = 0; j < LAYER_CHAIN; j++)
      if (chain[j]) linked[n++] = chain[j];
    layer_state *s = g_new0(layer_state, 1);
    s->refs = 1;
    s->size_filter = gst_object_ref(size);
    s->scale = l->scale;
    s->max_width = l->max_width;
    s->max_height = l->max_height;
    s->even = g_ascii_strcasecmp(encoding, "H264") == 0;
    s->last_pts = GST_CLOCK_TIME_NONE;
    s->min_interval = l->max_framerate > 0 ? (GstClockTime)(GST_SECOND / l->max_framerate) : 0;
    gst_object_ref(enc);
    sora_mark_send_branch(linked, n, mline);
    if ((rc = add_chain(bin, linked, n))) {
      gst_object_unref(enc);
      layer_unref(s);
      break;
    }
    GstPad *scale_sink = gst_element_get_static_pad(scale, "sink");
    gst_pad_add_probe(scale_sink, GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM, on_layer_caps, s, layer_unref);
    if (s->min_interval) {
      g_atomic_int_inc(&s->refs);
      gst_pad_add_probe(scale_sink, GST_PAD_PROBE_TYPE_BUFFER, on_layer_buffer, s, layer_unref);
    }
    gst_object_unref(scale_sink);
    GstPad *fsink = gst_element_request_pad_simple(funnel, "sink_%u");
    GstPad *psrc = gst_element_get_static_pad(pay, "src");
    GstPadLinkReturn r1 = gst_pad_link(psrc, fsink);
    gst_object_unref(psrc);
    gst_object_unref(fsink);
    GstPad *tsrc = gst_element_request_pad_simple(tee, "src_%u");
    GstPad *qsink = gst_element_get_static_pad(queue, "sink");
    GstPadLinkReturn r2 = gst_pad_link(tsrc, qsink);
    gst_object_unref(tsrc);
    gst_object_unref(qsink);
    for (gint j = n - 1; j >= 0; j--) gst_element_sync_state_with_parent(linked[j]);
    encoders = g_list_prepend(encoders, enc);
    gint priority = 0;
    for (gint j = 0; j < count; j++)
      if (j != i && plan[j].active && (plan[j].bps < l->bps || (plan[j].bps == l->bps && j < i))) priority++;
    sora_bwe_add_layer(sora_peer_bwe(peer), bwe_group, priority, enc, l->ssrc, l->bps, queue);
    if (r1 != GST_PAD_LINK_OK || r2 != GST_PAD_LINK_OK)
      rc = sora_fail(SORA_ERR_ENGINE, "cannot link simulcast layer %s (%d, %d)", l->rid, r1, r2);
  }
  for (gint i = G_N_ELEMENTS(head) - 1; i >= 0; i--) gst_element_sync_state_with_parent(head[i]);
  /* What was built stays in the pipeline, also after a failure (torn down with it); the encoders get
   * key-frame requests, and the source feeds the layers only when all of them were built. */
  guint ssrcs[MAX_LAYERS];
  gint n_ssrcs = 0;
  for (gint i = 0; i < count; i++)
    if (plan[i].active) ssrcs[n_ssrcs++] = plan[i].ssrc;
  route_key_frames(sora_peer_webrtc(peer), funnel, ssrcs, n_ssrcs);
  for (GList *l = encoders; l; l = l->next) sora_peer_add_send(peer, NULL, l->data);
  g_list_free(encoders);
  if (rc == SORA_OK)
    sora_peer_add_send(peer, sora_link_video(source, peer, src, NULL), NULL);
  else
    gst_object_unref(src);

out:
  g_string_free(missing, TRUE);
  gst_caps_unref(rtp_caps);
  g_free(encoding);
  g_free(mid);
  return rc;
}

SORA_C_API int sora_peer_attach_video_simulcast(sora_peer *peer, sora_video_source *source, int32_t mline,
                                                const sora_codec_params *params,
                                                const sora_simulcast_encoding *encodings, int32_t count) {
  int rc = sora_peer_enter(peer);
  if (rc) return rc;
  rc = attach_simulcast(peer, source, mline, params, encodings, count);
  sora_peer_leave(peer);
  return rc;
}
