/* Engine statistics (a GstStructure of GstStructures) serialised as a JSON array. */
#include <math.h>

#include "internal.h"

void sora_stats_extend_rtp(GstStructure *all, const char *type, sora_stats_extend_fn fn, gpointer data) {
  for (gint i = 0; i < gst_structure_n_fields(all); i++) {
    const char *name = gst_structure_nth_field_name(all, i);
    const GValue *v = gst_structure_get_value(all, name);
    if (!v || G_VALUE_TYPE(v) != GST_TYPE_STRUCTURE) continue;
    const GstStructure *entry = gst_value_get_structure(v);
    guint ssrc = 0;
    if (!entry || !gst_structure_has_name(entry, type) || !gst_structure_get_uint(entry, "ssrc", &ssrc)) continue;
    GstStructure *extended = fn(entry, ssrc, data);
    if (!extended) continue;
    gst_structure_set(all, name, GST_TYPE_STRUCTURE, extended, NULL); /* replaces field i: the order stays */
    gst_structure_free(extended);
  }
}

static void json_string(GString *out, const char *s) {
  g_string_append_c(out, '"');
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    switch (*p) {
      case '"': g_string_append(out, "\\\""); break;
      case '\\': g_string_append(out, "\\\\"); break;
      case '\n': g_string_append(out, "\\n"); break;
      case '\r': g_string_append(out, "\\r"); break;
      case '\t': g_string_append(out, "\\t"); break;
      default:
        if (*p < 0x20)
          g_string_append_printf(out, "\\u%04x", *p);
        else
          g_string_append_c(out, (char)*p);
    }
  }
  g_string_append_c(out, '"');
}

static void json_object(GString *out, const GstStructure *s, const char *id);

static void json_value(GString *out, const GValue *v) {
  GType t = G_VALUE_TYPE(v);
  if (t == G_TYPE_BOOLEAN) {
    g_string_append(out, g_value_get_boolean(v) ? "true" : "false");
  } else if (t == G_TYPE_INT) {
    g_string_append_printf(out, "%d", g_value_get_int(v));
  } else if (t == G_TYPE_UINT) {
    g_string_append_printf(out, "%u", g_value_get_uint(v));
  } else if (t == G_TYPE_INT64) {
    g_string_append_printf(out, "%" G_GINT64_FORMAT, g_value_get_int64(v));
  } else if (t == G_TYPE_UINT64) {
    g_string_append_printf(out, "%" G_GUINT64_FORMAT, g_value_get_uint64(v));
  } else if (t == G_TYPE_LONG) {
    g_string_append_printf(out, "%ld", g_value_get_long(v));
  } else if (t == G_TYPE_ULONG) {
    g_string_append_printf(out, "%lu", g_value_get_ulong(v));
  } else if (t == G_TYPE_DOUBLE || t == G_TYPE_FLOAT) {
    double d = t == G_TYPE_DOUBLE ? g_value_get_double(v) : g_value_get_float(v);
    if (isfinite(d)) {
      char buf[G_ASCII_DTOSTR_BUF_SIZE];
      g_string_append(out, g_ascii_dtostr(buf, sizeof buf, d));
    } else {
      g_string_append(out, "null");
    }
  } else if (t == G_TYPE_STRING) {
    const char *str = g_value_get_string(v);
    if (str) json_string(out, str); else g_string_append(out, "null");
  } else if (G_TYPE_IS_ENUM(t)) {
    GEnumClass *klass = g_type_class_ref(t);
    GEnumValue *ev = g_enum_get_value(klass, g_value_get_enum(v));
    json_string(out, ev ? ev->value_nick : "unknown");
    g_type_class_unref(klass);
  } else if (t == GST_TYPE_STRUCTURE) {
    const GstStructure *inner = gst_value_get_structure(v);
    if (inner) json_object(out, inner, NULL); else g_string_append(out, "null");
  } else if (t == GST_TYPE_LIST || t == GST_TYPE_ARRAY) {
    g_string_append_c(out, '[');
    guint n = t == GST_TYPE_LIST ? gst_value_list_get_size(v)
              : t == GST_TYPE_ARRAY ? gst_value_array_get_size(v) : 0;
    for (guint i = 0; i < n; i++) {
      if (i) g_string_append_c(out, ',');
      json_value(out, t == GST_TYPE_LIST ? gst_value_list_get_value(v, i) : gst_value_array_get_value(v, i));
    }
    g_string_append_c(out, ']');
  } else {
    char *text = gst_value_serialize(v);
    if (text) json_string(out, text); else g_string_append(out, "null");
    g_free(text);
  }
}

typedef struct {
  GString *out;
  gboolean first;
} object_state;

static gboolean append_field(GQuark field, const GValue *value, gpointer data) {
  object_state *st = data;
  if (!st->first) g_string_append_c(st->out, ',');
  st->first = FALSE;
  json_string(st->out, g_quark_to_string(field));
  g_string_append_c(st->out, ':');
  json_value(st->out, value);
  return TRUE;
}

static void json_object(GString *out, const GstStructure *s, const char *name_key) {
  g_string_append_c(out, '{');
  object_state st = {out, TRUE};
  if (name_key) {
    json_string(out, name_key);
    g_string_append_c(out, ':');
    json_string(out, gst_structure_get_name(s));
    st.first = FALSE;
  }
  gst_structure_foreach(s, append_field, &st);
  g_string_append_c(out, '}');
}

typedef struct {
  GString *out;
  gboolean first;
} array_state;

static gboolean append_stat(GQuark field, const GValue *value, gpointer data) {
  (void)field;
  array_state *st = data;
  if (G_VALUE_TYPE(value) != GST_TYPE_STRUCTURE) return TRUE;
  const GstStructure *s = gst_value_get_structure(value);
  if (!s) return TRUE;
  if (!st->first) g_string_append_c(st->out, ',');
  st->first = FALSE;
  json_object(st->out, s, "gst-name");
  return TRUE;
}

char *sora_structure_to_json(const GstStructure *s) {
  GString *out = g_string_new("[");
  array_state st = {out, TRUE};
  gst_structure_foreach(s, append_stat, &st);
  g_string_append_c(out, ']');
  return g_string_free(out, FALSE);
}

/* Every stream this peer sends, with its counts, straight from the RTP sessions' "source-stats": the engine's
 * get-stats reports one outbound-rtp per sending transceiver in 1.26, so the layers of a simulcast m-line other
 * than the one its caps name are missing there (1.22 listed every sending source). Fields "ssrc-<n>". */
GstStructure *sora_stats_rtp_senders(GstElement *webrtc) {
  GstElement *rtpbin = gst_bin_get_by_name(GST_BIN(webrtc), "rtpbin");
  if (!rtpbin) return NULL;
  GstStructure *out = gst_structure_new_empty("sora-rtp-senders");
  for (guint id = 0; id < 16; id++) {
    GObject *sess = NULL;
    g_signal_emit_by_name(rtpbin, "get-internal-session", id, &sess);
    if (!sess) continue;
    GstStructure *stats = NULL;
    g_object_get(sess, "stats", &stats, NULL);
    const GValue *sources = stats ? gst_structure_get_value(stats, "source-stats") : NULL;
    G_GNUC_BEGIN_IGNORE_DEPRECATIONS /* "source-stats" is a GValueArray */
    GValueArray *array = sources && G_VALUE_HOLDS(sources, g_value_array_get_type()) ? g_value_get_boxed(sources) : NULL;
    for (guint i = 0; array && i < array->n_values; i++) {
      const GValue *item = g_value_array_get_nth(array, i);
      const GstStructure *src = GST_VALUE_HOLDS_STRUCTURE(item) ? gst_value_get_structure(item) : NULL;
      gboolean internal = FALSE, sender = FALSE;
      guint ssrc = 0;
      guint64 packets = 0, octets = 0;
      if (!src || !gst_structure_get_boolean(src, "internal", &internal) || !internal ||
          !gst_structure_get_boolean(src, "is-sender", &sender) || !sender || !gst_structure_get_uint(src, "ssrc", &ssrc))
        continue;
      gst_structure_get_uint64(src, "packets-sent", &packets);
      gst_structure_get_uint64(src, "octets-sent", &octets);
      char name[32];
      g_snprintf(name, sizeof name, "ssrc-%u", ssrc);
      GstStructure *entry = gst_structure_new("sender", "ssrc", G_TYPE_UINT, ssrc, "packets-sent", G_TYPE_UINT64,
                                              packets, "bytes-sent", G_TYPE_UINT64, octets, NULL);
      gst_structure_set(out, name, GST_TYPE_STRUCTURE, entry, NULL);
      gst_structure_free(entry);
    }
    G_GNUC_END_IGNORE_DEPRECATIONS
    if (stats) gst_structure_free(stats);
    g_object_unref(sess);
  }
  gst_object_unref(rtpbin);
  return out;
}
