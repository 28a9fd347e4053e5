/* Video encoders and payloaders, set up the same way for a single send branch (peer.c) and for each simulcast
 * layer (simulcast.c): real-time settings, constant bitrate, key frames only on request (keyframe-max-dist 3000).
 *
 * Encoder threads follow the frame size and the machine's cores, as libwebrtc chooses them: libvpx and libaom
 * spin-wait between threads, so small frames or few cores stay on one thread. The choice is made when the
 * encoder sees new caps (before it configures itself for them), so a size change re-chooses it. */
#include <dlfcn.h>
#include <string.h>

#include "internal.h"

typedef enum { THREADS_VP8, THREADS_VP9, THREADS_AV1 } threads_rule;

/* Threads for a frame of `pixels` on `cores` processors. */
static gint encoder_threads(threads_rule rule, gint64 pixels, guint cores) {
  switch (rule) {
  case THREADS_VP8:
    if (pixels >= 1920 * 1080 && cores > 8) return 8;
    if (pixels > 1280 * 960 && cores >= 6) return 3;
    if (pixels > 640 * 480 && cores >= 3) return 2;
    return 1;
  case THREADS_VP9: /* as many as the column tiles it can use (1, 2, 4) */
    if (pixels >= 1280 * 720 && cores > 4) return 4;
    if (pixels >= 640 * 360 && cores > 2) return 2;
    return 1;
  case THREADS_AV1:
    if (pixels > 1280 * 720 && cores > 8) return 8;
    if (pixels >= 640 * 360 && cores > 4) return 4;
    if (pixels >= 320 * 180 && cores > 2) return 2;
    return 1;
  }
  return 1;
}

/* The version of the libvpx the vpx plugin loaded, as 0xMMmmpp (0 if unknown). */
guint sora_libvpx_version(void) {
  static const char *names[] = {"libvpx.so.7", "libvpx.so.8", "libvpx.so.9", "libvpx.so.10", "libvpx.so.11"};
  static gsize cached;
  if (g_once_init_enter(&cached)) {
    guint version = 0;
    GstPluginFeature *feature = GST_PLUGIN_FEATURE(gst_element_factory_find("vp8enc"));
    if (feature) { /* loads the plugin, and so its libvpx */
      GstPluginFeature *loaded = gst_plugin_feature_load(feature);
      if (loaded) gst_object_unref(loaded);
      gst_object_unref(feature);
    }
    for (guint i = 0; i < G_N_ELEMENTS(names) && !version; i++) {
      void *handle = dlopen(names[i], RTLD_LAZY | RTLD_NOLOAD);
      if (!handle) continue;
      int (*fn)(void) = (int (*)(void))dlsym(handle, "vpx_codec_version");
      if (fn) version = (guint)fn() & 0xffffff;
      dlclose(handle);
    }
    g_once_init_leave(&cached, (gsize)version + 1);
  }
  return (guint)(cached - 1);
}

/* The frame size of a caps event seen by a pad probe; FALSE for anything else. */
static gboolean probe_caps_size(GstPadProbeInfo *info, gint *w, gint *h) {
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT(info);
  if (!event || GST_EVENT_TYPE(event) != GST_EVENT_CAPS) return FALSE;
  GstCaps *caps = NULL;
  gst_event_parse_caps(event, &caps);
  const GstStructure *st = caps && gst_caps_get_size(caps) ? gst_caps_get_structure(caps, 0) : NULL;
  return st && gst_structure_get_int(st, "width", w) && gst_structure_get_int(st, "height", h) && *w > 0 && *h > 0;
}

static GstPadProbeReturn on_encoder_caps(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  gint w = 0, h = 0;
  if (!probe_caps_size(info, &w, &h)) return GST_PAD_PROBE_OK;
  threads_rule rule = (threads_rule)GPOINTER_TO_INT(data);
  gint threads = encoder_threads(rule, (gint64)w * h, g_get_num_processors());
  GstElement *enc = gst_pad_get_parent_element(pad);
  if (enc) {
    g_object_set(enc, "threads", threads, NULL);
    if (rule == THREADS_AV1) g_object_set(enc, "row-mt", threads > 1, NULL);
    /* VP9: one column tile per two threads, in log2 (libwebrtc's g_threads >> 1): 1 thread, 1 tile. vp9enc's
     * default (as many as the width allows) costs 17 % more CPU on one thread at 640x480. */
    if (rule == THREADS_VP9) g_object_set(enc, "tile-columns", threads >> 1, NULL);
    gst_object_unref(enc);
  }
  return GST_PAD_PROBE_OK;
}

static void follow_size(GstElement *enc, threads_rule rule) {
  GstPad *sink = gst_element_get_static_pad(enc, "sink");
  if (!sink) return;
  gst_pad_add_probe(sink, GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM, on_encoder_caps, GINT_TO_POINTER(rule), NULL);
  gst_object_unref(sink);
}

static GstElement *caps_filter(const char *caps_text, GString *missing) {
  GstElement *filter = sora_make("capsfilter", missing);
  if (filter) {
    GstCaps *caps = gst_caps_from_string(caps_text);
    g_object_set(filter, "caps", caps, NULL);
    gst_caps_unref(caps);
  }
  return filter;
}

/* ---- frame sizes: what each encoder takes ----------------------------------------------------------------
 * Measured with Debian 12's elements: x264enc fails to initialise on an odd width or height; x265enc too, and
 * below 16x16 (its caps), and on 5000x16 or 16x16384 (a level it cannot meet; from 32 up it can); av1enc's caps
 * start at 4x4; OpenH264 takes sizes from 16x16 up (odd ones cropped by itself); vp8enc stops at 16383; vp9enc takes anything. Every
 * frame is fitted to the encoder before it (libwebrtc too crops to an encoder's alignment): an odd side is
 * cropped by its last row or column, a side under the minimum padded (centred, black), one over the maximum
 * cropped. */
typedef struct {
  gint align, min, max;
} size_rule;

static size_rule encoder_size_rule(const char *codec, const char *element) {
  size_rule r = {1, 1, G_MAXINT};
  if (g_ascii_strcasecmp(codec, "VP8") == 0) {
    r.max = 16383;
  } else if (g_ascii_strcasecmp(codec, "AV1") == 0) {
    r.min = 4;
  } else if (g_ascii_strcasecmp(codec, "H265") == 0) {
    r.align = 2;
    r.min = 32;
  } else if (g_ascii_strcasecmp(codec, "H264") == 0) {
    if (g_strcmp0(element, "openh264enc") == 0) {
      r.align = 2; /* (it takes odd sides, and crops them itself) */
      r.min = 16;
    } else {
      r.align = 2;
      r.min = element && g_strcmp0(element, "x264enc") != 0 ? 16 : 2; /* (other encoders: untested, careful) */
    }
  }
  return r;
}

static gint fit_side(gint v, const size_rule *r) {
  if (v > r->max) v = r->max;
  v -= v % r->align;
  return v < r->min ? r->min : v;
}

/* The frame size arriving at the fit stage: its output size follows before videobox negotiates. */
static GstPadProbeReturn on_fit_caps(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  gint w = 0, h = 0;
  if (!probe_caps_size(info, &w, &h)) return GST_PAD_PROBE_OK;
  const size_rule *r = data;
  GstElement *box = gst_pad_get_parent_element(pad);
  GstObject *bin = box ? gst_object_get_parent(GST_OBJECT(box)) : NULL;
  GstElement *filter = bin ? gst_bin_get_by_name(GST_BIN(bin), "fit") : NULL;
  if (filter) {
    GstCaps *size = gst_caps_new_simple("video/x-raw", "width", G_TYPE_INT, fit_side(w, r), "height", G_TYPE_INT,
                                        fit_side(h, r), NULL);
    /* The output keeps the input's colorimetry where the size's default differs (BT.709 from 720p up): left open,
     * videobox would convert every pixel's matrix (a copy, and 12 % of a core at 1280x720) and the receiver would
     * decode the colours with the wrong one. Only then: a fixed colorimetry in the caps of every size made the
     * caps renegotiation of a simulcast size change fail now and then. */
    GstCaps *in = NULL;
    gst_event_parse_caps(GST_PAD_PROBE_INFO_EVENT(info), &in);
    const char *colorimetry = gst_structure_get_string(gst_caps_get_structure(in, 0), "colorimetry");
    GstVideoColorimetry given;
    if (colorimetry && gst_video_colorimetry_from_string(&given, colorimetry)) {
      GstVideoInfo fitted;
      gst_video_info_set_format(&fitted, GST_VIDEO_FORMAT_I420, (guint)fit_side(w, r), (guint)fit_side(h, r));
      if (!gst_video_colorimetry_is_equal(&given, &fitted.colorimetry))
        gst_caps_set_simple(size, "colorimetry", G_TYPE_STRING, colorimetry, NULL);
    }
    g_object_set(filter, "caps", size, NULL);
    gst_caps_unref(size);
    gst_object_unref(filter);
  }
  if (bin) gst_object_unref(bin);
  if (box) gst_object_unref(box);
  return GST_PAD_PROBE_OK;
}

/* [capsfilter `format`] ! videobox autocrop ! capsfilter "fit" [! capssetter `rate`] as one bin; NULL if an
 * element is missing. */
static GstElement *fit_stage(const char *codec, const char *element, const char *format, const char *rate,
                             GString *missing) {
  GstElement *parts[4] = {format ? sora_make("capsfilter", missing) : NULL, sora_make("videobox", missing),
                          sora_make("capsfilter", missing), rate ? sora_make("capssetter", missing) : NULL};
  if (!parts[1] || !parts[2] || (format && !parts[0]) || (rate && !parts[3])) {
    for (guint i = 0; i < G_N_ELEMENTS(parts); i++)
      if (parts[i]) gst_object_unref(parts[i]);
    return NULL;
  }
  GstElement *box = parts[1], *fit = parts[2];
  gst_object_set_name(GST_OBJECT(fit), "fit");
  g_object_set(box, "autocrop", TRUE, NULL);
  gst_util_set_object_arg(G_OBJECT(box), "fill", "black");
  const char *texts[4] = {format, NULL, NULL, rate};
  for (guint i = 0; i < G_N_ELEMENTS(parts); i++) {
    if (!texts[i]) continue;
    GstCaps *caps = gst_caps_from_string(texts[i]);
    g_object_set(parts[i], "caps", caps, NULL);
    gst_caps_unref(caps);
  }
  GstElement *bin = gst_bin_new(NULL), *first = NULL, *last = NULL;
  for (guint i = 0; i < G_N_ELEMENTS(parts); i++) {
    if (!parts[i]) continue;
    gst_bin_add(GST_BIN(bin), parts[i]);
    if (last) gst_element_link(last, parts[i]);
    if (!first) first = parts[i];
    last = parts[i];
  }
  GstPad *in = gst_element_get_static_pad(first, "sink"), *out = gst_element_get_static_pad(last, "src");
  gst_element_add_pad(bin, gst_ghost_pad_new("sink", in));
  gst_element_add_pad(bin, gst_ghost_pad_new("src", out));
  gst_object_unref(in);
  gst_object_unref(out);
  size_rule *rule = g_new(size_rule, 1);
  *rule = encoder_size_rule(codec, element);
  GstPad *box_sink = gst_element_get_static_pad(box, "sink");
  gst_pad_add_probe(box_sink, GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM, on_fit_caps, rule, g_free);
  gst_object_unref(box_sink);
  return bin;
}

int sora_video_encoder_make(const char *codec, const char *element, guint bps, GString *missing, GstElement **raw,
                            GstElement **enc, GstElement **post, GstElement **pay) {
  *raw = *enc = *post = *pay = NULL;
  guint kbps = MAX(bps / 1000, 1u);
  if (g_ascii_strcasecmp(codec, "VP8") == 0 || g_ascii_strcasecmp(codec, "VP9") == 0) {
    gboolean vp8 = g_ascii_strcasecmp(codec, "VP8") == 0;
    *enc = sora_make(vp8 ? "vp8enc" : "vp9enc", missing);
    *pay = sora_make(vp8 ? "rtpvp8pay" : "rtpvp9pay", missing);
    if (*enc) {
      /* Speed. VP8: -6 as libwebrtc, a fixed speed 6 (a positive cpu-used in real-time mode makes libvpx pick its
       * own speed to fill half of each frame's time: 1.5x the CPU at 640x480). VP9: libwebrtc's 7 with the real-time
       * speed-ups of libvpx 1.13 and later (libwebrtc builds a recent one). Debian 12's libvpx 1.12 is measured
       * instead (encoder CPU and Y PSNR of a panned photograph, 240 frames, 944 kbit/s CBR): 7 1.52 s 48.75 dB,
       * 8 1.19 s 49.27 dB, 9 0.81 s 49.44 dB at 640x480; 9 at 1280x720 took 1.72 s against 8's 3.08 s for 44.31
       * against 43.57 dB, and at 300 kbit/s kept or raised PSNR too (a moving zone plate: -0.2 dB). So 9 there.
       * Error-resilient mode off for both, as libwebrtc without temporal layers (losses are repaired by NACK / RTX and
       * key-frame requests): for VP8 it cost about 5 % more encoder CPU at 640x480 for the same bitrate and picture
       * quality. */
      gint speed = vp8 ? -6 : (sora_libvpx_version() >= 0x010d00 ? 7 : 9);
      g_object_set(*enc, "deadline", (gint64)1, "cpu-used", speed, "threads", 1, "lag-in-frames", 0,
                   "end-usage", 1 /* cbr */, "target-bitrate", (gint)bps, "keyframe-max-dist", 3000,
                   "error-resilient", 0, "undershoot", 95, "buffer-size", 1000, "buffer-initial-size", 500,
                   "buffer-optimal-size", 600, NULL);
      /* VP9 as libwebrtc: row multithreading, no frame-parallel mode; column tiles follow the threads. */
      if (!vp8) g_object_set(*enc, "row-mt", TRUE, "frame-parallel-decoding", FALSE, NULL);
      follow_size(*enc, vp8 ? THREADS_VP8 : THREADS_VP9);
    }
    if (*pay) g_object_set(*pay, "picture-id-mode", 2 /* 15-bit */, NULL);
  } else if (g_ascii_strcasecmp(codec, "H264") == 0) {
    gboolean openh264 = g_strcmp0(element, "openh264enc") == 0;
    gboolean x264 = !element || g_strcmp0(element, "x264enc") == 0;
    *enc = sora_make(element ? element : "x264enc", missing);
    *post = caps_filter("video/x-h264,profile=constrained-baseline,stream-format=byte-stream", missing);
    *pay = sora_make("rtph264pay", missing);
    if (*enc && openh264) {
      /* Cisco's OpenH264 (loaded from the application's path): real-time, one thread, bitrate control. */
      gst_util_set_object_arg(G_OBJECT(*enc), "rate-control", "bitrate");
      gst_util_set_object_arg(G_OBJECT(*enc), "usage-type", "camera");
      gst_util_set_object_arg(G_OBJECT(*enc), "complexity", "low");
      g_object_set(*enc, "bitrate", bps, "max-bitrate", bps / 2 * 3, "gop-size", 3000, "multi-thread", 1,
                   "enable-frame-skip", FALSE, NULL);
    } else if (*enc && x264) {
      gst_util_set_object_arg(G_OBJECT(*enc), "tune", "zerolatency");
      gst_util_set_object_arg(G_OBJECT(*enc), "speed-preset", "ultrafast");
      g_object_set(*enc, "bitrate", kbps, "key-int-max", 3000, "threads", 1, NULL);
    } else if (*enc && g_object_class_find_property(G_OBJECT_GET_CLASS(*enc), "bitrate")) {
      g_object_set(*enc, "bitrate", kbps, NULL); /* other encoders (nvh264enc, vah264enc, ...) count in kbit/s */
    }
    if (*pay) g_object_set(*pay, "config-interval", -1, "aggregate-mode", 1 /* zero-latency */, NULL);
  } else if (g_ascii_strcasecmp(codec, "H265") == 0) {
    *enc = sora_make("x265enc", missing);
    *pay = sora_make("rtph265pay", missing);
    if (*enc) {
      gst_util_set_object_arg(G_OBJECT(*enc), "tune", "zerolatency");
      gst_util_set_object_arg(G_OBJECT(*enc), "speed-preset", "ultrafast");
      /* Key frames as IDR pictures with VPS/SPS/PPS in front, as libwebrtc sends them: x265's default open GOP
       * makes CRA pictures, before which rtph265pay inserts no parameter sets, so a receiver that joins later
       * (or asks with a PLI) never gets them and decodes nothing. */
      g_object_set(*enc, "bitrate", kbps, "key-int-max", 3000, "option-string", "open-gop=0:repeat-headers=1", NULL);
    }
    if (*pay) g_object_set(*pay, "config-interval", -1, NULL);
  } else if (g_ascii_strcasecmp(codec, "AV1") == 0) {
    /* libaom realtime CBR through the shim's soraav1enc (aomenc.c: libwebrtc's LibaomAv1Encoder settings and
     * controls, which GStreamer's av1enc cannot set), at libwebrtc's speed for normal complexity (cpu-used 10);
     * 4:2:0 (profile 0) input. Explicit quantizer bounds (libwebrtc's 10..56): libaom 3.6 aborts
     * (rc_pick_q_and_bounds_no_stats_cbr assertion) with CBR and a 0..0 range. */
    *enc = sora_make("soraav1enc", missing);
    *pay = sora_make("sorartpav1pay", missing);
    if (*enc) {
      g_object_set(*enc, "cpu-used", 10u, "threads", 1u, "row-mt", FALSE, "target-bitrate", kbps, "min-quantizer", 10u,
                   "max-quantizer", 56u, "keyframe-max-dist", 3000u, "buf-sz", 1000u, "buf-initial-sz", 500u,
                   "buf-optimal-sz", 600u, NULL);
      follow_size(*enc, THREADS_AV1);
    }
  } else {
    return sora_fail(SORA_ERR_UNSUPPORTED, "sending video codec %s is not supported by this engine", codec);
  }
  /* AV1: 4:2:0 (profile 0) input. x265enc cannot initialise without a frame rate, and frames from the
   * application come at a variable one (0/1): it gets a nominal 30/1 for its rate control. */
  gboolean h265 = g_ascii_strcasecmp(codec, "H265") == 0;
  *raw = fit_stage(codec, element, g_ascii_strcasecmp(codec, "AV1") == 0 ? "video/x-raw,format=I420" : NULL,
                   h265 ? "video/x-raw,framerate=30/1" : NULL, missing);
  return SORA_OK;
}
