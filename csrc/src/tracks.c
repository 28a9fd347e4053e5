/* What a remote track's first RTP packets say about it: its SSRC and its RTP stream id (the simulcast rid,
 * RFC 8852 sdes:rtp-stream-id header extension). A buffer probe on the track's pad reads them and removes
 * itself once known; the probe only copies a few bytes under a short lock (no blocking, no callbacks). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define URI_RID "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
#define RID_MAX 32
/* Packets looked at for a rid before giving up (a sender that negotiated the extension may still omit it). */
#define RID_SCAN_PACKETS 300

struct sora_track_info {
  gint refs;
  GMutex lock;
  gint rid_id;        /* negotiated extmap id of sdes:rtp-stream-id; 0: none */
  guint32 ssrc;
  gboolean have_ssrc;
  gchar rid[RID_MAX + 1]; /* "" until a packet carried one */
  gint scanned;
};

sora_track_info *sora_track_info_ref(sora_track_info *info) {
  g_atomic_int_inc(&info->refs);
  return info;
}

void sora_track_info_unref(sora_track_info *info) {
  if (!info || !g_atomic_int_dec_and_test(&info->refs)) return;
  g_mutex_clear(&info->lock);
  g_free(info);
}

static void info_unref(gpointer data) { sora_track_info_unref(data); }

/* The id of the sdes:rtp-stream-id extmap in `sdp` (any m-line: BUNDLE shares the ids), or 0. */
static gint rid_extmap_id(const GstSDPMessage *sdp) {
  for (guint i = 0; sdp && i < gst_sdp_message_medias_len(sdp); i++) {
    const GstSDPMedia *m = gst_sdp_message_get_media(sdp, i);
    for (guint a = 0; a < gst_sdp_media_attributes_len(m); a++) {
      const GstSDPAttribute *attr = gst_sdp_media_get_attribute(m, a);
      if (g_strcmp0(attr->key, "extmap") != 0 || !attr->value) continue;
      const char *uri = strchr(attr->value, ' ');
      while (uri && *uri == ' ') uri++;
      if (!uri || strncmp(uri, URI_RID, strlen(URI_RID)) != 0) continue;
      char end = uri[strlen(URI_RID)];
      if (end != '\0' && end != ' ') continue;
      gint id = atoi(attr->value);
      if (id >= 1 && id <= 255) return id;
    }
  }
  return 0;
}

static gint negotiated_rid_id(GstElement *webrtc) {
  static const char *props[] = {"current-local-description", "current-remote-description", "local-description",
                                "remote-description"};
  for (guint i = 0; i < G_N_ELEMENTS(props); i++) {
    GstWebRTCSessionDescription *desc = NULL;
    g_object_get(webrtc, props[i], &desc, NULL);
    gint id = desc ? rid_extmap_id(desc->sdp) : 0;
    if (desc) gst_webrtc_session_description_free(desc);
    if (id) return id;
  }
  return 0;
}

/* Read one packet; TRUE when nothing more is to be learnt. */
static gboolean info_read(sora_track_info *info, GstBuffer *buf) {
  GstRTPBuffer rtp = GST_RTP_BUFFER_INIT;
  if (!gst_rtp_buffer_map(buf, GST_MAP_READ, &rtp)) return FALSE;
  guint32 ssrc = gst_rtp_buffer_get_ssrc(&rtp);
  gchar rid[RID_MAX + 1] = "";
  if (info->rid_id > 0 && gst_rtp_buffer_get_extension(&rtp)) {
    gpointer data = NULL;
    guint size = 0;
    guint8 appbits = 0;
    gboolean found = FALSE;
    if (info->rid_id <= 14) found = gst_rtp_buffer_get_extension_onebyte_header(&rtp, (guint8)info->rid_id, 0, &data, &size);
    if (!found) found = gst_rtp_buffer_get_extension_twobytes_header(&rtp, &appbits, (guint8)info->rid_id, 0, &data, &size);
    if (found && data) {
      const guint8 *p = data;
      guint n = 0;
      while (n < size && n < RID_MAX && p[n] && (g_ascii_isalnum(p[n]) || p[n] == '-' || p[n] == '_')) {
        rid[n] = (gchar)p[n];
        n++;
      }
      rid[n] = '\0';
      if (n < size && p[n]) rid[0] = '\0'; /* not a token: ignore */
    }
  }
  gst_rtp_buffer_unmap(&rtp);
  g_mutex_lock(&info->lock);
  if (!info->have_ssrc) {
    info->ssrc = ssrc;
    info->have_ssrc = TRUE;
  }
  if (rid[0] && !info->rid[0]) g_strlcpy(info->rid, rid, sizeof info->rid);
  info->scanned++;
  gboolean done = info->rid[0] || info->rid_id <= 0 || info->scanned >= RID_SCAN_PACKETS;
  g_mutex_unlock(&info->lock);
  return done;
}

static GstPadProbeReturn on_track_buffer(GstPad *pad, GstPadProbeInfo *pinfo, gpointer data) {
  (void)pad;
  sora_track_info *info = data;
  gboolean done = FALSE;
  if (pinfo->type & GST_PAD_PROBE_TYPE_BUFFER) {
    done = info_read(info, GST_PAD_PROBE_INFO_BUFFER(pinfo));
  } else if (pinfo->type & GST_PAD_PROBE_TYPE_BUFFER_LIST) {
    GstBufferList *list = GST_PAD_PROBE_INFO_BUFFER_LIST(pinfo);
    for (guint i = 0; !done && i < gst_buffer_list_length(list); i++) done = info_read(info, gst_buffer_list_get(list, i));
  }
  return done ? GST_PAD_PROBE_REMOVE : GST_PAD_PROBE_OK;
}

sora_track_info *sora_track_info_new(GstElement *webrtc, GstPad *pad) {
  sora_track_info *info = g_new0(sora_track_info, 1);
  info->refs = 2; /* the caller's and the probe's */
  g_mutex_init(&info->lock);
  info->rid_id = negotiated_rid_id(webrtc);
  gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_BUFFER_LIST, on_track_buffer, info, info_unref);
  return info;
}

SORA_C_API int sora_peer_track_rid(sora_peer *peer, int64_t track_id, char **rid_out, uint32_t *ssrc_out) {
  sora_clear_error();
  if (rid_out) *rid_out = NULL;
  if (ssrc_out) *ssrc_out = 0;
  if (!peer || !rid_out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer and rid_out must not be NULL");
  int rc = sora_peer_enter(peer);
  if (rc) return rc;
  sora_track_info *info = NULL;
  rc = sora_peer_find_track_info(peer, track_id, &info);
  sora_peer_leave(peer);
  if (rc) return rc;
  if (info) {
    g_mutex_lock(&info->lock);
    if (info->rid[0]) *rid_out = g_strdup(info->rid);
    if (ssrc_out && info->have_ssrc) *ssrc_out = info->ssrc;
    g_mutex_unlock(&info->lock);
    sora_track_info_unref(info);
  }
  return SORA_OK;
}
