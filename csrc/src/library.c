/* Library-wide pieces: ABI version, thread-local errors, engine start, logging. */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

static __thread char last_error[1024];

int sora_fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return code;
}

void sora_clear_error(void) { last_error[0] = '\0'; }

SORA_C_API uint32_t sora_c_abi_version(void) { return ((uint32_t)SORA_C_ABI_MAJOR << 16) | SORA_C_ABI_MINOR; }

SORA_C_API const char *sora_c_last_error(void) { return last_error; }

static gpointer engine_init_once(gpointer unused) {
  (void)unused;
  GError *err = NULL;
  if (!gst_init_check(NULL, NULL, &err)) {
    g_printerr("sora_c: GStreamer failed to initialise: %s\n", err ? err->message : "unknown");
    g_clear_error(&err);
    return GINT_TO_POINTER(0);
  }
  sora_register_av1_elements();
  sora_register_dav1d();
  sora_register_aomenc();
  sora_register_pacer();
  return GINT_TO_POINTER(1);
}

void sora_engine_init(void) {
  static GOnce once = G_ONCE_INIT;
  g_once(&once, engine_init_once, NULL);
}

SORA_C_API const char *sora_c_engine_version(void) {
  static char version[128];
  static gsize done = 0;
  if (g_once_init_enter(&done)) {
    guint major, minor, micro, nano;
    gst_version(&major, &minor, &micro, &nano);
    snprintf(version, sizeof version, "GStreamer %u.%u.%u webrtcbin", major, minor, micro);
    g_once_init_leave(&done, 1);
  }
  return version;
}

SORA_C_API int sora_c_element_available(const char *name) {
  sora_clear_error();
  if (!name || !*name) return 0;
  sora_engine_init();
  GstElementFactory *factory = gst_element_factory_find(name);
  if (!factory) return 0;
  /* Hardware elements register only where their driver exists; creating one proves it loads. */
  GstElement *probe = gst_element_factory_create(factory, NULL);
  gst_object_unref(factory);
  if (!probe) return 0;
  gst_object_unref(probe);
  return 1;
}

SORA_C_API void sora_c_free(void *ptr) { g_free(ptr); }

static GstDebugLevel level_for(int32_t severity) {
  switch (severity) {
    case SORA_LOG_VERBOSE: return GST_LEVEL_DEBUG;
    case SORA_LOG_INFO: return GST_LEVEL_INFO;
    case SORA_LOG_WARNING: return GST_LEVEL_WARNING;
    case SORA_LOG_ERROR: return GST_LEVEL_ERROR;
    default: return GST_LEVEL_NONE;
  }
}

GST_DEBUG_CATEGORY_STATIC(sora_log_cat);

static void ensure_log_category(void) {
  static gsize done = 0;
  if (g_once_init_enter(&done)) {
    GST_DEBUG_CATEGORY_INIT(sora_log_cat, "sora", 0, "sora_sdk");
    g_once_init_leave(&done, 1);
  }
}

SORA_C_API int sora_c_set_log_severity(int32_t severity) {
  sora_clear_error();
  if (severity < SORA_LOG_VERBOSE || severity > SORA_LOG_NONE)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "log severity must be 0..4, got %d", severity);
  sora_engine_init();
  ensure_log_category();
  GstDebugLevel level = level_for(severity);
  if (level == GST_LEVEL_NONE) {
    gst_debug_set_active(FALSE);
  } else {
    gst_debug_set_active(TRUE);
    gst_debug_set_default_threshold(level);
  }
  return SORA_OK;
}

SORA_C_API int sora_c_log(int32_t severity, const char *message) {
  sora_clear_error();
  if (!message) return sora_fail(SORA_ERR_INVALID_ARGUMENT, "message is NULL");
  if (severity < SORA_LOG_VERBOSE || severity > SORA_LOG_NONE)
    return sora_fail(SORA_ERR_INVALID_ARGUMENT, "log severity must be 0..4, got %d", severity);
  sora_engine_init();
  ensure_log_category();
  GstDebugLevel level = level_for(severity);
  if (level != GST_LEVEL_NONE) GST_CAT_LEVEL_LOG(sora_log_cat, level, NULL, "%s", message);
  return SORA_OK;
}
