/* What RTCP a peer sends, counted by kind: a probe on each send_rtcp_src pad of webrtcbin's rtpbin (before
 * SRTP). Its main use is to show that the local server's peers give senders congestion feedback: GStreamer's
 * rtpsession sends RTCP transport-cc (TWCC) feedback once the negotiated caps carry the transport-wide-cc
 * extmap. The counts appear in the peer's statistics as a "sora-rtcp-sent" entry (sora_rtcp_sent_stats).
 *
 * The probe runs on streaming threads: atomic counters, no locks, no callbacks. */
#include <string.h>

#include <gst/rtp/gstrtcpbuffer.h>

#include "internal.h"

enum { N_SR, N_RR, N_TRANSPORT_CC, N_NACK, N_PLI, N_FIR, N_REMB, N_PACKETS, N_BUFFERS, N_COUNTERS };

static const char *const NAMES[N_COUNTERS] = {"sender-reports", "receiver-reports", "transport-cc", "nack",
                                              "pli", "fir", "remb", "packets", "buffers"};

typedef struct {
  gint refs;
  gint counts[N_COUNTERS];
} rtcp_sent;

static GQuark rtcp_sent_quark(void) {
  static GQuark quark;
  if (!quark) quark = g_quark_from_static_string("sora-rtcp-sent");
  return quark;
}

static rtcp_sent *rtcp_sent_ref(rtcp_sent *s) {
  g_atomic_int_inc(&s->refs);
  return s;
}

static void rtcp_sent_unref(gpointer data) {
  rtcp_sent *s = data;
  if (s && g_atomic_int_dec_and_test(&s->refs)) g_free(s);
}

static void rtcp_sent_closure_notify(gpointer data, GClosure *closure) {
  (void)closure;
  rtcp_sent_unref(data);
}

static gboolean is_remb(GstRTCPPacket *packet) {
  guint8 *fci = gst_rtcp_packet_fb_get_fci(packet);
  return fci && gst_rtcp_packet_fb_get_fci_length(packet) >= 2 && memcmp(fci, "REMB", 4) == 0;
}

static void count_buffer(rtcp_sent *s, GstBuffer *buf) {
  GstRTCPBuffer rtcp = GST_RTCP_BUFFER_INIT;
  if (!gst_rtcp_buffer_map(buf, GST_MAP_READ, &rtcp)) return;
  g_atomic_int_inc(&s->counts[N_BUFFERS]);
  GstRTCPPacket packet;
  for (gboolean more = gst_rtcp_buffer_get_first_packet(&rtcp, &packet); more;
       more = gst_rtcp_packet_move_to_next(&packet)) {
    g_atomic_int_inc(&s->counts[N_PACKETS]);
    GstRTCPType type = gst_rtcp_packet_get_type(&packet);
    gint which = -1;
    if (type == GST_RTCP_TYPE_SR) {
      which = N_SR;
    } else if (type == GST_RTCP_TYPE_RR) {
      which = N_RR;
    } else if (type == GST_RTCP_TYPE_RTPFB) {
      GstRTCPFBType fb = gst_rtcp_packet_fb_get_type(&packet);
      which = fb == GST_RTCP_RTPFB_TYPE_TWCC ? N_TRANSPORT_CC : fb == GST_RTCP_RTPFB_TYPE_NACK ? N_NACK : -1;
    } else if (type == GST_RTCP_TYPE_PSFB) {
      GstRTCPFBType fb = gst_rtcp_packet_fb_get_type(&packet);
      which = fb == GST_RTCP_PSFB_TYPE_PLI   ? N_PLI
              : fb == GST_RTCP_PSFB_TYPE_FIR ? N_FIR
              : fb == GST_RTCP_PSFB_TYPE_AFB && is_remb(&packet) ? N_REMB
                                                                 : -1;
    }
    if (which >= 0) g_atomic_int_inc(&s->counts[which]);
  }
  gst_rtcp_buffer_unmap(&rtcp);
}

static gboolean count_one(GstBuffer **buf, guint idx, gpointer data) {
  (void)idx;
  count_buffer(data, *buf);
  return TRUE;
}

static GstPadProbeReturn on_rtcp_out(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)pad;
  if (info->type & GST_PAD_PROBE_TYPE_BUFFER) {
    count_buffer(data, GST_PAD_PROBE_INFO_BUFFER(info));
  } else if (info->type & GST_PAD_PROBE_TYPE_BUFFER_LIST) {
    gst_buffer_list_foreach(GST_PAD_PROBE_INFO_BUFFER_LIST(info), count_one, data);
  }
  return GST_PAD_PROBE_OK;
}

static void on_rtpbin_pad_added(GstElement *rtpbin, GstPad *pad, gpointer data) {
  (void)rtpbin;
  if (GST_PAD_DIRECTION(pad) != GST_PAD_SRC || !g_str_has_prefix(GST_PAD_NAME(pad), "send_rtcp_src_")) return;
  gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_BUFFER_LIST, on_rtcp_out,
                    rtcp_sent_ref(data), rtcp_sent_unref);
}

void sora_rtcp_sent_attach(GstElement *webrtc) {
  GstElement *rtpbin = gst_bin_get_by_name(GST_BIN(webrtc), "rtpbin");
  if (!rtpbin) return;
  rtcp_sent *s = g_new0(rtcp_sent, 1);
  s->refs = 1;
  g_object_set_qdata_full(G_OBJECT(webrtc), rtcp_sent_quark(), s, rtcp_sent_unref);
  g_signal_connect_data(rtpbin, "pad-added", G_CALLBACK(on_rtpbin_pad_added), rtcp_sent_ref(s),
                        rtcp_sent_closure_notify, 0);
  GstIterator *it = gst_element_iterate_src_pads(rtpbin);
  GValue item = G_VALUE_INIT;
  while (gst_iterator_next(it, &item) == GST_ITERATOR_OK) {
    on_rtpbin_pad_added(rtpbin, g_value_get_object(&item), s);
    g_value_reset(&item);
  }
  g_value_unset(&item);
  gst_iterator_free(it);
  gst_object_unref(rtpbin);
}

GstStructure *sora_rtcp_sent_stats(GstElement *webrtc) {
  rtcp_sent *s = g_object_get_qdata(G_OBJECT(webrtc), rtcp_sent_quark());
  if (!s) return NULL;
  GstStructure *st = gst_structure_new_empty("sora-rtcp-sent");
  for (gint i = 0; i < N_COUNTERS; i++)
    gst_structure_set(st, NAMES[i], G_TYPE_UINT64, (guint64)(guint)g_atomic_int_get(&s->counts[i]), NULL);
  return st;
}
