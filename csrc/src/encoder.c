/* Video encoders and payloaders, set up the same way for a single send branch (peer.c) and for each simulcast
 * layer (simulcast.c): real-time settings, constant bitrate, key frames only on request (keyframe-max-dist 3000).
 *
 * Encoder threads follow the frame size and the machine's cores, as libwebrtc chooses them: libvpx and libaom
 * spin-wait between threads, so small frames or few cores stay on one thread. The choice is made when the
 * encoder sees new caps (before it configures itself for them), so a size change re-chooses it. */
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

static GstPadProbeReturn on_encoder_caps(GstPad *pad, GstPadProbeInfo *info, gpointer data) {
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT(info);
  if (!event || GST_EVENT_TYPE(event) != GST_EVENT_CAPS) return GST_PAD_PROBE_OK;
  GstCaps *caps = NULL;
  gst_event_parse_caps(event, &caps);
  gint w = 0, h = 0;
  const GstStructure *st = caps && gst_caps_get_size(caps) ? gst_caps_get_structure(caps, 0) : NULL;
  if (!st || !gst_structure_get_int(st, "width", &w) || !gst_structure_get_int(st, "height", &h))
    return GST_PAD_PROBE_OK;
  threads_rule rule = (threads_rule)GPOINTER_TO_INT(data);
  gint threads = encoder_threads(rule, (gint64)w * h, g_get_num_processors());
  GstElement *enc = gst_pad_get_parent_element(pad);
  if (enc) {
    g_object_set(enc, "threads", threads, NULL);
    if (rule == THREADS_AV1) g_object_set(enc, "row-mt", threads > 1, NULL);
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

int sora_video_encoder_make(const char *codec, const char *element, guint bps, GString *missing, GstElement **raw,
                            GstElement **enc, GstElement **post, GstElement **pay) {
  *raw = *enc = *post = *pay = NULL;
  guint kbps = MAX(bps / 1000, 1u);
  if (g_ascii_strcasecmp(codec, "VP8") == 0 || g_ascii_strcasecmp(codec, "VP9") == 0) {
    gboolean vp8 = g_ascii_strcasecmp(codec, "VP8") == 0;
    *enc = sora_make(vp8 ? "vp8enc" : "vp9enc", missing);
    *pay = sora_make(vp8 ? "rtpvp8pay" : "rtpvp9pay", missing);
    if (*enc) {
      g_object_set(*enc, "deadline", (gint64)1, "cpu-used", vp8 ? 8 : 7, "threads", 1, "lag-in-frames", 0,
                   "end-usage", 1 /* cbr */, "target-bitrate", (gint)bps, "keyframe-max-dist", 3000,
                   "error-resilient", vp8 ? 1 : 0, "undershoot", 95, "buffer-size", 1000, "buffer-initial-size", 500,
                   "buffer-optimal-size", 600, NULL);
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
      g_object_set(*enc, "bitrate", kbps, "key-int-max", 3000, NULL);
    }
    if (*pay) g_object_set(*pay, "config-interval", -1, NULL);
  } else if (g_ascii_strcasecmp(codec, "AV1") == 0) {
    /* libaom realtime; 4:2:0 (profile 0) input. Explicit quantizer bounds: libaom 3.6 aborts
     * (rc_pick_q_and_bounds_no_stats_cbr assertion) with CBR and the element's default range. */
    *raw = caps_filter("video/x-raw,format=I420", missing);
    *enc = sora_make("av1enc", missing);
    *pay = sora_make("sorartpav1pay", missing);
    if (*enc) {
      gst_util_set_object_arg(G_OBJECT(*enc), "usage-profile", "realtime");
      gst_util_set_object_arg(G_OBJECT(*enc), "end-usage", "cbr");
      g_object_set(*enc, "cpu-used", 8, "threads", 1, "row-mt", FALSE, "lag-in-frames", 0, "target-bitrate", kbps,
                   "min-quantizer", 10, "max-quantizer", 56, "keyframe-max-dist", 3000, "buf-sz", 1000,
                   "buf-initial-sz", 500, "buf-optimal-sz", 600, NULL);
      follow_size(*enc, THREADS_AV1);
    }
  } else {
    return sora_fail(SORA_ERR_UNSUPPORTED, "sending video codec %s is not supported by this engine", codec);
  }
  return SORA_OK;
}
