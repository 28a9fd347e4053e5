/* One peer connection: a pipeline holding a webrtcbin, its send branches and receive sinks. */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <sys/socket.h>

#include <nice/agent.h>

#include "internal.h"

#define PROMISE_TIMEOUT_US (15 * G_TIME_SPAN_SECOND)

typedef struct {
  gint64 id;
  GstElement *tee;  /* owned reference */
  GstCaps *caps;    /* RTP caps of the track */
  char *kind;
  sora_track_info *info; /* SSRC / rid from its first packets (tracks.c) */
  sora_transform *transform; /* for sinks created later (sora_peer_set_track_transform), a reference or NULL */
} track_slot;

typedef struct {
  GstWebRTCDataChannel *channel; /* owned reference; NULL once released */
  char *label;
  gboolean open_reported;
  gboolean remote;
  gboolean await_ack; /* a channel we opened with DCEP: "open" only once the other side has acknowledged it */
  gboolean acked;     /* the other side's first message on the channel's stream (its DCEP ACK) has arrived */
  gboolean engine_open; /* the engine reported it open (it does so as soon as it has sent DCEP OPEN) */
} channel_slot;

struct sora_peer {
  sora_handle_base base;
  GstElement *pipeline;
  GstElement *webrtc;
  GstObject *ice; /* extra reference held for the peer's life (webrtcbin getter bug) */
  gboolean loopback_only;
  char *local_address;
  GMutex lock;           /* protects channels, closed, next_track_id */
  GRWLock op_lock;       /* operations hold it shared; close holds it exclusively */
  GPtrArray *channels;   /* channel_slot*, index = channel id */
  GList *links;          /* sora_link*, protected by ctx->media_lock */
  GList *encoders;       /* GstElement* (owned refs), for key frame requests */
  GPtrArray *tracks;     /* track_slot*, protected by lock */
  GList *children;       /* sora_child* (sinks, forwards), protected by lock */
  gboolean closed;
  gint64 next_track_id;
  gint mem_refs; /* the handle, plus one per sink/forward pointing here: the struct outlives them all */
  GHashTable *send_transforms; /* m-line -> sora_transform reference, for branches attached later; under lock */
  GHashTable *encoders_by_codec; /* upper-case codec -> element factory name (sora_peer_set_video_encoder) */
  sora_bwe *bwe;                 /* send bandwidth estimation (bwe.c); NULL once closed */
  GHashTable *decoded;           /* SSRC -> sora_decode_stats* (receive.c), under lock */
  gboolean await_next_ack;       /* the channel being registered was opened here with DCEP (under lock) */
  GHashTable *send_directions;   /* m-line -> GstWebRTCRTPTransceiverDirection + 1 (sora_peer_set_direction), under lock */
};

GstElement *sora_peer_pipeline(sora_peer *peer) { return peer->pipeline; }

GstElement *sora_peer_webrtc(sora_peer *peer) { return peer->webrtc; }

sora_bwe *sora_peer_bwe(sora_peer *peer) { return peer->bwe; }

sora_context *sora_peer_context(sora_peer *peer) { return peer->base.ctx; }

int sora_peer_enter(sora_peer *peer) {
  sora_clear_error();
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  if (peer->closed) {
    g_rw_lock_reader_unlock(&peer->op_lock);
    return sora_fail(SORA_ERR_INVALID_STATE, "peer is closed");
  }
  return SORA_OK;
}

void sora_peer_leave(sora_peer *peer) { g_rw_lock_reader_unlock(&peer->op_lock); }

int sora_peer_find_track(sora_peer *peer, gint64 id, GstElement **tee, GstCaps **caps, char **kind) {
  int rc = sora_fail(SORA_ERR_NOT_FOUND, "no remote track with id %" G_GINT64_FORMAT, id);
  g_mutex_lock(&peer->lock);
  for (guint i = 0; i < peer->tracks->len; i++) {
    track_slot *t = g_ptr_array_index(peer->tracks, i);
    if (t->id != id) continue;
    *tee = gst_object_ref(t->tee);
    *caps = t->caps ? gst_caps_ref(t->caps) : NULL;
    *kind = g_strdup(t->kind);
    sora_clear_error();
    rc = SORA_OK;
    break;
  }
  g_mutex_unlock(&peer->lock);
  return rc;
}

sora_transform *sora_peer_track_transform(sora_peer *peer, gint64 id) {
  sora_transform *found = NULL;
  g_mutex_lock(&peer->lock);
  for (guint i = 0; i < peer->tracks->len; i++) {
    track_slot *t = g_ptr_array_index(peer->tracks, i);
    if (t->id == id && t->transform) found = sora_transform_ref(t->transform);
  }
  g_mutex_unlock(&peer->lock);
  return found;
}

static sora_transform *send_transform(sora_peer *peer, int32_t mline) {
  g_mutex_lock(&peer->lock);
  sora_transform *t = g_hash_table_lookup(peer->send_transforms, GINT_TO_POINTER(mline));
  if (t) sora_transform_ref(t);
  g_mutex_unlock(&peer->lock);
  return t;
}

SORA_C_API int sora_peer_set_send_transform(sora_peer *peer, int32_t mline, sora_transform *transform) {
  sora_clear_error();
  if (mline < 0) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "m-line must be >= 0");
  int rc = sora_peer_enter(peer);
  if (rc) return rc;
  g_mutex_lock(&peer->lock);
  if (transform)
    g_hash_table_replace(peer->send_transforms, GINT_TO_POINTER(mline), sora_transform_ref(transform));
  else
    g_hash_table_remove(peer->send_transforms, GINT_TO_POINTER(mline));
  g_mutex_unlock(&peer->lock);
  sora_peer_leave(peer);
  return SORA_OK;
}

SORA_C_API int sora_peer_set_track_transform(sora_peer *peer, int64_t track_id, sora_transform *transform) {
  sora_clear_error();
  int rc = sora_peer_enter(peer);
  if (rc) return rc;
  rc = sora_fail(SORA_ERR_NOT_FOUND, "no remote track with id %" G_GINT64_FORMAT, track_id);
  g_mutex_lock(&peer->lock);
  for (guint i = 0; i < peer->tracks->len; i++) {
    track_slot *t = g_ptr_array_index(peer->tracks, i);
    if (t->id != track_id) continue;
    if (t->transform) sora_transform_release(t->transform);
    t->transform = transform ? sora_transform_ref(transform) : NULL;
    sora_clear_error();
    rc = SORA_OK;
  }
  g_mutex_unlock(&peer->lock);
  sora_peer_leave(peer);
  return rc;
}

int sora_peer_find_track_info(sora_peer *peer, gint64 id, sora_track_info **info) {
  int rc = sora_fail(SORA_ERR_NOT_FOUND, "no remote track with id %" G_GINT64_FORMAT, id);
  *info = NULL;
  g_mutex_lock(&peer->lock);
  for (guint i = 0; i < peer->tracks->len; i++) {
    track_slot *t = g_ptr_array_index(peer->tracks, i);
    if (t->id != id) continue;
    if (t->info) *info = sora_track_info_ref(t->info);
    sora_clear_error();
    rc = SORA_OK;
    break;
  }
  g_mutex_unlock(&peer->lock);
  return rc;
}

void sora_peer_add_child(sora_peer *peer, sora_child *child) {
  g_mutex_lock(&peer->lock);
  peer->children = g_list_prepend(peer->children, child);
  g_mutex_unlock(&peer->lock);
}

void sora_peer_add_send(sora_peer *peer, sora_link *link, GstElement *encoder) {
  if (encoder) peer->encoders = g_list_prepend(peer->encoders, encoder);
  if (!link) return;
  g_mutex_lock(&peer->base.ctx->media_lock);
  peer->links = g_list_prepend(peer->links, link);
  g_mutex_unlock(&peer->base.ctx->media_lock);
}

gboolean sora_peer_remove_child(sora_peer *peer, sora_child *child) {
  g_mutex_lock(&peer->lock);
  gboolean found = g_list_find(peer->children, child) != NULL;
  peer->children = g_list_remove(peer->children, child);
  g_mutex_unlock(&peer->lock);
  return found;
}

/* ---- helpers ------------------------------------------------------------ */

static const char *enum_nick(GType type, gint value) {
  GEnumClass *klass = g_type_class_ref(type);
  GEnumValue *v = g_enum_get_value(klass, value);
  const char *nick = v ? v->value_nick : "unknown";
  g_type_class_unref(klass);
  return nick; /* nicks are static strings owned by the type system */
}

static void emit(sora_peer *peer, const sora_event *ev) { sora_queue_event(&peer->base, ev); }

/* i0: 0, or 1 + the m-line of the send branch the failing element belongs to (sora_mark_send_branch). */
static void emit_error(sora_peer *peer, const char *message, const char *element, gint send_mline) {
  sora_event ev = {.type = SORA_EVENT_ERROR, .str0 = message, .str1 = element, .i0 = send_mline + 1};
  emit(peer, &ev);
}

#define SEND_MLINE_KEY "sora-send-mline"

void sora_mark_send_branch(GstElement **chain, gint n, gint mline) {
  for (gint i = 0; i < n; i++)
    if (chain[i]) g_object_set_data(G_OBJECT(chain[i]), SEND_MLINE_KEY, GINT_TO_POINTER(mline + 1));
}

/* The m-line of the send branch that holds `object` (it or a bin above it), or -1. */
static gint send_branch_of(GstObject *object) {
  for (GstObject *o = object ? gst_object_ref(object) : NULL; o;) {
    gpointer mark = g_object_get_data(G_OBJECT(o), SEND_MLINE_KEY);
    GstObject *parent = mark ? NULL : gst_object_get_parent(o);
    gst_object_unref(o);
    if (mark) return GPOINTER_TO_INT(mark) - 1;
    o = parent;
  }
  return -1;
}

/* True when two IPv4 addresses share their first three octets (a test network namespace's /24). */
static gboolean same_subnet24(const char *a, const char *b) {
  const char *da = strrchr(a, '.'), *db = strrchr(b, '.');
  return da && db && da - a == db - b && strncmp(a, b, (size_t)(da - a)) == 0;
}

/* Loopback-only peers never talk to, nor announce, another address; a peer bound to `local_address`
 * keeps to that address's /24 (the veth pair of a test network namespace). */
static gboolean candidate_allowed(sora_peer *peer, const char *candidate) {
  if (!peer->loopback_only && !peer->local_address) return TRUE;
  /* candidate:<foundation> <component> <transport> <priority> <address> <port> typ ... */
  const char *p = candidate;
  if (g_str_has_prefix(p, "a=")) p += 2;
  gchar **parts = g_strsplit(p, " ", 8);
  gboolean ok = FALSE;
  if (g_strv_length(parts) >= 6) {
    const char *addr = parts[4];
    if (peer->loopback_only) ok = g_str_has_prefix(addr, "127.") || g_strcmp0(addr, "::1") == 0;
    if (peer->local_address && !ok) ok = same_subnet24(addr, peer->local_address);
  }
  g_strfreev(parts);
  return ok;
}

typedef struct {
  GMutex lock;
  GCond cond;
  gboolean done;
  gint refs;
} promise_waiter;

static void waiter_unref(gpointer data) {
  promise_waiter *w = data;
  if (g_atomic_int_dec_and_test(&w->refs)) {
    g_mutex_clear(&w->lock);
    g_cond_clear(&w->cond);
    g_free(w);
  }
}

static void waiter_changed(GstPromise *promise, gpointer data) {
  (void)promise;
  promise_waiter *w = data;
  g_mutex_lock(&w->lock);
  w->done = TRUE;
  g_cond_signal(&w->cond);
  g_mutex_unlock(&w->lock);
}

static GstPromise *promise_new(promise_waiter **waiter) {
  promise_waiter *w = g_new0(promise_waiter, 1);
  g_mutex_init(&w->lock);
  g_cond_init(&w->cond);
  w->refs = 2;
  *waiter = w;
  return gst_promise_new_with_change_func(waiter_changed, w, waiter_unref);
}

/* Wait for the promise. On SORA_OK *reply is the promise's reply (owned by the promise, may be NULL). */
static int promise_wait(GstPromise *promise, promise_waiter *w, const char *what, const GstStructure **reply) {
  *reply = NULL;
  gint64 deadline = g_get_monotonic_time() + PROMISE_TIMEOUT_US;
  g_mutex_lock(&w->lock);
  while (!w->done)
    if (!g_cond_wait_until(&w->cond, &w->lock, deadline)) break;
  gboolean done = w->done;
  g_mutex_unlock(&w->lock);
  waiter_unref(w);
  if (!done) {
    gst_promise_interrupt(promise);
    return sora_fail(SORA_ERR_TIMEOUT, "%s: the engine did not answer within 15 s", what);
  }
  if (gst_promise_wait(promise) != GST_PROMISE_RESULT_REPLIED)
    return sora_fail(SORA_ERR_ENGINE, "%s: the engine did not reply", what);
  const GstStructure *r = gst_promise_get_reply(promise);
  if (r && gst_structure_has_field(r, "error")) {
    GError *err = NULL;
    gst_structure_get(r, "error", G_TYPE_ERROR, &err, NULL);
    int rc = sora_fail(SORA_ERR_ENGINE, "%s: %s", what, err ? err->message : "unknown error");
    g_clear_error(&err);
    return rc;
  }
  *reply = r;
  return SORA_OK;
}

static int check_peer(sora_peer *peer) {
  sora_clear_error();
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  if (peer->closed) return sora_fail(SORA_ERR_INVALID_STATE, "peer is closed");
  return SORA_OK;
}

/* ---- webrtcbin signal handlers (engine threads: only queue events) ------- */

static void on_ice_candidate(GstElement *webrtc, guint mline, gchar *candidate, sora_peer *peer) {
  (void)webrtc;
  if (!candidate_allowed(peer, candidate)) return;
  sora_event ev = {.type = SORA_EVENT_ICE_CANDIDATE, .i0 = mline, .str0 = candidate};
  emit(peer, &ev);
}

static void on_state_notify(GObject *obj, GParamSpec *pspec, sora_peer *peer) {
  gint value = 0;
  g_object_get(obj, pspec->name, &value, NULL);
  sora_event ev = {.str0 = enum_nick(pspec->value_type, value)};
  if (strcmp(pspec->name, "ice-gathering-state") == 0)
    ev.type = SORA_EVENT_ICE_GATHERING_STATE;
  else if (strcmp(pspec->name, "ice-connection-state") == 0)
    ev.type = SORA_EVENT_ICE_CONNECTION_STATE;
  else
    ev.type = SORA_EVENT_CONNECTION_STATE;
  emit(peer, &ev);
}

static void channel_emit(sora_peer *peer, gint id, gint type, const uint8_t *data, gsize size, gint binary) {
  g_mutex_lock(&peer->lock);
  channel_slot *slot = (guint)id < peer->channels->len ? g_ptr_array_index(peer->channels, id) : NULL;
  char *label = slot ? g_strdup(slot->label) : NULL;
  gboolean remote = slot ? slot->remote : FALSE;
  gboolean skip = FALSE;
  if (slot && type == SORA_EVENT_DATA_CHANNEL_OPEN) {
    skip = slot->open_reported;
    slot->open_reported = TRUE;
  }
  g_mutex_unlock(&peer->lock);
  if (label && !skip) {
    sora_event ev = {.type = type, .i0 = id, .str0 = label, .data = data, .size = size,
                     .i1 = type == SORA_EVENT_DATA_CHANNEL_OPEN ? remote : binary};
    emit(peer, &ev);
  }
  g_free(label);
}

typedef struct {
  sora_peer *peer;
  gint id;
} channel_ref;

/* webrtcbin reports a channel it opened as open once it has sent DCEP OPEN, before the other side has the
 * channel (a server that then sends `switched` is ahead of the client's ondatachannel, issue 11). Such a
 * channel is reported open when the other side's DCEP ACK has arrived: the first message on its stream. */
static void on_channel_open(GstWebRTCDataChannel *ch, channel_ref *ref) {
  (void)ch;
  sora_peer *peer = ref->peer;
  g_mutex_lock(&peer->lock);
  channel_slot *slot = (guint)ref->id < peer->channels->len ? g_ptr_array_index(peer->channels, ref->id) : NULL;
  gboolean wait = slot && slot->await_ack && !slot->acked;
  if (slot) slot->engine_open = TRUE;
  g_mutex_unlock(&peer->lock);
  if (!wait) channel_emit(peer, ref->id, SORA_EVENT_DATA_CHANNEL_OPEN, NULL, 0, 0);
}

/* A message arrived on SCTP stream `stream` (sctpdec's src pad of that stream). */
static GstPadProbeReturn on_sctp_stream_data(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  (void)info;
  sora_peer *peer = data;
  guint stream = 0;
  if (sscanf(GST_PAD_NAME(pad), "src_%u", &stream) != 1) return GST_PAD_PROBE_REMOVE;
  GArray *ready = g_array_new(FALSE, FALSE, sizeof(gint));
  g_mutex_lock(&peer->lock);
  for (guint i = 0; i < peer->channels->len; i++) {
    channel_slot *slot = g_ptr_array_index(peer->channels, i);
    if (!slot->await_ack || slot->acked || !slot->channel) continue;
    gint id = -1;
    g_object_get(slot->channel, "id", &id, NULL);
    if (id != (gint)stream) continue;
    slot->acked = TRUE;
    if (slot->engine_open) g_array_append_val(ready, i);
  }
  g_mutex_unlock(&peer->lock);
  for (guint i = 0; i < ready->len; i++)
    channel_emit(peer, g_array_index(ready, gint, i), SORA_EVENT_DATA_CHANNEL_OPEN, NULL, 0, 0);
  g_array_free(ready, TRUE);
  return GST_PAD_PROBE_REMOVE; /* (only the first message of a stream matters) */
}

static void on_sctpdec_pad_added(GstElement *dec, GstPad *pad, sora_peer *peer) {
  (void)dec;
  if (GST_PAD_DIRECTION(pad) == GST_PAD_SRC)
    gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER, on_sctp_stream_data, peer, NULL);
}

/* webrtcbin adds its SCTP decoder when it first needs the data-channel transport. */
static void on_deep_element_added(GstBin *bin, GstBin *sub, GstElement *element, sora_peer *peer) {
  (void)bin;
  (void)sub;
  sora_dtls_certificate_apply(element);
  GstElementFactory *factory = gst_element_get_factory(element);
  if (factory && g_strcmp0(GST_OBJECT_NAME(factory), "sctpdec") == 0)
    g_signal_connect(element, "pad-added", G_CALLBACK(on_sctpdec_pad_added), peer);
}

static void on_channel_close(GstWebRTCDataChannel *ch, channel_ref *ref) {
  (void)ch;
  channel_emit(ref->peer, ref->id, SORA_EVENT_DATA_CHANNEL_CLOSE, NULL, 0, 0);
}

static void on_channel_data(GstWebRTCDataChannel *ch, GBytes *bytes, channel_ref *ref) {
  (void)ch;
  gsize size = 0;
  const uint8_t *data = bytes ? g_bytes_get_data(bytes, &size) : NULL;
  channel_emit(ref->peer, ref->id, SORA_EVENT_DATA_CHANNEL_MESSAGE, data, size, 1);
}

static void on_channel_string(GstWebRTCDataChannel *ch, gchar *str, channel_ref *ref) {
  (void)ch;
  channel_emit(ref->peer, ref->id, SORA_EVENT_DATA_CHANNEL_MESSAGE, (const uint8_t *)str, str ? strlen(str) : 0, 0);
}

static void on_channel_error(GstWebRTCDataChannel *ch, GError *error, channel_ref *ref) {
  (void)ch;
  char *msg = g_strdup_printf("data channel error: %s", error ? error->message : "unknown");
  emit_error(ref->peer, msg, "datachannel", -1);
  g_free(msg);
}

/* Register a channel and connect its signals; returns its id. */
static gint channel_register(sora_peer *peer, GstWebRTCDataChannel *channel, gboolean remote) {
  channel_slot *slot = g_new0(channel_slot, 1);
  slot->channel = gst_object_ref(channel);
  g_object_get(channel, "label", &slot->label, NULL);
  if (!slot->label) slot->label = g_strdup("");
  slot->remote = remote;
  g_mutex_lock(&peer->lock);
  slot->await_ack = !remote && peer->await_next_ack;
  peer->await_next_ack = FALSE;
  gint id = (gint)peer->channels->len;
  g_ptr_array_add(peer->channels, slot);
  g_mutex_unlock(&peer->lock);
  channel_ref *ref = g_new0(channel_ref, 1);
  ref->peer = peer;
  ref->id = id;
  g_object_set_data_full(G_OBJECT(channel), "sora-ref", ref, g_free);
  g_signal_connect(channel, "on-open", G_CALLBACK(on_channel_open), ref);
  g_signal_connect(channel, "on-close", G_CALLBACK(on_channel_close), ref);
  g_signal_connect(channel, "on-message-data", G_CALLBACK(on_channel_data), ref);
  g_signal_connect(channel, "on-message-string", G_CALLBACK(on_channel_string), ref);
  g_signal_connect(channel, "on-error", G_CALLBACK(on_channel_error), ref);
  GstWebRTCDataChannelState state;
  g_object_get(channel, "ready-state", &state, NULL);
  if (state == GST_WEBRTC_DATA_CHANNEL_STATE_OPEN) on_channel_open(channel, ref);
  return id;
}

static void on_data_channel(GstElement *webrtc, GstWebRTCDataChannel *channel, sora_peer *peer) {
  (void)webrtc;
  channel_register(peer, channel, TRUE);
}

static void on_pad_added(GstElement *webrtc, GstPad *pad, sora_peer *peer) {
  if (GST_PAD_DIRECTION(pad) != GST_PAD_SRC) return;
  GstCaps *caps = gst_pad_get_current_caps(pad);
  if (!caps) caps = gst_pad_query_caps(pad, NULL);
  const char *media = NULL;
  if (caps && gst_caps_get_size(caps) > 0) media = gst_structure_get_string(gst_caps_get_structure(caps, 0), "media");
  char *kind = g_strdup(media ? media : "unknown");
  if (caps) gst_caps_unref(caps);
  GstWebRTCRTPTransceiver *trans = NULL;
  char *mid = NULL, *msid = NULL;
  guint mline = 0;
  g_object_get(pad, "transceiver", &trans, "msid", &msid, NULL);
  if (trans) {
    g_object_get(trans, "mid", &mid, "mlineindex", &mline, NULL);
    gst_object_unref(trans);
  }
  /* With BUNDLE, 1.22 can tie a pad to the wrong transceiver: when the payload type and kind point to
   * exactly one m-line of the remote description, that m-line is the track's. */
  gint pt = -1;
  GstCaps *pcaps = gst_pad_get_current_caps(pad);
  if (pcaps && gst_caps_get_size(pcaps)) gst_structure_get_int(gst_caps_get_structure(pcaps, 0), "payload", &pt);
  if (pcaps) gst_caps_unref(pcaps);
  GstWebRTCSessionDescription *remote = NULL;
  g_object_get(webrtc, "current-remote-description", &remote, NULL);
  if (!remote) g_object_get(webrtc, "remote-description", &remote, NULL);
  if (remote && pt >= 0) {
    gint found = -1, matches = 0;
    for (guint i = 0; i < gst_sdp_message_medias_len(remote->sdp); i++) {
      const GstSDPMedia *m = gst_sdp_message_get_media(remote->sdp, i);
      if (g_strcmp0(gst_sdp_media_get_media(m), kind) != 0) continue;
      for (guint f = 0; f < gst_sdp_media_formats_len(m); f++)
        if (atoi(gst_sdp_media_get_format(m, f)) == pt) {
          if (found < 0 || (guint)i == mline) found = (gint)i;
          matches++;
          break;
        }
    }
    if (found >= 0 && (matches == 1 || (guint)found == mline)) {
      mline = (guint)found;
      g_free(mid);
      mid = g_strdup(gst_sdp_media_get_attribute_val(gst_sdp_message_get_media(remote->sdp, found), "mid"));
    }
  }
  if (remote) gst_webrtc_session_description_free(remote);
  /* Each remote track ends in a tee; sinks and forwards add branches to it later. */
  GstElement *tee = gst_element_factory_make("tee", NULL);
  g_object_set(tee, "allow-not-linked", TRUE, NULL);
  gst_bin_add(GST_BIN(peer->pipeline), tee);
  gst_element_sync_state_with_parent(tee);
  GstPad *sinkpad = gst_element_get_static_pad(tee, "sink");
  sora_track_info *info = sora_track_info_new(webrtc, sinkpad); /* before the first buffer passes */
  gst_pad_link(pad, sinkpad);
  gst_object_unref(sinkpad);
  track_slot *slot = g_new0(track_slot, 1);
  slot->info = info;
  slot->tee = gst_object_ref(tee);
  slot->caps = gst_pad_get_current_caps(pad);
  if (!slot->caps) slot->caps = gst_pad_query_caps(pad, NULL);
  slot->kind = g_strdup(kind);
  g_mutex_lock(&peer->lock);
  gint64 track_id = ++peer->next_track_id;
  slot->id = track_id;
  g_ptr_array_add(peer->tracks, slot);
  g_mutex_unlock(&peer->lock);
  sora_event ev = {.type = SORA_EVENT_TRACK, .i0 = track_id, .i1 = mline, .str0 = kind, .str1 = mid, .str2 = msid};
  emit(peer, &ev);
  g_free(kind);
  g_free(mid);
  g_free(msid);
}

static GstBusSyncReply on_bus_message(GstBus *bus, GstMessage *msg, sora_peer *peer) {
  (void)bus;
  if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR) {
    GError *err = NULL;
    gchar *debug = NULL;
    gst_message_parse_error(msg, &err, &debug);
    const char *text = err ? err->message : "unknown engine error";
    gint mline = send_branch_of(GST_MESSAGE_SRC(msg));
    char *detail = NULL;
    if (mline >= 0) { /* a send branch: name its encoder and the reason the stream stopped */
      const char *encoder = NULL;
      for (GList *l = peer->encoders; l && !encoder; l = l->next)
        if (send_branch_of(GST_OBJECT(l->data)) == mline) {
          GstElementFactory *factory = gst_element_get_factory(GST_ELEMENT(l->data));
          encoder = factory ? GST_OBJECT_NAME(factory) : NULL;
        }
      const char *reason = debug ? strstr(debug, "reason ") : NULL; /* "reason not-negotiated (-4)" */
      GString *d = g_string_new(text);
      if (encoder) g_string_append_printf(d, " [video encoder %s]", encoder);
      if (reason) g_string_append_printf(d, " (%.*s)", (int)strcspn(reason, "\n"), reason);
      detail = g_string_free(d, FALSE);
    }
    emit_error(peer, detail ? detail : text, GST_OBJECT_NAME(GST_MESSAGE_SRC(msg)), mline);
    g_free(detail);
    g_clear_error(&err);
    g_free(debug);
  }
  gst_message_unref(msg); /* a sync handler that drops a message owns it */
  return GST_BUS_DROP;
}

/* ---- lifecycle ------------------------------------------------------------ */

sora_peer *sora_peer_ref(sora_peer *peer) {
  g_atomic_int_inc(&peer->mem_refs);
  return peer;
}

static void peer_release(sora_peer *peer) {
  for (guint i = 0; i < peer->channels->len; i++) {
    channel_slot *slot = g_ptr_array_index(peer->channels, i);
    if (slot->channel) gst_object_unref(slot->channel);
    g_free(slot->label);
    g_free(slot);
  }
  g_ptr_array_free(peer->channels, TRUE);
  for (guint i = 0; i < peer->tracks->len; i++) {
    track_slot *t = g_ptr_array_index(peer->tracks, i);
    if (t->tee) gst_object_unref(t->tee);
    if (t->caps) gst_caps_unref(t->caps);
    sora_track_info_unref(t->info);
    sora_transform_release(t->transform);
    g_free(t->kind);
    g_free(t);
  }
  g_ptr_array_free(peer->tracks, TRUE);
  g_mutex_clear(&peer->lock);
  g_rw_lock_clear(&peer->op_lock);
  g_hash_table_destroy(peer->send_transforms);
  g_hash_table_destroy(peer->encoders_by_codec);
  g_hash_table_destroy(peer->decoded);
  g_hash_table_destroy(peer->send_directions);
  sora_bwe_free(peer->bwe);
  g_free(peer->local_address);
  g_free(peer);
}

sora_decode_stats *sora_peer_decode_stats(sora_peer *peer, guint32 ssrc) {
  g_mutex_lock(&peer->lock);
  sora_decode_stats *stats = g_hash_table_lookup(peer->decoded, GUINT_TO_POINTER(ssrc));
  if (!stats) {
    stats = sora_decode_stats_new(ssrc);
    g_hash_table_insert(peer->decoded, GUINT_TO_POINTER(ssrc), stats);
  }
  sora_decode_stats_ref(stats);
  g_mutex_unlock(&peer->lock);
  return stats;
}

/* Frame counts of the sinks on the inbound-rtp entries of a get-stats reply. */
static GstStructure *extend_decoded(const GstStructure *entry, guint ssrc, gpointer data) {
  sora_peer *peer = data;
  g_mutex_lock(&peer->lock);
  sora_decode_stats *stats = g_hash_table_lookup(peer->decoded, GUINT_TO_POINTER(ssrc));
  if (stats) sora_decode_stats_ref(stats);
  g_mutex_unlock(&peer->lock);
  if (!stats) return NULL;
  GstStructure *copy = gst_structure_copy(entry);
  sora_decode_stats_annotate(stats, copy);
  sora_decode_stats_unref(stats);
  return copy;
}

void sora_peer_unref(sora_peer *peer) {
  if (g_atomic_int_dec_and_test(&peer->mem_refs)) peer_release(peer);
}

static void peer_free(sora_handle_base *base) { sora_peer_unref((sora_peer *)base); }

/* NACK only what is known to be missing. By default rtpjitterbuffer also expects the packet after the last one
 * within a packet interval, asks for it again and again, and once the latency has passed declares it lost, and
 * drops it when it does arrive: a frame that takes longer than that to encode (an AV1 1280x720 key frame) lost
 * the start of the next one, so the decoder waited for a key frame and asked for one (PLI), whose encoding took
 * as long again: the stream fell to 2 key frames a second. Gaps are still NACKed as they are seen (as libwebrtc
 * does) and lost after the latency. */
static void on_new_jitterbuffer(GstElement *rtpbin, GstElement *jitterbuffer, guint session, guint ssrc,
                                gpointer data) {
  (void)rtpbin, (void)session, (void)ssrc, (void)data;
  g_object_set(jitterbuffer, "rtx-next-seqnum", FALSE, NULL);
}

/* The socket ICE chose gets a 1 MiB receive buffer (the kernel default, 208 KiB, holds ~90 packets): a data-channel
 * burst (64 x 16 KiB messages in flight) or a video key frame that arrives while the receiving thread waits for a
 * CPU overflowed it, and every packet the kernel dropped cost SCTP a retransmission and its congestion window
 * (seen as UDP receive-buffer errors; A -> server -> B data-channel throughput fell with them). Not more than
 * net.core.rmem_max allows. */
#define ICE_RECEIVE_BUFFER (1024 * 1024)

static void on_selected_pair(NiceAgent *agent, guint stream, guint component, gchar *local, gchar *remote,
                             gpointer data) {
  (void)local, (void)remote, (void)data;
  GSocket *socket = nice_agent_get_selected_socket(agent, stream, component);
  if (!socket) return;
  gint size = 0;
  if (g_socket_get_option(socket, SOL_SOCKET, SO_RCVBUF, &size, NULL) && size < 2 * ICE_RECEIVE_BUFFER)
    g_socket_set_option(socket, SOL_SOCKET, SO_RCVBUF, ICE_RECEIVE_BUFFER, NULL);
  g_object_unref(socket);
}

SORA_C_API int sora_peer_create(sora_context *ctx, const sora_peer_config *config, const sora_callbacks *callbacks,
                                sora_peer **out) {
  sora_clear_error();
  if (!ctx || !out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "context and out must not be NULL");
  *out = NULL;
  if (ctx->stopping) return sora_fail(SORA_ERR_INVALID_STATE, "context is being destroyed");
  sora_peer_config cfg = {0};
  if (config) cfg = *config;
  sora_sctp_wake_install(); /* (before any data channel of the process sends) */
  GstElement *webrtc = gst_element_factory_make("webrtcbin", NULL);
  if (!webrtc) return sora_fail(SORA_ERR_ENGINE, "cannot create webrtcbin");
  sora_peer *peer = g_new0(sora_peer, 1);
  sora_handle_init(&peer->base, ctx, callbacks, peer_free);
  peer->mem_refs = 1;
  peer->send_transforms = g_hash_table_new_full(NULL, NULL, NULL, (GDestroyNotify)sora_transform_release);
  peer->encoders_by_codec = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  peer->decoded = g_hash_table_new_full(NULL, NULL, NULL, sora_decode_stats_unref);
  peer->send_directions = g_hash_table_new(NULL, NULL);
  peer->bwe = sora_bwe_new(webrtc);
  g_mutex_init(&peer->lock);
  g_rw_lock_init(&peer->op_lock);
  peer->channels = g_ptr_array_new();
  peer->tracks = g_ptr_array_new();
  peer->loopback_only = cfg.loopback_only != 0;
  peer->local_address = g_strdup(cfg.local_address);
  peer->pipeline = gst_pipeline_new(NULL);
  peer->webrtc = webrtc;
  g_object_set(webrtc, "bundle-policy", GST_WEBRTC_BUNDLE_POLICY_MAX_BUNDLE, NULL);
  if (cfg.latency_ms) g_object_set(webrtc, "latency", cfg.latency_ms, NULL);
  if (cfg.stun_server) g_object_set(webrtc, "stun-server", cfg.stun_server, NULL);
  if (cfg.turn_server) g_object_set(webrtc, "turn-server", cfg.turn_server, NULL);
  gst_bin_add(GST_BIN(peer->pipeline), webrtc);
  sora_rtcp_sent_attach(webrtc); /* RTCP counts in the stats ("sora-rtcp-sent") */
  GstElement *rtpbin = gst_bin_get_by_name(GST_BIN(webrtc), "rtpbin");
  if (rtpbin) {
    g_signal_connect(rtpbin, "new-jitterbuffer", G_CALLBACK(on_new_jitterbuffer), NULL);
    /* Sender reports from capture time: send time needs the pipeline latency on every send branch, which branches
     * linked after the pipeline started never get. 1.22 then logs each packet and still sends RTCP; 1.26 sends no
     * RTCP at all for such a session ("generated empty RTCP messages"), so no receiver report and no PLI. */
    if (g_object_class_find_property(G_OBJECT_GET_CLASS(rtpbin), "rtcp-sync-send-time"))
      g_object_set(rtpbin, "rtcp-sync-send-time", FALSE, NULL);
    gst_object_unref(rtpbin);
  }

  GObject *ice = NULL, *again = NULL;
  g_object_get(webrtc, "ice-agent", &ice, NULL);
  if (ice) {
    /* Some 1.22 builds return the agent without a reference, others with one: probe which,
     * so the peer holds exactly one reference of its own either way. */
    guint before = ice->ref_count;
    g_object_get(webrtc, "ice-agent", &again, NULL);
    if (ice->ref_count > before)
      g_object_unref(again);
    else
      g_object_ref(ice);
    peer->ice = GST_OBJECT(ice);
    gboolean added = FALSE;
    if (peer->loopback_only) g_signal_emit_by_name(ice, "add-local-ip-address", "127.0.0.1", &added);
    if (peer->local_address) g_signal_emit_by_name(ice, "add-local-ip-address", peer->local_address, &added);
    if (g_object_class_find_property(G_OBJECT_GET_CLASS(ice), "ice-tcp"))
      g_object_set(ice, "ice-tcp", cfg.ice_tcp ? TRUE : FALSE, NULL);
    /* libnice would otherwise try UPnP port mapping, i.e. SSDP multicast on every interface. */
    GObject *agent = NULL;
    if (g_object_class_find_property(G_OBJECT_GET_CLASS(ice), "agent")) g_object_get(ice, "agent", &agent, NULL);
    if (agent) {
      if (g_object_class_find_property(G_OBJECT_GET_CLASS(agent), "upnp")) g_object_set(agent, "upnp", FALSE, NULL);
      /* Keepalives as binding requests that need an answer (RFC 7675 consent checks, as libwebrtc
       * sends): when a tick's request times out and no media came in meanwhile, libnice fails the
       * component, so a media path that dies mid-call ends as ICE/peer-connection "failed". */
      GParamSpec *spec = g_object_class_find_property(G_OBJECT_GET_CLASS(agent), "keepalive-conncheck");
      if (spec && (spec->flags & G_PARAM_WRITABLE) && !(spec->flags & G_PARAM_CONSTRUCT_ONLY))
        g_object_set(agent, "keepalive-conncheck", TRUE, NULL);
      if (NICE_IS_AGENT(agent)) g_signal_connect(agent, "new-selected-pair", G_CALLBACK(on_selected_pair), NULL);
      g_object_unref(agent);
    }
  }
  g_signal_connect(webrtc, "on-ice-candidate", G_CALLBACK(on_ice_candidate), peer);
  g_signal_connect(webrtc, "notify::ice-gathering-state", G_CALLBACK(on_state_notify), peer);
  g_signal_connect(webrtc, "notify::ice-connection-state", G_CALLBACK(on_state_notify), peer);
  g_signal_connect(webrtc, "notify::connection-state", G_CALLBACK(on_state_notify), peer);
  g_signal_connect(webrtc, "on-data-channel", G_CALLBACK(on_data_channel), peer);
  g_signal_connect(webrtc, "deep-element-added", G_CALLBACK(on_deep_element_added), peer);
  g_signal_connect(webrtc, "pad-added", G_CALLBACK(on_pad_added), peer);
  GstBus *bus = gst_pipeline_get_bus(GST_PIPELINE(peer->pipeline));
  gst_bus_set_sync_handler(bus, (GstBusSyncHandler)on_bus_message, peer, NULL);
  gst_object_unref(bus);

  if (gst_element_set_state(peer->pipeline, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
    gst_element_set_state(peer->pipeline, GST_STATE_NULL);
    if (peer->ice) gst_object_unref(peer->ice);
    gst_object_unref(peer->pipeline);
    peer_free(&peer->base);
    return sora_fail(SORA_ERR_ENGINE, "webrtcbin pipeline failed to start");
  }
  g_mutex_lock(&ctx->lock);
  ctx->peers = g_list_prepend(ctx->peers, peer);
  g_mutex_unlock(&ctx->lock);
  *out = peer;
  return SORA_OK;
}

SORA_C_API int sora_peer_close(sora_peer *peer) {
  sora_clear_error();
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_writer_lock(&peer->op_lock);
  g_mutex_lock(&peer->lock);
  gboolean was_closed = peer->closed;
  peer->closed = TRUE;
  g_mutex_unlock(&peer->lock);
  if (was_closed) {
    g_rw_lock_writer_unlock(&peer->op_lock);
    return SORA_OK;
  }
  for (;;) {
    g_mutex_lock(&peer->lock);
    sora_child *child = peer->children ? peer->children->data : NULL;
    if (child) peer->children = g_list_remove(peer->children, child);
    g_mutex_unlock(&peer->lock);
    if (!child) break;
    child->detach(child);
  }
  sora_links_detach_peer(peer->base.ctx, &peer->links);
  for (guint i = 0; i < peer->channels->len; i++) {
    channel_slot *slot = g_ptr_array_index(peer->channels, i);
    if (slot->channel) g_signal_handlers_disconnect_matched(slot->channel, G_SIGNAL_MATCH_DATA, 0, 0, NULL, NULL,
                                                            g_object_get_data(G_OBJECT(slot->channel), "sora-ref"));
  }
  sora_bwe_stop(peer->bwe);
  gst_element_set_state(peer->pipeline, GST_STATE_NULL);
  sora_bwe_free(peer->bwe); /* after the streaming threads stopped: no RTCP handler runs any more */
  peer->bwe = NULL;
  g_signal_handlers_disconnect_matched(peer->webrtc, G_SIGNAL_MATCH_DATA, 0, 0, NULL, NULL, peer);
  GstBus *bus = gst_pipeline_get_bus(GST_PIPELINE(peer->pipeline));
  gst_bus_set_sync_handler(bus, NULL, NULL, NULL);
  gst_bus_set_flushing(bus, TRUE); /* queued messages hold references to the elements */
  gst_object_unref(bus);
  g_list_free_full(peer->encoders, gst_object_unref);
  peer->encoders = NULL;
  if (peer->ice) gst_object_unref(peer->ice);
  peer->ice = NULL;
  for (guint i = 0; i < peer->channels->len; i++) {
    channel_slot *slot = g_ptr_array_index(peer->channels, i);
    g_clear_pointer(&slot->channel, gst_object_unref);
  }
  gst_object_unref(peer->pipeline);
  peer->pipeline = NULL;
  peer->webrtc = NULL;
  g_rw_lock_writer_unlock(&peer->op_lock);
  return SORA_OK;
}

SORA_C_API int sora_peer_destroy(sora_peer *peer) {
  sora_clear_error();
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  sora_context *ctx = peer->base.ctx;
  g_mutex_lock(&ctx->lock);
  gboolean listed = g_list_find(ctx->peers, peer) != NULL;
  ctx->peers = g_list_remove(ctx->peers, peer);
  g_mutex_unlock(&ctx->lock);
  if (!listed) return sora_fail(SORA_ERR_INVALID_STATE, "peer was already destroyed");
  sora_peer_close(peer);
  sora_queue_destroy(&peer->base);
  return SORA_OK;
}

void sora_peer_destroy_all(sora_context *ctx) {
  for (;;) {
    g_mutex_lock(&ctx->lock);
    sora_peer *peer = ctx->peers ? ctx->peers->data : NULL;
    g_mutex_unlock(&ctx->lock);
    if (!peer) break;
    sora_peer_destroy(peer);
  }
}

/* ---- negotiation ------------------------------------------------------------ */

static GstWebRTCRTPTransceiverDirection to_gst_direction(int32_t direction) {
  switch (direction) {
    case SORA_DIRECTION_SENDONLY: return GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_SENDONLY;
    case SORA_DIRECTION_RECVONLY: return GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_RECVONLY;
    case SORA_DIRECTION_SENDRECV: return GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_SENDRECV;
    default: return GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_INACTIVE;
  }
}

static int impl_sora_peer_add_transceiver(sora_peer *peer, const char *kind, int32_t direction, const char *caps) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (!kind || (strcmp(kind, "audio") && strcmp(kind, "video")))
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "kind must be \"audio\" or \"video\"");
  if (direction < SORA_DIRECTION_INACTIVE || direction > SORA_DIRECTION_SENDRECV)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "direction must be 0..3, got %d", direction);
  GstCaps *c = NULL;
  if (caps) {
    c = gst_caps_from_string(caps);
    if (!c) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "unparsable caps: %s", caps);
  }
  GstWebRTCRTPTransceiver *trans = NULL;
  g_signal_emit_by_name(peer->webrtc, "add-transceiver", to_gst_direction(direction), c, &trans);
  if (c) gst_caps_unref(c);
  if (!trans) return sora_fail(SORA_ERR_ENGINE, "webrtcbin refused the %s transceiver", kind);
  if (strcmp(kind, "video") == 0) g_object_set(trans, "do-nack", TRUE, NULL);
  gst_object_unref(trans);
  return SORA_OK;
}

/* The transceiver that the engine has associated with m-line `mline` (a new reference), or NULL. webrtcbin 1.22
 * associates them only when it makes the answer; later versions when the remote offer is applied. */
static GstWebRTCRTPTransceiver *associated_transceiver(sora_peer *peer, gint mline) {
  GArray *all = NULL;
  g_signal_emit_by_name(peer->webrtc, "get-transceivers", &all);
  GstWebRTCRTPTransceiver *found = NULL;
  for (guint i = 0; all && i < all->len && !found; i++) {
    GstWebRTCRTPTransceiver *t = g_array_index(all, GstWebRTCRTPTransceiver *, i);
    guint index = G_MAXUINT;
    g_object_get(t, "mlineindex", &index, NULL);
    if (index == (guint)mline) found = gst_object_ref(t);
  }
  if (all) g_array_unref(all);
  return found;
}

/* The transceiver behind webrtcbin's sink pad `pad` (a new reference), or NULL. */
static GstWebRTCRTPTransceiver *pad_transceiver(GstPad *pad) {
  GstWebRTCRTPTransceiver *trans = NULL;
  if (pad && g_object_class_find_property(G_OBJECT_GET_CLASS(pad), "transceiver"))
    g_object_get(pad, "transceiver", &trans, NULL);
  return trans;
}

/* The transceiver that sends m-line `mline`: associated with it, else behind its send pad (new ref), or NULL. */
static GstWebRTCRTPTransceiver *send_transceiver(sora_peer *peer, gint mline) {
  GstWebRTCRTPTransceiver *trans = associated_transceiver(peer, mline);
  if (trans) return trans;
  char name[32];
  g_snprintf(name, sizeof name, "sink_%d", mline);
  GstPad *pad = gst_element_get_static_pad(peer->webrtc, name);
  trans = pad_transceiver(pad);
  if (pad) gst_object_unref(pad);
  return trans;
}

static void apply_direction(sora_peer *peer, gint mline, GstWebRTCRTPTransceiver *trans) {
  g_mutex_lock(&peer->lock);
  gpointer stored = g_hash_table_lookup(peer->send_directions, GINT_TO_POINTER(mline));
  g_mutex_unlock(&peer->lock);
  if (trans && stored) g_object_set(trans, "direction", (GstWebRTCRTPTransceiverDirection)(GPOINTER_TO_INT(stored) - 1), NULL);
}

GstPad *sora_peer_request_send_pad(sora_peer *peer, gint mline, GstCaps *rtp_caps, GstWebRTCRTPTransceiver **trans_out) {
  /* The direction goes on before the pad is requested where the engine already has the m-line's transceiver
   * (webrtcbin 1.26 gives a send pad only to a transceiver that sends), and on the pad's own transceiver after
   * (1.22 makes one for the pad and associates it with the m-line in the answer). */
  GstWebRTCRTPTransceiver *trans = associated_transceiver(peer, mline);
  apply_direction(peer, mline, trans);
  /* No direction set yet (a caller that sets it after attaching, as the C ABI allows): a transceiver that does not
   * send is let send for the request (recvonly -> sendrecv, inactive -> sendonly); the caller's later
   * sora_peer_set_direction decides what the answer says. */
  GstWebRTCRTPTransceiverDirection dir = GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_NONE;
  if (trans) g_object_get(trans, "direction", &dir, NULL);
  if (trans && dir == GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_RECVONLY)
    g_object_set(trans, "direction", GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_SENDRECV, NULL);
  else if (trans && dir != GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_SENDONLY && dir != GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_SENDRECV)
    g_object_set(trans, "direction", GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_SENDONLY, NULL);
  char name[32];
  g_snprintf(name, sizeof name, "sink_%d", mline);
  GstPadTemplate *templ = gst_element_class_get_pad_template(GST_ELEMENT_GET_CLASS(peer->webrtc), "sink_%u");
  GstPad *pad = gst_element_request_pad(peer->webrtc, templ, name, rtp_caps);
  if (pad && !trans) {
    trans = pad_transceiver(pad);
    apply_direction(peer, mline, trans);
  }
  if (trans_out)
    *trans_out = trans;
  else if (trans)
    gst_object_unref(trans);
  return pad;
}

static int impl_sora_peer_set_direction(sora_peer *peer, int32_t mline, int32_t direction) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (mline < 0) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "m-line must be >= 0");
  if (direction < SORA_DIRECTION_INACTIVE || direction > SORA_DIRECTION_SENDRECV)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "direction must be 0..3, got %d", direction);
  /* An m-line of the remote description, or without one (this side offers) a transceiver's index. */
  GstWebRTCSessionDescription *remote = NULL;
  g_object_get(peer->webrtc, "remote-description", &remote, NULL);
  guint count = 0;
  gboolean has_remote = remote != NULL;
  if (remote) {
    count = gst_sdp_message_medias_len(remote->sdp);
    gst_webrtc_session_description_free(remote);
  } else {
    GArray *all = NULL;
    g_signal_emit_by_name(peer->webrtc, "get-transceivers", &all);
    count = all ? all->len : 0;
    if (all) g_array_unref(all);
  }
  if ((guint)mline >= count) return sora_fail(SORA_ERR_NOT_FOUND, "no transceiver at m-line %d", mline);
  /* Kept for the m-line's send pad (sora_peer_request_send_pad), and set now on a transceiver that exists. */
  g_mutex_lock(&peer->lock);
  g_hash_table_replace(peer->send_directions, GINT_TO_POINTER(mline), GINT_TO_POINTER(to_gst_direction(direction) + 1));
  g_mutex_unlock(&peer->lock);
  GstWebRTCRTPTransceiver *trans = send_transceiver(peer, mline);
  if (!trans && !has_remote) /* this side's own transceivers, in the order they were added */
    g_signal_emit_by_name(peer->webrtc, "get-transceiver", (gint)mline, &trans);
  apply_direction(peer, mline, trans);
  if (trans) gst_object_unref(trans);
  return SORA_OK;
}

static int impl_sora_peer_set_remote_description(sora_peer *peer, const char *type, const char *sdp) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (!type || !sdp) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "type and sdp must not be NULL");
  GstWebRTCSDPType t;
  if (strcmp(type, "offer") == 0)
    t = GST_WEBRTC_SDP_TYPE_OFFER;
  else if (strcmp(type, "answer") == 0)
    t = GST_WEBRTC_SDP_TYPE_ANSWER;
  else
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "type must be \"offer\" or \"answer\", got \"%s\"", type);
  GstSDPMessage *msg = NULL;
  gst_sdp_message_new(&msg);
  if (gst_sdp_message_parse_buffer((const guint8 *)sdp, strlen(sdp), msg) != GST_SDP_OK ||
      gst_sdp_message_medias_len(msg) == 0 || !g_str_has_prefix(sdp, "v=0")) {
    gst_sdp_message_free(msg);
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "the %s is not a valid SDP", type);
  }
  GstWebRTCSessionDescription *desc = gst_webrtc_session_description_new(t, msg);
  promise_waiter *w;
  GstPromise *promise = promise_new(&w);
  g_signal_emit_by_name(peer->webrtc, "set-remote-description", desc, promise);
  const GstStructure *reply;
  rc = promise_wait(promise, w, "set-remote-description", &reply);
  gst_promise_unref(promise);
  gst_webrtc_session_description_free(desc);
  return rc;
}

static int create_description(sora_peer *peer, gboolean offer, char **sdp_out) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (!sdp_out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "sdp_out is NULL");
  *sdp_out = NULL;
  const char *what = offer ? "create-offer" : "create-answer";
  promise_waiter *w;
  GstPromise *promise = promise_new(&w);
  g_signal_emit_by_name(peer->webrtc, what, NULL, promise);
  const GstStructure *reply;
  rc = promise_wait(promise, w, what, &reply);
  GstWebRTCSessionDescription *desc = NULL;
  if (rc == SORA_OK && reply)
    gst_structure_get(reply, offer ? "offer" : "answer", GST_TYPE_WEBRTC_SESSION_DESCRIPTION, &desc, NULL);
  gst_promise_unref(promise);
  if (rc) return rc;
  if (!desc) return sora_fail(SORA_ERR_ENGINE, "%s: webrtcbin returned no description", what);
  sora_dtls_certificate_fix_sdp(desc->sdp);
  GstPromise *set = promise_new(&w);
  g_signal_emit_by_name(peer->webrtc, "set-local-description", desc, set);
  rc = promise_wait(set, w, "set-local-description", &reply);
  gst_promise_unref(set);
  if (rc) {
    gst_webrtc_session_description_free(desc);
    return rc;
  }
  *sdp_out = gst_sdp_message_as_text(desc->sdp);
  gst_webrtc_session_description_free(desc);
  return SORA_OK;
}

static int impl_sora_peer_create_offer(sora_peer *peer, char **sdp_out) { return create_description(peer, TRUE, sdp_out); }

static int impl_sora_peer_create_answer(sora_peer *peer, char **sdp_out) {
  return create_description(peer, FALSE, sdp_out);
}

static int impl_sora_peer_get_local_description(sora_peer *peer, char **sdp_out) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (!sdp_out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "sdp_out is NULL");
  *sdp_out = NULL;
  GstWebRTCSessionDescription *desc = NULL;
  g_object_get(peer->webrtc, "current-local-description", &desc, NULL);
  if (!desc) g_object_get(peer->webrtc, "local-description", &desc, NULL);
  if (!desc) return sora_fail(SORA_ERR_INVALID_STATE, "no local description yet");
  *sdp_out = gst_sdp_message_as_text(desc->sdp);
  gst_webrtc_session_description_free(desc);
  return SORA_OK;
}

static int impl_sora_peer_add_ice_candidate(sora_peer *peer, int32_t mline, const char *candidate) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (!candidate || mline < 0) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "candidate is NULL or m-line < 0");
  const char *c = g_str_has_prefix(candidate, "a=") ? candidate + 2 : candidate;
  if (!g_str_has_prefix(c, "candidate:")) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "not an ICE candidate: %.80s", c);
  if (!candidate_allowed(peer, c)) return SORA_OK; /* off-loopback candidates are ignored, not an error */
  g_signal_emit_by_name(peer->webrtc, "add-ice-candidate", (guint)mline, c);
  return SORA_OK;
}

/* ---- send branches -------------------------------------------------------- */

/* Build elements (appsrc ! convert ! encoder ! payloader [! queue ! pacer]) and link them to webrtcbin's
 * sink_<mline>. */
static int attach_branch(sora_peer *peer, int32_t mline, GstElement **chain, gint n, GstCaps *rtp_caps) {
  GstBin *bin = GST_BIN(peer->pipeline);
  sora_mark_send_branch(chain, n, mline);
  for (gint i = 0; i < n; i++) gst_bin_add(bin, chain[i]);
  for (gint i = 0; i + 1 < n; i++) {
    if (sora_transform_is_cut(chain[i])) continue; /* the frames come back through the next element */
    if (!gst_element_link(chain[i], chain[i + 1])) {
      const char *a = GST_OBJECT_NAME(chain[i]), *b = GST_OBJECT_NAME(chain[i + 1]);
      int rc = sora_fail(SORA_ERR_ENGINE, "cannot link %s to %s", a, b);
      for (gint j = 0; j < n; j++) gst_bin_remove(bin, chain[j]);
      return rc;
    }
  }
  GstWebRTCRTPTransceiver *trans = NULL;
  GstPad *sinkpad = sora_peer_request_send_pad(peer, mline, rtp_caps, &trans);
  GstPad *srcpad = gst_element_get_static_pad(chain[n - 1], "src");
  GstPadLinkReturn link = sinkpad ? gst_pad_link(srcpad, sinkpad) : GST_PAD_LINK_REFUSED;
  gst_object_unref(srcpad);
  if (sinkpad) gst_object_unref(sinkpad);
  if (link != GST_PAD_LINK_OK) {
    if (trans) gst_object_unref(trans);
    for (gint j = 0; j < n; j++) gst_bin_remove(bin, chain[j]);
    return sora_fail(SORA_ERR_ENGINE, "webrtcbin refused a send pad for m-line %d (link result %d)", mline, link);
  }
  for (gint i = n - 1; i >= 0; i--) gst_element_sync_state_with_parent(chain[i]);
  sora_transform_start_cuts(peer->pipeline, chain, n);
  /* The answer is made before media flows: give the transceiver the caps (with our SSRC) now, so the
   * answer announces a=ssrc / a=msid as libwebrtc receivers expect. */
  if (trans) {
    GstCaps *prefs = gst_caps_copy(rtp_caps);
    GstStructure *st = gst_caps_get_structure(prefs, 0);
    gboolean video = g_strcmp0(gst_structure_get_string(st, "media"), "video") == 0;
    if (video)
      gst_structure_set(st, "rtcp-fb-nack", G_TYPE_BOOLEAN, TRUE, "rtcp-fb-nack-pli", G_TYPE_BOOLEAN, TRUE,
                        "rtcp-fb-ccm-fir", G_TYPE_BOOLEAN, TRUE, NULL);
    gst_structure_set(st, "rtcp-fb-transport-cc", G_TYPE_BOOLEAN, TRUE, NULL);
    g_object_set(trans, "codec-preferences", prefs, NULL);
    if (video) g_object_set(trans, "do-nack", TRUE, NULL); /* answer RTX when the offer has it */
    gst_caps_unref(prefs);
    gst_object_unref(trans);
  }
  return SORA_OK;
}

static int check_params(const sora_codec_params *p, int32_t mline) {
  if (!p || !p->codec) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "codec params are NULL");
  if (mline < 0) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "m-line must be >= 0");
  if (p->payload_type < 0 || p->payload_type > 127)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "payload type must be 0..127, got %d", p->payload_type);
  return SORA_OK;
}

SORA_C_API int sora_peer_set_video_encoder(sora_peer *peer, const char *codec, const char *element) {
  sora_clear_error();
  if (!codec) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "codec is NULL");
  int rc = sora_peer_enter(peer);
  if (rc) return rc;
  GstElementFactory *factory = element ? gst_element_factory_find(element) : NULL;
  if (element && !factory) {
    sora_peer_leave(peer);
    return sora_fail(SORA_ERR_UNSUPPORTED, "no engine element %s", element);
  }
  if (factory && !gst_element_factory_list_is_type(factory, GST_ELEMENT_FACTORY_TYPE_VIDEO_ENCODER)) {
    gst_object_unref(factory);
    sora_peer_leave(peer);
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "%s is not a video encoder", element);
  }
  if (factory) gst_object_unref(factory);
  char *key = g_ascii_strup(codec, -1);
  g_mutex_lock(&peer->lock);
  if (element)
    g_hash_table_replace(peer->encoders_by_codec, key, g_strdup(element));
  else
    g_hash_table_remove(peer->encoders_by_codec, key);
  g_mutex_unlock(&peer->lock);
  if (!element) g_free(key);
  sora_peer_leave(peer);
  return SORA_OK;
}

/* The element chosen for `encoding` with sora_peer_set_video_encoder (a new string), or NULL. */
static char *chosen_encoder(sora_peer *peer, const char *encoding) {
  g_mutex_lock(&peer->lock);
  char *element = g_strdup(g_hash_table_lookup(peer->encoders_by_codec, encoding));
  g_mutex_unlock(&peer->lock);
  return element;
}

/* If the application set a transform for `mline`, put its point in `slots` (2 elements); returns how many. */
static gint add_send_transform(sora_peer *peer, int32_t mline, const sora_codec_params *p, guint ssrc,
                               const char *kind, GstElement **slots) {
  sora_transform *t = send_transform(peer, mline);
  if (!t) return 0;
  char *mime = sora_mime_type(kind, p->codec);
  gint clock = p->clock_rate > 0 ? p->clock_rate : (strcmp(kind, "audio") == 0 ? 48000 : 90000);
  int rc = sora_transform_make_point(t, SORA_TRANSFORM_SENDER, mime, p->payload_type, ssrc, clock, &slots[0],
                                     &slots[1]);
  g_free(mime);
  sora_transform_release(t);
  return rc == SORA_OK ? 2 : 0;
}

/* The stream's SSRC: chosen here (not by the payloader) so the caps, and so the answer's a=ssrc lines, carry it. */
static guint set_ssrc(GstElement *pay, const sora_codec_params *p) {
  guint ssrc = p->ssrc ? (guint)p->ssrc : (g_random_int() | 1u);
  g_object_set(pay, "ssrc", ssrc, NULL);
  return ssrc;
}

static int impl_sora_peer_attach_video_source(sora_peer *peer, sora_video_source *source, int32_t mline,
                                             const sora_codec_params *p) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (!source) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "source is NULL");
  if ((rc = check_params(p, mline))) return rc;
  GString *missing = g_string_new(NULL);
  guint kbps = p->bitrate_kbps > 0 ? (guint)p->bitrate_kbps : 1000;
  GstElement *src = sora_make("appsrc", missing), *queue = sora_make("queue", missing),
             *conv = sora_make("videoconvert", missing);
  GstElement *enc = NULL, *pay = NULL, *filter = NULL, *rawfilter = NULL;
  const char *codec = p->codec;
  char *encoding = g_ascii_strup(codec, -1);
  char *chosen = strcmp(encoding, "H264") == 0 ? chosen_encoder(peer, encoding) : NULL;
  rc = sora_video_encoder_make(codec, chosen, kbps * 1000, missing, &rawfilter, &enc, &filter, &pay);
  g_free(chosen);
  if (rc) {
    g_free(encoding);
    g_string_free(missing, TRUE);
    GstElement *all[] = {src, queue, conv};
    for (guint i = 0; i < G_N_ELEMENTS(all); i++)
      if (all[i]) gst_object_unref(all[i]);
    return rc;
  }
  if (missing->len) {
    rc = sora_fail(SORA_ERR_UNSUPPORTED, "engine elements missing for %s: %s", codec, missing->str);
    GstElement *all[] = {src, queue, conv, rawfilter, enc, filter, pay};
    for (guint i = 0; i < G_N_ELEMENTS(all); i++)
      if (all[i]) gst_object_unref(all[i]);
    g_free(encoding);
    g_string_free(missing, TRUE);
    return rc;
  }
  g_string_free(missing, TRUE);
  /* Size adaptation (bwe.c, degradation preference); without videoscale the bitrate alone adapts. */
  GstElement *scaler = NULL, *scale_filter = NULL;
  GString *optional = g_string_new(NULL);
  sora_bwe_make_adapter(optional, &scaler, &scale_filter);
  g_string_free(optional, TRUE);
  g_object_set(src, "is-live", TRUE, "format", GST_FORMAT_TIME, "do-timestamp", TRUE, "max-buffers", (guint64)2,
               "block", FALSE, NULL);
  gst_util_set_object_arg(G_OBJECT(src), "leaky-type", "downstream");
  sora_set_leaky_queue(queue, 2, 0);
  g_object_set(pay, "pt", (guint)p->payload_type, "mtu", 1200, NULL);
  guint ssrc = set_ssrc(pay, p);
  GstCaps *rtp_caps = gst_caps_new_simple("application/x-rtp", "media", G_TYPE_STRING, "video", "encoding-name",
                                          G_TYPE_STRING, encoding, "payload", G_TYPE_INT, p->payload_type,
                                          "clock-rate", G_TYPE_INT, p->clock_rate > 0 ? p->clock_rate : 90000,
                                          "ssrc", G_TYPE_UINT, ssrc, NULL);
  g_free(encoding);
  guint limit_bps = 0; /* TWCC / REMB feedback, the offer's b=AS */
  sora_bwe_prepare_send(peer->webrtc, mline, p->payload_type, rtp_caps, pay, &limit_bps);
  GstElement *chain[16];
  gint n = 0;
  chain[n++] = src;
  chain[n++] = queue;
  if (rawfilter) chain[n++] = rawfilter; /* the size fit: before any element that negotiates a size */
  chain[n++] = conv;
  if (scaler) {
    chain[n++] = scaler;
    chain[n++] = scale_filter;
  }
  chain[n++] = enc;
  if (filter) chain[n++] = filter;
  n += add_send_transform(peer, mline, p, ssrc, "video", &chain[n]);
  chain[n++] = pay;
  GstElement *pace_queue = NULL, *pacer = NULL;
  sora_pacer_make(kbps * 1000, &pace_queue, &pacer);
  if (pacer) {
    chain[n++] = pace_queue;
    chain[n++] = pacer;
  }
  gst_object_ref(src);
  gst_object_ref(enc);
  rc = attach_branch(peer, mline, chain, n, rtp_caps);
  gst_caps_unref(rtp_caps);
  if (rc) {
    gst_object_unref(src);
    gst_object_unref(enc);
    return rc;
  }
  peer->encoders = g_list_prepend(peer->encoders, gst_object_ref(enc));
  sora_bwe_add_video(peer->bwe, enc, ssrc, kbps * 1000, limit_bps, scaler, scale_filter);
  sora_link *link = sora_link_video(source, peer, src, enc);
  if (!link) return sora_fail(SORA_ERR_INVALID_STATE, "video source is destroyed");
  g_mutex_lock(&peer->base.ctx->media_lock);
  peer->links = g_list_prepend(peer->links, link);
  g_mutex_unlock(&peer->base.ctx->media_lock);
  return SORA_OK;
}

static int impl_sora_peer_attach_audio_source(sora_peer *peer, sora_audio_source *source, int32_t mline,
                                             const sora_codec_params *p) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (!source) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "source is NULL");
  if ((rc = check_params(p, mline))) return rc;
  if (g_ascii_strcasecmp(p->codec, "OPUS") != 0)
    return sora_fail(SORA_ERR_UNSUPPORTED, "sending audio codec %s is not supported (only Opus)", p->codec);
  gint channels = 1, rate = 48000;
  if (sora_audio_source_caps(source, &channels, &rate)) return sora_fail(SORA_ERR_INVALID_STATE, "audio source is destroyed");
  GString *missing = g_string_new(NULL);
  GstElement *src = sora_make("appsrc", missing), *conv = sora_make("audioconvert", missing),
             *resample = sora_make("audioresample", missing), *enc = sora_make("opusenc", missing),
             *pay = sora_make("rtpopuspay", missing);
  if (missing->len) {
    rc = sora_fail(SORA_ERR_UNSUPPORTED, "engine elements missing for Opus: %s", missing->str);
    GstElement *all[] = {src, conv, resample, enc, pay};
    for (guint i = 0; i < G_N_ELEMENTS(all); i++)
      if (all[i]) gst_object_unref(all[i]);
    g_string_free(missing, TRUE);
    return rc;
  }
  g_string_free(missing, TRUE);
  GstCaps *raw = gst_caps_new_simple("audio/x-raw", "format", G_TYPE_STRING, "S16LE", "layout", G_TYPE_STRING,
                                     "interleaved", "rate", G_TYPE_INT, rate, "channels", G_TYPE_INT, channels, NULL);
  g_object_set(src, "is-live", TRUE, "format", GST_FORMAT_TIME, "do-timestamp", TRUE, "caps", raw,
               "max-bytes", (guint64)(rate * channels * 2), "block", FALSE, NULL);
  gst_util_set_object_arg(G_OBJECT(src), "leaky-type", "downstream");
  gst_caps_unref(raw);
  guint bps = p->bitrate_kbps > 0 ? (guint)p->bitrate_kbps * 1000 : 64000;
  g_object_set(enc, "bitrate", (gint)bps, "frame-size", 20, NULL);
  g_object_set(pay, "pt", (guint)p->payload_type, NULL);
  guint ssrc = set_ssrc(pay, p);
  GstCaps *rtp_caps = gst_caps_new_simple("application/x-rtp", "media", G_TYPE_STRING, "audio", "encoding-name",
                                          G_TYPE_STRING, "OPUS", "payload", G_TYPE_INT, p->payload_type,
                                          "clock-rate", G_TYPE_INT, 48000, "encoding-params", G_TYPE_STRING, "2",
                                          "ssrc", G_TYPE_UINT, ssrc, NULL);
  GstElement *chain[7] = {src, conv, resample, enc};
  gint n = 4;
  n += add_send_transform(peer, mline, p, ssrc, "audio", &chain[n]);
  chain[n++] = pay;
  gst_object_ref(src);
  rc = attach_branch(peer, mline, chain, n, rtp_caps);
  gst_caps_unref(rtp_caps);
  if (rc) {
    gst_object_unref(src);
    return rc;
  }
  sora_link *link = sora_link_audio(source, peer, src);
  if (!link) return sora_fail(SORA_ERR_INVALID_STATE, "audio source is destroyed");
  g_mutex_lock(&peer->base.ctx->media_lock);
  peer->links = g_list_prepend(peer->links, link);
  g_mutex_unlock(&peer->base.ctx->media_lock);
  return SORA_OK;
}

static int impl_sora_peer_request_key_frame(sora_peer *peer) {
  int rc = check_peer(peer);
  if (rc) return rc;
  for (GList *l = peer->encoders; l; l = l->next) {
    GstPad *pad = gst_element_get_static_pad(GST_ELEMENT(l->data), "src");
    gst_pad_send_event(pad, gst_video_event_new_upstream_force_key_unit(GST_CLOCK_TIME_NONE, TRUE, 0));
    gst_object_unref(pad);
  }
  return SORA_OK;
}

/* ---- data channels ---------------------------------------------------------- */

static int impl_sora_peer_create_data_channel(sora_peer *peer, const char *label, const sora_data_channel_init *init,
                                             int32_t *id_out) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (!label || !id_out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "label and id_out must not be NULL");
  GstStructure *opts = gst_structure_new_empty("options");
  if (init) {
    gst_structure_set(opts, "ordered", G_TYPE_BOOLEAN, init->ordered != 0, NULL);
    if (init->max_packet_life_time >= 0)
      gst_structure_set(opts, "max-packet-lifetime", G_TYPE_INT, init->max_packet_life_time, NULL);
    if (init->max_retransmits >= 0) gst_structure_set(opts, "max-retransmits", G_TYPE_INT, init->max_retransmits, NULL);
    if (init->protocol) gst_structure_set(opts, "protocol", G_TYPE_STRING, init->protocol, NULL);
    if (init->negotiated) gst_structure_set(opts, "negotiated", G_TYPE_BOOLEAN, TRUE, NULL);
    if (init->id >= 0) gst_structure_set(opts, "id", G_TYPE_INT, init->id, NULL);
  }
  GstWebRTCDataChannel *channel = NULL;
  g_signal_emit_by_name(peer->webrtc, "create-data-channel", label, opts, &channel);
  gst_structure_free(opts);
  if (!channel) return sora_fail(SORA_ERR_ENGINE, "webrtcbin refused data channel \"%s\"", label);
  gboolean negotiated = FALSE;
  g_object_get(channel, "negotiated", &negotiated, NULL);
  if (!negotiated) { /* (before it can report open: the signals are connected in channel_register) */
    g_mutex_lock(&peer->lock);
    peer->await_next_ack = TRUE;
    g_mutex_unlock(&peer->lock);
  }
  *id_out = channel_register(peer, channel, FALSE);
  gst_object_unref(channel);
  return SORA_OK;
}

static GstWebRTCDataChannel *channel_get(sora_peer *peer, int32_t id) {
  GstWebRTCDataChannel *ch = NULL;
  g_mutex_lock(&peer->lock);
  if (id >= 0 && (guint)id < peer->channels->len) {
    channel_slot *slot = g_ptr_array_index(peer->channels, id);
    if (slot->channel) ch = gst_object_ref(slot->channel);
  }
  g_mutex_unlock(&peer->lock);
  return ch;
}

static int impl_sora_peer_send_data(sora_peer *peer, int32_t channel_id, const uint8_t *data, size_t size,
                                   int32_t binary) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (!data && size) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "data is NULL");
  if (size == 0) /* GStreamer 1.22's SCTP encoder fails the whole association on an empty message */
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "empty data-channel messages cannot be sent by this engine");
  GstWebRTCDataChannel *ch = channel_get(peer, channel_id);
  if (!ch) return sora_fail(SORA_ERR_NOT_FOUND, "no data channel with id %d", channel_id);
  GstWebRTCDataChannelState state;
  g_object_get(ch, "ready-state", &state, NULL);
  if (state != GST_WEBRTC_DATA_CHANNEL_STATE_OPEN) {
    gst_object_unref(ch);
    return sora_fail(SORA_ERR_INVALID_STATE, "data channel %d is not open", channel_id);
  }
  GError *err = NULL;
  gboolean ok;
  if (binary) {
    GBytes *bytes = g_bytes_new(data, size);
    ok = gst_webrtc_data_channel_send_data_full(ch, bytes, &err);
    g_bytes_unref(bytes);
  } else {
    char *text = g_strndup((const char *)data, size);
    ok = gst_webrtc_data_channel_send_string_full(ch, text, &err);
    g_free(text);
  }
  gst_object_unref(ch);
  if (!ok) {
    rc = sora_fail(SORA_ERR_ENGINE, "send on data channel %d failed: %s", channel_id, err ? err->message : "unknown");
    g_clear_error(&err);
    return rc;
  }
  return SORA_OK;
}

static int impl_sora_peer_data_channel_buffered_amount(sora_peer *peer, int32_t channel_id, uint64_t *out) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (!out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "out is NULL");
  GstWebRTCDataChannel *ch = channel_get(peer, channel_id);
  if (!ch) return sora_fail(SORA_ERR_NOT_FOUND, "no data channel with id %d", channel_id);
  guint64 amount = 0;
  g_object_get(ch, "buffered-amount", &amount, NULL);
  gst_object_unref(ch);
  *out = amount;
  return SORA_OK;
}

static int impl_sora_peer_close_data_channel(sora_peer *peer, int32_t channel_id) {
  int rc = check_peer(peer);
  if (rc) return rc;
  GstWebRTCDataChannel *ch = channel_get(peer, channel_id);
  if (!ch) return sora_fail(SORA_ERR_NOT_FOUND, "no data channel with id %d", channel_id);
  gst_webrtc_data_channel_close(ch);
  gst_object_unref(ch);
  return SORA_OK;
}

static int impl_sora_peer_open_data_channel_count(sora_peer *peer) {
  int rc = check_peer(peer);
  if (rc) return rc;
  int count = 0;
  g_mutex_lock(&peer->lock);
  for (guint i = 0; i < peer->channels->len; i++) {
    channel_slot *slot = g_ptr_array_index(peer->channels, i);
    if (!slot->channel) continue;
    GstWebRTCDataChannelState state;
    g_object_get(slot->channel, "ready-state", &state, NULL);
    if (state == GST_WEBRTC_DATA_CHANNEL_STATE_OPEN) count++;
  }
  g_mutex_unlock(&peer->lock);
  return count;
}

/* ---- stats -------------------------------------------------------------------- */

/* DTLS/ICE transport state and certificates, which webrtcbin's get-stats leaves out. */
static GstStructure *dtls_transport_stats(sora_peer *peer) {
  GArray *transceivers = NULL;
  g_signal_emit_by_name(peer->webrtc, "get-transceivers", &transceivers);
  GstWebRTCDTLSTransport *dtls = NULL;
  for (guint i = 0; transceivers && i < transceivers->len && !dtls; i++) {
    GstWebRTCRTPTransceiver *t = g_array_index(transceivers, GstWebRTCRTPTransceiver *, i);
    GstWebRTCRTPSender *sender = NULL;
    g_object_get(t, "sender", &sender, NULL);
    if (sender) {
      g_object_get(sender, "transport", &dtls, NULL);
      gst_object_unref(sender);
    }
  }
  if (transceivers) g_array_unref(transceivers);
  if (!dtls) {
    GstWebRTCSCTPTransport *sctp = NULL;
    g_object_get(peer->webrtc, "sctp-transport", &sctp, NULL);
    if (sctp) {
      g_object_get(sctp, "transport", &dtls, NULL);
      gst_object_unref(sctp);
    }
  }
  if (!dtls) return NULL;
  GstWebRTCDTLSTransportState state;
  gchar *cert = NULL, *remote = NULL;
  GstWebRTCICETransport *ice = NULL;
  g_object_get(dtls, "state", &state, "certificate", &cert, "remote-certificate", &remote, "transport", &ice, NULL);
  GstStructure *s = gst_structure_new("sora-dtls-transport", "dtls-state", G_TYPE_STRING,
                                      enum_nick(GST_TYPE_WEBRTC_DTLS_TRANSPORT_STATE, state), NULL);
  if (ice) {
    GstWebRTCICEConnectionState ice_state;
    g_object_get(ice, "state", &ice_state, NULL);
    gst_structure_set(s, "ice-state", G_TYPE_STRING, enum_nick(GST_TYPE_WEBRTC_ICE_CONNECTION_STATE, ice_state),
                      "ice-role", G_TYPE_STRING, enum_nick(GST_TYPE_WEBRTC_ICE_ROLE, ice->role), NULL);
    gst_object_unref(ice);
  }
  if (cert) { /* ours also holds the private key (dtlscert.c): only the certificate goes out */
    char *public_part = sora_dtls_certificate_public(cert);
    gst_structure_set(s, "certificate", G_TYPE_STRING, public_part, NULL);
    g_free(public_part);
  }
  if (remote) gst_structure_set(s, "remote-certificate", G_TYPE_STRING, remote, NULL);
  g_free(cert);
  g_free(remote);
  gst_object_unref(dtls);
  return s;
}

static int impl_sora_peer_get_stats(sora_peer *peer, char **json_out) {
  int rc = check_peer(peer);
  if (rc) return rc;
  if (!json_out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "json_out is NULL");
  *json_out = NULL;
  promise_waiter *w;
  GstPromise *promise = promise_new(&w);
  g_signal_emit_by_name(peer->webrtc, "get-stats", NULL, promise);
  const GstStructure *reply;
  rc = promise_wait(promise, w, "get-stats", &reply);
  if (rc == SORA_OK) {
    GstStructure *all = reply ? gst_structure_copy(reply) : gst_structure_new_empty("stats");
    GstStructure *dtls = dtls_transport_stats(peer);
    if (dtls) {
      gst_structure_set(all, "sora-dtls-transport", GST_TYPE_STRUCTURE, dtls, NULL);
      gst_structure_free(dtls);
    }
    GstStructure *rtcp = sora_rtcp_sent_stats(peer->webrtc);
    if (rtcp) {
      gst_structure_set(all, "sora-rtcp-sent", GST_TYPE_STRUCTURE, rtcp, NULL);
      gst_structure_free(rtcp);
    }
    GstStructure *senders = sora_stats_rtp_senders(peer->webrtc);
    if (senders) {
      gst_structure_set(all, "sora-rtp-senders", GST_TYPE_STRUCTURE, senders, NULL);
      gst_structure_free(senders);
    }
    sora_bwe_annotate_stats(peer->bwe, all); /* targetBitrate, quality limitation, encoded size (bwe.c) */
    sora_stats_extend_rtp(all, "inbound-rtp", extend_decoded, peer); /* framesDecoded, decoded size, rate */
    *json_out = sora_structure_to_json(all);
    gst_structure_free(all);
  }
  gst_promise_unref(promise);
  return rc;
}

/* ---- public entry points: shared op_lock against a concurrent close ---- */

SORA_C_API int sora_peer_add_transceiver(sora_peer *peer, const char *kind, int32_t direction, const char *caps) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_add_transceiver(peer, kind, direction, caps);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_set_direction(sora_peer *peer, int32_t mline, int32_t direction) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_set_direction(peer, mline, direction);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_set_remote_description(sora_peer *peer, const char *type, const char *sdp) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_set_remote_description(peer, type, sdp);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_create_offer(sora_peer *peer, char **sdp_out) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_create_offer(peer, sdp_out);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_create_answer(sora_peer *peer, char **sdp_out) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_create_answer(peer, sdp_out);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_get_local_description(sora_peer *peer, char **sdp_out) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_get_local_description(peer, sdp_out);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_add_ice_candidate(sora_peer *peer, int32_t mline, const char *candidate) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_add_ice_candidate(peer, mline, candidate);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_attach_video_source(sora_peer *peer, sora_video_source *source, int32_t mline, const sora_codec_params *p) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_attach_video_source(peer, source, mline, p);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_attach_audio_source(sora_peer *peer, sora_audio_source *source, int32_t mline, const sora_codec_params *p) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_attach_audio_source(peer, source, mline, p);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_request_key_frame(sora_peer *peer) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_request_key_frame(peer);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_create_data_channel(sora_peer *peer, const char *label, const sora_data_channel_init *init, int32_t *id_out) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_create_data_channel(peer, label, init, id_out);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_send_data(sora_peer *peer, int32_t channel_id, const uint8_t *data, size_t size, int32_t binary) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_send_data(peer, channel_id, data, size, binary);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_data_channel_buffered_amount(sora_peer *peer, int32_t channel_id, uint64_t *out) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_data_channel_buffered_amount(peer, channel_id, out);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_close_data_channel(sora_peer *peer, int32_t channel_id) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_close_data_channel(peer, channel_id);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_open_data_channel_count(sora_peer *peer) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_open_data_channel_count(peer);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}

SORA_C_API int sora_peer_get_stats(sora_peer *peer, char **json_out) {
  if (!peer) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "peer is NULL");
  g_rw_lock_reader_lock(&peer->op_lock);
  int rc = impl_sora_peer_get_stats(peer, json_out);
  g_rw_lock_reader_unlock(&peer->op_lock);
  return rc;
}
