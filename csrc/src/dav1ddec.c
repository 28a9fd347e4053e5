/* soradav1dec: AV1 decoding with dav1d, registered by the shim itself.
 *
 * Debian 12's GStreamer 1.22 decodes AV1 with av1dec (libaom) only: gst-libav leaves out FFmpeg's external-library
 * decoders (libdav1d among them) and dav1ddec lives in gst-plugins-rs, which bookworm does not package. libwebrtc
 * (the official SDK) decodes with dav1d, which takes about half of libaom's CPU for the same stream. This is a
 * small GstVideoDecoder around dav1d's public API (dav1d_open / dav1d_send_data / dav1d_get_picture), set up for
 * real time the way a WebRTC receiver wants it:
 *
 *   - max_frame_delay 1: no frame threading, so every temporal unit is decoded when it is sent and its picture
 *     (if it shows one) comes out at once; the threads (see `threads`) split the tiles and the loop filters;
 *   - all_layers 0: one picture per temporal unit (the highest spatial layer), never one per layer;
 *   - a frame size limit (DAV1D_FRAME_SIZE_LIMIT pixels), so a corrupt sequence header cannot make it allocate
 *     gigabytes;
 *   - dav1d's log goes to this element's debug category, not to stderr.
 *
 * Output: the picture copied into a buffer of the negotiated pool (8-bit 4:2:0 as I420; 4:2:2, 4:4:4, monochrome
 * and 10-bit pictures in their own formats: videoconvert after the decoder makes I420 of them). A new size or
 * format renegotiates. A temporal unit that shows no picture (a sequence header alone, a hidden frame) is released
 * without output. A decoding error is never fatal: the unit is dropped, dav1d is flushed (it starts again at the
 * next sequence header), input is discarded up to the next key unit and a key frame is asked for upstream (the
 * receive path turns that into a PLI), as libwebrtc does.
 *
 * Sink caps: video/x-av1 as sorartpav1depay gives it (a low-overhead OBU stream, one temporal unit per buffer);
 * alignment=frame is taken too. Rank PRIMARY + 1, above av1dec (SECONDARY), so decodebin picks it. */
#include <errno.h>
#include <string.h>

#include <dav1d/dav1d.h>
#include <gst/video/gstvideodecoder.h>

#include "internal.h"

GST_DEBUG_CATEGORY_STATIC(dav1ddec_debug);
#define GST_CAT_DEFAULT dav1ddec_debug

#define DAV1D_FRAME_SIZE_LIMIT (8192u * 8192u)
#define SORA_DAV1D_MAX_THREADS 64

typedef struct {
  GstVideoDecoder parent;
  Dav1dContext *ctx;
  gint threads; /* property: 0 = automatic */
  GstVideoCodecState *input_state;
  GstVideoFormat format; /* of the negotiated output; UNKNOWN before the first picture */
  gint width, height;
  guint64 errors; /* decoding errors so far (for the debug log) */
} SoraDav1dDec;

typedef struct {
  GstVideoDecoderClass parent_class;
} SoraDav1dDecClass;

G_DEFINE_TYPE(SoraDav1dDec, sora_dav1d_dec, GST_TYPE_VIDEO_DECODER)

enum { PROP_0, PROP_THREADS };

static GstStaticPadTemplate sink_template =
    GST_STATIC_PAD_TEMPLATE("sink", GST_PAD_SINK, GST_PAD_ALWAYS,
                            GST_STATIC_CAPS("video/x-av1, stream-format = (string) obu-stream, "
                                            "alignment = (string) { tu, frame }"));

static GstStaticPadTemplate src_template =
    GST_STATIC_PAD_TEMPLATE("src", GST_PAD_SRC, GST_PAD_ALWAYS,
                            GST_STATIC_CAPS(GST_VIDEO_CAPS_MAKE("{ I420, Y42B, Y444, GRAY8, I420_10LE, I422_10LE, "
                                                                "Y444_10LE }")));

/* dav1d's threads when the property says 0: as many as the cores, 2 at least (dav1d's tile and loop-filter
 * tasks keep a second thread busy even on one core's worth of work) and 4 at most (a real-time stream of one or
 * a few tiles gains nothing from more). */
static gint auto_threads(void) { return CLAMP((gint)g_get_num_processors(), 2, 4); }

static void dav1d_log(void *cookie, const char *format, va_list ap) {
  if (gst_debug_category_get_threshold(dav1ddec_debug) < GST_LEVEL_DEBUG) return;
  gchar *text = g_strdup_vprintf(format, ap);
  g_strchomp(text);
  GST_DEBUG_OBJECT(cookie, "dav1d: %s", text);
  g_free(text);
}

static gboolean dec_open(SoraDav1dDec *self) {
  Dav1dSettings s;
  dav1d_default_settings(&s);
  s.n_threads = self->threads > 0 ? self->threads : auto_threads();
  s.max_frame_delay = 1;
  s.all_layers = 0;
  s.frame_size_limit = DAV1D_FRAME_SIZE_LIMIT;
  s.logger.cookie = self;
  s.logger.callback = dav1d_log;
  int res = dav1d_open(&self->ctx, &s);
  if (res < 0) {
    self->ctx = NULL;
    GST_ELEMENT_ERROR(self, LIBRARY, INIT, ("dav1d cannot start a decoder"), ("dav1d_open: %d", res));
    return FALSE;
  }
  GST_DEBUG_OBJECT(self, "dav1d %s, %d threads", dav1d_version(), s.n_threads);
  return TRUE;
}

static gboolean dec_start(GstVideoDecoder *dec) {
  SoraDav1dDec *self = (SoraDav1dDec *)dec;
  self->format = GST_VIDEO_FORMAT_UNKNOWN;
  self->width = self->height = 0;
  return dec_open(self);
}

static gboolean dec_stop(GstVideoDecoder *dec) {
  SoraDav1dDec *self = (SoraDav1dDec *)dec;
  if (self->ctx) dav1d_close(&self->ctx);
  g_clear_pointer(&self->input_state, gst_video_codec_state_unref);
  return TRUE;
}

static gboolean dec_set_format(GstVideoDecoder *dec, GstVideoCodecState *state) {
  SoraDav1dDec *self = (SoraDav1dDec *)dec;
  g_clear_pointer(&self->input_state, gst_video_codec_state_unref);
  self->input_state = gst_video_codec_state_ref(state);
  self->format = GST_VIDEO_FORMAT_UNKNOWN; /* renegotiate with the new input caps at the next picture */
  return TRUE;
}

static gboolean dec_flush(GstVideoDecoder *dec) {
  SoraDav1dDec *self = (SoraDav1dDec *)dec;
  if (self->ctx) dav1d_flush(self->ctx);
  return TRUE;
}

static GstVideoFormat format_of(const Dav1dPicture *pic) {
  gboolean ten = pic->p.bpc == 10;
  if (pic->p.bpc != 8 && !ten) return GST_VIDEO_FORMAT_UNKNOWN;
  switch (pic->p.layout) {
  case DAV1D_PIXEL_LAYOUT_I420:
    return ten ? GST_VIDEO_FORMAT_I420_10LE : GST_VIDEO_FORMAT_I420;
  case DAV1D_PIXEL_LAYOUT_I422:
    return ten ? GST_VIDEO_FORMAT_I422_10LE : GST_VIDEO_FORMAT_Y42B;
  case DAV1D_PIXEL_LAYOUT_I444:
    return ten ? GST_VIDEO_FORMAT_Y444_10LE : GST_VIDEO_FORMAT_Y444;
  case DAV1D_PIXEL_LAYOUT_I400:
    return ten ? GST_VIDEO_FORMAT_UNKNOWN : GST_VIDEO_FORMAT_GRAY8;
  }
  return GST_VIDEO_FORMAT_UNKNOWN;
}

static gboolean ensure_output(SoraDav1dDec *self, GstVideoFormat format, gint w, gint h) {
  if (format == self->format && w == self->width && h == self->height) return TRUE;
  GstVideoDecoder *dec = GST_VIDEO_DECODER(self);
  GST_DEBUG_OBJECT(self, "output %s %dx%d", gst_video_format_to_string(format), w, h);
  GstVideoCodecState *state = gst_video_decoder_set_output_state(dec, format, w, h, self->input_state);
  if (state) gst_video_codec_state_unref(state);
  if (!gst_video_decoder_negotiate(dec)) {
    self->format = GST_VIDEO_FORMAT_UNKNOWN;
    return FALSE;
  }
  self->format = format;
  self->width = w;
  self->height = h;
  return TRUE;
}

static void copy_picture(const Dav1dPicture *pic, GstVideoFrame *out) {
  for (guint i = 0; i < GST_VIDEO_FRAME_N_PLANES(out); i++) {
    const guint8 *src = pic->data[i];
    ptrdiff_t src_stride = pic->stride[i ? 1 : 0];
    guint8 *dst = GST_VIDEO_FRAME_PLANE_DATA(out, i);
    gint dst_stride = GST_VIDEO_FRAME_PLANE_STRIDE(out, i);
    gsize row = (gsize)GST_VIDEO_FRAME_COMP_WIDTH(out, i) * GST_VIDEO_FRAME_COMP_PSTRIDE(out, i);
    gint rows = GST_VIDEO_FRAME_COMP_HEIGHT(out, i);
    if (src_stride == dst_stride) {
      memcpy(dst, src, (gsize)dst_stride * (rows - 1) + row);
    } else {
      for (gint y = 0; y < rows; y++) memcpy(dst + (gsize)y * dst_stride, src + y * src_stride, row);
    }
  }
}

/* Push `pic` as the output of the frame it was decoded from (its system frame number rode in m.timestamp).
 * Takes the picture's reference. `shown` gets that frame number. */
static GstFlowReturn push_picture(SoraDav1dDec *self, Dav1dPicture *pic, gint64 *shown) {
  GstVideoDecoder *dec = GST_VIDEO_DECODER(self);
  GstVideoCodecFrame *frame = NULL;
  if (pic->m.timestamp >= 0 && pic->m.timestamp <= G_MAXINT) frame = gst_video_decoder_get_frame(dec, (int)pic->m.timestamp);
  if (!frame) {
    GST_DEBUG_OBJECT(self, "a picture for a frame that is gone (%" G_GINT64_FORMAT ")", pic->m.timestamp);
    dav1d_picture_unref(pic);
    return GST_FLOW_OK;
  }
  *shown = pic->m.timestamp;
  GstVideoFormat format = format_of(pic);
  if (format == GST_VIDEO_FORMAT_UNKNOWN) {
    GST_WARNING_OBJECT(self, "cannot output a picture of layout %d, %d bits", (int)pic->p.layout, pic->p.bpc);
    dav1d_picture_unref(pic);
    return gst_video_decoder_drop_frame(dec, frame);
  }
  if (!ensure_output(self, format, pic->p.w, pic->p.h)) {
    dav1d_picture_unref(pic);
    gst_video_decoder_drop_frame(dec, frame);
    return GST_PAD_IS_FLUSHING(GST_VIDEO_DECODER_SRC_PAD(dec)) ? GST_FLOW_FLUSHING : GST_FLOW_NOT_NEGOTIATED;
  }
  GstFlowReturn ret = gst_video_decoder_allocate_output_frame(dec, frame);
  if (ret != GST_FLOW_OK) {
    dav1d_picture_unref(pic);
    gst_video_decoder_release_frame(dec, frame);
    return ret;
  }
  GstVideoCodecState *state = gst_video_decoder_get_output_state(dec);
  GstVideoFrame out;
  gboolean mapped = state && gst_video_frame_map(&out, &state->info, frame->output_buffer, GST_MAP_WRITE);
  if (state) gst_video_codec_state_unref(state);
  if (!mapped) {
    dav1d_picture_unref(pic);
    gst_video_decoder_drop_frame(dec, frame);
    return GST_FLOW_OK;
  }
  copy_picture(pic, &out);
  gst_video_frame_unmap(&out);
  if (pic->frame_hdr && pic->frame_hdr->frame_type == DAV1D_FRAME_TYPE_KEY)
    GST_VIDEO_CODEC_FRAME_SET_SYNC_POINT(frame);
  dav1d_picture_unref(pic);
  return gst_video_decoder_finish_frame(dec, frame);
}

/* Every picture dav1d has ready. *failed on a decoding error. */
static GstFlowReturn output_pictures(SoraDav1dDec *self, gint64 *shown, gboolean *failed) {
  for (;;) {
    Dav1dPicture pic;
    memset(&pic, 0, sizeof pic);
    int res = dav1d_get_picture(self->ctx, &pic);
    if (res == DAV1D_ERR(EAGAIN)) return GST_FLOW_OK;
    if (res < 0) {
      *failed = TRUE;
      return GST_FLOW_OK;
    }
    GstFlowReturn ret = push_picture(self, &pic, shown);
    if (ret != GST_FLOW_OK) return ret;
  }
}

/* Drop what a decoding error left and start again at the next key unit, which is asked for upstream. */
static void recover(SoraDav1dDec *self, GstVideoCodecFrame *frame) {
  GstVideoDecoder *dec = GST_VIDEO_DECODER(self);
  self->errors++;
  GST_WARNING_OBJECT(self, "decoding error %" G_GUINT64_FORMAT " (frame %u): dropped, waiting for a key frame",
                     self->errors, frame->system_frame_number);
  dav1d_flush(self->ctx);
  gst_video_decoder_request_sync_point(dec, frame, GST_VIDEO_DECODER_REQUEST_SYNC_POINT_DISCARD_INPUT);
}

static GstFlowReturn dec_handle_frame(GstVideoDecoder *dec, GstVideoCodecFrame *frame) {
  SoraDav1dDec *self = (SoraDav1dDec *)dec;
  if (!self->ctx) {
    gst_video_decoder_drop_frame(dec, frame);
    return GST_FLOW_ERROR;
  }
  guint32 number = frame->system_frame_number;
  GstMapInfo map;
  Dav1dData data;
  memset(&data, 0, sizeof data);
  if (!gst_buffer_map(frame->input_buffer, &map, GST_MAP_READ)) {
    gst_video_decoder_drop_frame(dec, frame);
    return GST_FLOW_OK;
  }
  guint8 *bytes = map.size ? dav1d_data_create(&data, map.size) : NULL;
  if (bytes) memcpy(bytes, map.data, map.size);
  gst_buffer_unmap(frame->input_buffer, &map);
  if (!bytes) { /* empty, or out of memory */
    gst_video_decoder_release_frame(dec, frame);
    return GST_FLOW_OK;
  }
  data.m.timestamp = number;
  gint64 shown = -1;
  gboolean failed = FALSE;
  GstFlowReturn ret = GST_FLOW_OK;
  while (data.sz > 0 && ret == GST_FLOW_OK && !failed) {
    int res = dav1d_send_data(self->ctx, &data);
    if (res == DAV1D_ERR(EAGAIN)) {
      /* dav1d holds a picture it wants taken first (not with max_frame_delay 1, but the API allows it) */
      gint64 before = shown;
      ret = output_pictures(self, &shown, &failed);
      if (ret == GST_FLOW_OK && !failed && shown == before) failed = TRUE; /* nothing taken: it would spin */
    } else if (res < 0) {
      failed = TRUE;
    }
  }
  dav1d_data_unref(&data);
  if (ret == GST_FLOW_OK && !failed) ret = output_pictures(self, &shown, &failed);
  /* The frame is still pending when it showed no picture (or failed): finish it without output. */
  GstVideoCodecFrame *pending = shown == (gint64)number ? NULL : gst_video_decoder_get_frame(dec, (int)number);
  if (failed) recover(self, frame);
  if (pending) {
    if (failed)
      gst_video_decoder_drop_frame(dec, pending);
    else
      gst_video_decoder_release_frame(dec, pending);
  }
  gst_video_codec_frame_unref(frame);
  return ret;
}

static GstFlowReturn dec_drain(GstVideoDecoder *dec) {
  SoraDav1dDec *self = (SoraDav1dDec *)dec;
  if (!self->ctx) return GST_FLOW_OK;
  gint64 shown = -1;
  gboolean failed = FALSE;
  GstFlowReturn ret = output_pictures(self, &shown, &failed);
  if (failed) dav1d_flush(self->ctx);
  return ret;
}

static void dec_set_property(GObject *object, guint id, const GValue *value, GParamSpec *pspec) {
  SoraDav1dDec *self = (SoraDav1dDec *)object;
  if (id == PROP_THREADS)
    self->threads = g_value_get_int(value); /* taken when the decoder starts */
  else
    G_OBJECT_WARN_INVALID_PROPERTY_ID(object, id, pspec);
}

static void dec_get_property(GObject *object, guint id, GValue *value, GParamSpec *pspec) {
  SoraDav1dDec *self = (SoraDav1dDec *)object;
  if (id == PROP_THREADS)
    g_value_set_int(value, self->threads);
  else
    G_OBJECT_WARN_INVALID_PROPERTY_ID(object, id, pspec);
}

static void dec_finalize(GObject *object) {
  SoraDav1dDec *self = (SoraDav1dDec *)object;
  if (self->ctx) dav1d_close(&self->ctx);
  g_clear_pointer(&self->input_state, gst_video_codec_state_unref);
  G_OBJECT_CLASS(sora_dav1d_dec_parent_class)->finalize(object);
}

static void sora_dav1d_dec_class_init(SoraDav1dDecClass *klass) {
  GObjectClass *object_class = G_OBJECT_CLASS(klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS(klass);
  GstVideoDecoderClass *dec_class = GST_VIDEO_DECODER_CLASS(klass);
  object_class->set_property = dec_set_property;
  object_class->get_property = dec_get_property;
  object_class->finalize = dec_finalize;
  g_object_class_install_property(
      object_class, PROP_THREADS,
      g_param_spec_int("threads", "Threads", "dav1d threads (0: as many as the cores, 2 to 4)", 0, SORA_DAV1D_MAX_THREADS, 0,
                       (GParamFlags)(G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS)));
  gst_element_class_add_static_pad_template(element_class, &sink_template);
  gst_element_class_add_static_pad_template(element_class, &src_template);
  gst_element_class_set_static_metadata(element_class, "AV1 decoder (dav1d, sora_sdk)", "Codec/Decoder/Video",
                                        "Decodes AV1 with dav1d, low-latency settings", "sora_sdk");
  dec_class->start = dec_start;
  dec_class->stop = dec_stop;
  dec_class->set_format = dec_set_format;
  dec_class->flush = dec_flush;
  dec_class->handle_frame = dec_handle_frame;
  dec_class->drain = dec_drain;
  dec_class->finish = dec_drain;
}

static void sora_dav1d_dec_init(SoraDav1dDec *self) {
  GstVideoDecoder *dec = GST_VIDEO_DECODER(self);
  gst_video_decoder_set_packetized(dec, TRUE);
  gst_video_decoder_set_needs_format(dec, TRUE);
  gst_video_decoder_set_max_errors(dec, -1);
  self->format = GST_VIDEO_FORMAT_UNKNOWN;
}

void sora_register_dav1d(void) {
  static gsize done = 0;
  if (g_once_init_enter(&done)) {
    GST_DEBUG_CATEGORY_INIT(dav1ddec_debug, "soradav1dec", 0, "sora_sdk AV1 decoder (dav1d)");
    if (!gst_element_register(NULL, "soradav1dec", GST_RANK_PRIMARY + 1, sora_dav1d_dec_get_type()))
      g_printerr("sora_c: cannot register the dav1d decoder element\n");
    g_once_init_leave(&done, 1);
  }
}
