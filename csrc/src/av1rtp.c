/* AV1 over RTP: a payloader and a depayloader that the shim registers itself.
 *
 * Debian 12's GStreamer 1.22 has av1enc / av1dec (libaom) but no AV1 RTP elements (those live in
 * gst-plugins-rs, which bookworm does not package). These two are written from the AOMedia
 * "RTP Payload Format For AV1" specification (v1.0.0) and the AV1 bitstream specification (OBU
 * syntax, section 5.3; leb128, section 4.10.5):
 *
 *   sorartpav1pay:   video/x-av1 (obu-stream, one temporal unit per buffer, as av1enc outputs)
 *                    -> application/x-rtp, encoding-name=AV1, clock-rate=90000
 *   sorartpav1depay: the reverse; one temporal unit per output buffer, pushed on the marker bit.
 *
 * RTP payload = aggregation header + OBU elements:
 *
 *    0 1 2 3 4 5 6 7
 *   +-+-+-+-+-+-+-+-+
 *   |Z|Y| W |N|-|-|-|   Z: the first element continues an OBU fragment of the previous packet
 *   +-+-+-+-+-+-+-+-+   Y: the last element is an OBU fragment that continues in the next packet
 *                       W: number of elements (1..3; the last one has no length field), or 0: every
 *                          element has a leb128 length field
 *                       N: first packet of a coded video sequence
 *
 * An OBU element is the OBU with obu_has_size_field = 0 (the element length gives the size).
 * Temporal delimiters, tile lists and padding are not sent. The receiver rebuilds a low-overhead
 * bitstream: a temporal delimiter, then each OBU with obu_has_size_field = 1 and a leb128 obu_size.
 * After a loss it drops everything up to the start of the next coded video sequence (N = 1, or a
 * sequence header) and asks upstream for a key frame (GstForceKeyUnit, which RTCP turns into PLI).
 *
 * The payloader also works around 1.22's av1enc ignoring key-frame requests (see av1enc_key_requests); the engine
 * itself encodes with the shim's soraav1enc (aomenc.c), which honours them, and decodes with soradav1dec.
 */
#include <string.h>

#include <gst/rtp/gstrtpbasedepayload.h>
#include <gst/rtp/gstrtpbasepayload.h>

#include "internal.h"

GST_DEBUG_CATEGORY_STATIC(av1rtp_debug);
#define GST_CAT_DEFAULT av1rtp_debug

/* ---- AV1 bitstream helpers ------------------------------------------------------ */

enum {
  OBU_SEQUENCE_HEADER = 1,
  OBU_TEMPORAL_DELIMITER = 2,
  OBU_FRAME_HEADER = 3,
  OBU_TILE_GROUP = 4,
  OBU_METADATA = 5,
  OBU_FRAME = 6,
  OBU_REDUNDANT_FRAME_HEADER = 7,
  OBU_TILE_LIST = 8,
  OBU_PADDING = 15,
};

#define AGG_Z 0x80u
#define AGG_Y 0x40u
#define AGG_W_SHIFT 4
#define AGG_N 0x08u
#define OBU_HAS_SIZE 0x02u
#define OBU_HAS_EXTENSION 0x04u

/* leb128: 7 bits per byte, least significant group first, at most 8 bytes, value below 2^32. */
static gboolean leb128_read(const guint8 *p, gsize avail, guint32 *value, gsize *used) {
  guint64 v = 0;
  for (gsize i = 0; i < 8 && i < avail; i++) {
    v |= (guint64)(p[i] & 0x7f) << (7 * i);
    if (!(p[i] & 0x80)) {
      if (v > G_MAXUINT32) return FALSE;
      *value = (guint32)v;
      *used = i + 1;
      return TRUE;
    }
  }
  return FALSE;
}

static gsize leb128_size(gsize v) {
  gsize n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static gsize leb128_write(guint8 *out, gsize v) {
  gsize n = 0;
  do {
    guint8 b = v & 0x7f;
    v >>= 7;
    if (v) b |= 0x80;
    out[n++] = b;
  } while (v);
  return n;
}

typedef struct {
  guint8 type;
  guint8 header[2]; /* obu_header (+ obu_extension_header), obu_has_size_field cleared */
  gsize header_len; /* 1 or 2 */
  const guint8 *payload;
  gsize payload_len;
} av1_obu;

/* One OBU at `data`. An OBU without obu_size runs to the end of `data`. */
static gboolean obu_parse(const guint8 *data, gsize len, av1_obu *obu, gsize *consumed) {
  if (len < 1 || (data[0] & 0x80)) return FALSE; /* obu_forbidden_bit */
  gsize pos = (data[0] & OBU_HAS_EXTENSION) ? 2 : 1;
  if (len < pos) return FALSE;
  obu->type = (data[0] >> 3) & 0x0f;
  obu->header[0] = data[0] & ~OBU_HAS_SIZE;
  obu->header[1] = pos == 2 ? data[1] : 0;
  obu->header_len = pos;
  if (data[0] & OBU_HAS_SIZE) {
    guint32 size;
    gsize used;
    if (!leb128_read(data + pos, len - pos, &size, &used)) return FALSE;
    pos += used;
    if (size > len - pos) return FALSE;
    obu->payload = data + pos;
    obu->payload_len = size;
    *consumed = pos + size;
  } else {
    obu->payload = data + pos;
    obu->payload_len = len - pos;
    *consumed = len;
  }
  return TRUE;
}

/* sequence_header_obu(): seq_profile f(3), still_picture f(1), reduced_still_picture_header f(1). */
static gboolean seq_reduced_still_picture(const av1_obu *o) {
  return o->payload_len > 0 && ((o->payload[0] >> 3) & 1);
}

/* uncompressed_header(): with a reduced still picture header every frame is a key frame; otherwise
 * show_existing_frame f(1) then frame_type f(2), KEY_FRAME = 0. A shown existing frame is no new key frame. */
static gboolean frame_is_key(const av1_obu *o, gboolean reduced_still) {
  if (reduced_still) return TRUE;
  if (o->payload_len < 1 || (o->payload[0] & 0x80)) return FALSE;
  return ((o->payload[0] >> 5) & 3) == 0;
}

/* ---- payloader ------------------------------------------------------------------ */

typedef struct {
  GstRTPBasePayload parent;
  gboolean reduced_still;
} SoraRtpAv1Pay;

typedef struct {
  GstRTPBasePayloadClass parent_class;
} SoraRtpAv1PayClass;

GType sora_rtp_av1_pay_get_type(void);
G_DEFINE_TYPE(SoraRtpAv1Pay, sora_rtp_av1_pay, GST_TYPE_RTP_BASE_PAYLOAD)

static GstStaticPadTemplate pay_sink_template =
    GST_STATIC_PAD_TEMPLATE("sink", GST_PAD_SINK, GST_PAD_ALWAYS,
                            GST_STATIC_CAPS("video/x-av1, stream-format = (string) obu-stream, "
                                            "alignment = (string) tu"));

static GstStaticPadTemplate pay_src_template =
    GST_STATIC_PAD_TEMPLATE("src", GST_PAD_SRC, GST_PAD_ALWAYS,
                            GST_STATIC_CAPS("application/x-rtp, media = (string) video, "
                                            "clock-rate = (int) 90000, encoding-name = (string) AV1"));

/* A slice of one OBU element (header bytes + payload) placed in the packet being built. */
typedef struct {
  guint obu;
  gsize offset, len;
} av1_piece;

#define MAX_PIECES 64
#define MIN_FRAGMENT 8 /* don't start an OBU with a smaller fragment at the end of a packet */

typedef struct {
  GstRTPBasePayload *base;
  GstBuffer *in;
  GstBufferList *list;
  const av1_obu *obus;
  av1_piece pieces[MAX_PIECES];
  guint n;
  gboolean z;           /* the first piece continues the previous packet's last one */
  gboolean n_bit;       /* set on the first packet */
  gint ids;             /* temporal_id/spatial_id of the extension headers in this packet, -1 none */
} av1_packer;

static gsize element_len(const av1_obu *o) { return o->header_len + o->payload_len; }

static void element_copy(const av1_obu *o, gsize offset, gsize len, guint8 *out) {
  while (len > 0 && offset < o->header_len) {
    *out++ = o->header[offset++];
    len--;
  }
  if (len) memcpy(out, o->payload + (offset - o->header_len), len);
}

static gboolean packer_flush(av1_packer *pk, gboolean y, gboolean marker) {
  guint n = pk->n, w = n <= 3 ? n : 0;
  gsize size = 1;
  for (guint i = 0; i < n; i++)
    size += pk->pieces[i].len + ((w == 0 || i + 1 < n) ? leb128_size(pk->pieces[i].len) : 0);
  GstBuffer *out = gst_rtp_base_payload_allocate_output_buffer(pk->base, (guint)size, 0, 0);
  GstRTPBuffer rtp = GST_RTP_BUFFER_INIT;
  if (!out || !gst_rtp_buffer_map(out, GST_MAP_WRITE, &rtp)) {
    if (out) gst_buffer_unref(out);
    return FALSE;
  }
  guint8 *p = gst_rtp_buffer_get_payload(&rtp);
  *p++ = (guint8)((pk->z ? AGG_Z : 0) | (y ? AGG_Y : 0) | (w << AGG_W_SHIFT) | (pk->n_bit ? AGG_N : 0));
  for (guint i = 0; i < n; i++) {
    const av1_piece *piece = &pk->pieces[i];
    if (w == 0 || i + 1 < n) p += leb128_write(p, piece->len);
    element_copy(&pk->obus[piece->obu], piece->offset, piece->len, p);
    p += piece->len;
  }
  gst_rtp_buffer_set_marker(&rtp, marker);
  gst_rtp_buffer_unmap(&rtp);
  GST_BUFFER_PTS(out) = GST_BUFFER_PTS(pk->in);
  GST_BUFFER_DTS(out) = GST_BUFFER_DTS(pk->in);
  gst_buffer_list_add(pk->list, out);
  pk->n = 0;
  pk->z = y;
  pk->n_bit = FALSE;
  pk->ids = -1;
  return TRUE;
}

/* Split one temporal unit's OBUs (already filtered) into packets of at most `max` payload bytes. */
static gboolean packetize(av1_packer *pk, guint count, gsize max) {
  for (guint i = 0; i < count; i++) {
    const av1_obu *o = &pk->obus[i];
    /* OBUs of one packet carry the same temporal and spatial ids. */
    gint ids = o->header_len == 2 ? (o->header[1] >> 3) : -1;
    if (ids >= 0 && pk->ids >= 0 && ids != pk->ids && pk->n > 0 && !packer_flush(pk, FALSE, FALSE)) return FALSE;
    gsize total = element_len(o), offset = 0;
    while (offset < total) {
      gsize remaining = total - offset;
      /* Adding an element gives every earlier element a length field. */
      gsize used = 1;
      for (guint j = 0; j < pk->n; j++) used += leb128_size(pk->pieces[j].len) + pk->pieces[j].len;
      gsize avail = max > used ? max - used : 0, take = MIN(remaining, avail);
      if (pk->n + 1 > 3) /* W = 0: this element has a length field too */
        while (take > 0 && take + leb128_size(take) > avail) take--;
      if (pk->n > 0 && (pk->n == MAX_PIECES || take == 0 || (take < remaining && take < MIN_FRAGMENT))) {
        if (!packer_flush(pk, FALSE, FALSE)) return FALSE;
        continue;
      }
      if (take == 0) return FALSE; /* cannot happen with max >= 2 */
      pk->pieces[pk->n++] = (av1_piece){i, offset, take};
      if (ids >= 0) pk->ids = ids;
      offset += take;
      if (offset < total && !packer_flush(pk, TRUE, FALSE)) return FALSE;
    }
  }
  return pk->n == 0 || packer_flush(pk, FALSE, TRUE);
}

static GstFlowReturn pay_handle_buffer(GstRTPBasePayload *base, GstBuffer *buffer) {
  SoraRtpAv1Pay *self = (SoraRtpAv1Pay *)base;
  GstMapInfo map;
  if (!gst_buffer_map(buffer, &map, GST_MAP_READ)) {
    gst_buffer_unref(buffer);
    GST_ELEMENT_ERROR(self, RESOURCE, READ, (NULL), ("cannot map the input buffer"));
    return GST_FLOW_ERROR;
  }
  GArray *obus = g_array_new(FALSE, FALSE, sizeof(av1_obu));
  gboolean has_sequence_header = FALSE, seen_frame = FALSE, key = FALSE;
  gsize pos = 0;
  while (pos < map.size) {
    av1_obu o;
    gsize consumed;
    if (!obu_parse(map.data + pos, map.size - pos, &o, &consumed)) {
      GST_WARNING_OBJECT(self, "malformed OBU at byte %" G_GSIZE_FORMAT " of a %" G_GSIZE_FORMAT "-byte temporal unit",
                         pos, map.size);
      break;
    }
    pos += consumed;
    switch (o.type) {
      case OBU_TEMPORAL_DELIMITER:
      case OBU_TILE_LIST:
      case OBU_PADDING:
        continue; /* not sent (RTP payload format, section 5) */
      case OBU_SEQUENCE_HEADER:
        has_sequence_header = TRUE;
        self->reduced_still = seq_reduced_still_picture(&o);
        break;
      case OBU_FRAME:
      case OBU_FRAME_HEADER:
        if (!seen_frame) key = frame_is_key(&o, self->reduced_still);
        seen_frame = TRUE;
        break;
      default:
        break;
    }
    g_array_append_val(obus, o);
  }
  GstFlowReturn ret = GST_FLOW_OK;
  if (obus->len > 0) {
    gsize max = gst_rtp_buffer_calc_payload_len(GST_RTP_BASE_PAYLOAD_MTU(base), 0, 0);
    av1_packer pk = {.base = base, .in = buffer, .list = gst_buffer_list_new(), .obus = (const av1_obu *)obus->data,
                     .n_bit = has_sequence_header && key, .ids = -1};
    if (max < 2 || !packetize(&pk, obus->len, max)) {
      gst_buffer_list_unref(pk.list);
      GST_ELEMENT_ERROR(self, STREAM, ENCODE, (NULL), ("cannot packetize a temporal unit (mtu %u)",
                                                       GST_RTP_BASE_PAYLOAD_MTU(base)));
      ret = GST_FLOW_ERROR;
    } else {
      ret = gst_rtp_base_payload_push_list(base, pk.list);
    }
  }
  g_array_free(obus, TRUE);
  gst_buffer_unmap(buffer, &map);
  gst_buffer_unref(buffer);
  return ret;
}

/* GStreamer 1.22's av1enc ignores GstForceKeyUnit (it never sets AOM_EFLAG_FORCE_KF), so RTCP PLI/FIR and
 * sora_peer_request_key_frame would never produce a key frame. Workaround for an av1enc linked straight to
 * the payloader: a key-unit request seen at the encoder's src pad sets keyframe-max-dist to 0 (libaom then
 * codes the next frame as a key frame) just before the next frame enters the encoder, and the frame after
 * restores the old value. libaom also codes that second frame as a key frame: two key frames per request. */
typedef struct {
  gint requested; /* atomic */
  gboolean restore;
  gint max_dist;
  gint settle; /* frames since the encoder was re-created (new caps) that still must not see a reconfiguration */
} av1enc_key_requests;

/* On new caps av1enc re-creates its libaom encoder (on top of the old one), and libaom crashed in
 * aom_codec_encode when the configuration was changed (aom_codec_enc_config_set) on the frames right after
 * that: a storm of size changes with a key-frame request each crashed 7 of 9 runs. So a pending restore is
 * done before the re-creation, a pending request is dropped (a new encoder starts with a key frame), and no
 * request changes the configuration in the next frames. */
#define AV1_SETTLE_FRAMES 3

static GstPadProbeReturn av1enc_new_caps(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  av1enc_key_requests *kr = data;
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT(info);
  if (!event || GST_EVENT_TYPE(event) != GST_EVENT_CAPS) return GST_PAD_PROBE_OK;
  GstObject *enc = gst_pad_get_parent(pad);
  if (enc && kr->restore) g_object_set(enc, "keyframe-max-dist", kr->max_dist, NULL); /* the old encoder */
  if (enc) gst_object_unref(enc);
  kr->restore = FALSE;
  g_atomic_int_set(&kr->requested, 0);
  kr->settle = AV1_SETTLE_FRAMES;
  return GST_PAD_PROBE_OK;
}

static GstPadProbeReturn av1enc_key_request_seen(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  av1enc_key_requests *kr = data;
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT(info);
  if (event && gst_video_event_is_force_key_unit(event)) g_atomic_int_set(&kr->requested, 1);
  return GST_PAD_PROBE_OK;
}

/* Runs in the encoder's input thread before the frame reaches the encoder (no encoder lock is held). */
static GstPadProbeReturn av1enc_before_frame(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)info;
  av1enc_key_requests *kr = data;
  GstObject *enc = gst_pad_get_parent(pad);
  if (!enc) return GST_PAD_PROBE_OK;
  if (kr->settle > 0) {
    kr->settle--;
  } else if (kr->restore) {
    kr->restore = FALSE;
    g_object_set(enc, "keyframe-max-dist", kr->max_dist, NULL);
  } else if (g_atomic_int_compare_and_exchange(&kr->requested, 1, 0)) {
    GST_DEBUG_OBJECT(enc, "forcing a key frame");
    g_object_get(enc, "keyframe-max-dist", &kr->max_dist, NULL);
    g_object_set(enc, "keyframe-max-dist", 0, NULL);
    kr->restore = TRUE;
  }
  gst_object_unref(enc);
  return GST_PAD_PROBE_OK;
}

static void pay_sink_linked(GstPad *pad, GstPad *peer, gpointer unused) {
  (void)pad;
  (void)unused;
  GstObject *enc = gst_pad_get_parent(peer);
  if (!enc) return;
  if (g_strcmp0(G_OBJECT_TYPE_NAME(enc), "GstAV1Enc") == 0 &&
      !g_object_get_data(G_OBJECT(enc), "sora-av1-key-requests")) {
    av1enc_key_requests *kr = g_new0(av1enc_key_requests, 1);
    g_object_set_data_full(G_OBJECT(enc), "sora-av1-key-requests", kr, g_free);
    GstPad *sinkpad = gst_element_get_static_pad(GST_ELEMENT(enc), "sink");
    gst_pad_add_probe(peer, GST_PAD_PROBE_TYPE_EVENT_UPSTREAM, av1enc_key_request_seen, kr, NULL);
    if (sinkpad) {
      gst_pad_add_probe(sinkpad, GST_PAD_PROBE_TYPE_BUFFER, av1enc_before_frame, kr, NULL);
      gst_pad_add_probe(sinkpad, GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM, av1enc_new_caps, kr, NULL);
      gst_object_unref(sinkpad);
    }
  }
  gst_object_unref(enc);
}

static gboolean pay_set_caps(GstRTPBasePayload *base, GstCaps *caps) {
  (void)caps;
  gst_rtp_base_payload_set_options(base, "video", TRUE, "AV1", 90000);
  return gst_rtp_base_payload_set_outcaps(base, NULL);
}

static void sora_rtp_av1_pay_class_init(SoraRtpAv1PayClass *klass) {
  GstElementClass *element_class = GST_ELEMENT_CLASS(klass);
  GstRTPBasePayloadClass *pay_class = GST_RTP_BASE_PAYLOAD_CLASS(klass);
  gst_element_class_add_static_pad_template(element_class, &pay_sink_template);
  gst_element_class_add_static_pad_template(element_class, &pay_src_template);
  gst_element_class_set_static_metadata(element_class, "RTP AV1 payloader (sora_sdk)", "Codec/Payloader/Network/RTP",
                                        "Payloads AV1 temporal units into RTP packets (AOMedia RTP payload format)",
                                        "sora_sdk");
  pay_class->handle_buffer = pay_handle_buffer;
  pay_class->set_caps = pay_set_caps;
}

static void sora_rtp_av1_pay_init(SoraRtpAv1Pay *self) {
  /* av1enc's caps carry no stream-format field: accept caps that intersect the template. */
  GST_PAD_SET_ACCEPT_INTERSECT(GST_RTP_BASE_PAYLOAD_SINKPAD(self));
  g_signal_connect(GST_RTP_BASE_PAYLOAD_SINKPAD(self), "linked", G_CALLBACK(pay_sink_linked), NULL);
}

/* ---- depayloader ---------------------------------------------------------------- */

typedef struct {
  GstRTPBaseDepayload parent;
  GByteArray *fragment;   /* OBU element being reassembled across packets */
  gboolean in_fragment;   /* the last packet ended with Y = 1 */
  GByteArray *tu;         /* temporal unit being rebuilt (low-overhead format) */
  gboolean tu_open;
  guint32 tu_rtptime;
  GstClockTime tu_pts;
  gboolean tu_seen_frame, tu_key;
  gboolean reduced_still;
  gboolean need_sync;     /* dropping until the start of a coded video sequence */
  gint last_seq;          /* -1: none yet */
  gint64 last_request_us; /* monotonic time of the last key-frame request */
  GArray *elements;       /* scratch: (offset, length) pairs of the current packet */
} SoraRtpAv1Depay;

typedef struct {
  GstRTPBaseDepayloadClass parent_class;
} SoraRtpAv1DepayClass;

GType sora_rtp_av1_depay_get_type(void);
G_DEFINE_TYPE(SoraRtpAv1Depay, sora_rtp_av1_depay, GST_TYPE_RTP_BASE_DEPAYLOAD)

static GstStaticPadTemplate depay_sink_template =
    GST_STATIC_PAD_TEMPLATE("sink", GST_PAD_SINK, GST_PAD_ALWAYS,
                            GST_STATIC_CAPS("application/x-rtp, media = (string) video, clock-rate = (int) 90000, "
                                            "encoding-name = (string) AV1"));

static GstStaticPadTemplate depay_src_template =
    GST_STATIC_PAD_TEMPLATE("src", GST_PAD_SRC, GST_PAD_ALWAYS,
                            GST_STATIC_CAPS("video/x-av1, stream-format = (string) obu-stream, "
                                            "alignment = (string) tu"));

#define KEY_REQUEST_INTERVAL_US (250 * G_TIME_SPAN_MILLISECOND)

typedef struct {
  gsize offset, len;
} av1_element;

static void depay_discard(SoraRtpAv1Depay *self) {
  g_byte_array_set_size(self->fragment, 0);
  g_byte_array_set_size(self->tu, 0);
  self->in_fragment = FALSE;
  self->tu_open = FALSE;
  self->tu_seen_frame = self->tu_key = FALSE;
}

static void depay_reset(SoraRtpAv1Depay *self) {
  depay_discard(self);
  self->need_sync = TRUE;
  self->last_seq = -1;
  self->last_request_us = 0;
  self->reduced_still = FALSE;
}

/* Ask upstream (the sender, through RTCP PLI) for a key frame, at most every KEY_REQUEST_INTERVAL_US. */
static void depay_request_key_frame(SoraRtpAv1Depay *self) {
  gint64 now = g_get_monotonic_time();
  if (self->last_request_us && now - self->last_request_us < KEY_REQUEST_INTERVAL_US) return;
  self->last_request_us = now;
  GST_DEBUG_OBJECT(self, "requesting a key frame");
  gst_pad_push_event(GST_RTP_BASE_DEPAYLOAD_SINKPAD(self),
                     gst_video_event_new_upstream_force_key_unit(GST_CLOCK_TIME_NONE, TRUE, 0));
}

/* Data was lost: drop what is incomplete and wait for the next coded video sequence. */
static void depay_lost_sync(SoraRtpAv1Depay *self, const char *why) {
  GST_DEBUG_OBJECT(self, "%s: dropping until the next key frame", why);
  depay_discard(self);
  self->need_sync = TRUE;
  depay_request_key_frame(self);
}

/* Append one complete OBU element to the temporal unit, with obu_has_size_field = 1. */
static gboolean depay_add_obu(SoraRtpAv1Depay *self, const guint8 *data, gsize len) {
  av1_obu o;
  gsize consumed;
  if (!obu_parse(data, len, &o, &consumed)) return FALSE;
  switch (o.type) {
    case OBU_TEMPORAL_DELIMITER:
    case OBU_TILE_LIST:
    case OBU_PADDING:
      return TRUE; /* ignored by receivers */
    case OBU_SEQUENCE_HEADER:
      self->reduced_still = seq_reduced_still_picture(&o);
      break;
    case OBU_FRAME:
    case OBU_FRAME_HEADER:
      if (!self->tu_seen_frame) self->tu_key = frame_is_key(&o, self->reduced_still);
      self->tu_seen_frame = TRUE;
      break;
    default:
      break;
  }
  if (self->tu->len == 0) {
    static const guint8 temporal_delimiter[] = {(OBU_TEMPORAL_DELIMITER << 3) | OBU_HAS_SIZE, 0};
    g_byte_array_append(self->tu, temporal_delimiter, sizeof temporal_delimiter);
  }
  guint8 head[2 + 8];
  gsize n = 0;
  head[n++] = o.header[0] | OBU_HAS_SIZE;
  if (o.header_len == 2) head[n++] = o.header[1];
  n += leb128_write(head + n, o.payload_len);
  g_byte_array_append(self->tu, head, (guint)n);
  g_byte_array_append(self->tu, o.payload, (guint)o.payload_len);
  return TRUE;
}

static GstFlowReturn depay_finish_tu(SoraRtpAv1Depay *self) {
  GstFlowReturn ret = GST_FLOW_OK;
  if (self->tu->len > 2) {
    GstBuffer *out = gst_buffer_new_memdup(self->tu->data, self->tu->len);
    GST_BUFFER_PTS(out) = self->tu_pts;
    if (!self->tu_key) GST_BUFFER_FLAG_SET(out, GST_BUFFER_FLAG_DELTA_UNIT);
    ret = gst_rtp_base_depayload_push(GST_RTP_BASE_DEPAYLOAD(self), out);
  }
  g_byte_array_set_size(self->tu, 0);
  self->tu_open = FALSE;
  self->tu_seen_frame = self->tu_key = FALSE;
  return ret;
}

/* The OBU elements of a payload (after the aggregation header), or FALSE when malformed. */
static gboolean depay_split(SoraRtpAv1Depay *self, const guint8 *p, gsize len, guint w) {
  g_array_set_size(self->elements, 0);
  gsize pos = 1;
  while (pos < len) {
    av1_element e;
    if (w == 0 || self->elements->len + 1 < w) {
      guint32 size;
      gsize used;
      if (!leb128_read(p + pos, len - pos, &size, &used)) return FALSE;
      pos += used;
      if (size > len - pos) return FALSE;
      e = (av1_element){pos, size};
    } else {
      e = (av1_element){pos, len - pos}; /* the last of W elements: no length field */
    }
    pos += e.len;
    if (e.len > 0) g_array_append_val(self->elements, e);
    if (w != 0 && self->elements->len == w) break;
  }
  return pos == len && (w == 0 || self->elements->len == w);
}

static GstBuffer *depay_process(GstRTPBaseDepayload *base, GstRTPBuffer *rtp) {
  SoraRtpAv1Depay *self = (SoraRtpAv1Depay *)base;
  guint16 seq = gst_rtp_buffer_get_seq(rtp);
  guint32 rtptime = gst_rtp_buffer_get_timestamp(rtp);
  gboolean marker = gst_rtp_buffer_get_marker(rtp);
  gboolean gap = self->last_seq >= 0 && seq != (guint16)(self->last_seq + 1);
  self->last_seq = seq;
  if (gap || (GST_BUFFER_IS_DISCONT(rtp->buffer) && (self->tu_open || self->in_fragment)))
    depay_lost_sync(self, gap ? "packet loss" : "discontinuity");

  const guint8 *p = gst_rtp_buffer_get_payload(rtp);
  gsize len = gst_rtp_buffer_get_payload_len(rtp);
  if (len < 1) return NULL;
  guint8 agg = p[0];
  gboolean z = (agg & AGG_Z) != 0, y = (agg & AGG_Y) != 0, n_bit = (agg & AGG_N) != 0;
  guint w = (agg >> AGG_W_SHIFT) & 3;

  /* A new RTP timestamp starts a new temporal unit even when the marker bit went missing. */
  if (self->tu_open && rtptime != self->tu_rtptime) {
    if (self->in_fragment)
      depay_lost_sync(self, "temporal unit ended inside a fragment");
    else
      depay_finish_tu(self);
  }
  if (!depay_split(self, p, len, w)) {
    depay_lost_sync(self, "malformed AV1 RTP payload");
    return NULL;
  }
  if (!z && self->in_fragment) depay_lost_sync(self, "fragment not continued");
  if (self->need_sync) {
    gboolean starts = !z && n_bit;
    /* A sender that leaves N unset still starts a sequence with a sequence header (possibly after OBUs that
     * receivers ignore). */
    for (guint i = 0; !starts && !z && i < self->elements->len; i++) {
      guint type = (p[g_array_index(self->elements, av1_element, i).offset] >> 3) & 0x0f;
      if (type == OBU_TEMPORAL_DELIMITER || type == OBU_TILE_LIST || type == OBU_PADDING) continue;
      starts = type == OBU_SEQUENCE_HEADER;
      break;
    }
    if (!starts) {
      depay_request_key_frame(self);
      return NULL;
    }
    GST_DEBUG_OBJECT(self, "start of a coded video sequence");
    depay_discard(self);
    self->need_sync = FALSE;
  }
  if (z && !self->in_fragment) {
    depay_lost_sync(self, "continuation without a start");
    return NULL;
  }
  if (!self->tu_open) {
    self->tu_open = TRUE;
    self->tu_rtptime = rtptime;
    self->tu_pts = GST_BUFFER_PTS(rtp->buffer);
  }
  guint count = self->elements->len;
  for (guint i = 0; i < count; i++) {
    const av1_element *e = &g_array_index(self->elements, av1_element, i);
    gboolean continues = i == 0 && z, continued = i + 1 == count && y;
    gboolean ok = TRUE;
    if (continues) {
      g_byte_array_append(self->fragment, p + e->offset, (guint)e->len);
      if (!continued) {
        ok = depay_add_obu(self, self->fragment->data, self->fragment->len);
        g_byte_array_set_size(self->fragment, 0);
        self->in_fragment = FALSE;
      }
    } else if (continued) {
      g_byte_array_set_size(self->fragment, 0);
      g_byte_array_append(self->fragment, p + e->offset, (guint)e->len);
      self->in_fragment = TRUE;
    } else {
      ok = depay_add_obu(self, p + e->offset, e->len);
    }
    if (!ok) {
      depay_lost_sync(self, "malformed OBU");
      return NULL;
    }
  }
  if (marker) {
    if (self->in_fragment)
      depay_lost_sync(self, "marker inside a fragment");
    else
      depay_finish_tu(self);
  }
  return NULL;
}

static gboolean depay_set_caps(GstRTPBaseDepayload *base, GstCaps *caps) {
  (void)caps;
  base->clock_rate = 90000;
  GstCaps *src = gst_caps_new_simple("video/x-av1", "stream-format", G_TYPE_STRING, "obu-stream", "alignment",
                                     G_TYPE_STRING, "tu", NULL);
  gboolean ok = gst_pad_set_caps(GST_RTP_BASE_DEPAYLOAD_SRCPAD(base), src);
  gst_caps_unref(src);
  return ok;
}

static gboolean depay_handle_event(GstRTPBaseDepayload *base, GstEvent *event) {
  if (GST_EVENT_TYPE(event) == GST_EVENT_FLUSH_STOP) depay_reset((SoraRtpAv1Depay *)base);
  return GST_RTP_BASE_DEPAYLOAD_CLASS(sora_rtp_av1_depay_parent_class)->handle_event(base, event);
}

static GstStateChangeReturn depay_change_state(GstElement *element, GstStateChange transition) {
  if (transition == GST_STATE_CHANGE_READY_TO_PAUSED) depay_reset((SoraRtpAv1Depay *)element);
  GstStateChangeReturn ret = GST_ELEMENT_CLASS(sora_rtp_av1_depay_parent_class)->change_state(element, transition);
  if (transition == GST_STATE_CHANGE_PAUSED_TO_READY) depay_reset((SoraRtpAv1Depay *)element);
  return ret;
}

static void depay_finalize(GObject *object) {
  SoraRtpAv1Depay *self = (SoraRtpAv1Depay *)object;
  g_byte_array_unref(self->fragment);
  g_byte_array_unref(self->tu);
  g_array_free(self->elements, TRUE);
  G_OBJECT_CLASS(sora_rtp_av1_depay_parent_class)->finalize(object);
}

static void sora_rtp_av1_depay_class_init(SoraRtpAv1DepayClass *klass) {
  GObjectClass *object_class = G_OBJECT_CLASS(klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS(klass);
  GstRTPBaseDepayloadClass *depay_class = GST_RTP_BASE_DEPAYLOAD_CLASS(klass);
  object_class->finalize = depay_finalize;
  element_class->change_state = depay_change_state;
  gst_element_class_add_static_pad_template(element_class, &depay_sink_template);
  gst_element_class_add_static_pad_template(element_class, &depay_src_template);
  gst_element_class_set_static_metadata(element_class, "RTP AV1 depayloader (sora_sdk)",
                                        "Codec/Depayloader/Network/RTP",
                                        "Rebuilds AV1 temporal units from RTP packets (AOMedia RTP payload format)",
                                        "sora_sdk");
  depay_class->process_rtp_packet = depay_process;
  depay_class->set_caps = depay_set_caps;
  depay_class->handle_event = depay_handle_event;
}

static void sora_rtp_av1_depay_init(SoraRtpAv1Depay *self) {
  self->fragment = g_byte_array_new();
  self->tu = g_byte_array_new();
  self->elements = g_array_new(FALSE, FALSE, sizeof(av1_element));
  depay_reset(self);
}

/* ---- registration --------------------------------------------------------------- */

void sora_register_av1_elements(void) {
  static gsize done = 0;
  if (g_once_init_enter(&done)) {
    GST_DEBUG_CATEGORY_INIT(av1rtp_debug, "sorartpav1", 0, "sora_sdk AV1 RTP (de)payloader");
    gboolean ok = gst_element_register(NULL, "sorartpav1pay", GST_RANK_NONE, sora_rtp_av1_pay_get_type()) &&
                  gst_element_register(NULL, "sorartpav1depay", GST_RANK_NONE, sora_rtp_av1_depay_get_type());
    if (!ok) g_printerr("sora_c: cannot register the AV1 RTP elements\n");
    g_once_init_leave(&done, 1);
  }
}

/* ---- test hooks ------------------------------------------------------------------ *
 * Not part of the public ABI (not in sora_c.h, and outside the sora_ prefix that the ABI tests reserve for
 * it): tests/test_av1.py calls them through ctypes to check the packetization on real encoder output. Each
 * returns 0 or a negative sora error code (message in sora_c_last_error()), and on success a g_malloc'd blob
 * (free with sora_c_free) of records:
 *   u8 kind, u32 little-endian length, bytes
 * kind 'E': a temporal unit from soraav1enc, 'R': an RTP packet from sorartpav1pay (before any drop),
 * 'X': the index of a dropped RTP packet (u32), 'D': a temporal unit from sorartpav1depay,
 * 'K': a key-frame request from the depayloader reached the encoder (or the source), 'F': a decoded frame
 * (u32 width, u32 height, u32 mean of the first plane). */

#define SORA_AV1_TEST_HOOK __attribute__((visibility("default")))

typedef struct {
  GMutex lock;
  GByteArray *out;
  const int *drop;
  int ndrop;
  int rtp_index;
} hook_state;

static void hook_record(hook_state *st, char kind, const guint8 *data, gsize len) {
  guint8 head[5] = {(guint8)kind, (guint8)len, (guint8)(len >> 8), (guint8)(len >> 16), (guint8)(len >> 24)};
  g_mutex_lock(&st->lock);
  g_byte_array_append(st->out, head, sizeof head);
  if (len) g_byte_array_append(st->out, data, (guint)len);
  g_mutex_unlock(&st->lock);
}

static void hook_record_buffer(hook_state *st, char kind, GstBuffer *buf) {
  GstMapInfo map;
  if (!gst_buffer_map(buf, &map, GST_MAP_READ)) return;
  hook_record(st, kind, map.data, map.size);
  gst_buffer_unmap(buf, &map);
}

static void hook_record_u32s(hook_state *st, char kind, const guint32 *values, guint n) {
  guint8 bytes[16];
  for (guint i = 0; i < n && i < 4; i++)
    for (guint b = 0; b < 4; b++) bytes[i * 4 + b] = (guint8)(values[i] >> (8 * b));
  hook_record(st, kind, bytes, n * 4);
}

static GstPadProbeReturn hook_probe_record(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  hook_state *st = data;
  char kind = (char)GPOINTER_TO_INT(g_object_get_data(G_OBJECT(pad), "sora-av1-kind"));
  if (info->type & GST_PAD_PROBE_TYPE_BUFFER) {
    hook_record_buffer(st, kind, GST_PAD_PROBE_INFO_BUFFER(info));
  } else if (info->type & GST_PAD_PROBE_TYPE_BUFFER_LIST) {
    GstBufferList *list = GST_PAD_PROBE_INFO_BUFFER_LIST(info);
    for (guint i = 0; i < gst_buffer_list_length(list); i++) hook_record_buffer(st, kind, gst_buffer_list_get(list, i));
  } else if (info->type & GST_PAD_PROBE_TYPE_EVENT_UPSTREAM) {
    if (gst_video_event_is_force_key_unit(GST_PAD_PROBE_INFO_EVENT(info))) hook_record(st, 'K', NULL, 0);
  }
  return GST_PAD_PROBE_OK;
}

static gboolean hook_should_drop(hook_state *st) {
  gboolean drop = FALSE;
  for (int i = 0; i < st->ndrop; i++)
    if (st->drop[i] == st->rtp_index) drop = TRUE;
  if (drop) {
    guint32 index = (guint32)st->rtp_index;
    hook_record_u32s(st, 'X', &index, 1);
  }
  st->rtp_index++;
  return drop;
}

/* Records every RTP packet and drops the listed ones. */
static GstPadProbeReturn hook_probe_rtp(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  hook_state *st = data;
  if (info->type & GST_PAD_PROBE_TYPE_BUFFER) {
    hook_record_buffer(st, 'R', GST_PAD_PROBE_INFO_BUFFER(info));
    return hook_should_drop(st) ? GST_PAD_PROBE_DROP : GST_PAD_PROBE_OK;
  }
  GstBufferList *list = GST_PAD_PROBE_INFO_BUFFER_LIST(info);
  GstBufferList *kept = gst_buffer_list_new();
  for (guint i = 0; i < gst_buffer_list_length(list); i++) {
    GstBuffer *buf = gst_buffer_list_get(list, i);
    hook_record_buffer(st, 'R', buf);
    if (!hook_should_drop(st)) gst_buffer_list_add(kept, gst_buffer_ref(buf));
  }
  if (gst_buffer_list_length(kept) == 0) {
    gst_buffer_list_unref(kept);
    return GST_PAD_PROBE_DROP;
  }
  gst_buffer_list_unref(list);
  GST_PAD_PROBE_INFO_DATA(info) = kept;
  return GST_PAD_PROBE_OK;
}

static GstPadProbeReturn hook_probe_decoded(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  hook_state *st = data;
  GstCaps *caps = gst_pad_get_current_caps(pad);
  GstVideoInfo vinfo;
  if (!caps || !gst_video_info_from_caps(&vinfo, caps)) {
    if (caps) gst_caps_unref(caps);
    return GST_PAD_PROBE_OK;
  }
  gst_caps_unref(caps);
  GstVideoFrame frame;
  guint32 values[3] = {(guint32)GST_VIDEO_INFO_WIDTH(&vinfo), (guint32)GST_VIDEO_INFO_HEIGHT(&vinfo), 0};
  if (gst_video_frame_map(&frame, &vinfo, GST_PAD_PROBE_INFO_BUFFER(info), GST_MAP_READ)) {
    guint64 sum = 0;
    const guint8 *plane = GST_VIDEO_FRAME_PLANE_DATA(&frame, 0);
    gint stride = GST_VIDEO_FRAME_PLANE_STRIDE(&frame, 0);
    for (guint yy = 0; yy < values[1]; yy++)
      for (guint xx = 0; xx < values[0]; xx++) sum += plane[yy * stride + xx];
    values[2] = (guint32)(sum / ((guint64)values[0] * values[1]));
    gst_video_frame_unmap(&frame);
  }
  hook_record_u32s(st, 'F', values, 3);
  return GST_PAD_PROBE_OK;
}

static void hook_probe(GstElement *pipeline, const char *element, const char *pad_name, GstPadProbeType type,
                       GstPadProbeCallback cb, char kind, hook_state *st) {
  GstElement *e = gst_bin_get_by_name(GST_BIN(pipeline), element);
  if (!e) return;
  GstPad *pad = gst_element_get_static_pad(e, pad_name);
  if (pad) {
    g_object_set_data(G_OBJECT(pad), "sora-av1-kind", GINT_TO_POINTER((gint)kind));
    gst_pad_add_probe(pad, type, cb, st, NULL);
    gst_object_unref(pad);
  }
  gst_object_unref(e);
}

/* Run to EOS (or error / timeout); returns SORA_OK or a sora error. `packets` (records: u32 little-endian length,
 * bytes) go to `appsrc`: RTP packets (PTS from the RTP timestamp) or, with `rtp` FALSE, temporal units (30 fps). */
static int hook_run(GstElement *pipeline, GstElement *appsrc, const guint8 *packets, gsize packets_len, gboolean rtp) {
  if (gst_element_set_state(pipeline, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE)
    return sora_fail(SORA_ERR_ENGINE, "the test pipeline did not start");
  if (appsrc) {
    gsize pos = 0;
    guint64 index = 0;
    while (pos + 4 <= packets_len) {
      gsize len = packets[pos] | (packets[pos + 1] << 8) | (packets[pos + 2] << 16) | ((gsize)packets[pos + 3] << 24);
      pos += 4;
      if (len > packets_len - pos) break;
      GstBuffer *buf = len ? gst_buffer_new_memdup(packets + pos, len) : gst_buffer_new();
      GstRTPBuffer map = GST_RTP_BUFFER_INIT;
      if (!rtp) {
        GST_BUFFER_PTS(buf) = gst_util_uint64_scale(index++, GST_SECOND, 30);
      } else if (gst_rtp_buffer_map(buf, GST_MAP_READ, &map)) {
        GST_BUFFER_PTS(buf) = gst_util_uint64_scale(gst_rtp_buffer_get_timestamp(&map), GST_SECOND, 90000);
        gst_rtp_buffer_unmap(&map);
      }
      gst_app_src_push_buffer(GST_APP_SRC(appsrc), buf);
      pos += len;
    }
    gst_app_src_end_of_stream(GST_APP_SRC(appsrc));
  }
  GstBus *bus = gst_element_get_bus(pipeline);
  GstMessage *msg =
      gst_bus_timed_pop_filtered(bus, 120 * GST_SECOND, (GstMessageType)(GST_MESSAGE_EOS | GST_MESSAGE_ERROR));
  int rc = SORA_OK;
  if (!msg) {
    rc = sora_fail(SORA_ERR_TIMEOUT, "the test pipeline did not finish");
  } else if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR) {
    GError *err = NULL;
    gchar *dbg = NULL;
    gst_message_parse_error(msg, &err, &dbg);
    rc = sora_fail(SORA_ERR_ENGINE, "test pipeline error from %s: %s (%s)", GST_OBJECT_NAME(GST_MESSAGE_SRC(msg)),
                   err ? err->message : "?", dbg ? dbg : "");
    g_clear_error(&err);
    g_free(dbg);
  }
  if (msg) gst_message_unref(msg);
  gst_object_unref(bus);
  gst_element_set_state(pipeline, GST_STATE_NULL);
  return rc;
}

static int hook_finish(int rc, hook_state *st, GstElement *pipeline, unsigned char **out, size_t *out_len) {
  if (pipeline) gst_object_unref(pipeline);
  if (rc == SORA_OK) {
    *out_len = st->out->len;
    *out = g_byte_array_free(st->out, FALSE);
  } else {
    g_byte_array_unref(st->out);
  }
  g_mutex_clear(&st->lock);
  return rc;
}

SORA_AV1_TEST_HOOK int soratest_av1rtp_roundtrip(const char *pattern, int width, int height, int frames, int kbps,
                                                 int mtu, int keyframe_max_dist, const int *drop, int ndrop, int decode,
                                                 unsigned char **out, size_t *out_len);
SORA_AV1_TEST_HOOK int soratest_av1rtp_depayload(const unsigned char *packets, size_t packets_len, int decode,
                                                 unsigned char **out, size_t *out_len);

/* videotestsrc (`pattern`, moving) -> soraav1enc -> sorartpav1pay (drops the RTP packets listed in `drop`)
 * -> sorartpav1depay [-> soradav1dec]. One streaming thread, so the records are in pipeline order. */
SORA_AV1_TEST_HOOK int soratest_av1rtp_roundtrip(const char *pattern, int width, int height, int frames, int kbps,
                                                 int mtu, int keyframe_max_dist, const int *drop, int ndrop, int decode,
                                                 unsigned char **out, size_t *out_len) {
  sora_clear_error();
  if (!pattern || !out || !out_len || width < 16 || height < 16 || frames < 1 || kbps < 1 || mtu < 64 || ndrop < 0)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "bad test parameters");
  sora_engine_init();
  sora_register_av1_elements();
  sora_register_dav1d();
  sora_register_aomenc();
  gchar *desc = g_strdup_printf(
      "videotestsrc num-buffers=%d pattern=%s horizontal-speed=4 ! "
      "video/x-raw,format=I420,width=%d,height=%d,framerate=15/1 ! "
      "soraav1enc name=enc cpu-used=10 threads=1 target-bitrate=%d min-quantizer=10 max-quantizer=56 "
      "keyframe-max-dist=%d ! "
      "sorartpav1pay name=pay mtu=%d pt=45 ! sorartpav1depay name=depay ! %s",
      frames, pattern, width, height, kbps, keyframe_max_dist, mtu, decode ? "soradav1dec name=dec ! fakesink" : "fakesink");
  GError *err = NULL;
  GstElement *pipeline = gst_parse_launch(desc, &err);
  g_free(desc);
  if (!pipeline || err) {
    int rc = sora_fail(SORA_ERR_UNSUPPORTED, "cannot build the test pipeline: %s", err ? err->message : "?");
    g_clear_error(&err);
    if (pipeline) gst_object_unref(pipeline);
    return rc;
  }
  hook_state st = {.out = g_byte_array_new(), .drop = drop, .ndrop = ndrop};
  g_mutex_init(&st.lock);
  hook_probe(pipeline, "enc", "src", GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_EVENT_UPSTREAM, hook_probe_record,
             'E', &st);
  hook_probe(pipeline, "pay", "src", GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_BUFFER_LIST, hook_probe_rtp, 'R',
             &st);
  hook_probe(pipeline, "depay", "src", GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_BUFFER_LIST, hook_probe_record,
             'D', &st);
  if (decode) hook_probe(pipeline, "dec", "src", GST_PAD_PROBE_TYPE_BUFFER, hook_probe_decoded, 'F', &st);
  int rc = hook_run(pipeline, NULL, NULL, 0, TRUE);
  return hook_finish(rc, &st, pipeline, out, out_len);
}

/* appsrc (RTP packets given as records: u32 little-endian length, bytes) -> sorartpav1depay [-> soradav1dec]. */
SORA_AV1_TEST_HOOK int soratest_av1rtp_depayload(const unsigned char *packets, size_t packets_len, int decode,
                                                 unsigned char **out, size_t *out_len) {
  sora_clear_error();
  if (!out || !out_len || (!packets && packets_len)) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "bad test parameters");
  sora_engine_init();
  sora_register_av1_elements();
  sora_register_dav1d();
  gchar *desc = g_strdup_printf(
      "appsrc name=src format=time caps=application/x-rtp,media=video,clock-rate=90000,encoding-name=AV1,payload=45 ! "
      "sorartpav1depay name=depay ! %s",
      decode ? "soradav1dec name=dec ! fakesink" : "fakesink");
  GError *err = NULL;
  GstElement *pipeline = gst_parse_launch(desc, &err);
  g_free(desc);
  if (!pipeline || err) {
    int rc = sora_fail(SORA_ERR_UNSUPPORTED, "cannot build the test pipeline: %s", err ? err->message : "?");
    g_clear_error(&err);
    if (pipeline) gst_object_unref(pipeline);
    return rc;
  }
  hook_state st = {.out = g_byte_array_new()};
  g_mutex_init(&st.lock);
  hook_probe(pipeline, "depay", "src", GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_BUFFER_LIST, hook_probe_record,
             'D', &st);
  hook_probe(pipeline, "depay", "sink", GST_PAD_PROBE_TYPE_EVENT_UPSTREAM, hook_probe_record, 'K', &st);
  if (decode) hook_probe(pipeline, "dec", "src", GST_PAD_PROBE_TYPE_BUFFER, hook_probe_decoded, 'F', &st);
  GstElement *src = gst_bin_get_by_name(GST_BIN(pipeline), "src");
  int rc = hook_run(pipeline, src, packets, packets_len, TRUE);
  gst_object_unref(src);
  return hook_finish(rc, &st, pipeline, out, out_len);
}

SORA_AV1_TEST_HOOK int soratest_av1_decode(const unsigned char *tus, size_t tus_len, const char *decoder,
                                           unsigned char **out, size_t *out_len);

/* appsrc (temporal units given as records: u32 little-endian length, bytes; 30 fps) -> `decoder` (soradav1dec when
 * NULL). Records 'F' for each decoded frame and 'K' for each key-frame request the decoder sends upstream. */
SORA_AV1_TEST_HOOK int soratest_av1_decode(const unsigned char *tus, size_t tus_len, const char *decoder,
                                           unsigned char **out, size_t *out_len) {
  sora_clear_error();
  if (!out || !out_len || (!tus && tus_len)) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "bad test parameters");
  sora_engine_init();
  sora_register_dav1d();
  GstElement *pipeline = gst_pipeline_new(NULL);
  GstElement *src = gst_element_factory_make("appsrc", "src");
  GstElement *dec = gst_element_factory_make(decoder ? decoder : "soradav1dec", "dec");
  GstElement *sink = gst_element_factory_make("fakesink", NULL);
  if (!src || !dec || !sink) {
    GstElement *all[] = {src, dec, sink};
    for (guint i = 0; i < G_N_ELEMENTS(all); i++)
      if (all[i]) gst_object_unref(all[i]);
    gst_object_unref(pipeline);
    return sora_fail(SORA_ERR_UNSUPPORTED, "cannot make the test pipeline's elements");
  }
  GstCaps *caps = gst_caps_from_string("video/x-av1,stream-format=obu-stream,alignment=tu");
  g_object_set(src, "format", GST_FORMAT_TIME, "caps", caps, NULL);
  gst_caps_unref(caps);
  gst_bin_add_many(GST_BIN(pipeline), src, dec, sink, NULL);
  if (!gst_element_link_many(src, dec, sink, NULL)) {
    gst_object_unref(pipeline);
    return sora_fail(SORA_ERR_ENGINE, "cannot link the test pipeline");
  }
  hook_state st = {.out = g_byte_array_new()};
  g_mutex_init(&st.lock);
  hook_probe(pipeline, "dec", "sink", GST_PAD_PROBE_TYPE_EVENT_UPSTREAM, hook_probe_record, 'K', &st);
  hook_probe(pipeline, "dec", "src", GST_PAD_PROBE_TYPE_BUFFER, hook_probe_decoded, 'F', &st);
  int rc = hook_run(pipeline, src, tus, tus_len, FALSE);
  return hook_finish(rc, &st, pipeline, out, out_len);
}
