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

/* dtlscert.c: the process's ECDSA P-256 DTLS certificate (made by sora_context_create) */
void sora_dtls_certificate_init(void);
void sora_dtls_certificate_apply(GstElement *element); /* from the peer's deep-element-added */
void sora_dtls_certificate_fix_sdp(GstSDPMessage *sdp);  /* a local description, before it is set */
char *sora_dtls_certificate_public(const char *pem);    /* the certificate alone, without the key */

/* sctpwake.c: the sctp plugin's 100 ms sleep on a full send buffer capped at 2 ms (once per process; says how many
 * call slots it redirected in a GST_DEBUG line). */
void sora_sctp_wake_install(void);

/* ---- AV1 RTP elements (av1rtp.c) ---- */
/* Registers sorartpav1pay / sorartpav1depay (once; called by the engine start). */
void sora_register_av1_elements(void);
/* Registers soradav1dec, the dav1d AV1 decoder (once; dav1ddec.c). */
void sora_register_dav1d(void);
/* Registers soraav1enc, the libaom AV1 encoder with libwebrtc's settings (once; aomenc.c). */
void sora_register_aomenc(void);

/* ---- element helpers (elements.c) ---- */
/* A new element of `factory`, or NULL with the factory's name appended to the comma-separated `missing`. */
GstElement *sora_make(const char *factory, GString *missing);
/* Make `queue` drop its oldest buffers beyond `max_buffers` / `max_bytes` (0: no bound), never bounded in time. */
void sora_set_leaky_queue(GstElement *queue, guint max_buffers, guint max_bytes);

/* ---- video encoders (encoder.c) ---- */
/* The encoder for `codec` (VP8, VP9, H264, H265, AV1; `element` overrides H.264's x264enc), at `bps`, with what
 * goes before it (`raw`: a bin that fits every frame size to what the encoder takes, to go before any element
 * that negotiates a size) and after it (`post`: a caps
 * filter, or NULL), and the RTP payloader. Missing factories are appended to `missing`; an unknown codec is SORA_ERR_UNSUPPORTED. */
/* The libvpx version the vpx elements use, as 0xMMmmpp (0: unknown). */
guint sora_libvpx_version(void);
int sora_video_encoder_make(const char *codec, const char *element, guint bps, GString *missing, GstElement **raw,
                            GstElement **enc, GstElement **post, GstElement **pay);

/* ---- RTP pacer (pacer.c) ---- */
/* Registers sorapacer (once). */
void sora_register_pacer(void);
/* A "queue ! sorapacer" pair for the end of a video send branch, paced at 2.5 x `stream_bps` (both NULL when
 * the elements cannot be made: the branch then goes unpaced). */
void sora_pacer_make(guint stream_bps, GstElement **queue, GstElement **pacer);

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
  GList *transforms;
  gboolean stopping;
  gboolean stopped; /* set under lock when the dispatcher's STOP is queued */
  gint refs;        /* the owner + one per handle not yet freed (context.c) */
};
sora_context *sora_context_ref(sora_context *ctx);
void sora_context_unref(sora_context *ctx);

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
  /* Audio: the running time at the last resync and the samples sent since (see sora_audio_source_push). */
  GstClockTime audio_origin;
  guint64 audio_samples;
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
/* Mark the elements of the send branch of `mline`: an engine error from one of them (or from inside one) is
 * reported with that m-line, and the connection ends instead of sending nothing from then on. */
void sora_mark_send_branch(GstElement **chain, gint n, gint mline);
/* Request webrtcbin's send pad for m-line `mline`, with the direction set by sora_peer_set_direction put on its
 * transceiver (before the request where the engine has one already); *trans_out (optional): that transceiver
 * (a new reference, may be NULL). Returns the pad (a new reference) or NULL. */
GstPad *sora_peer_request_send_pad(sora_peer *peer, gint mline, GstCaps *rtp_caps, GstWebRTCRTPTransceiver **trans_out);
sora_context *sora_peer_context(sora_peer *peer);
/* Hold the peer open for an operation (shared lock); sora_peer_leave releases it. */
int sora_peer_enter(sora_peer *peer);
void sora_peer_leave(sora_peer *peer);
/* References to a remote track's tee and RTP caps, and a copy of its kind. */
int sora_peer_find_track(sora_peer *peer, gint64 id, GstElement **tee, GstCaps **caps, char **kind);
/* What the first RTP packets of a remote track tell (tracks.c): SSRC and simulcast rid. */
typedef struct sora_track_info sora_track_info;
/* Start reading them from the buffers passing `pad` (a probe that removes itself); one reference for the caller. */
sora_track_info *sora_track_info_new(GstElement *webrtc, GstPad *pad);
sora_track_info *sora_track_info_ref(sora_track_info *info);
void sora_track_info_unref(sora_track_info *info);
/* A reference to the info of remote track `id` (NULL if it has none), or SORA_ERR_NOT_FOUND. */
int sora_peer_find_track_info(sora_peer *peer, gint64 id, sora_track_info **info);
/* Keep the peer's memory (not the connection) alive for a child that points at it; unref releases. */
sora_peer *sora_peer_ref(sora_peer *peer);
void sora_peer_unref(sora_peer *peer);
void sora_peer_add_child(sora_peer *peer, sora_child *child);
gboolean sora_peer_remove_child(sora_peer *peer, sora_child *child);
/* Register a send path built outside peer.c: the peer frees `link` when it closes and sends key-frame
 * requests to `encoder` (an owned reference, released at close); either may be NULL. */
void sora_peer_add_send(sora_peer *peer, sora_link *link, GstElement *encoder);

/* ---- forwarded streams (fwdout.c) ---- */
/* The RTP stream one destination m-line sends while forwards feed it in turn (see fwdout.c). */
typedef struct sora_fwd_out sora_fwd_out;
sora_fwd_out *sora_fwd_out_new(guint32 ssrc, gint clock_rate);
sora_fwd_out *sora_fwd_out_ref(sora_fwd_out *out);
void sora_fwd_out_unref(gpointer out);
/* `owner` feeds the stream from now on; key-frame requests go to `tee`; `encoding` names the codec. */
void sora_fwd_out_claim(sora_fwd_out *out, gpointer owner, GstElement *tee, const char *encoding);
/* `owner` stops feeding it (no-op if another forward took over). */
void sora_fwd_out_release(sora_fwd_out *out, gpointer owner);
gboolean sora_fwd_out_is_free(sora_fwd_out *out);
guint32 sora_fwd_out_ssrc(sora_fwd_out *out);
/* A reference to the current owner's source tee, or NULL. */
GstElement *sora_fwd_out_key_tee(sora_fwd_out *out);
/* One packet of `owner`: FALSE drops it; else *buf may be replaced by a rewritten copy (SSRC, sequence number,
 * timestamp, the payload type unless `payload_type` < 0, header extensions removed). *key_tee: a tee reference
 * to ask for a key frame. */
gboolean sora_fwd_out_process(sora_fwd_out *out, gpointer owner, GstBuffer **buf, gint payload_type,
                              GstElement **key_tee);

/* ---- RTCP a peer sends (rtcpfb.c) ---- */
/* Count the RTCP packets `webrtc` sends by kind (call once, right after creating it). */
void sora_rtcp_sent_attach(GstElement *webrtc);
/* The counts as a "sora-rtcp-sent" structure for the statistics (new), or NULL if not attached. */
GstStructure *sora_rtcp_sent_stats(GstElement *webrtc);
/* Count of every stream the peer sends, from the RTP sessions ("sora-rtp-senders", fields "ssrc-<n>"; stats.c). */
GstStructure *sora_stats_rtp_senders(GstElement *webrtc);

/* ---- frames handed to the application (receive.c, transform.c) ---- */
/* Every `ref` of a frame event starts with this: sora_c_release calls `release`. */
typedef struct sora_frame_head {
  void (*release)(void *ref);
} sora_frame_head;

/* ---- encoded-frame transforms (transform.c) ---- */
/* An appsink (*sink_out) and an appsrc (*src_out) to put in a branch where the frames leave and come back. */
int sora_transform_make_point(sora_transform *t, int32_t direction, const char *mime_type, int32_t payload_type,
                              uint32_t ssrc, int32_t clock_rate, GstElement **sink_out, GstElement **src_out);
/* TRUE for the appsink of a point: a branch must not link it to the next element. */
gboolean sora_transform_is_cut(GstElement *element);
/* After a branch's elements were synced with `pipeline`: put any cut in `chain` in the pipeline's target state. */
void sora_transform_start_cuts(GstElement *pipeline, GstElement **chain, gint n);
/* "video/VP8", "audio/opus", ... (a new string). */
char *sora_mime_type(const char *kind, const char *codec);
/* A reference to the transform set for remote track `id` (sora_peer_set_track_transform), or NULL. */
sora_transform *sora_peer_track_transform(sora_peer *peer, gint64 id);
sora_transform *sora_transform_ref(sora_transform *t);
/* Destroy every transform the application did not destroy (context destroy). */
void sora_transform_destroy_all(sora_context *ctx);
void sora_transform_release(sora_transform *t);

/* ---- bandwidth estimation and degradation preference (bwe.c) ---- */
typedef struct sora_bwe sora_bwe;
/* The peer's controller (idle until a video branch or a REMB to send is registered). */
sora_bwe *sora_bwe_new(GstElement *webrtc);
/* Stop its thread and engine signal handlers (before the pipeline stops); free releases the rest (after). */
void sora_bwe_stop(sora_bwe *bwe);
void sora_bwe_free(sora_bwe *bwe);
sora_bwe *sora_peer_bwe(sora_peer *peer);
/* For a send branch of remote-offer m-line `mline`: add the offer's TWCC extmap and goog-remb feedback to
 * `rtp_caps` and the TWCC extension to `payloader` (may be NULL); *limit_bps (may be NULL): the m-line's b=AS /
 * b=TIAS in bit/s, 0 if none. Returns the TWCC extmap id or 0. */
gint sora_bwe_prepare_send(GstElement *webrtc, int32_t mline, gint payload_type, GstCaps *rtp_caps,
                           GstElement *payloader, guint *limit_bps);
/* Add the TWCC header extension with `id` to a payloader. */
void sora_bwe_add_twcc_extension(GstElement *payloader, gint id);
/* A videoscale and a capsfilter for a branch's size adaptation (put them before the encoder); FALSE if missing. */
gboolean sora_bwe_make_adapter(GString *missing, GstElement **scaler, GstElement **filter);
/* Register a single-layer video branch: its encoder (set up for `bps`, adapted up to `bps` or `limit_bps` if
 * lower and not 0), SSRC, and the scaler and filter from sora_bwe_make_adapter (or NULL: bitrate only). */
void sora_bwe_add_video(sora_bwe *bwe, GstElement *encoder, guint32 ssrc, guint bps, guint limit_bps,
                        GstElement *scaler, GstElement *scale_filter);
/* Simulcast: a new group id, then each active layer with its priority (0 = first served) and the element
 * where its frames enter (a layer left without bandwidth drops them there). */
gint sora_bwe_new_group(sora_bwe *bwe);
void sora_bwe_add_layer(sora_bwe *bwe, gint group, gint priority, GstElement *encoder, guint32 ssrc, guint max_bps,
                        GstElement *input);
/* Add the controller's fields to our outbound-rtp entries of a get-stats reply, and a "sora-bwe" entry. */
void sora_bwe_annotate_stats(sora_bwe *bwe, GstStructure *all);

/* ---- what the sinks decode, per remote SSRC (receive.c) ---- */
typedef struct sora_decode_stats sora_decode_stats;
sora_decode_stats *sora_decode_stats_new(guint32 ssrc);
sora_decode_stats *sora_decode_stats_ref(sora_decode_stats *stats);
void sora_decode_stats_unref(gpointer stats);
/* A reference to the peer's counters for `ssrc` (made on first use; kept until the peer is freed). */
sora_decode_stats *sora_peer_decode_stats(sora_peer *peer, guint32 ssrc);
/* Add "sora-frames-decoded", "sora-key-frames-decoded", the decoded size and rate to an inbound-rtp entry. */
void sora_decode_stats_annotate(sora_decode_stats *stats, GstStructure *entry);

/* ---- stats (stats.c) ---- */
char *sora_structure_to_json(const GstStructure *s);
/* For each `type` entry ("outbound-rtp", "inbound-rtp") of the engine stats `all` that has an SSRC: `fn` returns
 * an extended copy of it (which takes its place, the order of `all` unchanged), or NULL to leave it. */
typedef GstStructure *(*sora_stats_extend_fn)(const GstStructure *entry, guint ssrc, gpointer data);
void sora_stats_extend_rtp(GstStructure *all, const char *type, sora_stats_extend_fn fn, gpointer data);

#endif
