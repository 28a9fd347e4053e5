/* The RTP stream a destination m-line sends when forwards feed it one after the other (an SFU switching a
 * receiver between simulcast layers of one sender).
 *
 * The first forward's packets go out unchanged (its SSRC is the stream's). When a later forward takes over the
 * same m-line, its packets are rewritten onto the stream: same SSRC, sequence numbers and RTP timestamps
 * continuing from the last packet sent, so the receiver sees one stream whose picture changes size. Until that
 * forward's first key frame starts, its packets are dropped (a decoder cannot use delta frames of another
 * encoder), and the key frame is asked for again every KEY_RETRY_US meanwhile. Header extensions are removed:
 * their ids are the sender's negotiation, not the receiver's.
 *
 * Everything here runs on streaming threads: short critical sections, no blocking, no callbacks. */
#include <string.h>

#include "internal.h"

#define KEY_RETRY_US (300 * G_TIME_SPAN_MILLISECOND)

typedef enum { CODEC_OTHER, CODEC_VP8, CODEC_VP9, CODEC_H264, CODEC_H265, CODEC_AV1 } fwd_codec;

struct sora_fwd_out {
  gint refs;
  GMutex lock;
  guint32 ssrc;      /* on the wire; 0 until known (from the caps or the first packet) */
  gint clock_rate;
  gpointer owner;    /* the forward feeding it now; NULL between forwards */
  GstElement *tee;   /* the owner's source tee (owned reference): receivers' key-frame requests go there */
  fwd_codec codec;   /* of the owner's packets */
  gboolean mapped;   /* the owner's first packet went out: deltas below are set */
  guint16 seq_delta;
  guint32 ts_delta;
  gboolean started;  /* a packet went out */
  guint16 last_seq;
  guint32 last_ts;
  gint64 last_time;  /* monotonic us of the last packet out */
  gint64 key_asked;  /* monotonic us of the last key-frame request while waiting */
};

sora_fwd_out *sora_fwd_out_new(guint32 ssrc, gint clock_rate) {
  sora_fwd_out *out = g_new0(sora_fwd_out, 1);
  out->refs = 1;
  g_mutex_init(&out->lock);
  out->ssrc = ssrc;
  out->clock_rate = clock_rate > 0 ? clock_rate : 90000;
  return out;
}

sora_fwd_out *sora_fwd_out_ref(sora_fwd_out *out) {
  g_atomic_int_inc(&out->refs);
  return out;
}

void sora_fwd_out_unref(gpointer data) {
  sora_fwd_out *out = data;
  if (!out || !g_atomic_int_dec_and_test(&out->refs)) return;
  if (out->tee) gst_object_unref(out->tee);
  g_mutex_clear(&out->lock);
  g_free(out);
}

static fwd_codec codec_of(const char *encoding) {
  static const struct {
    const char *name;
    fwd_codec codec;
  } map[] = {{"VP8", CODEC_VP8}, {"VP9", CODEC_VP9}, {"H264", CODEC_H264}, {"H265", CODEC_H265}, {"AV1", CODEC_AV1}};
  for (guint i = 0; encoding && i < G_N_ELEMENTS(map); i++)
    if (g_ascii_strcasecmp(encoding, map[i].name) == 0) return map[i].codec;
  return CODEC_OTHER;
}

void sora_fwd_out_claim(sora_fwd_out *out, gpointer owner, GstElement *tee, const char *encoding) {
  g_mutex_lock(&out->lock);
  out->owner = owner;
  if (out->tee) gst_object_unref(out->tee);
  out->tee = tee ? gst_object_ref(tee) : NULL;
  out->codec = codec_of(encoding);
  out->mapped = FALSE;
  out->key_asked = g_get_monotonic_time();
  g_mutex_unlock(&out->lock);
}

void sora_fwd_out_release(sora_fwd_out *out, gpointer owner) {
  GstElement *tee = NULL;
  g_mutex_lock(&out->lock);
  if (out->owner == owner) {
    out->owner = NULL;
    tee = out->tee;
    out->tee = NULL;
  }
  g_mutex_unlock(&out->lock);
  if (tee) gst_object_unref(tee);
}

gboolean sora_fwd_out_is_free(sora_fwd_out *out) {
  g_mutex_lock(&out->lock);
  gboolean free_ = out->owner == NULL;
  g_mutex_unlock(&out->lock);
  return free_;
}

guint32 sora_fwd_out_ssrc(sora_fwd_out *out) {
  g_mutex_lock(&out->lock);
  guint32 ssrc = out->ssrc;
  g_mutex_unlock(&out->lock);
  return ssrc;
}

GstElement *sora_fwd_out_key_tee(sora_fwd_out *out) {
  g_mutex_lock(&out->lock);
  GstElement *tee = out->tee ? gst_object_ref(out->tee) : NULL;
  g_mutex_unlock(&out->lock);
  return tee;
}

/* ---- does this packet start a key frame? ------------------------------------- */

static gboolean vp8_key_start(const guint8 *p, guint n) {
  if (n < 1 || !(p[0] & 0x10) || (p[0] & 0x07) != 0) return FALSE; /* S=1, partition 0 */
  guint off = 1;
  if (p[0] & 0x80) { /* X: extension byte */
    if (n < 2) return FALSE;
    guint8 x = p[1];
    off = 2;
    if (x & 0x80) { /* I: picture id, 7 or 15 bits */
      if (n <= off) return FALSE;
      off += (p[off] & 0x80) ? 2 : 1;
    }
    if (x & 0x40) off += 1;        /* L: TL0PICIDX */
    if (x & 0x30) off += 1;        /* T / K: TID, KEYIDX */
  }
  return n > off && (p[off] & 0x01) == 0; /* VP8 frame tag: P bit 0 = key frame */
}

static gboolean vp9_key_start(const guint8 *p, guint n) {
  return n >= 1 && (p[0] & 0x08) && !(p[0] & 0x40); /* B (start of frame) and not P (inter-picture predicted) */
}

static gboolean h264_key_nal(guint type) { return type == 5 || type == 7; } /* IDR slice or SPS */

static gboolean h264_key_start(const guint8 *p, guint n) {
  if (n < 1) return FALSE;
  guint type = p[0] & 0x1f;
  if (type >= 1 && type <= 23) return h264_key_nal(type);
  if (type == 24) { /* STAP-A */
    for (guint off = 1; off + 2 < n;) {
      guint size = ((guint)p[off] << 8) | p[off + 1];
      off += 2;
      if (off < n && h264_key_nal(p[off] & 0x1f)) return TRUE;
      off += size;
    }
    return FALSE;
  }
  if (type == 28) return n >= 2 && (p[1] & 0x80) && h264_key_nal(p[1] & 0x1f); /* FU-A start */
  return FALSE;
}

static gboolean h265_key_nal(guint type) { return (type >= 16 && type <= 21) || (type >= 32 && type <= 34); }

static gboolean h265_key_start(const guint8 *p, guint n) {
  if (n < 2) return FALSE;
  guint type = (p[0] >> 1) & 0x3f;
  if (type == 48) { /* aggregation packet */
    for (guint off = 2; off + 2 < n;) {
      guint size = ((guint)p[off] << 8) | p[off + 1];
      off += 2;
      if (off < n && h265_key_nal((p[off] >> 1) & 0x3f)) return TRUE;
      off += size;
    }
    return FALSE;
  }
  if (type == 49) return n >= 3 && (p[2] & 0x80) && h265_key_nal(p[2] & 0x3f); /* FU start */
  return h265_key_nal(type);
}

static gboolean av1_key_start(const guint8 *p, guint n) {
  return n >= 1 && !(p[0] & 0x80) && (p[0] & 0x08); /* not a continuation, N: new coded video sequence */
}

static gboolean key_start(fwd_codec codec, const guint8 *p, guint n) {
  switch (codec) {
  case CODEC_VP8: return vp8_key_start(p, n);
  case CODEC_VP9: return vp9_key_start(p, n);
  case CODEC_H264: return h264_key_start(p, n);
  case CODEC_H265: return h265_key_start(p, n);
  case CODEC_AV1: return av1_key_start(p, n);
  default: return TRUE; /* unknown codec: no waiting */
  }
}

gboolean sora_fwd_out_process(sora_fwd_out *out, gpointer owner, GstBuffer **bufp, gint payload_type,
                              GstElement **key_tee) {
  *key_tee = NULL;
  GstRTPBuffer rtp = GST_RTP_BUFFER_INIT;
  if (!gst_rtp_buffer_map(*bufp, GST_MAP_READ, &rtp)) return FALSE;
  guint32 ssrc = gst_rtp_buffer_get_ssrc(&rtp);
  guint16 seq = gst_rtp_buffer_get_seq(&rtp);
  guint32 ts = gst_rtp_buffer_get_timestamp(&rtp);
  guint8 pt = gst_rtp_buffer_get_payload_type(&rtp);
  gboolean has_ext = gst_rtp_buffer_get_extension(&rtp);
  gint64 now = g_get_monotonic_time();
  gboolean pass = TRUE;

  g_mutex_lock(&out->lock);
  if (out->owner != owner) {
    pass = FALSE; /* a forward that lost the m-line */
  } else if (!out->mapped) {
    if (!out->ssrc) out->ssrc = ssrc;
    if (!out->started) {
      out->seq_delta = 0;
      out->ts_delta = 0;
      out->mapped = TRUE;
    } else if (!key_start(out->codec, gst_rtp_buffer_get_payload(&rtp), gst_rtp_buffer_get_payload_len(&rtp))) {
      pass = FALSE;
      if (now - out->key_asked >= KEY_RETRY_US && out->tee) {
        out->key_asked = now;
        *key_tee = gst_object_ref(out->tee);
      }
    } else {
      gint64 ticks = (now - out->last_time) * out->clock_rate / G_USEC_PER_SEC;
      if (ticks < 1) ticks = 1;
      out->seq_delta = (guint16)(out->last_seq + 1 - seq);
      out->ts_delta = (guint32)(out->last_ts + (guint32)ticks - ts);
      out->mapped = TRUE;
    }
  }
  guint32 new_ssrc = ssrc;
  guint16 new_seq = seq;
  guint32 new_ts = ts;
  if (pass) {
    new_ssrc = out->ssrc;
    new_seq = (guint16)(seq + out->seq_delta);
    new_ts = ts + out->ts_delta;
    if (!out->started || (gint16)(new_seq - out->last_seq) > 0) {
      out->last_seq = new_seq;
      out->last_ts = new_ts;
      out->last_time = now;
    }
    out->started = TRUE;
  }
  g_mutex_unlock(&out->lock);
  gst_rtp_buffer_unmap(&rtp);
  if (!pass) return FALSE;

  gboolean new_pt = payload_type >= 0 && payload_type != pt;
  if (new_ssrc != ssrc || new_seq != seq || new_ts != ts || new_pt || has_ext) {
    *bufp = gst_buffer_make_writable(*bufp);
    GstRTPBuffer w = GST_RTP_BUFFER_INIT;
    if (gst_rtp_buffer_map(*bufp, GST_MAP_READWRITE, &w)) {
      gst_rtp_buffer_set_ssrc(&w, new_ssrc);
      gst_rtp_buffer_set_seq(&w, new_seq);
      gst_rtp_buffer_set_timestamp(&w, new_ts);
      if (new_pt) gst_rtp_buffer_set_payload_type(&w, (guint8)payload_type);
      /* The sender's extension ids (mid, rid, ...) mean nothing, or something else, to the receiver. */
      if (has_ext) gst_rtp_buffer_remove_extension_data(&w);
      gst_rtp_buffer_unmap(&w);
    }
  }
  return TRUE;
}
