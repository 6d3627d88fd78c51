/*
 * DTLS 1.2 server sessions for the coaps edge, on the OpenSSL that the node binary itself exports
 * (no libssl is linked: the symbols resolve against node at load time).
 *
 * No sockets here: JavaScript owns the UDP socket, feeds each received datagram in and sends every
 * returned datagram out. A custom write BIO turns each record flight OpenSSL writes into one
 * outgoing datagram. Everything runs on the JS thread; the PSK and certificate hooks are called
 * synchronously from inside the OpenSSL call that the JS call started.
 *
 * API (all synchronous):
 *   createContext({ cert?, key?, ca?, ciphers?, psk?: (identity) => Buffer|null,
 *                   verify?: (leafDer) => boolean }) -> ctx
 *   accept(ctx, peerKey, mtu, datagram) -> Result & { session? }   stateless cookie exchange
 *   feed(session, datagram)             -> Result                   handshake / app data in
 *   write(session, plaintext)           -> Result                   app data out (in Result.out)
 *   timeout(session)                    -> ms until handleTimeout is due, or -1
 *   handleTimeout(session)              -> Result                   retransmit a flight
 *   peer(session)                       -> { pskIdentity?, cert?, cipher, version, verified }
 *   close(session)                      -> Result (close_notify in out); frees the SSL
 * Result = { out: Buffer[], data?: Buffer[], established, closed, error? }
 */
#include <node_api.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                    \
  do {                                                                 \
    if ((call) != napi_ok) {                                           \
      napi_throw_error(env, NULL, "dtls: N-API call failed: " #call); \
      return NULL;                                                     \
    }                                                                  \
  } while (0)

typedef struct Sess Sess;
typedef struct {
  SSL_CTX *ctx;
  napi_ref psk_fn, verify_fn;
  Sess *listener; /* reusable SSL for DTLSv1_listen; owned here, holds no reference to us */
} Ctx;
typedef struct Out {
  struct Out *next;
  size_t len;
  unsigned char d[];
} Out;
struct Sess {
  SSL *ssl;
  BIO *rbio;
  Ctx *c;
  napi_ref ctx_ref; /* keeps the context alive while a session uses it (NULL for a listener) */
  napi_env env;
  Out *head, *tail;
  int established, oom;
  char peer[80];
  char verr[160];
};

static unsigned char cookie_secret[32];
static BIO_METHOD *wmeth;

/* ---- write BIO: one BIO_write == one datagram ---- */
static int w_write(BIO *b, const char *data, int len) {
  Sess *s = BIO_get_data(b);
  if (len < 0) return -1;
  Out *o = malloc(sizeof(Out) + (size_t)len);
  if (!o) { s->oom = 1; return -1; }
  o->next = NULL;
  o->len = (size_t)len;
  memcpy(o->d, data, (size_t)len);
  if (s->tail) s->tail->next = o; else s->head = o;
  s->tail = o;
  return len;
}
static long w_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b; (void)num; (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}
static int w_create(BIO *b) { BIO_set_init(b, 1); return 1; }

static void drop_out(Sess *s) {
  for (Out *o = s->head, *n; o; o = n) { n = o->next; free(o); }
  s->head = s->tail = NULL;
}

/* ---- stateless cookies (HelloVerifyRequest): HMAC-SHA256(process secret, "address|port") ---- */
static int cookie_gen(SSL *ssl, unsigned char *cookie, unsigned int *len) {
  Sess *s = SSL_get_app_data(ssl);
  return HMAC(EVP_sha256(), cookie_secret, sizeof cookie_secret, (const unsigned char *)s->peer, strlen(s->peer), cookie, len) != NULL;
}
static int cookie_verify(SSL *ssl, const unsigned char *cookie, unsigned int len) {
  unsigned char want[EVP_MAX_MD_SIZE];
  unsigned int wl = 0;
  return cookie_gen(ssl, want, &wl) && wl == len && CRYPTO_memcmp(want, cookie, len) == 0;
}

/* Calls a JS hook; a throwing hook counts as a refusal (its exception is cleared). */
static napi_value call_hook(napi_env env, napi_ref fn_ref, napi_value arg) {
  napi_value fn, undef, res = NULL;
  bool pending = false;
  if (!fn_ref || napi_get_reference_value(env, fn_ref, &fn) != napi_ok || !fn) return NULL;
  if (napi_get_undefined(env, &undef) != napi_ok) return NULL;
  if (napi_call_function(env, undef, fn, 1, &arg, &res) != napi_ok) res = NULL;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value e;
    napi_get_and_clear_last_exception(env, &e);
    res = NULL;
  }
  return res;
}

/* PSK: hook(identity) -> Buffer key, or anything else to refuse (unknown_psk_identity). */
static unsigned int psk_cb(SSL *ssl, const char *identity, unsigned char *psk, unsigned int max) {
  Sess *s = SSL_get_app_data(ssl);
  napi_env env = s->env;
  napi_value id, r;
  bool isbuf = false;
  void *data = NULL;
  size_t n = 0;
  if (!identity || napi_create_string_utf8(env, identity, NAPI_AUTO_LENGTH, &id) != napi_ok) return 0;
  if (!(r = call_hook(env, s->c->psk_fn, id))) return 0;
  if (napi_is_buffer(env, r, &isbuf) != napi_ok || !isbuf) return 0;
  if (napi_get_buffer_info(env, r, &data, &n) != napi_ok || n == 0 || n > max) return 0;
  memcpy(psk, data, n);
  return (unsigned int)n;
}

/* X.509: OpenSSL checks chain and validity against the CA store; the hook re-checks the leaf. */
static int verify_cb(int ok, X509_STORE_CTX *xs) {
  SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
  Sess *s = SSL_get_app_data(ssl);
  napi_env env = s->env;
  if (!ok) {
    snprintf(s->verr, sizeof s->verr, "depth %d: %s", X509_STORE_CTX_get_error_depth(xs),
             X509_verify_cert_error_string(X509_STORE_CTX_get_error(xs)));
    return 0;
  }
  if (X509_STORE_CTX_get_error_depth(xs) != 0) return 1;
  unsigned char *der = NULL;
  int n = i2d_X509(X509_STORE_CTX_get_current_cert(xs), &der);
  if (n <= 0) return 0;
  napi_value buf, r;
  bool accept = false;
  napi_status st = napi_create_buffer_copy(env, (size_t)n, der, NULL, &buf);
  OPENSSL_free(der);
  if (st == napi_ok && (r = call_hook(env, s->c->verify_fn, buf))) napi_get_value_bool(env, r, &accept);
  if (!accept) {
    X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REJECTED);
    snprintf(s->verr, sizeof s->verr, "certificate refused by the gateway");
  }
  return accept ? 1 : 0;
}

/* ---- context ---- */
static char *get_str(napi_env env, napi_value obj, const char *key) { /* malloc'd, or NULL */
  napi_value v;
  napi_valuetype t;
  size_t n;
  if (napi_get_named_property(env, obj, key, &v) != napi_ok || napi_typeof(env, v, &t) != napi_ok || t != napi_string) return NULL;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok) return NULL;
  char *s = malloc(n + 1);
  if (s && napi_get_value_string_utf8(env, v, s, n + 1, &n) != napi_ok) { free(s); s = NULL; }
  return s;
}
static napi_ref get_fn(napi_env env, napi_value obj, const char *key) {
  napi_value v;
  napi_valuetype t;
  napi_ref r = NULL;
  if (napi_get_named_property(env, obj, key, &v) == napi_ok && napi_typeof(env, v, &t) == napi_ok && t == napi_function)
    napi_create_reference(env, v, 1, &r);
  return r;
}

static void sess_free_ssl(Sess *s) {
  if (s->ssl) { SSL_free(s->ssl); s->ssl = NULL; } /* frees both BIOs */
  drop_out(s);
}

static void ctx_free(napi_env env, Ctx *c) {
  if (!c) return;
  if (c->listener) { sess_free_ssl(c->listener); free(c->listener); }
  if (c->psk_fn) napi_delete_reference(env, c->psk_fn);
  if (c->verify_fn) napi_delete_reference(env, c->verify_fn);
  SSL_CTX_free(c->ctx); /* sessions still alive hold their own SSL_CTX reference */
  free(c);
}
static void ctx_finalize(napi_env env, void *data, void *hint) { (void)hint; ctx_free(env, data); }

static const char *ctx_error(char *buf, size_t bl, const char *what) {
  unsigned long e = ERR_get_error();
  snprintf(buf, bl, "dtls: %s%s%s", what, e ? ": " : "", e ? ERR_error_string(e, NULL) : "");
  ERR_clear_error();
  return buf;
}

static napi_value create_context(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value o, ext;
  napi_valuetype t;
  char eb[400];
  const char *err = NULL;
  char *cert = NULL, *key = NULL, *ca = NULL, *ciph = NULL;
  BIO *b = NULL;
  X509 *x = NULL;
  EVP_PKEY *k = NULL;
  Ctx *c = NULL;

  CHECK(napi_get_cb_info(env, info, &argc, &o, NULL, NULL));
  if (argc < 1 || napi_typeof(env, o, &t) != napi_ok || t != napi_object) {
    napi_throw_type_error(env, NULL, "dtls: createContext(options) needs an options object");
    return NULL;
  }
  ERR_clear_error();
  if (!(c = calloc(1, sizeof *c))) { err = "dtls: out of memory"; goto fail; }
  if (!(c->ctx = SSL_CTX_new(DTLS_server_method()))) { err = ctx_error(eb, sizeof eb, "SSL_CTX_new"); goto fail; }
  SSL_CTX_set_min_proto_version(c->ctx, DTLS1_2_VERSION);
  /* No tickets, no renegotiation, no session cache: every handshake authenticates afresh. */
  SSL_CTX_set_options(c->ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_COOKIE_EXCHANGE);
  SSL_CTX_set_session_cache_mode(c->ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_cookie_generate_cb(c->ctx, cookie_gen);
  SSL_CTX_set_cookie_verify_cb(c->ctx, cookie_verify);

  cert = get_str(env, o, "cert");
  key = get_str(env, o, "key");
  ca = get_str(env, o, "ca");
  ciph = get_str(env, o, "ciphers");
  c->psk_fn = get_fn(env, o, "psk");
  c->verify_fn = get_fn(env, o, "verify");

  if (ciph && !SSL_CTX_set_cipher_list(c->ctx, ciph)) { err = ctx_error(eb, sizeof eb, "ciphers"); goto fail; }
  if ((cert != NULL) != (key != NULL)) { err = "dtls: cert and key go together"; goto fail; }
  if (cert) {
    if (!(b = BIO_new_mem_buf(cert, -1))) { err = ctx_error(eb, sizeof eb, "cert"); goto fail; }
    if (!(x = PEM_read_bio_X509(b, NULL, NULL, NULL)) || !SSL_CTX_use_certificate(c->ctx, x)) {
      err = ctx_error(eb, sizeof eb, "cert");
      goto fail;
    }
    X509_free(x);
    x = NULL;
    /* Further certificates in the PEM are the chain (add0: the context takes ownership). */
    for (X509 *chain; (chain = PEM_read_bio_X509(b, NULL, NULL, NULL));) {
      if (!SSL_CTX_add0_chain_cert(c->ctx, chain)) { X509_free(chain); err = ctx_error(eb, sizeof eb, "cert chain"); goto fail; }
    }
    ERR_clear_error(); /* the loop ends on "no start line" */
    BIO_free(b);
    if (!(b = BIO_new_mem_buf(key, -1))) { err = ctx_error(eb, sizeof eb, "key"); goto fail; }
    if (!(k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL)) || !SSL_CTX_use_PrivateKey(c->ctx, k) || !SSL_CTX_check_private_key(c->ctx)) {
      err = ctx_error(eb, sizeof eb, "key");
      goto fail;
    }
    EVP_PKEY_free(k);
    k = NULL;
    BIO_free(b);
    b = NULL;
  }
  if (ca) {
    /* Without the hook nothing would check revocation or that the CN names a device. */
    if (!c->verify_fn) { err = "dtls: ca given without a verify hook"; goto fail; }
    X509_STORE *store = SSL_CTX_get_cert_store(c->ctx);
    int n = 0;
    if (!(b = BIO_new_mem_buf(ca, -1))) { err = ctx_error(eb, sizeof eb, "ca"); goto fail; }
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
      int added = X509_STORE_add_cert(store, x);
      X509_free(x);
      x = NULL;
      if (!added) { err = ctx_error(eb, sizeof eb, "ca"); goto fail; }
      n++;
    }
    ERR_clear_error();
    BIO_free(b);
    b = NULL;
    if (n == 0) { err = "dtls: no CA certificate in ca"; goto fail; }
    /* Ask for a client certificate; PSK suites send no CertificateRequest at all. */
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
  }
  if (c->psk_fn) SSL_CTX_set_psk_server_callback(c->ctx, psk_cb);
  if (!cert && !c->psk_fn) { err = "dtls: neither cert/key nor a psk hook: no cipher suite could be used"; goto fail; }

  free(cert); free(key); free(ca); free(ciph);
  if (napi_create_external(env, c, ctx_finalize, NULL, &ext) != napi_ok) {
    ctx_free(env, c);
    napi_throw_error(env, NULL, "dtls: could not wrap the context");
    return NULL;
  }
  return ext;

fail:
  if (b) BIO_free(b);
  if (x) X509_free(x);
  if (k) EVP_PKEY_free(k);
  free(cert); free(key); free(ca); free(ciph);
  ctx_free(env, c);
  ERR_clear_error();
  napi_throw_error(env, NULL, err);
  return NULL;
}

/* ---- sessions ---- */
static void sess_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  Sess *s = data;
  sess_free_ssl(s);
  if (s->ctx_ref) napi_delete_reference(env, s->ctx_ref);
  free(s);
}

static Sess *new_sess(Ctx *c, uint32_t mtu) {
  Sess *s = calloc(1, sizeof *s);
  BIO *w = NULL;
  if (!s) return NULL;
  s->c = c;
  if (!(s->ssl = SSL_new(c->ctx))) goto fail;
  if (!(s->rbio = BIO_new(BIO_s_mem()))) goto fail;
  if (!(w = BIO_new(wmeth))) { BIO_free(s->rbio); s->rbio = NULL; goto fail; }
  BIO_set_mem_eof_return(s->rbio, -1);
  BIO_set_data(w, s);
  SSL_set_bio(s->ssl, s->rbio, w); /* the SSL owns both BIOs now */
  SSL_set_app_data(s->ssl, s);
  SSL_set_options(s->ssl, SSL_OP_NO_QUERY_MTU);
  SSL_set_mtu(s->ssl, mtu);
  SSL_set_accept_state(s->ssl);
  return s;
fail:
  if (s->ssl) SSL_free(s->ssl);
  free(s);
  ERR_clear_error();
  return NULL;
}

/* Builds a Result and hands the queued datagrams over (the queue is emptied). */
static napi_value result(napi_env env, Sess *s, napi_value data, const char *err, int closed) {
  napi_value r, out, v;
  uint32_t i = 0;
  if (napi_create_object(env, &r) != napi_ok || napi_create_array(env, &out) != napi_ok) { drop_out(s); return NULL; }
  for (Out *o = s->head; o; o = o->next) {
    if (napi_create_buffer_copy(env, o->len, o->d, NULL, &v) == napi_ok) napi_set_element(env, out, i++, v);
  }
  drop_out(s);
  napi_set_named_property(env, r, "out", out);
  if (data) napi_set_named_property(env, r, "data", data);
  napi_get_boolean(env, s->established, &v);
  napi_set_named_property(env, r, "established", v);
  napi_get_boolean(env, closed, &v);
  napi_set_named_property(env, r, "closed", v);
  if (s->oom && !err) err = "out of memory";
  if (err) {
    napi_create_string_utf8(env, err, NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, r, "error", v);
  }
  return r;
}

static const char *ssl_err(Sess *s, int rc, int *fatal, char *buf, size_t bl) {
  int e = SSL_get_error(s->ssl, rc);
  *fatal = 0;
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) { ERR_clear_error(); return NULL; }
  *fatal = 1;
  if (e == SSL_ERROR_ZERO_RETURN) { ERR_clear_error(); return NULL; } /* close_notify from the peer */
  unsigned long le = ERR_get_error();
  snprintf(buf, bl, "%s%s%s", le ? ERR_error_string(le, NULL) : "ssl error", s->verr[0] ? " / verify: " : "", s->verr);
  ERR_clear_error();
  return buf;
}

static napi_value drive(napi_env env, Sess *s, const void *p, size_t n) {
  napi_value data;
  char eb[400];
  const char *err = NULL;
  int fatal = 0;
  uint32_t k = 0;
  if (napi_create_array(env, &data) != napi_ok) return NULL;
  if (!s->ssl) return result(env, s, data, "session closed", 1);
  s->env = env;
  ERR_clear_error();
  if (n && BIO_write(s->rbio, p, (int)n) != (int)n) return result(env, s, data, "could not buffer the datagram", 1);
  if (!SSL_is_init_finished(s->ssl)) {
    int rc = SSL_do_handshake(s->ssl);
    if (rc == 1) s->established = 1;
    else err = ssl_err(s, rc, &fatal, eb, sizeof eb);
  }
  if (!fatal && SSL_is_init_finished(s->ssl)) {
    unsigned char buf[16384];
    s->established = 1;
    for (;;) {
      int rc = SSL_read(s->ssl, buf, sizeof buf);
      if (rc > 0) {
        napi_value b;
        if (napi_create_buffer_copy(env, (size_t)rc, buf, NULL, &b) == napi_ok) napi_set_element(env, data, k++, b);
        continue;
      }
      err = ssl_err(s, rc, &fatal, eb, sizeof eb);
      break;
    }
  }
  (void)BIO_reset(s->rbio); /* never carry bytes over into the next datagram */
  return result(env, s, data, err, fatal);
}

static napi_value feed(napi_env env, napi_callback_info info) {
  size_t argc = 2, n;
  napi_value a[2];
  Sess *s;
  void *p;
  CHECK(napi_get_cb_info(env, info, &argc, a, NULL, NULL));
  CHECK(napi_get_value_external(env, a[0], (void **)&s));
  CHECK(napi_get_buffer_info(env, a[1], &p, &n));
  return drive(env, s, p, n);
}

/* Only a ClientHello with a valid cookie becomes a session; nothing is kept for the others. */
static napi_value accept_dgram(napi_env env, napi_callback_info info) {
  size_t argc = 4, n, pl;
  napi_value a[4], r, ext;
  Ctx *c;
  uint32_t mtu;
  void *p;
  CHECK(napi_get_cb_info(env, info, &argc, a, NULL, NULL));
  CHECK(napi_get_value_external(env, a[0], (void **)&c));
  CHECK(napi_get_value_uint32(env, a[2], &mtu));
  CHECK(napi_get_buffer_info(env, a[3], &p, &n));
  if (!c->listener && !(c->listener = new_sess(c, mtu))) {
    napi_throw_error(env, NULL, "dtls: could not create a listener SSL");
    return NULL;
  }
  Sess *s = c->listener;
  s->env = env;
  s->verr[0] = 0;
  CHECK(napi_get_value_string_utf8(env, a[1], s->peer, sizeof s->peer, &pl));
  ERR_clear_error();
  (void)BIO_reset(s->rbio);
  BIO_write(s->rbio, p, (int)n);
  BIO_ADDR *addr = BIO_ADDR_new();
  int rc = addr ? DTLSv1_listen(s->ssl, addr) : -1;
  BIO_ADDR_free(addr);
  (void)BIO_reset(s->rbio);
  ERR_clear_error();
  if (rc != 1) {
    r = result(env, s, NULL, NULL, 0); /* a HelloVerifyRequest in out, or nothing */
    if (rc < 0) { /* a fatal error may leave the SSL unusable: start over with a fresh one */
      sess_free_ssl(s);
      free(s);
      c->listener = NULL;
    }
    return r;
  }
  /* The listener becomes the session; the next accept makes a fresh listener. */
  c->listener = NULL;
  if (napi_create_reference(env, a[0], 1, &s->ctx_ref) != napi_ok) {
    sess_free_ssl(s);
    free(s);
    napi_throw_error(env, NULL, "dtls: could not reference the context");
    return NULL;
  }
  SSL_set_mtu(s->ssl, mtu);
  if (napi_create_external(env, s, sess_finalize, NULL, &ext) != napi_ok) {
    sess_finalize(env, s, NULL);
    napi_throw_error(env, NULL, "dtls: could not wrap the session");
    return NULL;
  }
  r = drive(env, s, NULL, 0); /* continue with the ClientHello DTLSv1_listen kept */
  if (r) napi_set_named_property(env, r, "session", ext);
  return r;
}

static napi_value write_app(napi_env env, napi_callback_info info) {
  size_t argc = 2, n;
  napi_value a[2];
  Sess *s;
  void *p;
  char eb[400];
  int fatal = 0;
  const char *err = NULL;
  CHECK(napi_get_cb_info(env, info, &argc, a, NULL, NULL));
  CHECK(napi_get_value_external(env, a[0], (void **)&s));
  CHECK(napi_get_buffer_info(env, a[1], &p, &n));
  if (!s->ssl || !s->established) return result(env, s, NULL, "not established", 0);
  if (n == 0) return result(env, s, NULL, NULL, 0);
  s->env = env;
  ERR_clear_error();
  int rc = SSL_write(s->ssl, p, (int)n);
  if (rc <= 0) err = ssl_err(s, rc, &fatal, eb, sizeof eb);
  return result(env, s, NULL, err, fatal);
}

static napi_value get_timeout(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a, r;
  Sess *s;
  struct timeval tv;
  double ms = -1;
  CHECK(napi_get_cb_info(env, info, &argc, &a, NULL, NULL));
  CHECK(napi_get_value_external(env, a, (void **)&s));
  if (s->ssl && DTLSv1_get_timeout(s->ssl, &tv)) ms = tv.tv_sec * 1000.0 + tv.tv_usec / 1000.0;
  CHECK(napi_create_double(env, ms, &r));
  return r;
}

static napi_value handle_timeout(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a;
  Sess *s;
  int fatal = 0;
  CHECK(napi_get_cb_info(env, info, &argc, &a, NULL, NULL));
  CHECK(napi_get_value_external(env, a, (void **)&s));
  if (s->ssl) {
    s->env = env;
    if (DTLSv1_handle_timeout(s->ssl) < 0) fatal = 1;
    ERR_clear_error();
  }
  return result(env, s, NULL, fatal ? "retransmission limit reached" : NULL, fatal);
}

static napi_value peer_info(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a, r, v;
  Sess *s;
  CHECK(napi_get_cb_info(env, info, &argc, &a, NULL, NULL));
  CHECK(napi_get_value_external(env, a, (void **)&s));
  CHECK(napi_create_object(env, &r));
  if (!s->ssl || !s->established) return r;
  const char *id = SSL_get_psk_identity(s->ssl);
  if (id && napi_create_string_utf8(env, id, NAPI_AUTO_LENGTH, &v) == napi_ok) napi_set_named_property(env, r, "pskIdentity", v);
  X509 *x = SSL_get0_peer_certificate(s->ssl);
  if (x) {
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    if (n > 0 && napi_create_buffer_copy(env, (size_t)n, der, NULL, &v) == napi_ok) napi_set_named_property(env, r, "cert", v);
    OPENSSL_free(der);
  }
  if (napi_create_string_utf8(env, SSL_get_cipher_name(s->ssl), NAPI_AUTO_LENGTH, &v) == napi_ok) napi_set_named_property(env, r, "cipher", v);
  if (napi_create_string_utf8(env, SSL_get_version(s->ssl), NAPI_AUTO_LENGTH, &v) == napi_ok) napi_set_named_property(env, r, "version", v);
  napi_get_boolean(env, x != NULL && SSL_get_verify_result(s->ssl) == X509_V_OK, &v);
  napi_set_named_property(env, r, "verified", v);
  return r;
}

static napi_value close_sess(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a, r;
  Sess *s;
  CHECK(napi_get_cb_info(env, info, &argc, &a, NULL, NULL));
  CHECK(napi_get_value_external(env, a, (void **)&s));
  if (s->ssl && s->established) {
    s->env = env;
    SSL_shutdown(s->ssl); /* queues close_notify */
    ERR_clear_error();
  }
  r = result(env, s, NULL, NULL, 1);
  sess_free_ssl(s);
  return r;
}

static napi_value init(napi_env env, napi_value exports) {
  if (!wmeth) {
    if (RAND_bytes(cookie_secret, sizeof cookie_secret) != 1) {
      napi_throw_error(env, NULL, "dtls: no randomness for the cookie secret");
      return NULL;
    }
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "iotgate-dgram-out");
    if (!m || !BIO_meth_set_write(m, w_write) || !BIO_meth_set_ctrl(m, w_ctrl) || !BIO_meth_set_create(m, w_create)) {
      if (m) BIO_meth_free(m);
      napi_throw_error(env, NULL, "dtls: could not create the datagram BIO");
      return NULL;
    }
    wmeth = m;
  }
  napi_property_descriptor d[] = {
    { "createContext", 0, create_context, 0, 0, 0, napi_default, 0 },
    { "accept", 0, accept_dgram, 0, 0, 0, napi_default, 0 },
    { "feed", 0, feed, 0, 0, 0, napi_default, 0 },
    { "write", 0, write_app, 0, 0, 0, napi_default, 0 },
    { "timeout", 0, get_timeout, 0, 0, 0, napi_default, 0 },
    { "handleTimeout", 0, handle_timeout, 0, 0, 0, napi_default, 0 },
    { "peer", 0, peer_info, 0, 0, 0, napi_default, 0 },
    { "close", 0, close_sess, 0, 0, 0, napi_default, 0 },
  };
  CHECK(napi_define_properties(env, exports, sizeof d / sizeof d[0], d));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
