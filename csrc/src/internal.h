/* Internal declarations shared by the shim's translation units. */
#ifndef SORA_C_INTERNAL_H
#define SORA_C_INTERNAL_H

#define GST_USE_UNSTABLE_API 1
#include <gst/app/gstappsrc.h>
#include <gst/gst.h>
#include <gst/app/gstappsink.h>
#include <gst/rtp/gstrtpbuffer.h>
#include <gst/sdp/sdp.h>
#include <gst/video/video.h>
#include <gst/webrtc/webrtc.h>

#include "sora_c.h"

/* ---- errors (library.c) ---- */
int sora_fail(int code, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
void sora_clear_error(void);
void sora_engine_init(void);

/* ---- AV1 RTP elements (av1rtp.c) ---- */
/* Registers sorartpav1pay / sorartpav1depay (once; called by the engine start). */
void sora_register_av1_elements(void);

/* ---- dispatcher (context.c) ---- */
typedef struct sora_handle_base sora_handle_base;
typedef void (*sora_free_fn)(sora_handle_base *handle);

/* Every handle that receives events starts with this. */
struct sora_handle_base {
  sora_context *ctx;
  sora_callbacks callbacks;
  sora_free_fn free_fn;    /* frees the handle's memory after on_destroy */
  gboolean destroy_queued; /* set under ctx->lock; no event is queued afterwards */
};

struct sora_context {
  sora_handle_base base;
  GAsyncQueue *queue;
  GThread *thread;
  GMutex lock;       /* protects destroy_queued flags, the lists below */
  GMutex media_lock; /* protects source <-> peer links */
  GList *peers;
  GList *video_sources;
  GList *audio_sources;
  gboolean stopping;
};

/* Queue an event for `target`; strings and data are copied. Dropped silently
 * once the target's destroy has been queued. */
void sora_queue_event(sora_handle_base *target, const sora_event *event);
/* Queue the target's on_destroy + free; nothing is queued for it afterwards. */
void sora_queue_destroy(sora_handle_base *target);
void sora_handle_init(sora_handle_base *base, sora_context *ctx, const sora_callbacks *cb, sora_free_fn free_fn);

/* ---- media links (sources.c) ---- */
typedef struct sora_link sora_link;
struct sora_link {
  GstElement *appsrc; /* owned reference */
  GstElement *encoder; /* owned reference, video only */
  sora_peer *peer;
  sora_video_source *video;
  sora_audio_source *audio;
  gint last_width, last_height; /* caps currently set on appsrc */
  gboolean i420;
};
/* Detach every link of `peer` from its sources (takes ctx->media_lock). */
void sora_links_detach_peer(sora_context *ctx, GList **links);
/* Create the link for a source and register it (takes ctx->media_lock). */
sora_link *sora_link_video(sora_video_source *src, sora_peer *peer, GstElement *appsrc, GstElement *encoder);
sora_link *sora_link_audio(sora_audio_source *src, sora_peer *peer, GstElement *appsrc);
int sora_audio_source_caps(sora_audio_source *src, gint *channels, gint *rate);
void sora_source_destroy_all(sora_context *ctx);

/* ---- peers (peer.c) ---- */
/* Something attached to a peer (a sink or a forward); detach() runs once when the peer closes. */
typedef struct sora_child sora_child;
struct sora_child {
  void (*detach)(sora_child *child);
};
void sora_peer_destroy_all(sora_context *ctx);
GstElement *sora_peer_pipeline(sora_peer *peer);
GstElement *sora_peer_webrtc(sora_peer *peer);
sora_context *sora_peer_context(sora_peer *peer);
/* Hold the peer open for an operation (shared lock); sora_peer_leave releases it. */
int sora_peer_enter(sora_peer *peer);
void sora_peer_leave(sora_peer *peer);
/* References to a remote track's tee and RTP caps, and a copy of its kind. */
int sora_peer_find_track(sora_peer *peer, gint64 id, GstElement **tee, GstCaps **caps, char **kind);
/* Keep the peer's memory (not the connection) alive for a child that points at it; unref releases. */
sora_peer *sora_peer_ref(sora_peer *peer);
void sora_peer_unref(sora_peer *peer);
void sora_peer_add_child(sora_peer *peer, sora_child *child);
gboolean sora_peer_remove_child(sora_peer *peer, sora_child *child);
/* Register a send path built outside peer.c: the peer frees `link` when it closes and sends key-frame
 * requests to `encoder` (an owned reference, released at close); either may be NULL. */
void sora_peer_add_send(sora_peer *peer, sora_link *link, GstElement *encoder);

/* ---- stats (stats.c) ---- */
char *sora_structure_to_json(const GstStructure *s);

#endif
