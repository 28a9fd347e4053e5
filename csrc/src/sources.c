/* Application media sources and their links to the peers that send them. */
#include <libyuv.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "internal.h"

/* A BGR frame copied out of the application's array, waiting for the source's converter thread. */
typedef struct {
  guint8 *data; /* packed rows of width * 3 bytes */
  gsize capacity;
  gint width, height;
} staged_frame;

/* Frames waiting for conversion beyond this are dropped, oldest first (the encoder branch keeps 2 as well). */
#define STAGED_MAX 2

struct sora_video_source {
  sora_context *ctx;
  GList *links; /* sora_link*, protected by ctx->media_lock */
  /* on_captured() copies the frame (a plain memcpy, 2-3x quicker than converting it) and returns; the source's
   * converter thread turns it into I420 and pushes it to the links. */
  GMutex lock;   /* the fields below */
  GCond cond;
  GThread *thread;
  gboolean stop;
  GQueue queue;  /* staged_frame*, oldest first */
  GSList *spare; /* staged_frame* to reuse */
  gint64 frames; /* accepted by push_bgr / push_i420 */
  GMutex pool_lock;
  GstBufferPool *pool; /* I420 buffers of pool_width x pool_height, reused once the pipeline releases them */
  gint pool_width, pool_height;
};

struct sora_audio_source {
  sora_context *ctx;
  GList *links;
  gint channels;
  gint rate;
};

static void link_free(sora_link *link) {
  gst_object_unref(link->appsrc);
  if (link->encoder) gst_object_unref(link->encoder);
  g_free(link);
}

sora_link *sora_link_video(sora_video_source *src, sora_peer *peer, GstElement *appsrc, GstElement *encoder) {
  sora_link *link = g_new0(sora_link, 1);
  link->appsrc = appsrc;
  link->encoder = encoder;
  link->peer = peer;
  link->video = src;
  g_mutex_lock(&src->ctx->media_lock);
  src->links = g_list_prepend(src->links, link);
  g_mutex_unlock(&src->ctx->media_lock);
  return link;
}

sora_link *sora_link_audio(sora_audio_source *src, sora_peer *peer, GstElement *appsrc) {
  sora_link *link = g_new0(sora_link, 1);
  link->appsrc = appsrc;
  link->peer = peer;
  link->audio = src;
  link->audio_origin = GST_CLOCK_TIME_NONE;
  g_mutex_lock(&src->ctx->media_lock);
  src->links = g_list_prepend(src->links, link);
  g_mutex_unlock(&src->ctx->media_lock);
  return link;
}

int sora_audio_source_caps(sora_audio_source *src, gint *channels, gint *rate) {
  *channels = src->channels;
  *rate = src->rate;
  return 0;
}

void sora_links_detach_peer(sora_context *ctx, GList **links) {
  g_mutex_lock(&ctx->media_lock);
  for (GList *l = *links; l; l = l->next) {
    sora_link *link = l->data;
    if (link->video) link->video->links = g_list_remove(link->video->links, link);
    if (link->audio) link->audio->links = g_list_remove(link->audio->links, link);
    link_free(link);
  }
  g_list_free(*links);
  *links = NULL;
  g_mutex_unlock(&ctx->media_lock);
}

/* Cut the source out of its links (caller holds media_lock); the peers free the links. */
static void detach_source_links(GList *links) {
  for (GList *l = links; l; l = l->next) {
    sora_link *link = l->data;
    link->video = NULL;
    link->audio = NULL;
  }
}

/* ---- video ------------------------------------------------------------------- */

SORA_C_API int sora_video_source_create(sora_context *ctx, sora_video_source **out) {
  sora_clear_error();
  if (!ctx || !out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "context and out must not be NULL");
  if (ctx->stopping) return sora_fail(SORA_ERR_INVALID_STATE, "context is being destroyed");
  sora_video_source *src = g_new0(sora_video_source, 1);
  src->ctx = ctx;
  g_mutex_init(&src->lock);
  g_cond_init(&src->cond);
  g_queue_init(&src->queue);
  g_mutex_init(&src->pool_lock);
  g_mutex_lock(&ctx->lock);
  ctx->video_sources = g_list_prepend(ctx->video_sources, src);
  g_mutex_unlock(&ctx->lock);
  *out = src;
  return SORA_OK;
}

/* Every frame enters the pipelines as I420 in BT.601 limited range (what libwebrtc senders produce). */
static void push_video(sora_video_source *src, GstBuffer *buf, gint width, gint height) {
  g_mutex_lock(&src->ctx->media_lock);
  for (GList *l = src->links; l; l = l->next) {
    sora_link *link = l->data;
    if (link->last_width != width || link->last_height != height) {
      GstCaps *caps = gst_caps_new_simple("video/x-raw", "format", G_TYPE_STRING, "I420", "width", G_TYPE_INT, width,
                                          "height", G_TYPE_INT, height, "framerate", GST_TYPE_FRACTION, 0, 1,
                                          "colorimetry", G_TYPE_STRING, "bt601", NULL);
      gst_app_src_set_caps(GST_APP_SRC(link->appsrc), caps);
      gst_caps_unref(caps);
      link->last_width = width;
      link->last_height = height;
    }
    gst_app_src_push_buffer(GST_APP_SRC(link->appsrc), gst_buffer_ref(buf));
  }
  g_mutex_unlock(&src->ctx->media_lock);
  gst_buffer_unref(buf);
}

static int check_size(gint width, gint height) {
  if (width <= 0 || height <= 0 || width > 16384 || height > 16384)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "frame size %dx%d is out of range (1..16384)", width, height);
  return SORA_OK;
}

/* An I420 buffer for a width x height frame from the source's pool, mapped for writing: its planes and their
 * strides. NULL: no memory. */
static GstBuffer *new_i420(sora_video_source *src, gint width, gint height, GstMapInfo *map, uint8_t *planes[3],
                           gint strides[3]) {
  GstVideoInfo info;
  gst_video_info_set_format(&info, GST_VIDEO_FORMAT_I420, width, height);
  g_mutex_lock(&src->pool_lock);
  if (!src->pool || src->pool_width != width || src->pool_height != height) {
    if (src->pool) {
      gst_buffer_pool_set_active(src->pool, FALSE); /* buffers still in the pipeline are freed when released */
      gst_object_unref(src->pool);
    }
    src->pool = gst_buffer_pool_new();
    GstStructure *config = gst_buffer_pool_get_config(src->pool);
    gst_buffer_pool_config_set_params(config, NULL, (guint)GST_VIDEO_INFO_SIZE(&info), 0, 0);
    if (!gst_buffer_pool_set_config(src->pool, config) || !gst_buffer_pool_set_active(src->pool, TRUE)) {
      gst_object_unref(src->pool);
      src->pool = NULL;
    }
    src->pool_width = width;
    src->pool_height = height;
  }
  GstBufferPool *pool = src->pool ? gst_object_ref(src->pool) : NULL;
  g_mutex_unlock(&src->pool_lock);
  GstBuffer *buf = NULL;
  if (pool) {
    if (gst_buffer_pool_acquire_buffer(pool, &buf, NULL) != GST_FLOW_OK) buf = NULL;
    gst_object_unref(pool);
  } else {
    buf = gst_buffer_new_allocate(NULL, GST_VIDEO_INFO_SIZE(&info), NULL);
  }
  if (!buf) return NULL;
  if (!gst_buffer_map(buf, map, GST_MAP_WRITE)) {
    gst_buffer_unref(buf);
    return NULL;
  }
  for (gint p = 0; p < 3; p++) {
    planes[p] = map->data + GST_VIDEO_INFO_PLANE_OFFSET(&info, p);
    strides[p] = GST_VIDEO_INFO_PLANE_STRIDE(&info, p);
  }
  return buf;
}

static void staged_free(gpointer data) {
  staged_frame *f = data;
  g_free(f->data);
  g_free(f);
}

/* Keep a converted (or dropped) frame's block for the next push; caller holds src->lock. */
static void staged_recycle(sora_video_source *src, staged_frame *f) {
  if (g_slist_length(src->spare) < STAGED_MAX + 1)
    src->spare = g_slist_prepend(src->spare, f);
  else
    staged_free(f);
}

/* memcpy for the staging copy, with streaming stores where the CPU has them: the block is read next by the
 * converter thread on another core, so writing it around this core's caches saves their read-for-ownership (61
 * against 93 us for 640x480, 152 against 278 us for 1280x720 on the 2-core machine the project is built on). */
static void copy_out(guint8 *dst, const guint8 *src, gsize n) {
#if defined(__SSE2__)
  gsize i = 0;
  while (((guintptr)(dst + i) & 15) && i < n) {
    dst[i] = src[i];
    i++;
  }
  for (; i + 64 <= n; i += 64) {
    __m128i a = _mm_loadu_si128((const __m128i *)(src + i)), b = _mm_loadu_si128((const __m128i *)(src + i + 16));
    __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32)), d = _mm_loadu_si128((const __m128i *)(src + i + 48));
    _mm_stream_si128((__m128i *)(dst + i), a);
    _mm_stream_si128((__m128i *)(dst + i + 16), b);
    _mm_stream_si128((__m128i *)(dst + i + 32), c);
    _mm_stream_si128((__m128i *)(dst + i + 48), d);
  }
  for (; i < n; i++) dst[i] = src[i];
#else
  memcpy(dst, src, n);
#endif
}

/* The converter thread: BGR -> I420 (libyuv, BT.601 limited range as libwebrtc converts, about 10x faster than
 * videoconvert), then to every link. */
static gpointer convert_main(gpointer data) {
  sora_video_source *src = data;
  g_mutex_lock(&src->lock);
  for (;;) {
    while (!src->stop && g_queue_is_empty(&src->queue)) g_cond_wait(&src->cond, &src->lock);
    if (src->stop) break;
    staged_frame *f = g_queue_pop_head(&src->queue);
    g_mutex_unlock(&src->lock);
    GstMapInfo map;
    uint8_t *planes[3];
    gint strides[3];
    GstBuffer *buf = new_i420(src, f->width, f->height, &map, planes, strides);
    if (buf) {
      RGB24ToI420(f->data, f->width * 3, planes[0], strides[0], planes[1], strides[1], planes[2], strides[2],
                  f->width, f->height);
      gst_buffer_unmap(buf, &map);
      push_video(src, buf, f->width, f->height);
    }
    g_mutex_lock(&src->lock);
    staged_recycle(src, f);
  }
  g_mutex_unlock(&src->lock);
  return NULL;
}

SORA_C_API int sora_video_source_push_bgr(sora_video_source *src, const uint8_t *data, int32_t width, int32_t height,
                                          int32_t stride, int64_t timestamp_us) {
  sora_clear_error();
  (void)timestamp_us; /* frames are stamped with the pipeline clock when they enter it */
  if (!src || !data) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "source and data must not be NULL");
  int rc = check_size(width, height);
  if (rc) return rc;
  if (stride < width * 3) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "stride %d is smaller than width*3", stride);
  gsize row = (gsize)width * 3, need = row * (gsize)height;
  g_mutex_lock(&src->lock);
  staged_frame *f = NULL;
  if (src->spare) {
    f = src->spare->data;
    src->spare = g_slist_delete_link(src->spare, src->spare);
  }
  g_mutex_unlock(&src->lock);
  if (!f) f = g_new0(staged_frame, 1);
  if (f->capacity < need) {
    g_free(f->data);
    f->data = g_try_malloc(need);
    f->capacity = f->data ? need : 0;
    if (!f->data) {
      g_free(f);
      return sora_fail(SORA_ERR_NO_MEMORY, "cannot allocate a %dx%d frame", width, height);
    }
  }
  /* The only work done on the application's thread: one copy, so the caller may reuse its array at once. */
  if ((gsize)stride == row) {
    copy_out(f->data, data, need);
  } else {
    for (gint y = 0; y < height; y++) copy_out(f->data + row * (gsize)y, data + (gsize)stride * (gsize)y, row);
  }
#if defined(__SSE2__)
  _mm_sfence(); /* the streamed stores are visible before the converter thread is told of the frame */
#endif
  f->width = width;
  f->height = height;
  g_mutex_lock(&src->lock);
  src->frames++;
  while (g_queue_get_length(&src->queue) >= STAGED_MAX) staged_recycle(src, g_queue_pop_head(&src->queue));
  g_queue_push_tail(&src->queue, f);
  if (!src->thread && !src->stop) src->thread = g_thread_new("sora-convert", convert_main, src);
  g_cond_signal(&src->cond);
  g_mutex_unlock(&src->lock);
  return SORA_OK;
}

SORA_C_API int sora_video_source_push_i420(sora_video_source *src, const uint8_t *y, int32_t stride_y,
                                           const uint8_t *u, int32_t stride_u, const uint8_t *v, int32_t stride_v,
                                           int32_t width, int32_t height, int64_t timestamp_us) {
  sora_clear_error();
  (void)timestamp_us;
  if (!src || !y || !u || !v) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "source and planes must not be NULL");
  int rc = check_size(width, height);
  if (rc) return rc;
  gint cw = (width + 1) / 2;
  if (stride_y < width || stride_u < cw || stride_v < cw)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "a plane stride is smaller than its width");
  GstMapInfo map;
  uint8_t *planes[3];
  gint strides[3];
  GstBuffer *buf = new_i420(src, width, height, &map, planes, strides);
  if (!buf) return sora_fail(SORA_ERR_NO_MEMORY, "cannot allocate a %dx%d frame", width, height);
  g_mutex_lock(&src->lock);
  src->frames++;
  g_mutex_unlock(&src->lock);
  I420Copy(y, stride_y, u, stride_u, v, stride_v, planes[0], strides[0], planes[1], strides[1], planes[2], strides[2],
           width, height);
  gst_buffer_unmap(buf, &map);
  push_video(src, buf, width, height);
  return SORA_OK;
}

SORA_C_API int64_t sora_video_source_frame_count(sora_video_source *src) {
  sora_clear_error();
  if (!src) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "source is NULL");
  g_mutex_lock(&src->lock);
  gint64 n = src->frames;
  g_mutex_unlock(&src->lock);
  return n;
}

SORA_C_API int sora_video_source_destroy(sora_video_source *src) {
  sora_clear_error();
  if (!src) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "source is NULL");
  sora_context *ctx = src->ctx;
  g_mutex_lock(&ctx->lock);
  gboolean listed = g_list_find(ctx->video_sources, src) != NULL;
  ctx->video_sources = g_list_remove(ctx->video_sources, src);
  g_mutex_unlock(&ctx->lock);
  if (!listed) return sora_fail(SORA_ERR_INVALID_STATE, "video source was already destroyed");
  g_mutex_lock(&src->lock);
  src->stop = TRUE;
  GThread *thread = src->thread;
  src->thread = NULL;
  g_cond_signal(&src->cond);
  g_mutex_unlock(&src->lock);
  if (thread) g_thread_join(thread); /* (it never calls the application, so this never waits on a callback) */
  g_mutex_lock(&ctx->media_lock);
  detach_source_links(src->links);
  g_list_free(src->links);
  g_mutex_unlock(&ctx->media_lock);
  g_queue_clear_full(&src->queue, staged_free);
  g_slist_free_full(src->spare, staged_free);
  if (src->pool) {
    gst_buffer_pool_set_active(src->pool, FALSE);
    gst_object_unref(src->pool);
  }
  g_mutex_clear(&src->pool_lock);
  g_cond_clear(&src->cond);
  g_mutex_clear(&src->lock);
  g_free(src);
  return SORA_OK;
}

/* ---- audio ------------------------------------------------------------------- */

SORA_C_API int sora_audio_source_create(sora_context *ctx, int32_t channels, int32_t sample_rate,
                                        sora_audio_source **out) {
  sora_clear_error();
  if (!ctx || !out) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "context and out must not be NULL");
  if (ctx->stopping) return sora_fail(SORA_ERR_INVALID_STATE, "context is being destroyed");
  if (channels < 1 || channels > 8) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "channels must be 1..8, got %d", channels);
  if (sample_rate < 8000 || sample_rate > 192000)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "sample_rate must be 8000..192000, got %d", sample_rate);
  sora_audio_source *src = g_new0(sora_audio_source, 1);
  src->ctx = ctx;
  src->channels = channels;
  src->rate = sample_rate;
  g_mutex_lock(&ctx->lock);
  ctx->audio_sources = g_list_prepend(ctx->audio_sources, src);
  g_mutex_unlock(&ctx->lock);
  *out = src;
  return SORA_OK;
}

/* A pause in pushing longer than this restarts the timeline at the wall clock (libwebrtc's audio path does
 * the same); shorter irregularities in when the application pushes never move the timestamps. */
#define AUDIO_RESYNC_GAP (100 * GST_MSECOND)

/* Stamp `buf` for one link: the timestamps advance by exactly the samples sent, so the RTP timestamps step by
 * exactly the Opus frame (960 per 20 ms at 48 kHz) whatever the size and timing of the pushes. The timeline
 * restarts at the pipeline's running time on the first push and after a real gap (the pushes fell behind the
 * wall clock by more than AUDIO_RESYNC_GAP); the first buffer after a restart is marked DISCONT. Pushing ahead
 * of the wall clock (a burst) keeps the sample timeline. Without a clock yet, appsrc stamps it (do-timestamp). */
static GstBuffer *stamp_audio(sora_link *link, GstBuffer *shared, gsize samples, gint rate) {
  GstElement *appsrc = link->appsrc;
  GstClock *clock = gst_element_get_clock(appsrc);
  if (!clock) return gst_buffer_ref(shared);
  GstClockTime now = gst_clock_get_time(clock), base = gst_element_get_base_time(appsrc);
  gst_object_unref(clock);
  GstClockTime running = now > base ? now - base : 0;
  GstBuffer *buf = gst_buffer_copy(shared); /* shares the samples' memory */
  GstClockTime next = GST_CLOCK_TIME_IS_VALID(link->audio_origin)
                          ? link->audio_origin + gst_util_uint64_scale_int(link->audio_samples, GST_SECOND, rate)
                          : GST_CLOCK_TIME_NONE;
  if (!GST_CLOCK_TIME_IS_VALID(next) || running > next + AUDIO_RESYNC_GAP) {
    link->audio_origin = running;
    link->audio_samples = 0;
    next = running;
    GST_BUFFER_FLAG_SET(buf, GST_BUFFER_FLAG_DISCONT);
  }
  link->audio_samples += samples;
  GstClockTime end = link->audio_origin + gst_util_uint64_scale_int(link->audio_samples, GST_SECOND, rate);
  GST_BUFFER_PTS(buf) = GST_BUFFER_DTS(buf) = next;
  GST_BUFFER_DURATION(buf) = end - next;
  GST_BUFFER_OFFSET(buf) = GST_BUFFER_OFFSET_NONE;
  return buf;
}

SORA_C_API int sora_audio_source_push(sora_audio_source *src, const int16_t *samples, size_t samples_per_channel,
                                      int64_t timestamp_us) {
  sora_clear_error();
  (void)timestamp_us; /* the sample count is the timeline (see stamp_audio) */
  if (!src || (!samples && samples_per_channel)) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "source or samples is NULL");
  if (samples_per_channel == 0) return SORA_OK;
  if (samples_per_channel > (size_t)src->rate * 60)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "more than 60 s of audio in one push");
  gsize size = samples_per_channel * (gsize)src->channels * sizeof(int16_t);
  GstBuffer *buf = gst_buffer_new_memdup(samples, size);
  g_mutex_lock(&src->ctx->media_lock);
  for (GList *l = src->links; l; l = l->next) {
    sora_link *link = l->data;
    gst_app_src_push_buffer(GST_APP_SRC(link->appsrc), stamp_audio(link, buf, samples_per_channel, src->rate));
  }
  g_mutex_unlock(&src->ctx->media_lock);
  gst_buffer_unref(buf);
  return SORA_OK;
}

SORA_C_API int sora_audio_source_destroy(sora_audio_source *src) {
  sora_clear_error();
  if (!src) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "source is NULL");
  sora_context *ctx = src->ctx;
  g_mutex_lock(&ctx->lock);
  gboolean listed = g_list_find(ctx->audio_sources, src) != NULL;
  ctx->audio_sources = g_list_remove(ctx->audio_sources, src);
  g_mutex_unlock(&ctx->lock);
  if (!listed) return sora_fail(SORA_ERR_INVALID_STATE, "audio source was already destroyed");
  g_mutex_lock(&ctx->media_lock);
  detach_source_links(src->links);
  g_list_free(src->links);
  g_mutex_unlock(&ctx->media_lock);
  g_free(src);
  return SORA_OK;
}

void sora_source_destroy_all(sora_context *ctx) {
  for (;;) {
    g_mutex_lock(&ctx->lock);
    sora_video_source *v = ctx->video_sources ? ctx->video_sources->data : NULL;
    sora_audio_source *a = ctx->audio_sources ? ctx->audio_sources->data : NULL;
    g_mutex_unlock(&ctx->lock);
    if (v)
      sora_video_source_destroy(v);
    else if (a)
      sora_audio_source_destroy(a);
    else
      break;
  }
}
