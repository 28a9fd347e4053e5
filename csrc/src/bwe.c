/* Sender-side bandwidth estimation and degradation preference (one controller per peer).
 *
 * Feedback (read on the engine's RTCP threads, only copied under a short lock):
 *  - REMB (RTCP PSFB FMT 15 "REMB"), from the internal RTPSession's on-feedback-rtcp;
 *  - receiver-report fraction lost about our SSRCs, from on-receiving-rtcp;
 *  - transport-wide CC: webrtcbin's rtpsession parses the RTPFB FMT 15 feedback of the packets that carry the
 *    TWCC header extension (negotiated by sora_bwe_prepare_send) and publishes "twcc-stats" (loss, delay
 *    gradient, sent / received rate), polled here.
 *
 * Controller (a thread per peer, every TICK_MS; it never runs on a streaming thread):
 *  - loss-based: loss > 10 % -> estimate x (1 - 0.5 loss) (at most every LOSS_HOLD_US, not below 0.85 x the
 *    rate TWCC says arrived); loss < 2 % -> +8 %/s; in between hold;
 *  - delay-based (TWCC): a delay gradient above OVERUSE_NS on two fresh reports -> 0.85 x received rate
 *    (at most halving per step), then no increase for a second; otherwise +8 %/s;
 *  - REMB caps the result while fresh; the estimate is clamped to [MIN_BPS, the branches' requested rates].
 * The estimate is shared by the video branches in proportion to their requested rates; simulcast layers get
 * it lowest layer first, and a layer left with too little is suspended (its frames dropped before encoding).
 * Encoders get the new rate when it moved by more than 3 % (vp8enc / vp9enc target-bitrate bps, x264enc /
 * x265enc / av1enc kbps, openh264enc bitrate bps).
 *
 * Degradation preference (single-layer branches, which carry a videoscale + capsfilter and a frame-drop probe):
 * when the estimate stays below what the encoded size and frame rate need (BITS_PER_PIXEL per pixel per frame)
 * for DEGRADE_US, MAINTAIN_FRAMERATE halves the size, MAINTAIN_RESOLUTION halves the frame rate, BALANCED
 * alternates (size first); a step is undone when the estimate exceeds what the previous step needs by
 * UPGRADE_MARGIN for UPGRADE_US. DISABLED adapts the bitrate only.
 *
 * SORA_BWE_DEBUG=1 in the environment logs the controller's decisions to stderr.                          */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <gst/rtp/gstrtcpbuffer.h>
#include <gst/rtp/rtp.h>

#include "internal.h"

#define TWCC_URI "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
#define TICK_MS 250
#define MIN_BPS 50000u
#define REMB_TTL_US (5 * G_TIME_SPAN_SECOND)
#define REMB_SEND_INTERVAL_US (250 * G_TIME_SPAN_MILLISECOND)
#define OVERUSE_NS (2 * GST_MSECOND)
#define LOSS_HOLD_US (500 * G_TIME_SPAN_MILLISECOND)
#define NORMAL_NS (GST_MSECOND / 2)
#define INCREASE_PER_S 1.08
#define BITS_PER_PIXEL 0.03
#define DEGRADE_US (1 * G_TIME_SPAN_SECOND)
#define UPGRADE_US (2 * G_TIME_SPAN_SECOND)
#define UPGRADE_MARGIN 1.4
#define MAX_LEVEL 3
#define MIN_FPS 5.0
#define MIN_WIDTH 80
#define MIN_HEIGHT 45
#define MAX_SESSIONS 8
#define MAX_REMB_SSRCS 16
#define LAYER_MIN_BPS 30000u

/* ---- one send branch (or simulcast layer) ---------------------------------- */

typedef struct {
  gint refs;
  GMutex lock; /* the fields shared with the branch's probes */
  GstElement *encoder;       /* owned reference */
  GstElement *scale_filter;  /* owned reference or NULL (no size adaptation) */
  /* The probes hold a stream reference and the stream holds the encoder (so its pads): the probes are
   * removed when the controller is freed, or the branch would never be released. */
  GstPad *probe_pads[3];     /* owned references */
  gulong probe_ids[3];
  const char *prop;          /* the encoder's bitrate property */
  guint unit;                /* 1: the property counts bit/s, 1000: kbit/s */
  gboolean openh264;
  /* av1enc reconfigures libaom from set_property without holding off its encode call (GStreamer 1.22): a rate
   * set from the controller's thread raced aom_codec_encode on the streaming thread and crashed libaom under
   * size changes. Its rate is handed to the streaming thread instead, applied before the next frame. */
  gboolean rate_on_stream;
  guint pending_bps; /* (lock) 0: none */
  /* x264enc adds a frame of delay when its caps say "variable frame rate" (0/1, as our sources do), so its
   * caps carry a nominal rate instead: the rate measured at its input, updated when it moves by > 15 %. */
  gboolean cfr;
  gint cfr_fps;           /* (lock) the nominal rate the encoder was given */
  gboolean cfr_pending;   /* (lock) send the encoder caps with the new cfr_fps before its next frame */
  gint cfr_votes;         /* controller only: seconds in a row the measured rate was off */
  GstCaps *cfr_caps;      /* (lock) the encoder's current caps, or NULL */
  guint32 ssrc;
  guint max_bps;
  gint group, layer; /* simulcast: group id (> 0) and position (0 = lowest); 0, 0 for a single branch */
  /* shared with the probes (lock) */
  gint src_w, src_h; /* size entering the branch */
  gint enc_w, enc_h; /* size encoded */
  gint scale_level;  /* applied size level: width and height >> level */
  GstClockTime min_interval, last_pts; /* frame-rate limit (0: none) */
  double credit;                       /* frames the limit lets through now (at most 2) */
  gint64 in_frames, out_frames;
  gint64 encoded, key_encoded; /* frames out of the encoder, key frames among them */
  gboolean suspended;
  /* quality limitation (lock): seconds spent limited by bandwidth or not, since the first tick, and the number
   * of encoded-size changes the adaptation made (qualityLimitationDurations / ...ResolutionChanges) */
  double ql_none_s, ql_bandwidth_s;
  gint64 ql_time;
  gint ql_scale_level, ql_resolution_changes;
  /* controller only (bwe thread / get-stats under bwe->lock) */
  guint target_bps, applied_bps;
  gint fps_level;
  double in_fps, out_fps;
  gint64 fps_time, fps_in, fps_out;
  gint64 degrade_since, upgrade_since;
} bwe_stream;

static bwe_stream *stream_ref(bwe_stream *s) {
  g_atomic_int_inc(&s->refs);
  return s;
}

static void stream_unref(gpointer data) {
  bwe_stream *s = data;
  if (!g_atomic_int_dec_and_test(&s->refs)) return;
  gst_object_unref(s->encoder);
  if (s->scale_filter) gst_object_unref(s->scale_filter);
  if (s->cfr_caps) gst_caps_unref(s->cfr_caps);
  g_mutex_clear(&s->lock);
  g_free(s);
}

/* ---- the peer's controller ------------------------------------------------------ */

struct sora_bwe {
  GstElement *webrtc; /* borrowed: the peer stops the controller before releasing it */
  GMutex lock;
  GCond cond;
  GThread *thread;
  gboolean stopping;
  GPtrArray *streams; /* bwe_stream* (a reference each) */
  gint next_group;
  gint preference;
  gboolean debug;
  /* engine objects (bwe thread; released at free) */
  GstElement *rtpbin;
  GObject *sessions[MAX_SESSIONS];      /* internal RTPSession, with signal handlers */
  GstElement *session_elems[MAX_SESSIONS];
  gint twcc_notified; /* atomic: twcc-stats notifications */
  gint twcc_seen;
  /* feedback (lock) */
  guint64 remb_bps;
  gint64 remb_time;
  gint remb_count;
  double rr_loss;
  gboolean rr_fresh;
  gint rr_count;
  /* REMB this peer sends (lock) */
  guint64 send_remb_bps;
  guint32 send_remb_sender;
  guint32 send_remb_ssrcs[MAX_REMB_SSRCS];
  gint send_remb_n;
  gint64 send_remb_last;
  gint remb_sent;
  /* controller state (lock) */
  double loss_est, delay_est;
  guint estimate, max_total;
  gint overuse;
  gint64 hold_until, loss_hold_until, loss_time, twcc_time;
  double last_loss, last_delay_ns;
  guint last_recv_bps;
  gboolean have_twcc;
};

static void bwe_log(sora_bwe *bwe, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void bwe_log(sora_bwe *bwe, const char *fmt, ...) {
  if (!bwe->debug) return;
  va_list ap;
  va_start(ap, fmt);
  char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_printerr("[sora-bwe %p %.3f] %s\n", (void *)bwe, g_get_monotonic_time() / 1e6, msg);
  g_free(msg);
}

sora_bwe *sora_bwe_new(GstElement *webrtc) {
  sora_bwe *bwe = g_new0(sora_bwe, 1);
  bwe->webrtc = webrtc;
  g_mutex_init(&bwe->lock);
  g_cond_init(&bwe->cond);
  bwe->streams = g_ptr_array_new_with_free_func(stream_unref);
  bwe->preference = SORA_DEGRADATION_DISABLED;
  bwe->loss_est = bwe->delay_est = G_MAXUINT;
  bwe->debug = g_getenv("SORA_BWE_DEBUG") != NULL;
  return bwe;
}

/* ---- RTCP handlers (engine RTCP threads: parse, copy under the lock, return) ------ */

static gboolean is_our_ssrc(sora_bwe *bwe, guint32 ssrc) {
  for (guint i = 0; i < bwe->streams->len; i++)
    if (((bwe_stream *)g_ptr_array_index(bwe->streams, i))->ssrc == ssrc) return TRUE;
  return FALSE;
}

static void on_feedback_rtcp(GObject *sess, guint type, guint fbtype, guint sender_ssrc, guint media_ssrc,
                             GstBuffer *fci, sora_bwe *bwe) {
  (void)sess;
  (void)sender_ssrc;
  (void)media_ssrc;
  if (type != GST_RTCP_TYPE_PSFB || fbtype != GST_RTCP_PSFB_TYPE_AFB || !fci) return;
  guint8 data[8];
  if (gst_buffer_extract(fci, 0, data, 8) != 8 || memcmp(data, "REMB", 4) != 0) return;
  guint exp = data[5] >> 2;
  guint64 mantissa = ((guint64)(data[5] & 3) << 16) | ((guint64)data[6] << 8) | data[7];
  guint64 bps = exp > 46 ? G_MAXUINT32 : MIN(mantissa << exp, (guint64)G_MAXUINT32);
  g_mutex_lock(&bwe->lock);
  bwe->remb_bps = bps;
  bwe->remb_time = g_get_monotonic_time();
  bwe->remb_count++;
  g_mutex_unlock(&bwe->lock);
}

static void on_receiving_rtcp(GObject *sess, GstBuffer *buffer, sora_bwe *bwe) {
  (void)sess;
  GstRTCPBuffer rtcp = GST_RTCP_BUFFER_INIT;
  if (!gst_rtcp_buffer_map(buffer, GST_MAP_READ, &rtcp)) return;
  GstRTCPPacket packet;
  double worst = -1;
  g_mutex_lock(&bwe->lock);
  for (gboolean more = gst_rtcp_buffer_get_first_packet(&rtcp, &packet); more;
       more = gst_rtcp_packet_move_to_next(&packet)) {
    GstRTCPType type = gst_rtcp_packet_get_type(&packet);
    if (type != GST_RTCP_TYPE_RR && type != GST_RTCP_TYPE_SR) continue;
    guint n = gst_rtcp_packet_get_rb_count(&packet);
    for (guint i = 0; i < n; i++) {
      guint32 ssrc = 0, exthighestseq, jitter, lsr, dlsr;
      guint8 fraction = 0;
      gint32 lost;
      gst_rtcp_packet_get_rb(&packet, i, &ssrc, &fraction, &lost, &exthighestseq, &jitter, &lsr, &dlsr);
      if (is_our_ssrc(bwe, ssrc) && fraction / 256.0 > worst) worst = fraction / 256.0;
    }
  }
  if (worst >= 0) {
    bwe->rr_loss = worst;
    bwe->rr_fresh = TRUE;
    bwe->rr_count++;
  }
  g_mutex_unlock(&bwe->lock);
  gst_rtcp_buffer_unmap(&rtcp);
}

/* Add a REMB packet to the RTCP this peer sends, when the application set one. */
static gboolean on_sending_rtcp(GObject *sess, GstBuffer *buffer, gboolean early, sora_bwe *bwe) {
  (void)sess;
  (void)early;
  g_mutex_lock(&bwe->lock);
  guint64 bps = bwe->send_remb_bps;
  guint32 sender = bwe->send_remb_sender, ssrcs[MAX_REMB_SSRCS];
  gint n = bwe->send_remb_n;
  memcpy(ssrcs, bwe->send_remb_ssrcs, sizeof ssrcs);
  g_mutex_unlock(&bwe->lock);
  if (!bps) return FALSE;
  GstRTCPBuffer rtcp = GST_RTCP_BUFFER_INIT;
  if (!gst_rtcp_buffer_map(buffer, GST_MAP_READWRITE, &rtcp)) return FALSE;
  GstRTCPPacket packet;
  gboolean added = FALSE;
  if (gst_rtcp_buffer_add_packet(&rtcp, GST_RTCP_TYPE_PSFB, &packet)) {
    gst_rtcp_packet_fb_set_type(&packet, GST_RTCP_PSFB_TYPE_AFB);
    gst_rtcp_packet_fb_set_sender_ssrc(&packet, sender);
    gst_rtcp_packet_fb_set_media_ssrc(&packet, 0);
    if (gst_rtcp_packet_fb_set_fci_length(&packet, (guint16)(2 + n))) {
      guint8 *fci = gst_rtcp_packet_fb_get_fci(&packet);
      guint exp = 0;
      guint64 mantissa = bps;
      while (mantissa > 0x3FFFF) {
        mantissa >>= 1;
        exp++;
      }
      memcpy(fci, "REMB", 4);
      fci[4] = (guint8)n;
      fci[5] = (guint8)((exp << 2) | ((mantissa >> 16) & 3));
      fci[6] = (guint8)(mantissa >> 8);
      fci[7] = (guint8)mantissa;
      for (gint i = 0; i < n; i++) GST_WRITE_UINT32_BE(fci + 8 + 4 * i, ssrcs[i]);
      added = TRUE;
    } else {
      gst_rtcp_packet_remove(&packet);
    }
  }
  gst_rtcp_buffer_unmap(&rtcp);
  if (added) {
    g_mutex_lock(&bwe->lock);
    bwe->remb_sent++;
    g_mutex_unlock(&bwe->lock);
  }
  return added;
}

static void on_twcc_notify(GObject *obj, GParamSpec *pspec, sora_bwe *bwe) {
  (void)obj;
  (void)pspec;
  g_atomic_int_inc(&bwe->twcc_notified);
}

/* Find the sessions webrtcbin has created so far (BUNDLE: session 0) and connect to them. */
static void connect_sessions(sora_bwe *bwe) {
  if (!bwe->rtpbin) bwe->rtpbin = gst_bin_get_by_name(GST_BIN(bwe->webrtc), "rtpbin");
  if (!bwe->rtpbin) return;
  for (guint id = 0; id < MAX_SESSIONS; id++) {
    if (bwe->sessions[id]) continue;
    GObject *sess = NULL;
    g_signal_emit_by_name(bwe->rtpbin, "get-internal-session", id, &sess);
    if (!sess) continue;
    GstElement *elem = NULL;
    g_signal_emit_by_name(bwe->rtpbin, "get-session", id, &elem);
    GType t = G_OBJECT_TYPE(sess);
    if (g_signal_lookup("on-feedback-rtcp", t))
      g_signal_connect(sess, "on-feedback-rtcp", G_CALLBACK(on_feedback_rtcp), bwe);
    if (g_signal_lookup("on-receiving-rtcp", t))
      g_signal_connect(sess, "on-receiving-rtcp", G_CALLBACK(on_receiving_rtcp), bwe);
    if (g_signal_lookup("on-sending-rtcp", t))
      g_signal_connect(sess, "on-sending-rtcp", G_CALLBACK(on_sending_rtcp), bwe);
    if (elem && g_object_class_find_property(G_OBJECT_GET_CLASS(elem), "twcc-stats"))
      g_signal_connect(elem, "notify::twcc-stats", G_CALLBACK(on_twcc_notify), bwe);
    bwe->sessions[id] = sess;
    bwe->session_elems[id] = elem;
    bwe_log(bwe, "connected to RTP session %u", id);
  }
}

/* The remote senders this peer receives (for the SSRC list of the REMB it sends) and its own SSRC. */
static void refresh_remb_ssrcs(sora_bwe *bwe) {
  guint32 ssrcs[MAX_REMB_SSRCS], sender = 0;
  gint n = 0;
  for (guint id = 0; id < MAX_SESSIONS; id++) {
    GObject *sess = bwe->sessions[id];
    if (!sess) continue;
    if (!sender && g_object_class_find_property(G_OBJECT_GET_CLASS(sess), "internal-ssrc"))
      g_object_get(sess, "internal-ssrc", &sender, NULL);
    GValueArray *sources = NULL;
    G_GNUC_BEGIN_IGNORE_DEPRECATIONS
    g_object_get(sess, "sources", &sources, NULL);
    for (guint i = 0; sources && i < sources->n_values && n < MAX_REMB_SSRCS; i++) {
      GObject *src = g_value_get_object(g_value_array_get_nth(sources, i));
      GstStructure *st = NULL;
      g_object_get(src, "stats", &st, NULL);
      gboolean internal = TRUE, is_sender = FALSE;
      guint ssrc = 0;
      if (st) {
        gst_structure_get_boolean(st, "internal", &internal);
        gst_structure_get_boolean(st, "is-sender", &is_sender);
        gst_structure_get_uint(st, "ssrc", &ssrc);
        gst_structure_free(st);
      }
      if (!internal && is_sender) ssrcs[n++] = ssrc;
    }
    if (sources) g_value_array_free(sources);
    G_GNUC_END_IGNORE_DEPRECATIONS
  }
  g_mutex_lock(&bwe->lock);
  memcpy(bwe->send_remb_ssrcs, ssrcs, sizeof(guint32) * (gsize)n);
  bwe->send_remb_n = n;
  bwe->send_remb_sender = sender;
  g_mutex_unlock(&bwe->lock);
}

/* ---- branch probes (streaming threads: short lock, no callbacks) ----------------- */

/* The size caps for `level` of a `w`x`h` source (even sizes, at least 2x2). */
static GstCaps *level_caps(gint w, gint h, gint level) {
  if (level <= 0 || w <= 0 || h <= 0) return gst_caps_new_empty_simple("video/x-raw");
  gint sw = MAX((w >> level) & ~1, 2), sh = MAX((h >> level) & ~1, 2);
  return gst_caps_new_simple("video/x-raw", "width", G_TYPE_INT, sw, "height", G_TYPE_INT, sh, "pixel-aspect-ratio",
                             GST_TYPE_FRACTION, 1, 1, NULL);
}

static gboolean caps_size(GstEvent *event, gint *w, gint *h) {
  GstCaps *caps = NULL;
  gst_event_parse_caps(event, &caps);
  const GstStructure *st = caps && gst_caps_get_size(caps) ? gst_caps_get_structure(caps, 0) : NULL;
  return st && gst_structure_get_int(st, "width", w) && gst_structure_get_int(st, "height", h) && *w > 0 && *h > 0;
}

/* Where frames enter the branch (before the scaler): count them, apply the frame-rate limit, follow the size. */
static GstPadProbeReturn on_branch_input(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  bwe_stream *s = data;
  if (info->type & GST_PAD_PROBE_TYPE_BUFFER) {
    GstClockTime pts = GST_BUFFER_PTS(GST_PAD_PROBE_INFO_BUFFER(info));
    GstPadProbeReturn ret = GST_PAD_PROBE_OK;
    g_mutex_lock(&s->lock);
    s->in_frames++;
    if (s->suspended) {
      ret = GST_PAD_PROBE_DROP;
    } else if (s->min_interval && GST_CLOCK_TIME_IS_VALID(pts)) {
      /* Each frame interval earns the time it lasted in units of the allowed interval; a frame costs 1. */
      if (GST_CLOCK_TIME_IS_VALID(s->last_pts) && pts > s->last_pts)
        s->credit = MIN(s->credit + (double)(pts - s->last_pts) / (double)s->min_interval, 2.0);
      else if (!GST_CLOCK_TIME_IS_VALID(s->last_pts))
        s->credit = 1.0;
      s->last_pts = pts;
      if (s->credit >= 0.95)
        s->credit -= 1.0;
      else
        ret = GST_PAD_PROBE_DROP;
    }
    g_mutex_unlock(&s->lock);
    return ret;
  }
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT(info);
  gint w, h;
  if (GST_EVENT_TYPE(event) != GST_EVENT_CAPS || !caps_size(event, &w, &h)) return GST_PAD_PROBE_OK;
  g_mutex_lock(&s->lock);
  gboolean changed = w != s->src_w || h != s->src_h;
  s->src_w = w;
  s->src_h = h;
  if (changed && s->scale_filter && s->scale_level > 0) {
    GstCaps *caps = level_caps(w, h, s->scale_level);
    g_object_set(s->scale_filter, "caps", caps, NULL);
    gst_caps_unref(caps);
  }
  g_mutex_unlock(&s->lock);
  return GST_PAD_PROBE_OK;
}

/* `caps` (new) with framerate fps/1. */
static GstCaps *caps_with_rate(const GstCaps *caps, gint fps) {
  GstCaps *out = gst_caps_copy(caps);
  gst_caps_set_simple(out, "framerate", GST_TYPE_FRACTION, fps, 1, NULL);
  return out;
}

/* The encoder's input: the encoded size and frame count; x264enc's nominal frame rate (see cfr). */
static void set_bitrate(bwe_stream *s, guint bps);

static GstPadProbeReturn on_encoder_input(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  bwe_stream *s = data;
  if (info->type & GST_PAD_PROBE_TYPE_BUFFER) {
    GstCaps *update = NULL;
    g_mutex_lock(&s->lock);
    s->out_frames++;
    if (s->cfr_pending && s->cfr_caps) update = caps_with_rate(s->cfr_caps, s->cfr_fps);
    s->cfr_pending = FALSE;
    guint bps = s->pending_bps;
    s->pending_bps = 0;
    g_mutex_unlock(&s->lock);
    if (bps) set_bitrate(s, bps); /* (the streaming thread: the encoder is between frames) */
    if (update) {
      /* a streaming-thread event, in order before this frame (the pad's stream lock is recursive) */
      gst_pad_send_event(pad, gst_event_new_caps(update));
      gst_caps_unref(update);
    }
    return GST_PAD_PROBE_OK;
  }
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT(info);
  if (GST_EVENT_TYPE(event) != GST_EVENT_CAPS) return GST_PAD_PROBE_OK;
  gint w, h;
  g_mutex_lock(&s->lock);
  if (caps_size(event, &w, &h)) {
    s->enc_w = w;
    s->enc_h = h;
  }
  if (s->cfr) {
    GstCaps *caps = NULL;
    gst_event_parse_caps(event, &caps);
    const GstStructure *st = caps && gst_caps_get_size(caps) ? gst_caps_get_structure(caps, 0) : NULL;
    gint num = 0, den = 1;
    if (st && (!gst_structure_get_fraction(st, "framerate", &num, &den) || num <= 0 || den <= 0)) {
      GstCaps *fixed = caps_with_rate(caps, s->cfr_fps);
      GST_PAD_PROBE_INFO_DATA(info) = gst_event_new_caps(fixed);
      gst_event_unref(event);
      if (s->cfr_caps) gst_caps_unref(s->cfr_caps);
      s->cfr_caps = fixed;
    } else if (caps) {
      if (s->cfr_caps) gst_caps_unref(s->cfr_caps);
      s->cfr_caps = gst_caps_ref(caps);
    }
  }
  g_mutex_unlock(&s->lock);
  return GST_PAD_PROBE_OK;
}

/* The encoder's output: framesEncoded and keyFramesEncoded. */
static GstPadProbeReturn on_encoder_output(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  bwe_stream *s = data;
  gboolean key = !GST_BUFFER_FLAG_IS_SET(GST_PAD_PROBE_INFO_BUFFER(info), GST_BUFFER_FLAG_DELTA_UNIT);
  g_mutex_lock(&s->lock);
  s->encoded++;
  if (key) s->key_encoded++;
  g_mutex_unlock(&s->lock);
  return GST_PAD_PROBE_OK;
}

/* Controller, once a second: move x264enc's nominal rate to the measured one after 2 s off by > 15 %. */
static void follow_frame_rate(bwe_stream *s) {
  if (!s->cfr || s->out_fps < 0.5) return;
  g_mutex_lock(&s->lock);
  double ratio = s->out_fps / s->cfr_fps;
  s->cfr_votes = ratio < 0.85 || ratio > 1.15 ? s->cfr_votes + 1 : 0;
  if (s->cfr_votes >= 2) {
    gint fps = (gint)CLAMP(lround(s->out_fps), 1, 120);
    s->cfr_votes = 0;
    if (fps != s->cfr_fps) {
      s->cfr_fps = fps;
      s->cfr_pending = TRUE;
    }
  }
  g_mutex_unlock(&s->lock);
}

/* ---- encoders ----------------------------------------------------------------------- */

static void set_uint_prop(GObject *obj, const char *name, guint64 value) {
  GParamSpec *spec = g_object_class_find_property(G_OBJECT_GET_CLASS(obj), name);
  if (!spec) return;
  GValue v = G_VALUE_INIT;
  g_value_init(&v, spec->value_type);
  switch (G_TYPE_FUNDAMENTAL(spec->value_type)) {
    case G_TYPE_INT: g_value_set_int(&v, (gint)MIN(value, (guint64)G_MAXINT)); break;
    case G_TYPE_UINT: g_value_set_uint(&v, (guint)MIN(value, (guint64)G_MAXUINT)); break;
    case G_TYPE_INT64: g_value_set_int64(&v, (gint64)value); break;
    case G_TYPE_UINT64: g_value_set_uint64(&v, value); break;
    default: g_value_unset(&v); return;
  }
  g_object_set_property(obj, name, &v);
  g_value_unset(&v);
}

static guint64 get_uint_prop(GObject *obj, const char *name) {
  GParamSpec *spec = g_object_class_find_property(G_OBJECT_GET_CLASS(obj), name);
  if (!spec) return 0;
  GValue v = G_VALUE_INIT;
  g_value_init(&v, spec->value_type);
  g_object_get_property(obj, name, &v);
  guint64 out = 0;
  switch (G_TYPE_FUNDAMENTAL(spec->value_type)) {
    case G_TYPE_INT: out = (guint64)MAX(g_value_get_int(&v), 0); break;
    case G_TYPE_UINT: out = g_value_get_uint(&v); break;
    case G_TYPE_INT64: out = (guint64)MAX(g_value_get_int64(&v), 0); break;
    case G_TYPE_UINT64: out = g_value_get_uint64(&v); break;
    default: break;
  }
  g_value_unset(&v);
  return out;
}

static void encoder_kind(bwe_stream *s) {
  GstElementFactory *f = gst_element_get_factory(s->encoder);
  const char *name = f ? GST_OBJECT_NAME(f) : "";
  s->unit = 1000;
  s->prop = "bitrate";
  if (!strcmp(name, "vp8enc") || !strcmp(name, "vp9enc")) {
    s->prop = "target-bitrate";
    s->unit = 1;
  } else if (!strcmp(name, "av1enc") || !strcmp(name, "soraav1enc")) {
    s->prop = "target-bitrate";
    s->rate_on_stream = TRUE;
  } else if (!strcmp(name, "openh264enc")) {
    s->unit = 1;
    s->openh264 = TRUE;
  } else if (!strcmp(name, "x264enc")) {
    s->cfr = TRUE;
    s->cfr_fps = 30;
  } else if (!g_object_class_find_property(G_OBJECT_GET_CLASS(s->encoder), "bitrate")) {
    s->prop = NULL;
  }
}

/* The encoder's share of a stream's allocation, as libwebrtc computes it with send-side BWE "with overhead"
 * (RtpVideoSender::CalculateOverheadRate): the allocation less the per-packet overhead of the packets that
 * carry it, packets = ceil(frame size / packet size) per frame at the stream's frame rate. So the encoder
 * target (stats' targetBitrate) stays below the allocation and the cap, and media plus headers fit in it.
 * Per packet: IPv4 20 + UDP 8 + SRTP tag 10 + RTP 12 + extensions 8 (transport-wide sequence number; a
 * simulcast layer also carries mid and rid: 8 more); packets of at most 1200 bytes. */
#define OVERHEAD_PACKET_BYTES 1200u
static guint media_target(const bwe_stream *s, guint allocation) {
  double fps = s->out_fps > 1.0 ? s->out_fps : 30.0;
  guint per_packet = 20 + 8 + 10 + 12 + 8 + (s->group ? 8 : 0);
  double frame_bytes = allocation / 8.0 / fps;
  double packets_per_frame = ceil(frame_bytes / OVERHEAD_PACKET_BYTES);
  double overhead = ceil(packets_per_frame * fps) * per_packet * 8.0;
  if (overhead > allocation / 2.0) overhead = allocation / 2.0;
  return (guint)(allocation - overhead);
}

/* (s->lock held) The stream's quality limitation now: "bandwidth" while the controller holds it below what
 * it asks for (smaller picture, lower frame rate, paused, or a target under 95 % of its cap). */
static gboolean stream_limited(const bwe_stream *s) {
  return s->scale_level > 0 || s->fps_level > 0 || s->suspended || s->target_bps < s->max_bps * 0.95;
}

/* (controller, every tick) Account the time since the last tick to the limitation of the stream now, and
 * count a change of the adapted picture size. */
static void account_quality_limitation(bwe_stream *s, gint64 now) {
  g_mutex_lock(&s->lock);
  if (s->ql_time) {
    double secs = (now - s->ql_time) / 1e6;
    if (stream_limited(s))
      s->ql_bandwidth_s += secs;
    else
      s->ql_none_s += secs;
  }
  if (s->ql_time && s->scale_level != s->ql_scale_level) s->ql_resolution_changes++;
  s->ql_scale_level = s->scale_level;
  s->ql_time = now;
  g_mutex_unlock(&s->lock);
}

static void set_bitrate(bwe_stream *s, guint bps) {
  guint64 value = s->unit == 1 ? bps : MAX((bps + 500) / 1000, 1u);
  set_uint_prop(G_OBJECT(s->encoder), s->prop, value);
  if (s->openh264) set_uint_prop(G_OBJECT(s->encoder), "max-bitrate", (guint64)bps * 3 / 2);
}

static void apply_bitrate(bwe_stream *s, guint bps) {
  if (!s->prop) return;
  if (s->rate_on_stream) {
    g_mutex_lock(&s->lock);
    s->pending_bps = bps;
    g_mutex_unlock(&s->lock);
    return;
  }
  set_bitrate(s, bps);
}

static void force_key_frame(GstElement *encoder) {
  GstPad *pad = gst_element_get_static_pad(encoder, "src");
  if (!pad) return;
  gst_pad_send_event(pad, gst_video_event_new_upstream_force_key_unit(GST_CLOCK_TIME_NONE, TRUE, 0));
  gst_object_unref(pad);
}

/* ---- registration (peer.c / simulcast.c, under the peer's operation lock) ----------- */

static void ensure_thread(sora_bwe *bwe);

static bwe_stream *add_stream(sora_bwe *bwe, GstElement *encoder, guint32 ssrc, guint configured_bps, guint max_bps,
                              GstElement *input, GstElement *scale_filter, gint group, gint layer) {
  bwe_stream *s = g_new0(bwe_stream, 1);
  s->refs = 1;
  g_mutex_init(&s->lock);
  s->encoder = gst_object_ref(encoder);
  s->scale_filter = scale_filter ? gst_object_ref(scale_filter) : NULL;
  s->ssrc = ssrc;
  s->max_bps = MAX(max_bps, 1000u);
  s->group = group;
  s->layer = layer;
  s->last_pts = GST_CLOCK_TIME_NONE;
  s->target_bps = s->max_bps;
  s->applied_bps = configured_bps; /* what the encoder was set up with; the first tick applies max_bps if less */
  encoder_kind(s);
  if (input) {
    GstPad *pad = gst_element_get_static_pad(input, "sink");
    s->probe_ids[0] = gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM,
                                        on_branch_input, stream_ref(s), stream_unref);
    s->probe_pads[0] = pad;
  }
  GstPad *pad = gst_element_get_static_pad(encoder, "sink");
  if (pad) {
    s->probe_ids[1] = gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM,
                                        on_encoder_input, stream_ref(s), stream_unref);
    s->probe_pads[1] = pad;
  }
  pad = gst_element_get_static_pad(encoder, "src");
  if (pad) {
    s->probe_ids[2] = gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER, on_encoder_output, stream_ref(s), stream_unref);
    s->probe_pads[2] = pad;
  }
  g_mutex_lock(&bwe->lock);
  g_ptr_array_add(bwe->streams, s);
  bwe->max_total += s->max_bps;
  g_mutex_unlock(&bwe->lock);
  ensure_thread(bwe);
  return s;
}

void sora_bwe_add_video(sora_bwe *bwe, GstElement *encoder, guint32 ssrc, guint bps, guint limit_bps,
                        GstElement *scaler, GstElement *scale_filter) {
  if (!bwe || !encoder) return;
  guint max_bps = limit_bps && limit_bps < bps ? limit_bps : bps;
  add_stream(bwe, encoder, ssrc, bps, max_bps, scaler, scale_filter, 0, 0);
  bwe_log(bwe, "video branch ssrc %u, up to %u bps%s", ssrc, max_bps, scale_filter ? ", adaptable" : "");
}

gint sora_bwe_new_group(sora_bwe *bwe) {
  if (!bwe) return 0;
  g_mutex_lock(&bwe->lock);
  gint group = ++bwe->next_group;
  g_mutex_unlock(&bwe->lock);
  return group;
}

void sora_bwe_add_layer(sora_bwe *bwe, gint group, gint layer, GstElement *encoder, guint32 ssrc, guint max_bps,
                        GstElement *input) {
  if (!bwe || !encoder) return;
  add_stream(bwe, encoder, ssrc, max_bps, max_bps, input, NULL, group, layer);
  bwe_log(bwe, "simulcast layer %d of group %d, ssrc %u, up to %u bps", layer, group, ssrc, max_bps);
}

gboolean sora_bwe_make_adapter(GString *missing, GstElement **scaler, GstElement **filter) {
  *scaler = gst_element_factory_make("videoscale", NULL);
  *filter = gst_element_factory_make("capsfilter", NULL);
  if (!*scaler || !*filter) {
    g_string_append_printf(missing, "%svideoscale", missing->len ? ", " : "");
    if (*scaler) gst_object_unref(*scaler);
    if (*filter) gst_object_unref(*filter);
    *scaler = *filter = NULL;
    return FALSE;
  }
  GstCaps *any = gst_caps_new_empty_simple("video/x-raw");
  g_object_set(*filter, "caps", any, NULL);
  gst_caps_unref(any);
  return TRUE;
}

/* ---- negotiation: the TWCC extension and feedback types the offer has --------------- */

void sora_bwe_add_twcc_extension(GstElement *payloader, gint id) {
  GstElement *ext = gst_element_factory_make("rtphdrexttwcc", NULL);
  if (!ext) return;
  gst_object_ref_sink(ext);
  gst_rtp_header_extension_set_id(GST_RTP_HEADER_EXTENSION(ext), (guint)id);
  g_signal_emit_by_name(payloader, "add-extension", ext);
  gst_object_unref(ext);
}

gint sora_bwe_prepare_send(GstElement *webrtc, int32_t mline, gint payload_type, GstCaps *rtp_caps,
                           GstElement *payloader, guint *limit_bps) {
  if (limit_bps) *limit_bps = 0;
  GstWebRTCSessionDescription *remote = NULL;
  g_object_get(webrtc, "remote-description", &remote, NULL);
  if (!remote) return 0;
  if (mline < 0 || (guint)mline >= gst_sdp_message_medias_len(remote->sdp)) {
    gst_webrtc_session_description_free(remote);
    return 0;
  }
  const GstSDPMedia *m = gst_sdp_message_get_media(remote->sdp, mline);
  gint twcc_id = 0;
  gboolean remb = FALSE, transport_cc = FALSE;
  char pt[16];
  g_snprintf(pt, sizeof pt, "%d", payload_type);
  for (guint i = 0; i < gst_sdp_media_attributes_len(m); i++) {
    const GstSDPAttribute *a = gst_sdp_media_get_attribute(m, i);
    if (!a->key || !a->value) continue;
    gchar **parts = g_strsplit_set(a->value, " \t", 3);
    if (g_strv_length(parts) >= 2) {
      if (!strcmp(a->key, "extmap") && !strcmp(parts[1], TWCC_URI)) twcc_id = atoi(parts[0]); /* "<id>[/dir]" */
      if (!strcmp(a->key, "rtcp-fb") && (!strcmp(parts[0], pt) || !strcmp(parts[0], "*"))) {
        if (!strcmp(parts[1], "goog-remb")) remb = TRUE;
        if (!strcmp(parts[1], "transport-cc")) transport_cc = TRUE;
      }
    }
    g_strfreev(parts);
  }
  for (guint i = 0; limit_bps && i < gst_sdp_media_bandwidths_len(m); i++) { /* b=AS (kbit/s) or b=TIAS (bit/s) */
    const GstSDPBandwidth *b = gst_sdp_media_get_bandwidth(m, i);
    guint64 bps = !g_strcmp0(b->bwtype, "AS") ? (guint64)b->bandwidth * 1000 : !g_strcmp0(b->bwtype, "TIAS") ? b->bandwidth : 0;
    if (bps > 0 && (!*limit_bps || bps < *limit_bps)) *limit_bps = (guint)MIN(bps, (guint64)G_MAXUINT);
  }
  gst_webrtc_session_description_free(remote);
  GstStructure *st = gst_caps_get_structure(rtp_caps, 0);
  if (remb) { /* the SDP writer knows nack / pli / fir / transport-cc only: an attribute field carries goog-remb */
    char line[32];
    g_snprintf(line, sizeof line, "%d goog-remb", payload_type);
    gst_structure_set(st, "a-rtcp-fb", G_TYPE_STRING, line, NULL);
  }
  if (twcc_id < 1 || twcc_id > 14 || !transport_cc) return 0;
  char field[32];
  g_snprintf(field, sizeof field, "extmap-%d", twcc_id);
  gst_structure_set(st, field, G_TYPE_STRING, TWCC_URI, NULL);
  if (payloader) sora_bwe_add_twcc_extension(payloader, twcc_id);
  return twcc_id;
}

/* ---- the controller --------------------------------------------------------------------- */

static double stream_fps(bwe_stream *s) { return s->in_fps > 1 ? s->in_fps : 30.0; }

/* Bits per second the encoded size and frame rate of `s` need at levels (size, fps). */
static double need_bps(bwe_stream *s, gint w, gint h, gint size_level, gint fps_level) {
  double pixels = (double)(w >> size_level) * (double)(h >> size_level);
  return pixels * (stream_fps(s) / (double)(1 << fps_level)) * BITS_PER_PIXEL;
}

static gboolean can_scale(bwe_stream *s, gint w, gint h) {
  return s->scale_filter && s->scale_level < MAX_LEVEL && (w >> (s->scale_level + 1)) >= MIN_WIDTH &&
         (h >> (s->scale_level + 1)) >= MIN_HEIGHT;
}

static gboolean can_slow(bwe_stream *s) {
  return s->fps_level < MAX_LEVEL && stream_fps(s) / (double)(1 << (s->fps_level + 1)) >= MIN_FPS;
}

/* Apply the size and frame-rate levels to the branch (the bwe thread; the probes read them under s->lock). */
static void set_levels(bwe_stream *s, gint size_level, gint fps_level) {
  g_mutex_lock(&s->lock);
  if (size_level != s->scale_level && s->scale_filter) {
    s->scale_level = size_level;
    GstCaps *caps = level_caps(s->src_w, s->src_h, size_level);
    g_object_set(s->scale_filter, "caps", caps, NULL);
    gst_caps_unref(caps);
  }
  s->fps_level = fps_level;
  s->min_interval = fps_level > 0 ? (GstClockTime)(GST_SECOND * (double)(1 << fps_level) / stream_fps(s)) : 0;
  s->last_pts = GST_CLOCK_TIME_NONE;
  g_mutex_unlock(&s->lock);
}

static void adapt_stream(sora_bwe *bwe, bwe_stream *s, gint preference, gint64 now) {
  gint size_level = s->scale_level, fps_level = s->fps_level;
  if (preference == SORA_DEGRADATION_DISABLED || s->group) {
    if (size_level || fps_level) set_levels(s, 0, 0);
    s->degrade_since = s->upgrade_since = 0;
    return;
  }
  gint w, h;
  g_mutex_lock(&s->lock);
  w = s->src_w;
  h = s->src_h;
  g_mutex_unlock(&s->lock);
  if (w <= 0 || h <= 0) return;
  double est = s->target_bps;
  double need = need_bps(s, w, h, size_level, fps_level);
  /* The step to undo: the other kind first when the preference changed meanwhile; BALANCED in reverse order. */
  gint up_size = size_level, up_fps = fps_level;
  gboolean undo_size;
  if (preference == SORA_DEGRADATION_MAINTAIN_FRAMERATE)
    undo_size = fps_level == 0;
  else if (preference == SORA_DEGRADATION_MAINTAIN_RESOLUTION)
    undo_size = size_level > 0;
  else
    undo_size = size_level > fps_level;
  if (undo_size && size_level > 0)
    up_size--;
  else if (fps_level > 0)
    up_fps--;
  else if (size_level > 0)
    up_size--;
  gboolean degraded = size_level > 0 || fps_level > 0;
  if (est < need) {
    s->upgrade_since = 0;
    if (!s->degrade_since) s->degrade_since = now;
    if (now - s->degrade_since < DEGRADE_US) return;
    s->degrade_since = 0;
    gboolean scale = FALSE, slow = FALSE;
    if (preference == SORA_DEGRADATION_MAINTAIN_FRAMERATE) scale = can_scale(s, w, h);
    else if (preference == SORA_DEGRADATION_MAINTAIN_RESOLUTION) slow = can_slow(s);
    else if (size_level <= fps_level && can_scale(s, w, h)) scale = TRUE;
    else if (can_slow(s)) slow = TRUE;
    else scale = can_scale(s, w, h);
    if (!scale && !slow) return;
    set_levels(s, size_level + (scale ? 1 : 0), fps_level + (slow ? 1 : 0));
    bwe_log(bwe, "ssrc %u: %.0f bps < %.0f needed: %s -> size level %d, fps level %d", s->ssrc, est, need,
            scale ? "smaller" : "slower", s->scale_level, s->fps_level);
  } else if (degraded && est > need_bps(s, w, h, up_size, up_fps) * UPGRADE_MARGIN) {
    s->degrade_since = 0;
    if (!s->upgrade_since) s->upgrade_since = now;
    if (now - s->upgrade_since < UPGRADE_US) return;
    s->upgrade_since = 0;
    set_levels(s, up_size, up_fps);
    bwe_log(bwe, "ssrc %u: %.0f bps is enough: back to size level %d, fps level %d", s->ssrc, est, s->scale_level,
            s->fps_level);
  } else {
    s->degrade_since = s->upgrade_since = 0;
  }
}

/* Read the newest TWCC statistics of the sessions (NULL if none is new). */
static GstStructure *fresh_twcc(sora_bwe *bwe) {
  gint notified = g_atomic_int_get(&bwe->twcc_notified);
  if (notified == bwe->twcc_seen) return NULL;
  bwe->twcc_seen = notified;
  for (guint id = 0; id < MAX_SESSIONS; id++) {
    GstElement *e = bwe->session_elems[id];
    if (!e || !g_object_class_find_property(G_OBJECT_GET_CLASS(e), "twcc-stats")) continue;
    GstStructure *st = NULL;
    g_object_get(e, "twcc-stats", &st, NULL);
    if (st && gst_structure_has_field(st, "packet-loss-pct")) return st;
    if (st) gst_structure_free(st);
  }
  return NULL;
}

static guint clamp_bps(double v, guint lo, guint hi) {
  if (!(v == v)) return hi;
  if (v < lo) return lo;
  if (v > hi) return hi;
  return (guint)v;
}

/* Share `estimate` among the branches: single branches in proportion to their requested rates, simulcast
 * layers of a group lowest first. Writes target_bps and the suspended flags. */
static void distribute(sora_bwe *bwe, guint estimate, guint max_total) {
  GHashTable *group_left = g_hash_table_new(NULL, NULL);
  GHashTable *group_max = g_hash_table_new(NULL, NULL);
  for (guint i = 0; i < bwe->streams->len; i++) {
    bwe_stream *s = g_ptr_array_index(bwe->streams, i);
    if (!s->group) {
      s->target_bps = max_total ? (guint)((double)estimate * s->max_bps / max_total) : s->max_bps;
      s->target_bps = MAX(MIN(s->target_bps, s->max_bps), MIN(MIN_BPS, s->max_bps));
    } else {
      guint cur = GPOINTER_TO_UINT(g_hash_table_lookup(group_max, GINT_TO_POINTER(s->group)));
      g_hash_table_insert(group_max, GINT_TO_POINTER(s->group), GUINT_TO_POINTER(cur + s->max_bps));
    }
  }
  GHashTableIter it;
  gpointer key, value;
  g_hash_table_iter_init(&it, group_max);
  while (g_hash_table_iter_next(&it, &key, &value)) {
    guint share = max_total ? (guint)((double)estimate * GPOINTER_TO_UINT(value) / max_total) : GPOINTER_TO_UINT(value);
    g_hash_table_insert(group_left, key, GUINT_TO_POINTER(share));
  }
  for (gint layer = 0; layer < 16; layer++) {
    for (guint i = 0; i < bwe->streams->len; i++) {
      bwe_stream *s = g_ptr_array_index(bwe->streams, i);
      if (!s->group || s->layer != layer) continue;
      guint left = GPOINTER_TO_UINT(g_hash_table_lookup(group_left, GINT_TO_POINTER(s->group)));
      guint give = MIN(left, s->max_bps);
      gboolean suspend = layer > 0 && give < MAX(LAYER_MIN_BPS, s->max_bps * 3 / 10);
      if (layer == 0) give = MAX(give, MIN(LAYER_MIN_BPS, s->max_bps));
      if (suspend) give = 0;
      s->target_bps = give;
      g_hash_table_insert(group_left, GINT_TO_POINTER(s->group), GUINT_TO_POINTER(left > give ? left - give : 0));
      g_mutex_lock(&s->lock);
      gboolean was = s->suspended;
      s->suspended = suspend;
      g_mutex_unlock(&s->lock);
      if (was && !suspend) force_key_frame(s->encoder);
      if (was != suspend) bwe_log(bwe, "simulcast layer %d (ssrc %u) %s", layer, s->ssrc, suspend ? "suspended" : "resumed");
    }
  }
  g_hash_table_destroy(group_left);
  g_hash_table_destroy(group_max);
}

static void tick(sora_bwe *bwe) {
  connect_sessions(bwe);
  gint64 now = g_get_monotonic_time();
  g_mutex_lock(&bwe->lock);
  gboolean send_remb = bwe->send_remb_bps > 0 && now - bwe->send_remb_last >= REMB_SEND_INTERVAL_US;
  g_mutex_unlock(&bwe->lock);
  if (send_remb) {
    refresh_remb_ssrcs(bwe);
    for (guint id = 0; id < MAX_SESSIONS; id++)
      if (bwe->sessions[id]) g_signal_emit_by_name(bwe->sessions[id], "send-rtcp", (guint64)(100 * GST_MSECOND));
    g_mutex_lock(&bwe->lock);
    bwe->send_remb_last = now;
    g_mutex_unlock(&bwe->lock);
  }
  GstStructure *twcc = fresh_twcc(bwe);
  g_mutex_lock(&bwe->lock);
  if (bwe->streams->len == 0) {
    g_mutex_unlock(&bwe->lock);
    if (twcc) gst_structure_free(twcc);
    return;
  }
  guint max_total = bwe->max_total, lo = MIN(MIN_BPS, max_total);
  if (bwe->loss_est > max_total) bwe->loss_est = max_total;
  if (bwe->delay_est > max_total) bwe->delay_est = max_total;
  /* loss: TWCC's when it reports, else the receiver reports' */
  double loss = -1;
  guint recv = 0; /* what the receiver got (TWCC), bit/s */
  if (twcc) {
    double pct = 0;
    if (gst_structure_get_double(twcc, "packet-loss-pct", &pct)) loss = pct / 100.0;
    gst_structure_get_uint(twcc, "bitrate-recv", &recv);
    bwe->have_twcc = TRUE;
  } else if (bwe->rr_fresh && !bwe->have_twcc) {
    loss = bwe->rr_loss;
  }
  bwe->rr_fresh = FALSE;
  if (loss >= 0) {
    /* increases by the time since the previous report (receiver reports come every few seconds) */
    double grow = pow(INCREASE_PER_S, bwe->loss_time ? MIN((now - bwe->loss_time) / 1e6, 5.0) : TICK_MS / 1000.0);
    bwe->loss_time = now;
    bwe->last_loss = loss;
    if (loss > 0.10) {
      /* Once per LOSS_HOLD_US: the reports that follow still count packets sent before the decrease. */
      if (now >= bwe->loss_hold_until) {
        /* ... and not below what gets through: the receiver's rate is the link's when the loss is congestion */
        double floor = MIN(0.85 * recv, bwe->loss_est);
        bwe->loss_est = MAX(MAX(bwe->loss_est * (1.0 - 0.5 * MIN(loss, 1.0)), floor), (double)lo);
        bwe->loss_hold_until = now + LOSS_HOLD_US;
      }
    } else if (loss < 0.02)
      bwe->loss_est = MIN(bwe->loss_est * grow, (double)max_total);
  }
  /* delay: the TWCC delay gradient */
  if (twcc) {
    double grow = pow(INCREASE_PER_S, bwe->twcc_time ? MIN((now - bwe->twcc_time) / 1e6, 5.0) : TICK_MS / 1000.0);
    bwe->twcc_time = now;
    gint64 dd = 0;
    gst_structure_get_int64(twcc, "avg-delta-of-delta", &dd);
    bwe->last_delay_ns = (double)dd;
    bwe->last_recv_bps = recv;
    if (dd > (gint64)OVERUSE_NS) {
      if (++bwe->overuse >= 2) {
        double target = recv > 0 ? 0.85 * recv : 0.85 * bwe->delay_est;
        bwe->delay_est = MAX(MAX(MIN(target, bwe->delay_est), bwe->delay_est * 0.5), (double)lo);
        bwe->overuse = 0;
        bwe->hold_until = now + G_TIME_SPAN_SECOND;
      }
    } else {
      bwe->overuse = 0;
      if (dd < (gint64)NORMAL_NS && now >= bwe->hold_until)
        bwe->delay_est = MIN(bwe->delay_est * grow, (double)max_total);
    }
    gst_structure_free(twcc);
  }
  double est = MIN(bwe->loss_est, bwe->delay_est);
  if (bwe->remb_bps && now - bwe->remb_time < REMB_TTL_US) est = MIN(est, (double)bwe->remb_bps);
  guint estimate = clamp_bps(est, lo, max_total);
  if (estimate != bwe->estimate)
    bwe_log(bwe, "estimate %u bps (loss %.0f, delay %.0f, remb %" G_GUINT64_FORMAT ", loss %.3f, dd %.0f ns)",
            estimate, bwe->loss_est, bwe->delay_est, bwe->remb_bps, bwe->last_loss, bwe->last_delay_ns);
  bwe->estimate = estimate;
  distribute(bwe, estimate, max_total);
  gint preference = bwe->preference;
  /* Snapshot the streams to apply outside the lock. */
  GPtrArray *streams = g_ptr_array_new_with_free_func(stream_unref);
  for (guint i = 0; i < bwe->streams->len; i++) g_ptr_array_add(streams, stream_ref(g_ptr_array_index(bwe->streams, i)));
  g_mutex_unlock(&bwe->lock);

  for (guint i = 0; i < streams->len; i++) {
    bwe_stream *s = g_ptr_array_index(streams, i);
    /* frame rates, once a second */
    g_mutex_lock(&s->lock);
    gint64 in = s->in_frames, out = s->out_frames;
    g_mutex_unlock(&s->lock);
    if (!s->fps_time) {
      s->fps_time = now;
      s->fps_in = in;
      s->fps_out = out;
    } else if (now - s->fps_time >= G_TIME_SPAN_SECOND) {
      double secs = (now - s->fps_time) / 1e6;
      s->in_fps = (in - s->fps_in) / secs;
      s->out_fps = (out - s->fps_out) / secs;
      s->fps_time = now;
      s->fps_in = in;
      s->fps_out = out;
      follow_frame_rate(s);
    }
    guint target = media_target(s, s->target_bps ? s->target_bps : MIN(LAYER_MIN_BPS, s->max_bps));
    guint applied = s->applied_bps;
    gboolean move = target != applied && (target >= s->max_bps || target <= MIN(MIN_BPS, s->max_bps) ||
                                          fabs((double)target - applied) > applied * 0.03);
    if (move) {
      apply_bitrate(s, target);
      s->applied_bps = target;
    }
    adapt_stream(bwe, s, preference, now);
    account_quality_limitation(s, now);
  }
  g_ptr_array_unref(streams);
}

static gpointer bwe_thread(gpointer data) {
  sora_bwe *bwe = data;
  g_mutex_lock(&bwe->lock);
  while (!bwe->stopping) {
    gint64 deadline = g_get_monotonic_time() + TICK_MS * G_TIME_SPAN_MILLISECOND;
    while (!bwe->stopping && g_cond_wait_until(&bwe->cond, &bwe->lock, deadline))
      ;
    if (bwe->stopping) break;
    g_mutex_unlock(&bwe->lock);
    tick(bwe);
    g_mutex_lock(&bwe->lock);
  }
  g_mutex_unlock(&bwe->lock);
  return NULL;
}

static void ensure_thread(sora_bwe *bwe) {
  g_mutex_lock(&bwe->lock);
  if (!bwe->thread && !bwe->stopping) bwe->thread = g_thread_new("sora-bwe", bwe_thread, bwe);
  g_mutex_unlock(&bwe->lock);
}

/* ---- settings and state ---------------------------------------------------------------- */

void sora_bwe_set_preference(sora_bwe *bwe, gint preference) {
  g_mutex_lock(&bwe->lock);
  bwe->preference = preference;
  g_mutex_unlock(&bwe->lock);
}

void sora_bwe_set_remb(sora_bwe *bwe, guint64 bps) {
  g_mutex_lock(&bwe->lock);
  bwe->send_remb_bps = bps;
  bwe->send_remb_last = 0;
  g_mutex_unlock(&bwe->lock);
  if (bps) ensure_thread(bwe);
}

static const char *preference_name(gint p) {
  switch (p) {
    case SORA_DEGRADATION_MAINTAIN_FRAMERATE: return "maintain-framerate";
    case SORA_DEGRADATION_MAINTAIN_RESOLUTION: return "maintain-resolution";
    case SORA_DEGRADATION_BALANCED: return "balanced";
    default: return "disabled";
  }
}

/* Add the controller's view to the engine's statistics: fields on each of our outbound-rtp entries and a
 * "sora-bwe" entry. */
/* (bwe->lock held) */
static GstStructure *extend_outbound(const GstStructure *entry, guint ssrc, gpointer data) {
  sora_bwe *bwe = data;
  bwe_stream *s = NULL;
  for (guint j = 0; j < bwe->streams->len && !s; j++) {
    bwe_stream *c = g_ptr_array_index(bwe->streams, j);
    if (c->ssrc == ssrc) s = c;
  }
  if (!s) return NULL;
  GstStructure *copy = gst_structure_copy(entry);
  g_mutex_lock(&s->lock);
  gint w = s->enc_w, h = s->enc_h, scale_level = s->scale_level, fps_level = s->fps_level;
  gint64 encoded = s->encoded, key_encoded = s->key_encoded;
  gboolean suspended = s->suspended;
  gboolean limited = stream_limited(s);
  double ql_none = s->ql_none_s, ql_bandwidth = s->ql_bandwidth_s;
  gint ql_changes = s->ql_resolution_changes;
  g_mutex_unlock(&s->lock);
  guint64 enc = s->prop ? get_uint_prop(G_OBJECT(s->encoder), s->prop) * s->unit : 0;
  gst_structure_set(copy, "sora-media-target-bitrate", G_TYPE_UINT, media_target(s, s->target_bps),
                    "sora-quality-limitation-none", G_TYPE_DOUBLE, ql_none, "sora-quality-limitation-bandwidth",
                    G_TYPE_DOUBLE, ql_bandwidth, "sora-quality-limitation-resolution-changes", G_TYPE_INT, ql_changes,
                    NULL);
  gst_structure_set(copy, "sora-target-bitrate", G_TYPE_UINT, s->target_bps, "sora-max-bitrate", G_TYPE_UINT,
                    s->max_bps, "sora-encoder-bitrate", G_TYPE_UINT64, enc, "sora-quality-limitation",
                    G_TYPE_STRING, limited ? "bandwidth" : "none", "sora-scale-level", G_TYPE_INT, scale_level,
                    "sora-fps-level", G_TYPE_INT, fps_level, "sora-suspended", G_TYPE_BOOLEAN, suspended,
                    "sora-frames-encoded", G_TYPE_INT64, encoded, "sora-key-frames-encoded", G_TYPE_INT64,
                    key_encoded, NULL);
  if (w > 0 && h > 0) gst_structure_set(copy, "sora-frame-width", G_TYPE_INT, w, "sora-frame-height", G_TYPE_INT, h, NULL);
  if (s->fps_time && s->out_fps > 0) gst_structure_set(copy, "sora-frames-per-second", G_TYPE_DOUBLE, s->out_fps, NULL);
  return copy;
}

void sora_bwe_annotate_stats(sora_bwe *bwe, GstStructure *all) {
  if (!bwe) return;
  g_mutex_lock(&bwe->lock);
  sora_stats_extend_rtp(all, "outbound-rtp", extend_outbound, bwe);
  /* The streams the engine's get-stats leaves out (1.26 lists one outbound-rtp per transceiver: the other
   * simulcast layers) are counted in "sora-rtp-senders" (stats.c): they get the controller's fields too. */
  const GValue *senders_value = gst_structure_get_value(all, "sora-rtp-senders");
  if (senders_value && GST_VALUE_HOLDS_STRUCTURE(senders_value)) {
    GstStructure *senders = gst_structure_copy(gst_value_get_structure(senders_value));
    for (guint j = 0; j < bwe->streams->len; j++) {
      bwe_stream *c = g_ptr_array_index(bwe->streams, j);
      char name[32];
      g_snprintf(name, sizeof name, "ssrc-%u", c->ssrc);
      const GValue *v = gst_structure_get_value(senders, name);
      GstStructure *extended = v && GST_VALUE_HOLDS_STRUCTURE(v) ? extend_outbound(gst_value_get_structure(v), c->ssrc, bwe) : NULL;
      if (extended) {
        gst_structure_set(senders, name, GST_TYPE_STRUCTURE, extended, NULL);
        gst_structure_free(extended);
      }
    }
    gst_structure_set(all, "sora-rtp-senders", GST_TYPE_STRUCTURE, senders, NULL);
    gst_structure_free(senders);
  }
  GstStructure *st = gst_structure_new(
      "sora-bwe", "estimate", G_TYPE_UINT, bwe->streams->len ? bwe->estimate : 0, "max-bitrate", G_TYPE_UINT,
      bwe->max_total, "loss-based", G_TYPE_DOUBLE, MIN(bwe->loss_est, (double)bwe->max_total), "delay-based",
      G_TYPE_DOUBLE, MIN(bwe->delay_est, (double)bwe->max_total), "remb", G_TYPE_UINT64, bwe->remb_bps,
      "remb-count", G_TYPE_INT, bwe->remb_count, "remb-sent", G_TYPE_INT, bwe->remb_sent, "loss", G_TYPE_DOUBLE,
      bwe->last_loss, "delay-gradient-ns", G_TYPE_DOUBLE, bwe->last_delay_ns, "received-bitrate", G_TYPE_UINT,
      bwe->last_recv_bps, "twcc", G_TYPE_BOOLEAN, bwe->have_twcc, "receiver-reports", G_TYPE_INT, bwe->rr_count,
      "degradation-preference", G_TYPE_STRING, preference_name(bwe->preference), NULL);
  g_mutex_unlock(&bwe->lock);
  gst_structure_set(all, "sora-bwe", GST_TYPE_STRUCTURE, st, NULL);
  gst_structure_free(st);
}

SORA_C_API int sora_peer_set_degradation_preference(sora_peer *peer, int32_t preference) {
  sora_clear_error();
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  if (preference < SORA_DEGRADATION_DISABLED || preference > SORA_DEGRADATION_BALANCED)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "degradation preference must be 0..3, got %d", preference);
  int rc = sora_peer_enter(peer);
  if (rc) return rc;
  sora_bwe_set_preference(sora_peer_bwe(peer), preference);
  sora_peer_leave(peer);
  return SORA_OK;
}

SORA_C_API int sora_peer_set_remb(sora_peer *peer, int64_t bitrate_bps) {
  sora_clear_error();
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  if (bitrate_bps < 0 || bitrate_bps > G_MAXUINT32)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "REMB bitrate must be 0..4294967295 bps, got %" G_GINT64_FORMAT,
                     bitrate_bps);
  int rc = sora_peer_enter(peer);
  if (rc) return rc;
  sora_bwe_set_remb(sora_peer_bwe(peer), (guint64)bitrate_bps);
  sora_peer_leave(peer);
  return SORA_OK;
}

/* Stop the controller thread and disconnect from the engine (before the pipeline stops). */
void sora_bwe_stop(sora_bwe *bwe) {
  if (!bwe) return;
  g_mutex_lock(&bwe->lock);
  bwe->stopping = TRUE;
  g_cond_broadcast(&bwe->cond);
  GThread *thread = bwe->thread;
  bwe->thread = NULL;
  bwe->send_remb_bps = 0;
  g_mutex_unlock(&bwe->lock);
  if (thread) g_thread_join(thread);
  for (guint id = 0; id < MAX_SESSIONS; id++) {
    if (bwe->sessions[id]) g_signal_handlers_disconnect_by_data(bwe->sessions[id], bwe);
    if (bwe->session_elems[id]) g_signal_handlers_disconnect_by_data(bwe->session_elems[id], bwe);
  }
}

/* Release everything (after the pipeline stopped: no handler runs any more). */
void sora_bwe_free(sora_bwe *bwe) {
  if (!bwe) return;
  sora_bwe_stop(bwe);
  for (guint id = 0; id < MAX_SESSIONS; id++) {
    if (bwe->sessions[id]) g_object_unref(bwe->sessions[id]);
    if (bwe->session_elems[id]) gst_object_unref(bwe->session_elems[id]);
  }
  if (bwe->rtpbin) gst_object_unref(bwe->rtpbin);
  for (guint i = 0; i < bwe->streams->len; i++) {
    bwe_stream *s = g_ptr_array_index(bwe->streams, i);
    for (guint j = 0; j < G_N_ELEMENTS(s->probe_pads); j++) {
      GstPad *pad = s->probe_pads[j];
      s->probe_pads[j] = NULL;
      if (!pad) continue;
      if (s->probe_ids[j]) gst_pad_remove_probe(pad, s->probe_ids[j]); /* drops the probe's stream reference */
      gst_object_unref(pad);
    }
  }
  g_ptr_array_unref(bwe->streams);
  g_mutex_clear(&bwe->lock);
  g_cond_clear(&bwe->cond);
  g_free(bwe);
}
