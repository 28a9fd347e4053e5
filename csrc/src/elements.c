/* Small helpers for making the engine's elements, shared by the send and receive branches. */
#include "internal.h"

GstElement *sora_make(const char *factory, GString *missing) {
  GstElement *e = gst_element_factory_make(factory, NULL);
  if (!e) g_string_append_printf(missing, "%s%s", missing->len ? ", " : "", factory);
  return e;
}

/* Never bounded in time: a queue's time level is the distance between the timestamps that went in and out, so
 * after any pause in the stream longer than the bound (a slow key frame, a sender that stops capturing for a
 * while, a 1 fps screen share) the first buffer in counts as a backlog and a leaky queue drops it, which costs a
 * decoder everything up to the next key frame. */
void sora_set_leaky_queue(GstElement *queue, guint max_buffers, guint max_bytes) {
  g_object_set(queue, "max-size-buffers", max_buffers, "max-size-bytes", max_bytes, "max-size-time", (guint64)0,
               NULL);
  gst_util_set_object_arg(G_OBJECT(queue), "leaky", "downstream");
}
