/* soraav1enc: AV1 encoding with libaom, set up as libwebrtc's LibaomAv1Encoder sets it up.
 *
 * GStreamer's av1enc exposes only part of libaom's configuration: none of the aom_codec_control settings with
 * which libwebrtc turns off the coding tools a real-time encoder cannot afford (reference-frame motion vectors,
 * order hints, per-superblock cost updates, 64-point transforms, rectangular partitions, loop restoration, the
 * intra tools, palette, OBMC, warped and global motion, ...) nor cyclic-refresh AQ. On the same 1280x720 input
 * at cpu-used 10 those settings halve libaom 3.6's time per frame (20.7 -> 10.0 ms) at the same bitrate. 1.22's
 * av1enc also ignores key-frame requests and reconfigures libaom from any thread (see av1rtp.c and bwe.c).
 *
 * This element is a small GstVideoEncoder around libaom's encoder API, one temporal unit out per frame in:
 *
 *   - realtime usage, one pass, CBR, no lag; the settings and controls of libwebrtc's LibaomAv1Encoder
 *     (apply_controls), cpu-used 10 by default (libwebrtc's speed for normal complexity);
 *   - a new input size destroys the encoder and makes a new one (never a reconfiguration on top);
 *   - target-bitrate (kbit/s) may be set from any thread: it is applied on the streaming thread before the next
 *     frame (aom_codec_enc_config_set), never while libaom encodes;
 *   - a key-unit request (GstForceKeyUnit, from RTCP PLI/FIR) makes the next frame a key frame;
 *   - timestamps for libaom's rate control are the input's frame intervals (clamped), in a 90 kHz time base.
 *
 * Input: I420 (4:2:0, 8 bits; the send path converts to it). Output: video/x-av1, obu-stream, one temporal unit
 * per buffer (with its temporal delimiter, which sorartpav1pay drops). */
#include <string.h>

#include <aom/aom_encoder.h>
#include <aom/aomcx.h>
#include <gst/video/gstvideoencoder.h>

#include "internal.h"

GST_DEBUG_CATEGORY_STATIC(aomenc_debug);
#define GST_CAT_DEFAULT aomenc_debug

#define TIMEBASE 90000

enum {
  PROP_0,
  PROP_TARGET_BITRATE,
  PROP_CPU_USED,
  PROP_THREADS,
  PROP_ROW_MT,
  PROP_KEYFRAME_MAX_DIST,
  PROP_MIN_QUANTIZER,
  PROP_MAX_QUANTIZER,
  PROP_BUF_SZ,
  PROP_BUF_INITIAL_SZ,
  PROP_BUF_OPTIMAL_SZ,
  N_PROPS
};

typedef struct {
  GstVideoEncoder parent;
  GMutex lock; /* the properties */
  guint props[N_PROPS];
  gboolean bitrate_changed; /* (lock) target-bitrate set since the encoder last took it */
  /* streaming thread only */
  aom_codec_ctx_t ctx;
  gboolean inited;
  aom_codec_enc_cfg_t cfg;
  GstVideoCodecState *input_state;
  gint64 next_pts;             /* in TIMEBASE units */
  GstClockTime last_input_pts; /* of the previous frame */
} SoraAv1Enc;

typedef struct {
  GstVideoEncoderClass parent_class;
} SoraAv1EncClass;

G_DEFINE_TYPE(SoraAv1Enc, sora_av1_enc, GST_TYPE_VIDEO_ENCODER)

static const struct {
  const char *name, *blurb;
  guint min, max, def;
} prop_specs[N_PROPS] = {
    [PROP_TARGET_BITRATE] = {"target-bitrate", "Target bitrate, kbit/s (may change while encoding)", 1, 1000000, 256},
    [PROP_CPU_USED] = {"cpu-used", "libaom speed (realtime: 6 slowest .. 10 fastest; 11 for screen content)", 0, 11, 10},
    [PROP_THREADS] = {"threads", "Encoder threads (0: 1)", 0, 64, 0},
    [PROP_ROW_MT] = {"row-mt", "Row-based multi-threading (0 or 1)", 0, 1, 0},
    [PROP_KEYFRAME_MAX_DIST] = {"keyframe-max-dist", "Frames between automatic key frames at most", 0, G_MAXINT, 3000},
    [PROP_MIN_QUANTIZER] = {"min-quantizer", "Best quality quantizer", 0, 63, 10},
    [PROP_MAX_QUANTIZER] = {"max-quantizer", "Worst quality quantizer", 0, 63, 56},
    [PROP_BUF_SZ] = {"buf-sz", "Decoder buffer size, ms", 0, 60000, 1000},
    [PROP_BUF_INITIAL_SZ] = {"buf-initial-sz", "Decoder buffer initial size, ms", 0, 60000, 500},
    [PROP_BUF_OPTIMAL_SZ] = {"buf-optimal-sz", "Decoder buffer optimal size, ms", 0, 60000, 600},
};

static GstStaticPadTemplate sink_template =
    GST_STATIC_PAD_TEMPLATE("sink", GST_PAD_SINK, GST_PAD_ALWAYS, GST_STATIC_CAPS(GST_VIDEO_CAPS_MAKE("I420")));

static GstStaticPadTemplate src_template =
    GST_STATIC_PAD_TEMPLATE("src", GST_PAD_SRC, GST_PAD_ALWAYS,
                            GST_STATIC_CAPS("video/x-av1, stream-format = (string) obu-stream, "
                                            "alignment = (string) tu, profile = (string) main"));

static guint prop_get(SoraAv1Enc *self, guint id) {
  g_mutex_lock(&self->lock);
  guint v = self->props[id];
  g_mutex_unlock(&self->lock);
  return v;
}

/* libwebrtc's superblock choice: 64x64 for 4+ threads between 960x540 and 1080p, else libaom's dynamic one. */
static int superblock_size(gint w, gint h, guint threads) {
  gint64 px = (gint64)w * h;
  return threads >= 4 && px >= 960 * 540 && px < 1920 * 1080 ? AOM_SUPERBLOCK_SIZE_64X64 : AOM_SUPERBLOCK_SIZE_DYNAMIC;
}

/* The aom_codec_control settings of libwebrtc's LibaomAv1Encoder (camera content). A control this libaom does
 * not know is only logged. */
static void apply_controls(SoraAv1Enc *self, guint cpu_used, gboolean row_mt) {
  static const struct {
    int id;
    int value;
    const char *name;
  } controls[] = {
      {AV1E_SET_ENABLE_CDEF, 1, "cdef"},
      {AV1E_SET_ENABLE_TPL_MODEL, 0, "tpl-model"},
      {AV1E_SET_DELTAQ_MODE, 0, "deltaq-mode"},
      {AV1E_SET_ENABLE_ORDER_HINT, 0, "order-hint"},
      {AV1E_SET_AQ_MODE, 3, "aq-mode"},
      {AOME_SET_MAX_INTRA_BITRATE_PCT, 300, "max-intra-bitrate-pct"},
      {AV1E_SET_COEFF_COST_UPD_FREQ, 3, "coeff-cost-upd-freq"},
      {AV1E_SET_MODE_COST_UPD_FREQ, 3, "mode-cost-upd-freq"},
      {AV1E_SET_MV_COST_UPD_FREQ, 3, "mv-cost-upd-freq"},
      {AV1E_SET_ENABLE_PALETTE, 0, "palette"},
#ifdef AOM_CTRL_AV1E_SET_AUTO_TILES /* libaom 3.10 on; 3.6 has no automatic tiles (one thread here anyway) */
      {AV1E_SET_AUTO_TILES, 1, "auto-tiles"},
#endif
      {AV1E_SET_ENABLE_OBMC, 0, "obmc"},
      {AV1E_SET_NOISE_SENSITIVITY, 0, "noise-sensitivity"},
      {AV1E_SET_ENABLE_WARPED_MOTION, 0, "warped-motion"},
      {AV1E_SET_ENABLE_GLOBAL_MOTION, 0, "global-motion"},
      {AV1E_SET_ENABLE_REF_FRAME_MVS, 0, "ref-frame-mvs"},
      {AV1E_SET_ENABLE_CFL_INTRA, 0, "cfl-intra"},
      {AV1E_SET_ENABLE_SMOOTH_INTRA, 0, "smooth-intra"},
      {AV1E_SET_ENABLE_ANGLE_DELTA, 0, "angle-delta"},
      {AV1E_SET_ENABLE_FILTER_INTRA, 0, "filter-intra"},
      {AV1E_SET_INTRA_DEFAULT_TX_ONLY, 1, "intra-default-tx-only"},
      {AV1E_SET_DISABLE_TRELLIS_QUANT, 1, "disable-trellis-quant"},
      {AV1E_SET_ENABLE_DIST_WTD_COMP, 0, "dist-wtd-comp"},
      {AV1E_SET_ENABLE_DIFF_WTD_COMP, 0, "diff-wtd-comp"},
      {AV1E_SET_ENABLE_DUAL_FILTER, 0, "dual-filter"},
      {AV1E_SET_ENABLE_INTERINTRA_COMP, 0, "interintra-comp"},
      {AV1E_SET_ENABLE_INTERINTRA_WEDGE, 0, "interintra-wedge"},
      {AV1E_SET_ENABLE_INTRA_EDGE_FILTER, 0, "intra-edge-filter"},
      {AV1E_SET_ENABLE_INTRABC, 0, "intrabc"},
      {AV1E_SET_ENABLE_MASKED_COMP, 0, "masked-comp"},
      {AV1E_SET_ENABLE_PAETH_INTRA, 0, "paeth-intra"},
      {AV1E_SET_ENABLE_QM, 0, "qm"},
      {AV1E_SET_ENABLE_RECT_PARTITIONS, 0, "rect-partitions"},
      {AV1E_SET_ENABLE_RESTORATION, 0, "restoration"},
      {AV1E_SET_ENABLE_SMOOTH_INTERINTRA, 0, "smooth-interintra"},
      {AV1E_SET_ENABLE_TX64, 0, "tx64"},
      {AV1E_SET_MAX_REFERENCE_FRAMES, 3, "max-reference-frames"},
  };
  int dynamic[][2] = {
      {AOME_SET_CPUUSED, (int)cpu_used},
      {AV1E_SET_ROW_MT, row_mt ? 1 : 0},
      {AV1E_SET_SUPERBLOCK_SIZE, superblock_size((gint)self->cfg.g_w, (gint)self->cfg.g_h, self->cfg.g_threads)},
  };
  for (guint i = 0; i < G_N_ELEMENTS(dynamic); i++)
    if (aom_codec_control(&self->ctx, dynamic[i][0], dynamic[i][1]) != AOM_CODEC_OK)
      GST_DEBUG_OBJECT(self, "control %d not taken: %s", dynamic[i][0], aom_codec_error_detail(&self->ctx));
  for (guint i = 0; i < G_N_ELEMENTS(controls); i++)
    if (aom_codec_control(&self->ctx, controls[i].id, controls[i].value) != AOM_CODEC_OK)
      GST_DEBUG_OBJECT(self, "control %s not taken: %s", controls[i].name, aom_codec_error_detail(&self->ctx));
#ifndef AOM_CTRL_AV1E_SET_AUTO_TILES
  /* Without automatic tiles: a tile column per thread (log2), which is what lets the threads work in parallel. */
  if (self->cfg.g_threads > 1)
    aom_codec_control(&self->ctx, AV1E_SET_TILE_COLUMNS, (int)g_bit_storage(self->cfg.g_threads) - 1);
#endif
}

static void encoder_close(SoraAv1Enc *self) {
  if (self->inited) aom_codec_destroy(&self->ctx);
  self->inited = FALSE;
}

static gboolean encoder_open(SoraAv1Enc *self, gint width, gint height) {
  encoder_close(self);
  aom_codec_enc_cfg_t *cfg = &self->cfg;
  if (aom_codec_enc_config_default(aom_codec_av1_cx(), cfg, AOM_USAGE_REALTIME) != AOM_CODEC_OK) return FALSE;
  g_mutex_lock(&self->lock);
  guint *p = self->props;
  cfg->g_w = (unsigned)width;
  cfg->g_h = (unsigned)height;
  cfg->g_threads = MAX(p[PROP_THREADS], 1u);
  cfg->g_timebase.num = 1;
  cfg->g_timebase.den = TIMEBASE;
  cfg->g_input_bit_depth = 8;
  cfg->g_error_resilient = 0;
  cfg->g_pass = AOM_RC_ONE_PASS;
  cfg->g_lag_in_frames = 0;
  cfg->rc_end_usage = AOM_CBR;
  cfg->rc_target_bitrate = p[PROP_TARGET_BITRATE];
  cfg->rc_dropframe_thresh = 0;
  cfg->rc_min_quantizer = MIN(p[PROP_MIN_QUANTIZER], p[PROP_MAX_QUANTIZER]);
  cfg->rc_max_quantizer = p[PROP_MAX_QUANTIZER];
  cfg->rc_undershoot_pct = 25;
  cfg->rc_overshoot_pct = 25;
  cfg->rc_buf_sz = p[PROP_BUF_SZ];
  cfg->rc_buf_initial_sz = p[PROP_BUF_INITIAL_SZ];
  cfg->rc_buf_optimal_sz = p[PROP_BUF_OPTIMAL_SZ];
  cfg->kf_mode = p[PROP_KEYFRAME_MAX_DIST] ? AOM_KF_AUTO : AOM_KF_DISABLED;
  cfg->kf_min_dist = 0;
  cfg->kf_max_dist = p[PROP_KEYFRAME_MAX_DIST];
  guint cpu_used = p[PROP_CPU_USED];
  gboolean row_mt = p[PROP_ROW_MT] != 0;
  self->bitrate_changed = FALSE;
  g_mutex_unlock(&self->lock);
  aom_codec_err_t err = aom_codec_enc_init(&self->ctx, aom_codec_av1_cx(), cfg, 0);
  if (err != AOM_CODEC_OK) {
    GST_ELEMENT_ERROR(self, LIBRARY, INIT, ("libaom cannot start an AV1 encoder for %dx%d", width, height),
                      ("aom_codec_enc_init: %s", aom_codec_err_to_string(err)));
    return FALSE;
  }
  self->inited = TRUE;
  apply_controls(self, cpu_used, row_mt);
  GST_DEBUG_OBJECT(self, "libaom %s: %dx%d, %u kbit/s, %u threads, cpu-used %u", aom_codec_version_str(), width,
                   height, cfg->rc_target_bitrate, cfg->g_threads, cpu_used);
  return TRUE;
}

static gboolean enc_set_format(GstVideoEncoder *enc, GstVideoCodecState *state) {
  SoraAv1Enc *self = (SoraAv1Enc *)enc;
  g_clear_pointer(&self->input_state, gst_video_codec_state_unref);
  self->input_state = gst_video_codec_state_ref(state);
  if (!encoder_open(self, GST_VIDEO_INFO_WIDTH(&state->info), GST_VIDEO_INFO_HEIGHT(&state->info))) return FALSE;
  GstCaps *caps = gst_caps_new_simple("video/x-av1", "stream-format", G_TYPE_STRING, "obu-stream", "alignment",
                                      G_TYPE_STRING, "tu", "profile", G_TYPE_STRING, "main", NULL);
  GstVideoCodecState *out = gst_video_encoder_set_output_state(enc, caps, state);
  gst_video_codec_state_unref(out);
  gst_video_encoder_set_latency(enc, 0, 0);
  return gst_video_encoder_negotiate(enc);
}

static gboolean enc_start(GstVideoEncoder *enc) {
  SoraAv1Enc *self = (SoraAv1Enc *)enc;
  self->next_pts = 0;
  self->last_input_pts = GST_CLOCK_TIME_NONE;
  return TRUE;
}

static gboolean enc_stop(GstVideoEncoder *enc) {
  SoraAv1Enc *self = (SoraAv1Enc *)enc;
  encoder_close(self);
  g_clear_pointer(&self->input_state, gst_video_codec_state_unref);
  return TRUE;
}

/* The frame's duration for libaom's rate control, in TIMEBASE units: the interval since the previous frame
 * (frames come at a variable rate), 1/30 s for the first, kept within 1/120 .. 1 s. */
static guint frame_duration(SoraAv1Enc *self, GstClockTime pts) {
  guint64 d = TIMEBASE / 30;
  if (GST_CLOCK_TIME_IS_VALID(pts) && GST_CLOCK_TIME_IS_VALID(self->last_input_pts) && pts > self->last_input_pts)
    d = gst_util_uint64_scale(pts - self->last_input_pts, TIMEBASE, GST_SECOND);
  if (GST_CLOCK_TIME_IS_VALID(pts)) self->last_input_pts = pts;
  return (guint)CLAMP(d, (guint64)(TIMEBASE / 120), (guint64)TIMEBASE);
}

static GstFlowReturn enc_handle_frame(GstVideoEncoder *enc, GstVideoCodecFrame *frame) {
  SoraAv1Enc *self = (SoraAv1Enc *)enc;
  if (!self->inited || !self->input_state) {
    gst_video_encoder_finish_frame(enc, frame);
    return GST_FLOW_NOT_NEGOTIATED;
  }
  g_mutex_lock(&self->lock);
  gboolean rate = self->bitrate_changed;
  guint kbps = self->props[PROP_TARGET_BITRATE];
  self->bitrate_changed = FALSE;
  g_mutex_unlock(&self->lock);
  if (rate && kbps != self->cfg.rc_target_bitrate) {
    self->cfg.rc_target_bitrate = kbps;
    if (aom_codec_enc_config_set(&self->ctx, &self->cfg) != AOM_CODEC_OK)
      GST_WARNING_OBJECT(self, "libaom refused %u kbit/s: %s", kbps, aom_codec_error_detail(&self->ctx));
  }
  GstVideoFrame in;
  if (!gst_video_frame_map(&in, &self->input_state->info, frame->input_buffer, GST_MAP_READ)) {
    gst_video_encoder_finish_frame(enc, frame); /* no output: dropped */
    return GST_FLOW_OK;
  }
  aom_image_t img;
  aom_img_wrap(&img, AOM_IMG_FMT_I420, self->cfg.g_w, self->cfg.g_h, 1, GST_VIDEO_FRAME_PLANE_DATA(&in, 0));
  for (guint i = 0; i < 3; i++) {
    img.planes[i] = GST_VIDEO_FRAME_PLANE_DATA(&in, i);
    img.stride[i] = GST_VIDEO_FRAME_PLANE_STRIDE(&in, i);
  }
  aom_enc_frame_flags_t flags = 0;
  if (GST_VIDEO_CODEC_FRAME_IS_FORCE_KEYFRAME(frame)) flags |= AOM_EFLAG_FORCE_KF;
  guint duration = frame_duration(self, frame->pts);
  aom_codec_err_t err = aom_codec_encode(&self->ctx, &img, self->next_pts, duration, flags);
  self->next_pts += duration;
  gst_video_frame_unmap(&in);
  if (err != AOM_CODEC_OK) {
    GST_ELEMENT_ERROR(self, LIBRARY, ENCODE, ("libaom failed to encode a frame"),
                      ("aom_codec_encode: %s (%s)", aom_codec_err_to_string(err), aom_codec_error_detail(&self->ctx)));
    gst_video_encoder_finish_frame(enc, frame);
    return GST_FLOW_ERROR;
  }
  GstBuffer *out = NULL;
  gboolean key = FALSE;
  aom_codec_iter_t iter = NULL;
  const aom_codec_cx_pkt_t *pkt;
  while ((pkt = aom_codec_get_cx_data(&self->ctx, &iter)) != NULL) {
    if (pkt->kind != AOM_CODEC_CX_FRAME_PKT || !pkt->data.frame.sz) continue;
    GstBuffer *part = gst_buffer_new_memdup(pkt->data.frame.buf, pkt->data.frame.sz);
    out = out ? gst_buffer_append(out, part) : part;
    key = key || (pkt->data.frame.flags & AOM_FRAME_IS_KEY);
  }
  if (out) {
    frame->output_buffer = out;
    if (key) GST_VIDEO_CODEC_FRAME_SET_SYNC_POINT(frame);
    else GST_VIDEO_CODEC_FRAME_UNSET_SYNC_POINT(frame);
  }
  return gst_video_encoder_finish_frame(enc, frame); /* no output: libaom dropped the frame */
}

static void enc_set_property(GObject *object, guint id, const GValue *value, GParamSpec *pspec) {
  SoraAv1Enc *self = (SoraAv1Enc *)object;
  if (id == 0 || id >= N_PROPS) {
    G_OBJECT_WARN_INVALID_PROPERTY_ID(object, id, pspec);
    return;
  }
  g_mutex_lock(&self->lock);
  self->props[id] = G_VALUE_HOLDS_BOOLEAN(value) ? (guint)g_value_get_boolean(value) : g_value_get_uint(value);
  if (id == PROP_TARGET_BITRATE) self->bitrate_changed = TRUE; /* the others take effect with the next encoder */
  g_mutex_unlock(&self->lock);
}

static void enc_get_property(GObject *object, guint id, GValue *value, GParamSpec *pspec) {
  SoraAv1Enc *self = (SoraAv1Enc *)object;
  if (id == 0 || id >= N_PROPS) {
    G_OBJECT_WARN_INVALID_PROPERTY_ID(object, id, pspec);
    return;
  }
  guint v = prop_get(self, id);
  if (G_VALUE_HOLDS_BOOLEAN(value))
    g_value_set_boolean(value, v != 0);
  else
    g_value_set_uint(value, v);
}

static void enc_finalize(GObject *object) {
  SoraAv1Enc *self = (SoraAv1Enc *)object;
  encoder_close(self);
  g_clear_pointer(&self->input_state, gst_video_codec_state_unref);
  g_mutex_clear(&self->lock);
  G_OBJECT_CLASS(sora_av1_enc_parent_class)->finalize(object);
}

static void sora_av1_enc_class_init(SoraAv1EncClass *klass) {
  GObjectClass *object_class = G_OBJECT_CLASS(klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS(klass);
  GstVideoEncoderClass *enc_class = GST_VIDEO_ENCODER_CLASS(klass);
  object_class->set_property = enc_set_property;
  object_class->get_property = enc_get_property;
  object_class->finalize = enc_finalize;
  GParamFlags flags = (GParamFlags)(G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS);
  for (guint id = 1; id < N_PROPS; id++) {
    GParamSpec *spec =
        id == PROP_ROW_MT
            ? g_param_spec_boolean(prop_specs[id].name, prop_specs[id].name, prop_specs[id].blurb, prop_specs[id].def,
                                   flags)
            : g_param_spec_uint(prop_specs[id].name, prop_specs[id].name, prop_specs[id].blurb, prop_specs[id].min,
                                prop_specs[id].max, prop_specs[id].def, flags);
    g_object_class_install_property(object_class, id, spec);
  }
  gst_element_class_add_static_pad_template(element_class, &sink_template);
  gst_element_class_add_static_pad_template(element_class, &src_template);
  gst_element_class_set_static_metadata(element_class, "AV1 encoder (libaom, sora_sdk)", "Codec/Encoder/Video",
                                        "Encodes AV1 with libaom, real-time settings of libwebrtc", "sora_sdk");
  enc_class->start = enc_start;
  enc_class->stop = enc_stop;
  enc_class->set_format = enc_set_format;
  enc_class->handle_frame = enc_handle_frame;
}

static void sora_av1_enc_init(SoraAv1Enc *self) {
  g_mutex_init(&self->lock);
  for (guint id = 1; id < N_PROPS; id++) self->props[id] = prop_specs[id].def;
  self->last_input_pts = GST_CLOCK_TIME_NONE;
}

void sora_register_aomenc(void) {
  static gsize done = 0;
  if (g_once_init_enter(&done)) {
    GST_DEBUG_CATEGORY_INIT(aomenc_debug, "soraav1enc", 0, "sora_sdk AV1 encoder (libaom)");
    if (!gst_element_register(NULL, "soraav1enc", GST_RANK_NONE, sora_av1_enc_get_type()))
      g_printerr("sora_c: cannot register the libaom encoder element\n");
    g_once_init_leave(&done, 1);
  }
}
