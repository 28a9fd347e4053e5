/*
 * sora_c.h -- the C ABI of the sora_sdk engine shim (libsora_c).
 *
 * This header is a versioned contract. The Python package loads any library
 * that exports these symbols (SORA_SDK_LIBRARY=/path/to/libsora_c.so) and
 * refuses one whose major ABI version differs. tests/abi/ checks that a build
 * honours the rules written here.
 *
 * Rules that hold for every function:
 *  - Functions return SORA_OK (0) or a negative SORA_ERR_* code. On error a
 *    human-readable message is available from sora_c_last_error() on the same
 *    thread. Every function that can fail clears that message when it starts,
 *    so after a successful call sora_c_last_error() returns "".
 *  - Handles are opaque. Each handle has exactly one owner, who releases it
 *    with the matching *_destroy function. Passing NULL where a handle is
 *    expected returns SORA_ERR_INVALID_ARGUMENT; it never crashes.
 *  - Strings passed in are UTF-8, NUL-terminated and only borrowed for the
 *    duration of the call. Strings returned through `char **` out-parameters
 *    are owned by the caller and released with sora_c_free().
 *  - Events are delivered on one dispatcher thread per context, in order.
 *    No callback is ever invoked on an engine streaming thread, and no
 *    callback of a handle runs after that handle's on_destroy.
 *  - Every call may block briefly; none of them needs the caller to hold any
 *    lock, and none calls back into the caller synchronously.
 *
 * Ownership (what keeps what alive):
 *  - The context owns its peers, sources and transforms: sora_context_destroy
 *    destroys those still alive (each gets its on_destroy) and their handles
 *    must not be used afterwards. Sinks are the exception: a sink stays its
 *    owner's to destroy, before or after the context; it keeps the part of
 *    the context it needs alive by itself, and a sink destroyed after the
 *    context gets its on_destroy on the destroying thread or on its own.
 *  - Memory goes with the last reference, never while a thread can reach it:
 *    the context's once no sink or handle needs it, a sink's once its thread
 *    has left its last callback, a peer's once no sink or forward refers to it.
 *  - Any function may be called from inside any callback, with one exception:
 *    sora_context_destroy from that context's own dispatcher thread (it
 *    returns SORA_ERR_INVALID_STATE). sora_sink_destroy inside the sink's own
 *    frame callback returns at once; from another thread it waits at most
 *    5 s for a callback in progress to return (a callback that blocks longer
 *    is left to finish, and on_destroy waits for it).
 */
#ifndef SORA_C_H
#define SORA_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SORA_C_API __declspec(dllexport)
#else
#define SORA_C_API __attribute__((visibility("default")))
#endif

/* ABI version: major changes break callers, minor changes only add. */
#define SORA_C_ABI_MAJOR 1
#define SORA_C_ABI_MINOR 5

/* ---- error codes ------------------------------------------------------ */
#define SORA_OK 0
#define SORA_ERR_INVALID_ARGUMENT (-1) /* a NULL handle, bad value or bad string */
#define SORA_ERR_INVALID_STATE (-2)    /* the handle is closed or not ready */
#define SORA_ERR_ENGINE (-3)           /* the media engine refused or failed */
#define SORA_ERR_TIMEOUT (-4)          /* the engine did not answer in time */
#define SORA_ERR_NOT_FOUND (-5)        /* no such element, channel or track */
#define SORA_ERR_UNSUPPORTED (-6)      /* codec or feature not available */
#define SORA_ERR_NO_MEMORY (-7)        /* allocation failed */

/* ---- directions, used for transceivers -------------------------------- */
#define SORA_DIRECTION_INACTIVE 0
#define SORA_DIRECTION_SENDONLY 1
#define SORA_DIRECTION_RECVONLY 2
#define SORA_DIRECTION_SENDRECV 3

/* ---- log severities (same numbers as SoraLoggingSeverity) --------------- */
#define SORA_LOG_VERBOSE 0
#define SORA_LOG_INFO 1
#define SORA_LOG_WARNING 2
#define SORA_LOG_ERROR 3
#define SORA_LOG_NONE 4

/* ---- events --------------------------------------------------------------
 * One struct carries every event; which fields are meaningful depends on
 * `type`. Pointers inside are valid only during the callback.           */
#define SORA_EVENT_POST 1                 /* i0: token given to sora_context_post */
#define SORA_EVENT_ICE_CANDIDATE 2        /* i0: m-line index, str0: "candidate:..." */
#define SORA_EVENT_ICE_GATHERING_STATE 3  /* str0: new | gathering | complete */
#define SORA_EVENT_ICE_CONNECTION_STATE 4 /* str0: new | checking | connected | completed | failed | disconnected | closed */
#define SORA_EVENT_CONNECTION_STATE 5     /* str0: new | connecting | connected | disconnected | failed | closed */
#define SORA_EVENT_TRACK 6                /* i0: track id, str0: kind, str1: mid, str2: msid stream id, i1: m-line */
#define SORA_EVENT_DATA_CHANNEL_OPEN 7    /* i0: channel id, str0: label, i1: 1 if opened by the remote side
                                             (one opened here: once the remote side acknowledged it, DCEP ACK) */
#define SORA_EVENT_DATA_CHANNEL_MESSAGE 8 /* i0: channel id, str0: label, data/size: payload, i1: 1 binary, 0 text */
#define SORA_EVENT_DATA_CHANNEL_CLOSE 9   /* i0: channel id, str0: label */
#define SORA_EVENT_ERROR 10               /* str0: engine error message, str1: element name,
                                             i0: 1 + the m-line of the send branch that failed, or 0 */
#define SORA_EVENT_RTP_PACKET 11          /* reserved */
#define SORA_EVENT_VIDEO_FRAME 12         /* sink thread: data/size: pixels, i0: width, i1: height, i2: pts us, ref: frame */
#define SORA_EVENT_AUDIO_FRAME 13         /* sink thread: data/size: interleaved int16, i0: rate, i1: channels, i2: pts us, ref */
#define SORA_EVENT_ENCODED_FRAME 14       /* transform thread: data/size: encoded frame, i0: 1 key frame, i1: direction, i2: pts us, str0: mime type, ref */

typedef struct sora_event {
  int32_t type;
  int64_t i0;
  int64_t i1;
  const char *str0;
  const char *str1;
  const char *str2;
  const uint8_t *data;
  size_t size;
  int64_t i2;
  void *ref; /* frame events only: a reference the callee owns; keeps `data` valid until sora_c_release(ref) */
} sora_event;

/* Callbacks of one handle. on_event runs on the dispatcher thread;
 * on_destroy runs there exactly once, after the handle's last event.      */
typedef struct sora_callbacks {
  void *user_data;
  void (*on_event)(void *user_data, const sora_event *event);
  void (*on_destroy)(void *user_data);
} sora_callbacks;

/* ---- opaque handles ---------------------------------------------------- */
typedef struct sora_context sora_context;           /* engine + dispatcher thread */
typedef struct sora_peer sora_peer;                 /* one webrtcbin peer connection */
typedef struct sora_video_source sora_video_source; /* frames pushed by the application */
typedef struct sora_audio_source sora_audio_source; /* samples pushed by the application */
typedef struct sora_sink sora_sink;                 /* decoded frames of one remote track */
typedef struct sora_forward sora_forward;           /* one remote track's RTP re-sent by another peer (SFU) */
typedef struct sora_transform sora_transform;       /* the application's encoded-frame transform */

/* Peer configuration; zero-initialise, then set what you need. */
typedef struct sora_peer_config {
  int32_t loopback_only;     /* 1: gather and accept ICE candidates on 127.0.0.1 only */
  const char *local_address; /* gather on this address only and accept candidates from its /24 (a netns veth), or NULL */
  const char *stun_server;   /* "stun://host:port" or NULL */
  const char *turn_server;   /* "turn(s)://user:pass@host:port" or NULL */
  int32_t ice_tcp;           /* 1: also gather TCP candidates */
  uint32_t latency_ms;       /* receive jitter-buffer latency; 0 = engine default */
} sora_peer_config;

/* Send-side codec setup for one m-line (values as in the negotiated SDP). */
typedef struct sora_codec_params {
  const char *codec;         /* "VP8", "VP9", "AV1", "H264", "H265", "OPUS" */
  int32_t payload_type;      /* RTP payload type from the offer */
  int32_t clock_rate;        /* 90000 for video, 48000 for Opus */
  int32_t channels;          /* audio channels on the wire (Opus: 2) */
  int32_t bitrate_kbps;      /* target bitrate; 0 = engine default */
  const char *fmtp;          /* the offer's fmtp line for this payload or NULL */
  int32_t ssrc;              /* 0 = random */
} sora_codec_params;

/* Encoded-frame directions (same numbers as SoraTransformableFrameDirection). */
#define SORA_TRANSFORM_RECEIVER 1
#define SORA_TRANSFORM_SENDER 2

/* What is known about one encoded frame of a transform (SORA_EVENT_ENCODED_FRAME). */
typedef struct sora_encoded_frame_info {
  int32_t direction;      /* SORA_TRANSFORM_RECEIVER or SORA_TRANSFORM_SENDER */
  int32_t key_frame;      /* 1 for a key frame (always 1 for audio) */
  int32_t payload_type;   /* RTP payload type of the stream */
  uint32_t ssrc;          /* RTP SSRC of the stream (0 if unknown) */
  int32_t clock_rate;     /* RTP clock rate */
  uint32_t rtp_timestamp; /* the frame's clock time in RTP ticks */
  int32_t width, height;  /* video frame size when the stream tells it, else 0 */
  int64_t pts_us;         /* the frame's clock time in microseconds, or -1 */
  const char *mime_type;  /* "video/VP8", "audio/opus", ...; valid while the frame is */
} sora_encoded_frame_info;

/* Data-channel options; -1 means "not set" for the integer fields. */
typedef struct sora_data_channel_init {
  int32_t ordered;              /* 1 ordered (default), 0 unordered */
  int32_t max_packet_life_time; /* ms, or -1 */
  int32_t max_retransmits;      /* count, or -1 */
  const char *protocol;         /* sub-protocol or NULL */
  int32_t negotiated;           /* 1: pre-negotiated with `id` */
  int32_t id;                   /* SCTP stream id, or -1 */
} sora_data_channel_init;

/* Sink formats. */
#define SORA_SINK_VIDEO_BGR 0  /* packed BGR, rows of width*3 bytes */
#define SORA_SINK_VIDEO_I420 1 /* planar Y, U, V, contiguous */
#define SORA_SINK_AUDIO_S16 2  /* interleaved int16 */

/* Sink configuration; zero-initialise, then set what you need. */
typedef struct sora_sink_config {
  int32_t format;      /* SORA_SINK_* */
  int32_t capacity;    /* frames queued before the oldest is dropped; 0 = 2 video / 50 audio */
  int32_t sample_rate; /* audio: output rate, 0 = the track's */
  int32_t channels;    /* audio: output channels, 0 = the track's */
} sora_sink_config;

/* ---- library ----------------------------------------------------------- */
/* ABI version of this library as (major << 16) | minor. */
SORA_C_API uint32_t sora_c_abi_version(void);
/* Message of the last failed call on this thread ("" if none); valid until the next failing call on this thread. */
SORA_C_API const char *sora_c_last_error(void);
/* Release a frame reference received in an event (`event->ref`); NULL is ignored. Any thread. */
SORA_C_API void sora_c_release(void *ref);
/* Human-readable engine name and version, e.g. "GStreamer 1.22.0 webrtcbin". */
SORA_C_API const char *sora_c_engine_version(void);
/* 1 if the named engine element (encoder, decoder, ...) can be created, else 0. */
SORA_C_API int sora_c_element_available(const char *name);
/* Since 1.5: start the engine, DTLS certificate and transport plugins on a thread, return at once (optional). */
SORA_C_API void sora_c_prepare(void);
/* Release a string or buffer returned by this library; NULL is ignored. */
SORA_C_API void sora_c_free(void *ptr);
/* Route engine logs of at least `severity` (SORA_LOG_*) to stderr; SORA_LOG_NONE turns them off. */
SORA_C_API int sora_c_set_log_severity(int32_t severity);
/* Write one line to the engine log at `severity`. */
SORA_C_API int sora_c_log(int32_t severity, const char *message);

/* ---- context ----------------------------------------------------------- */
/* Create a context and start its dispatcher thread; `callbacks` receives SORA_EVENT_POST. */
SORA_C_API int sora_context_create(const sora_callbacks *callbacks, sora_context **out);
/* Queue a SORA_EVENT_POST with `token` to the context's dispatcher thread. */
SORA_C_API int sora_context_post(sora_context *ctx, int64_t token);
/* 1 if the calling thread is this context's dispatcher thread, else 0. */
SORA_C_API int sora_context_is_dispatcher_thread(sora_context *ctx);
/* Destroy peers, sources and transforms still alive, deliver queued events, stop and join the dispatcher. */
SORA_C_API int sora_context_destroy(sora_context *ctx);

/* ---- peer connection --------------------------------------------------- */
/* Create a peer connection (a running webrtcbin pipeline). */
SORA_C_API int sora_peer_create(sora_context *ctx, const sora_peer_config *config,
                                const sora_callbacks *callbacks, sora_peer **out);
/* Add a transceiver (offerer side). `caps` is a GStreamer caps string for the codecs offered, or NULL. */
SORA_C_API int sora_peer_add_transceiver(sora_peer *peer, const char *kind, int32_t direction, const char *caps);
/* Change the direction of the transceiver at `mline`. */
SORA_C_API int sora_peer_set_direction(sora_peer *peer, int32_t mline, int32_t direction);
/* Apply a remote description; `type` is "offer" or "answer". Blocks until applied. */
SORA_C_API int sora_peer_set_remote_description(sora_peer *peer, const char *type, const char *sdp);
/* Create an offer, apply it as the local description and return its SDP. */
SORA_C_API int sora_peer_create_offer(sora_peer *peer, char **sdp_out);
/* Create an answer, apply it as the local description and return its SDP. */
SORA_C_API int sora_peer_create_answer(sora_peer *peer, char **sdp_out);
/* Return the current local description, including gathered candidates. */
SORA_C_API int sora_peer_get_local_description(sora_peer *peer, char **sdp_out);
/* Add a remote ICE candidate ("candidate:..." with or without "a=") for `mline`. */
SORA_C_API int sora_peer_add_ice_candidate(sora_peer *peer, int32_t mline, const char *candidate);
/* Send frames of `source` on the transceiver at `mline`, encoded as `params` says. */
SORA_C_API int sora_peer_attach_video_source(sora_peer *peer, sora_video_source *source, int32_t mline,
                                             const sora_codec_params *params);
/* Encode `codec` ("H264", ...) with engine element `element` ("openh264enc") in video branches attached later; NULL: the default. */
SORA_C_API int sora_peer_set_video_encoder(sora_peer *peer, const char *codec, const char *element);
/* Send samples of `source` on the transceiver at `mline`, encoded as `params` says. */
SORA_C_API int sora_peer_attach_audio_source(sora_peer *peer, sora_audio_source *source, int32_t mline,
                                             const sora_codec_params *params);
/* Ask the encoders of this peer for a key frame. */
SORA_C_API int sora_peer_request_key_frame(sora_peer *peer);
/* Create a data channel; its id is written to `id_out`. */
SORA_C_API int sora_peer_create_data_channel(sora_peer *peer, const char *label, const sora_data_channel_init *init,
                                             int32_t *id_out);
/* Send one message on an open data channel; `binary` 1 sends binary, 0 sends UTF-8 text. */
SORA_C_API int sora_peer_send_data(sora_peer *peer, int32_t channel_id, const uint8_t *data, size_t size,
                                   int32_t binary);
/* Bytes queued on data channel `channel_id` and not yet handed to SCTP (*out), as RTCDataChannel.bufferedAmount. */
SORA_C_API int sora_peer_data_channel_buffered_amount(sora_peer *peer, int32_t channel_id, uint64_t *out);
/* Close a data channel. */
SORA_C_API int sora_peer_close_data_channel(sora_peer *peer, int32_t channel_id);
/* Number of data channels of this peer that are open now. */
SORA_C_API int sora_peer_open_data_channel_count(sora_peer *peer);
/* ---- bandwidth adaptation (same numbers as SoraDegradationPreference) -- */
#define SORA_DEGRADATION_DISABLED 0            /* adapt the bitrate only */
#define SORA_DEGRADATION_MAINTAIN_FRAMERATE 1  /* also lower the resolution when the bandwidth is too low */
#define SORA_DEGRADATION_MAINTAIN_RESOLUTION 2 /* also lower the frame rate when the bandwidth is too low */
#define SORA_DEGRADATION_BALANCED 3            /* lower resolution and frame rate in turn */
/* How this peer's video branches give way when the send bandwidth estimate is low (SORA_DEGRADATION_*; default DISABLED). */
SORA_C_API int sora_peer_set_degradation_preference(sora_peer *peer, int32_t preference);
/* Send RTCP REMB announcing `bitrate_bps` as this peer's receive bandwidth to the remote senders, about every 250 ms; 0 stops. */
SORA_C_API int sora_peer_set_remb(sora_peer *peer, int64_t bitrate_bps);
/* Collect statistics as a JSON array of engine stats objects. Blocks until the engine answers. */
SORA_C_API int sora_peer_get_stats(sora_peer *peer, char **json_out);
/* Stop media and close the connection; events already queued are still delivered. */
SORA_C_API int sora_peer_close(sora_peer *peer);
/* Close (if needed) and release the peer; on_destroy follows on the dispatcher thread. */
SORA_C_API int sora_peer_destroy(sora_peer *peer);

/* ---- receive side ------------------------------------------------------ */
/* Decode the remote track `track_id` (from SORA_EVENT_TRACK) into frames; events arrive on the sink's own thread. */
SORA_C_API int sora_sink_create(sora_peer *peer, int64_t track_id, const sora_sink_config *config,
                                const sora_callbacks *callbacks, sora_sink **out);
/* Number of frames this sink dropped because its queue was full. */
SORA_C_API int64_t sora_sink_dropped(sora_sink *sink);
/* Stop a sink: no frame callback starts after this returns; on_destroy follows once its thread left the last one. */
SORA_C_API int sora_sink_destroy(sora_sink *sink);
/* Ask the remote sender of track `track_id` (from SORA_EVENT_TRACK) for a key frame (RTCP PLI). */
SORA_C_API int sora_peer_request_remote_key_frame(sora_peer *peer, int64_t track_id);
/* RTP stream id (simulcast rid, *rid_out: new string or NULL if none seen yet) and SSRC (*ssrc_out, may be NULL; 0 until a packet) of remote track `track_id`, from its first packets. */
SORA_C_API int sora_peer_track_rid(sora_peer *peer, int64_t track_id, char **rid_out, uint32_t *ssrc_out);
/* Create an encoded-frame transform; its frames arrive as SORA_EVENT_ENCODED_FRAME on its own thread. */
SORA_C_API int sora_transform_create(sora_context *ctx, const sora_callbacks *callbacks, sora_transform **out);
/* Route the frames of the send branch attached later at `mline` through `transform` (NULL: none). */
SORA_C_API int sora_peer_set_send_transform(sora_peer *peer, int32_t mline, sora_transform *transform);
/* Route the frames of sinks created later on remote track `track_id` through `transform` (NULL: none). */
SORA_C_API int sora_peer_set_track_transform(sora_peer *peer, int64_t track_id, sora_transform *transform);
/* Give a frame (its event's ref) back to the engine: with `data` (NULL: unchanged) and `rtp_timestamp`; frees the ref. */
SORA_C_API int sora_transform_enqueue(sora_transform *transform, void *frame, const uint8_t *data, size_t size,
                                      uint32_t rtp_timestamp);
/* Copy what is known about a frame (an event's ref) into `info`. */
SORA_C_API int sora_transform_frame_info(void *frame, sora_encoded_frame_info *info);
/* Let every later frame pass unchanged without an event. */
SORA_C_API int sora_transform_short_circuit(sora_transform *transform);
/* Frames dropped because the application fell more than 240 frames behind. */
SORA_C_API int64_t sora_transform_dropped(sora_transform *transform);
/* Stop events (queued frames pass unchanged), then on_destroy; branches keep passing frames through. */
SORA_C_API int sora_transform_destroy(sora_transform *transform);
/* Re-send the RTP of `src`'s remote track on `dst`'s m-line `mline` with `payload_type`, header extensions removed; a later forward to that m-line (after this one's destroy) continues its RTP stream: same SSRC, sequence and timestamps, from its next key frame. */
SORA_C_API int sora_forward_create(sora_peer *src, int64_t track_id, sora_peer *dst, int32_t mline,
                                   int32_t payload_type, sora_forward **out);
/* Stop forwarding and release the forward. */
SORA_C_API int sora_forward_destroy(sora_forward *forward);

/* ---- sources ----------------------------------------------------------- */
/* Create a video source that application frames are pushed into. */
SORA_C_API int sora_video_source_create(sora_context *ctx, sora_video_source **out);
/* Push one packed BGR frame (rows of `stride` bytes); it is copied before the call returns (the caller may reuse `data` at once) and converted to I420 on the source's own thread. `timestamp_us` < 0 means now. */
SORA_C_API int sora_video_source_push_bgr(sora_video_source *source, const uint8_t *data, int32_t width,
                                          int32_t height, int32_t stride, int64_t timestamp_us);
/* Push one I420 frame given as three planes with their strides; it is copied. */
SORA_C_API int sora_video_source_push_i420(sora_video_source *source, const uint8_t *y, int32_t stride_y,
                                           const uint8_t *u, int32_t stride_u, const uint8_t *v, int32_t stride_v,
                                           int32_t width, int32_t height, int64_t timestamp_us);
/* Number of frames accepted by this source so far. */
SORA_C_API int64_t sora_video_source_frame_count(sora_video_source *source);
/* Release a video source; peers sending it stop receiving frames. */
SORA_C_API int sora_video_source_destroy(sora_video_source *source);
/* Create an audio source for interleaved int16 samples at `sample_rate` with `channels`. */
SORA_C_API int sora_audio_source_create(sora_context *ctx, int32_t channels, int32_t sample_rate,
                                        sora_audio_source **out);
/* Push `samples_per_channel` interleaved int16 frames; copied. `timestamp_us` < 0 means "continue". */
SORA_C_API int sora_audio_source_push(sora_audio_source *source, const int16_t *samples, size_t samples_per_channel,
                                      int64_t timestamp_us);
/* Release an audio source. */
SORA_C_API int sora_audio_source_destroy(sora_audio_source *source);

/* ---- simulcast ----------------------------------------------------------
 * One entry of the offer's "encodings" (one layer); zero-initialise, then set
 * what you need. The extmap ids are the remote offer's; they must be the same
 * in every entry (the first entry's are used).                              */
typedef struct sora_simulcast_encoding {
  const char *rid;         /* RTP stream id of the layer, e.g. "r0" (letters, digits, '-', '_') */
  int32_t active;          /* 0: announced paused ("~rid" in a=simulcast) and not encoded */
  double scale_down_by;    /* scaleResolutionDownBy (>= 1); 0 = from the position: 4, 2, 1 for three layers */
  int32_t max_width;       /* scaleResolutionDownTo.maxWidth (replaces scale_down_by); 0 = none */
  int32_t max_height;      /* scaleResolutionDownTo.maxHeight (replaces scale_down_by); 0 = none */
  int32_t max_bitrate_bps; /* maxBitrate; 0 = a share of params->bitrate_kbps by layer area */
  double max_framerate;    /* maxFramerate; 0 = no limit */
  uint32_t ssrc;           /* the layer's SSRC; 0 = random */
  int32_t mid_extmap_id;   /* offer's a=extmap id of urn:ietf:params:rtp-hdrext:sdes:mid; 0 = read from the offer */
  int32_t rid_extmap_id;   /* offer's a=extmap id of ...:sdes:rtp-stream-id; 0 = read from the offer */
} sora_simulcast_encoding;
/* Send `source` as simulcast on `mline` (offer applied first): one encoder per active entry, rid/simulcast in the answer. */
SORA_C_API int sora_peer_attach_video_simulcast(sora_peer *peer, sora_video_source *source, int32_t mline,
                                                const sora_codec_params *params,
                                                const sora_simulcast_encoding *encodings, int32_t count);

#ifdef __cplusplus
}
#endif
#endif /* SORA_C_H */
