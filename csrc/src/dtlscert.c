/* The process's DTLS certificate: ECDSA P-256, self-signed, made once (well under a millisecond), as libwebrtc does.
 *
 * GStreamer's dtls plugin (1.22 .. 1.26) makes its own certificate, an RSA-2048 key (0.1-0.8 s), the first time any
 * dtlsdec is created in the process: dtlsdec's instance init always fetches the agent of the "generated"
 * certificate, whatever "pem" is set afterwards, and every other dtlsdec waits for that key. So two things here:
 *
 *  1. Our certificate goes to every dtlssrtpdec that webrtcbin creates (sora_dtls_certificate_apply, from the
 *     peer's deep-element-added, before the transport leaves NULL), and the local description gets its fingerprint
 *     (sora_dtls_certificate_fix_sdp: webrtcbin hashes the whole "pem" string, and ours also holds the key).
 *  2. The plugin's generated certificate, which then never signs anything, is made cheap: while the first dtlsdec is
 *     created here, on this thread, OpenSSL's default RSA method is a copy whose key generation gives a 2048-bit
 *     placeholder (a random odd modulus and a random private exponent). Nobody knows a private key that matches
 *     it, so a DTLS handshake that used it would fail (it does not silently weaken anything). On any other thread
 *     the copy generates real keys. GStreamer 1.28+ makes an ECDSA key itself and never calls this.
 *
 * If the EC key or the certificate cannot be made, nothing of this is used: GStreamer's own RSA certificate stands
 * (the engine warm-up thread of context.c makes it ahead, as before this module), and so do webrtcbin's fingerprints
 * (webrtcbin writes them per media, where they are replaced). */
#define OPENSSL_SUPPRESS_DEPRECATED /* RSA_METHOD: the only hook into the plugin's RSA_generate_key_ex */
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "internal.h"

static GMutex cert_lock;
static gboolean cert_done;
static char *cert_pem;                /* certificate + PKCS#8 key, PEM; NULL: GStreamer's own certificate */
static char cert_fingerprint[32 * 3]; /* "AB:CD:..." (sha-256 of the DER certificate) */

static EVP_PKEY *make_ec_key(void) {
  EVP_PKEY *key = NULL;
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
  if (ctx && EVP_PKEY_keygen_init(ctx) > 0 && EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx, NID_X9_62_prime256v1) > 0)
    EVP_PKEY_keygen(ctx, &key);
  EVP_PKEY_CTX_free(ctx);
  return key;
}

static X509 *make_certificate(EVP_PKEY *key) {
  X509 *x509 = X509_new();
  X509_NAME *name = X509_NAME_new();
  uint64_t serial = 0;
  gboolean ok = x509 && name && RAND_bytes((unsigned char *)&serial, sizeof serial) == 1 &&
                X509_set_version(x509, 2) &&
                ASN1_INTEGER_set_uint64(X509_get_serialNumber(x509), serial >> 1) &&
                X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_ASC, (const unsigned char *)"sora_sdk", -1,
                                           -1, 0) &&
                X509_set_subject_name(x509, name) && X509_set_issuer_name(x509, name) &&
                X509_gmtime_adj(X509_getm_notBefore(x509), -24 * 3600) && /* a peer whose clock is behind */
                X509_gmtime_adj(X509_getm_notAfter(x509), 365L * 24 * 3600) && X509_set_pubkey(x509, key) &&
                X509_sign(x509, key, EVP_sha256()) > 0;
  X509_NAME_free(name);
  if (!ok) {
    X509_free(x509);
    return NULL;
  }
  return x509;
}

static char *to_pem(X509 *x509, EVP_PKEY *key) {
  BIO *bio = BIO_new(BIO_s_mem());
  char *pem = NULL;
  if (bio && PEM_write_bio_X509(bio, x509) && PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)) {
    char *data = NULL;
    long len = BIO_get_mem_data(bio, &data);
    if (len > 0) pem = g_strndup(data, len);
  }
  BIO_free(bio);
  return pem;
}

/* ---- the placeholder for the plugin's generated certificate ---------------------------------------- */
static GThread *placeholder_thread;

static int move_key(RSA *to, RSA *from) {
  const BIGNUM *n, *e, *d, *p, *q, *dp, *dq, *qi;
  RSA_get0_key(from, &n, &e, &d);
  RSA_get0_factors(from, &p, &q);
  RSA_get0_crt_params(from, &dp, &dq, &qi);
  return RSA_set0_key(to, BN_dup(n), BN_dup(e), BN_dup(d)) && RSA_set0_factors(to, BN_dup(p), BN_dup(q)) &&
         RSA_set0_crt_params(to, BN_dup(dp), BN_dup(dq), BN_dup(qi));
}

static int placeholder_keygen(RSA *rsa, int bits, BIGNUM *e, BN_GENCB *cb) {
  if (g_thread_self() != placeholder_thread) { /* anyone else: a real key, by OpenSSL's own method */
    RSA *real = RSA_new();
    int ok = real && RSA_set_method(real, RSA_PKCS1_OpenSSL()) && RSA_generate_key_ex(real, bits, e, cb) &&
             move_key(rsa, real);
    RSA_free(real);
    return ok;
  }
  BIGNUM *n = BN_new(), *d = BN_new(), *pub = BN_dup(e);
  if (n && d && pub && BN_rand(n, bits, BN_RAND_TOP_TWO, BN_RAND_BOTTOM_ODD) &&
      BN_rand(d, bits - 1, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ODD) && RSA_set0_key(rsa, n, pub, d))
    return 1;
  BN_free(n);
  BN_free(d);
  BN_free(pub);
  return 0;
}

/* Create (and drop) the process's first dtlsdec with the placeholder in place. */
static void make_generated_certificate_cheap(void) {
  static RSA_METHOD *method; /* the plugin's generated key keeps pointing at it: never freed */
  method = RSA_meth_dup(RSA_PKCS1_OpenSSL());
  if (!method || !RSA_meth_set1_name(method, "sora_sdk placeholder") ||
      !RSA_meth_set_keygen(method, placeholder_keygen)) {
    RSA_meth_free(method);
    method = NULL;
  }
  const RSA_METHOD *before = RSA_get_default_method();
  if (method) {
    placeholder_thread = g_thread_self();
    RSA_set_default_method(method);
  }
  GstElement *dtls = gst_element_factory_make("dtlsdec", NULL);
  if (method) {
    RSA_set_default_method(before);
    placeholder_thread = NULL;
  }
  if (dtls) gst_object_unref(dtls);
}

void sora_dtls_certificate_init(void) {
  g_mutex_lock(&cert_lock);
  if (cert_done) {
    g_mutex_unlock(&cert_lock);
    return;
  }
  cert_done = TRUE;
  gboolean ours = !g_getenv("SORA_SDK_RSA_CERTIFICATE"); /* GStreamer's own RSA certificate (tests compare) */
  EVP_PKEY *key = ours ? make_ec_key() : NULL;
  X509 *x509 = key ? make_certificate(key) : NULL;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (x509 && X509_digest(x509, EVP_sha256(), md, &md_len) && md_len == 32) {
    cert_pem = to_pem(x509, key);
    for (unsigned int i = 0; i < md_len; i++)
      g_snprintf(cert_fingerprint + 3 * i, 4, i + 1 < md_len ? "%02X:" : "%02X", md[i]);
  }
  X509_free(x509);
  EVP_PKEY_free(key);
  if (cert_pem) make_generated_certificate_cheap();
  if (cert_pem) {
    /* GStreamer caches one DTLS agent (OpenSSL context, parsed certificate and key) per "pem" string, only while a
     * dtlsdec uses it: without this element, holding it for the process, every connect() after the previous call
     * ended built it again (about 3 ms of each later connect). */
    static GstElement *keeper;
    keeper = gst_element_factory_make("dtlsdec", NULL);
    if (keeper) g_object_set(keeper, "pem", cert_pem, NULL);
  }
  g_mutex_unlock(&cert_lock);
}

void sora_dtls_certificate_apply(GstElement *element) {
  GstElementFactory *factory = gst_element_get_factory(element);
  if (cert_pem && factory && g_strcmp0(GST_OBJECT_NAME(factory), "dtlssrtpdec") == 0)
    g_object_set(element, "pem", cert_pem, NULL);
}

void sora_dtls_certificate_fix_sdp(GstSDPMessage *sdp) {
  if (!cert_pem || !sdp) return;
  char *value = g_strconcat("sha-256 ", cert_fingerprint, NULL);
  for (guint m = 0; m < gst_sdp_message_medias_len(sdp); m++) {
    GstSDPMedia *media = (GstSDPMedia *)gst_sdp_message_get_media(sdp, m);
    for (guint i = 0; i < gst_sdp_media_attributes_len(media); i++) {
      const GstSDPAttribute *attr = gst_sdp_media_get_attribute(media, i);
      if (g_strcmp0(attr->key, "fingerprint") != 0) continue;
      GstSDPAttribute fixed;
      gst_sdp_attribute_set(&fixed, "fingerprint", value);
      gst_sdp_media_replace_attribute(media, i, &fixed);
    }
  }
  g_free(value);
}

char *sora_dtls_certificate_public(const char *pem) {
  static const char end[] = "-----END CERTIFICATE-----";
  const char *at = pem ? strstr(pem, end) : NULL;
  if (!at) return g_strdup(pem);
  return g_strdup_printf("%.*s\n", (int)(at - pem + sizeof end - 1), pem);
}
