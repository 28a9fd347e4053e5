/* sorapacer: spreads a video stream's RTP packets over time, as libwebrtc's pacer does.
 *
 * An encoder hands over a whole frame at once; a key frame, or the first frame after a pause in the capture
 * (the rate controller has saved up), is a hundred packets or more. Sent as one burst, they overflow the
 * receiving socket's buffer (212,992 bytes by default on Linux, about 90 such packets on loopback) or a router's
 * queue on the way, and the receiver loses the start of a key frame, asks for another one, and so on.
 *
 * A token bucket: packets go at once while the bucket holds tokens (a burst of up to BURST_BYTES, so steady
 * frames are not delayed), then at `rate` bit/s. The element runs on the streaming thread of the queue in front
 * of it, which holds the frame meanwhile. Flushing or stopping the element ends a wait at once. */
#include "internal.h"

#define BURST_BYTES 24000.0
#define DEFAULT_RATE 2500000u
#define PACING_FACTOR_PERCENT 250u /* libwebrtc's pacing factor: 2.5 x the stream's bitrate */
#define PACING_MIN_BPS 500000u
#define PACER_QUEUE_BYTES (1u << 20)

typedef struct {
  GstElement parent;
  GstPad *sinkpad, *srcpad;
  GMutex lock;
  GCond cond;
  guint64 rate;  /* bit/s */
  double tokens; /* bytes; may go below 0 by the last packet's size */
  gint64 last_us;
  gboolean flushing;
} SoraPacer;

typedef struct {
  GstElementClass parent_class;
} SoraPacerClass;

enum { PROP_0, PROP_RATE };

GType sora_pacer_get_type(void);
G_DEFINE_TYPE(SoraPacer, sora_pacer, GST_TYPE_ELEMENT)

static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE("sink", GST_PAD_SINK, GST_PAD_ALWAYS,
                                                                    GST_STATIC_CAPS("application/x-rtp"));
static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE("src", GST_PAD_SRC, GST_PAD_ALWAYS,
                                                                   GST_STATIC_CAPS("application/x-rtp"));

static void set_flushing(SoraPacer *self, gboolean flushing) {
  g_mutex_lock(&self->lock);
  self->flushing = flushing;
  if (!flushing) {
    self->tokens = BURST_BYTES;
    self->last_us = g_get_monotonic_time();
  }
  g_cond_broadcast(&self->cond);
  g_mutex_unlock(&self->lock);
}

/* Wait until the bucket has tokens, then take `size` from it. FALSE: flushing. */
static gboolean take(SoraPacer *self, gsize size) {
  g_mutex_lock(&self->lock);
  for (;;) {
    if (self->flushing) {
      g_mutex_unlock(&self->lock);
      return FALSE;
    }
    gint64 now = g_get_monotonic_time();
    double rate = (double)MAX(self->rate, 8000u) / 8e6; /* bytes per microsecond */
    self->tokens = MIN(BURST_BYTES, self->tokens + (double)(now - self->last_us) * rate);
    self->last_us = now;
    if (self->tokens > 0) {
      self->tokens -= (double)size;
      g_mutex_unlock(&self->lock);
      return TRUE;
    }
    g_cond_wait_until(&self->cond, &self->lock, now + (gint64)(-self->tokens / rate) + 1);
  }
}

static GstFlowReturn pacer_chain(GstPad *pad, GstObject *parent, GstBuffer *buf) {
  (void)pad;
  SoraPacer *self = (SoraPacer *)parent;
  if (!take(self, gst_buffer_get_size(buf))) {
    gst_buffer_unref(buf);
    return GST_FLOW_FLUSHING;
  }
  return gst_pad_push(self->srcpad, buf);
}

/* A list (one frame, from most payloaders) goes out packet by packet. */
static GstFlowReturn pacer_chain_list(GstPad *pad, GstObject *parent, GstBufferList *list) {
  GstFlowReturn ret = GST_FLOW_OK;
  guint n = gst_buffer_list_length(list);
  for (guint i = 0; i < n && ret == GST_FLOW_OK; i++)
    ret = pacer_chain(pad, parent, gst_buffer_ref(gst_buffer_list_get(list, i)));
  gst_buffer_list_unref(list);
  return ret;
}

static gboolean pacer_sink_event(GstPad *pad, GstObject *parent, GstEvent *event) {
  SoraPacer *self = (SoraPacer *)parent;
  if (GST_EVENT_TYPE(event) == GST_EVENT_FLUSH_START) set_flushing(self, TRUE);
  if (GST_EVENT_TYPE(event) == GST_EVENT_FLUSH_STOP) set_flushing(self, FALSE);
  return gst_pad_event_default(pad, parent, event);
}

static GstStateChangeReturn pacer_change_state(GstElement *element, GstStateChange transition) {
  SoraPacer *self = (SoraPacer *)element;
  if (transition == GST_STATE_CHANGE_READY_TO_PAUSED) set_flushing(self, FALSE);
  if (transition == GST_STATE_CHANGE_PAUSED_TO_READY) set_flushing(self, TRUE); /* before the pads deactivate */
  return GST_ELEMENT_CLASS(sora_pacer_parent_class)->change_state(element, transition);
}

static void pacer_set_property(GObject *object, guint id, const GValue *value, GParamSpec *pspec) {
  SoraPacer *self = (SoraPacer *)object;
  if (id != PROP_RATE) {
    G_OBJECT_WARN_INVALID_PROPERTY_ID(object, id, pspec);
    return;
  }
  g_mutex_lock(&self->lock);
  self->rate = g_value_get_uint64(value);
  g_cond_broadcast(&self->cond);
  g_mutex_unlock(&self->lock);
}

static void pacer_get_property(GObject *object, guint id, GValue *value, GParamSpec *pspec) {
  SoraPacer *self = (SoraPacer *)object;
  if (id != PROP_RATE) {
    G_OBJECT_WARN_INVALID_PROPERTY_ID(object, id, pspec);
    return;
  }
  g_mutex_lock(&self->lock);
  g_value_set_uint64(value, self->rate);
  g_mutex_unlock(&self->lock);
}

static void pacer_finalize(GObject *object) {
  SoraPacer *self = (SoraPacer *)object;
  g_mutex_clear(&self->lock);
  g_cond_clear(&self->cond);
  G_OBJECT_CLASS(sora_pacer_parent_class)->finalize(object);
}

static void sora_pacer_class_init(SoraPacerClass *klass) {
  GObjectClass *object_class = G_OBJECT_CLASS(klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS(klass);
  object_class->set_property = pacer_set_property;
  object_class->get_property = pacer_get_property;
  object_class->finalize = pacer_finalize;
  g_object_class_install_property(object_class, PROP_RATE,
                                  g_param_spec_uint64("rate", "Rate", "Pacing rate in bit/s", 8000, G_MAXUINT64,
                                                      DEFAULT_RATE, G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS));
  element_class->change_state = pacer_change_state;
  gst_element_class_add_static_pad_template(element_class, &sink_template);
  gst_element_class_add_static_pad_template(element_class, &src_template);
  gst_element_class_set_static_metadata(element_class, "sora_sdk RTP pacer", "Filter/Network/RTP",
                                        "Spreads RTP packets over time (token bucket)", "sora_sdk");
}

static void sora_pacer_init(SoraPacer *self) {
  g_mutex_init(&self->lock);
  g_cond_init(&self->cond);
  self->rate = DEFAULT_RATE;
  self->tokens = BURST_BYTES;
  self->last_us = g_get_monotonic_time();
  self->sinkpad = gst_pad_new_from_static_template(&sink_template, "sink");
  gst_pad_set_chain_function(self->sinkpad, pacer_chain);
  gst_pad_set_chain_list_function(self->sinkpad, pacer_chain_list);
  gst_pad_set_event_function(self->sinkpad, pacer_sink_event);
  GST_PAD_SET_PROXY_CAPS(self->sinkpad);
  GST_PAD_SET_PROXY_ALLOCATION(self->sinkpad);
  gst_element_add_pad(GST_ELEMENT(self), self->sinkpad);
  self->srcpad = gst_pad_new_from_static_template(&src_template, "src");
  GST_PAD_SET_PROXY_CAPS(self->srcpad);
  gst_element_add_pad(GST_ELEMENT(self), self->srcpad);
}

void sora_register_pacer(void) {
  static gsize done = 0;
  if (g_once_init_enter(&done)) {
    if (!gst_element_register(NULL, "sorapacer", GST_RANK_NONE, sora_pacer_get_type()))
      g_printerr("sora_c: cannot register the pacer element\n");
    g_once_init_leave(&done, 1);
  }
}

void sora_pacer_make(guint stream_bps, GstElement **queue, GstElement **pacer) {
  sora_register_pacer();
  *queue = gst_element_factory_make("queue", NULL);
  *pacer = gst_element_factory_make("sorapacer", NULL);
  if (!*queue || !*pacer) {
    if (*queue) gst_object_unref(*queue);
    if (*pacer) gst_object_unref(*pacer);
    *queue = *pacer = NULL;
    return;
  }
  sora_set_leaky_queue(*queue, 0, PACER_QUEUE_BYTES);
  g_object_set(*pacer, "rate", MAX((guint64)stream_bps * PACING_FACTOR_PERCENT / 100, (guint64)PACING_MIN_BPS), NULL);
}
