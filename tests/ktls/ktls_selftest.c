// ktls_selftest: prove the kernel's TLS offload (kTLS) with fixed test keys, no handshake.
//
// Run inside the test VM (tests/ktls/run.sh, `make test-ktls`), whose Debian 6.1 kernel
// ships tls.ko; it runs on any host too. Over TCP loopback it checks, for AES-128-GCM,
// AES-256-GCM and ChaCha20-Poly1305 under TLS 1.2 and 1.3:
//
//   kernel<->kernel  both ends TCP_ULP "tls" with TLS_TX and TLS_RX (a key each way):
//                    data of several sizes both ways, decrypted and compared; an alert
//                    and a handshake record sent with TLS_SET_RECORD_TYPE and reported
//                    by recvmsg's TLS_GET_RECORD_TYPE (a plain recv() of them: EIO).
//   wire format      one end kTLS, the other a user-space TLS record layer (BoringSSL's
//                    EVP_AEAD with the same key, salt, IV and sequence numbers): the
//                    records the kernel writes open in user space and the records user
//                    space seals open in the kernel. This is the exact layout the relay
//                    hands to the kernel after a BoringSSL handshake.
//   KeyUpdate        TLS 1.3: a user-space client sends data, a KeyUpdate and data under
//                    the next traffic secret (RFC 8446 7.2) in one segment; what the
//                    kTLS receiver sees is printed and checked, answering at once
//                    (close_notify + FIN) or reading on. On kernels without kTLS rekey
//                    (< 6.14): the KeyUpdate arrives as record type 22, a second TLS_RX
//                    is refused with EBUSY, the next read fails with EBADMSG and leaves
//                    EBADMSG as the socket error, which fails every send until SO_ERROR
//                    is read. docs/adr/0011-ktls-test-vm.md has the whole sequence.
//   tls_stat         /proc/net/tls_stat counters move by what the test did.
//
// Exit status: 0 all checks passed, 1 a check failed, 77 this kernel has no kTLS
// (setsockopt(TCP_ULP, "tls") fails with ENOENT: the tls module is absent). `--probe`
// stops after that first check.
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <openssl/aead.h>
#include <openssl/digest.h>
#include <openssl/hkdf.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

enum { EXIT_NO_KTLS = 77 };
enum { REC_CCS = 20, REC_ALERT = 21, REC_HANDSHAKE = 22, REC_DATA = 23 };
enum { TLS_MAX_PLAIN = 16384, REC_MAX = 5 + TLS_MAX_PLAIN + 256 };

static int g_pass, g_fail;

static void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(bool ok, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("%s - ", ok ? "ok" : "not ok");
  vprintf(fmt, ap);
  putchar('\n');
  va_end(ap);
  fflush(stdout);
  if (ok)
    g_pass++;
  else
    g_fail++;
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("# ");
  vprintf(fmt, ap);
  putchar('\n');
  va_end(ap);
  fflush(stdout);
}

static _Noreturn void die(const char *what) {
  printf("not ok - fatal: %s: %s\n", what, strerror(errno));
  printf("ktls_selftest: %d passed, %d failed\n", g_pass, g_fail + 1);
  exit(1);
}

static const char *errname(int e) {
  switch (e) {
  case 0: return "0";
  case ENOENT: return "ENOENT";
  case EBUSY: return "EBUSY";
  case EBADMSG: return "EBADMSG";
  case EIO: return "EIO";
  case EAGAIN: return "EAGAIN";
  case EINVAL: return "EINVAL";
  case ENOTCONN: return "ENOTCONN";
  case ENOPROTOOPT: return "ENOPROTOOPT";
  case EOPNOTSUPP: return "EOPNOTSUPP";
  case ECONNRESET: return "ECONNRESET";
  case EPIPE: return "EPIPE";
  case ENODATA: return "ENODATA";
#ifdef EKEYEXPIRED
  case EKEYEXPIRED: return "EKEYEXPIRED";
#endif
  default: return "other";
  }
}

// ---------------------------------------------------------------------------------------
// Ciphers and key material

struct cipher {
  const char *name;
  uint16_t kernel_id;
  size_t key_len;
  const EVP_AEAD *(*aead)(void);
  const EVP_MD *(*md)(void); // TLS 1.3 suite hash (HKDF)
};

static const struct cipher CIPHERS[] = {
    {"AES-128-GCM", TLS_CIPHER_AES_GCM_128, 16, EVP_aead_aes_128_gcm, EVP_sha256},
    {"AES-256-GCM", TLS_CIPHER_AES_GCM_256, 32, EVP_aead_aes_256_gcm, EVP_sha384},
    {"CHACHA20-POLY1305", TLS_CIPHER_CHACHA20_POLY1305, 32, EVP_aead_chacha20_poly1305,
     EVP_sha256},
};

static bool is_chacha(const struct cipher *c) {
  return c->kernel_id == TLS_CIPHER_CHACHA20_POLY1305;
}

// One direction's keys, as the relay will have them after a handshake. `iv` is the
// 12-byte write IV: for AES-GCM its first 4 bytes are the kernel's `salt` and the last
// 8 its `iv` (TLS 1.2: the first explicit nonce; we use the sequence number, as
// BoringSSL does); for ChaCha20-Poly1305 all 12 are the kernel's `iv`.
struct keys {
  const struct cipher *c;
  uint16_t version; // TLS_1_2_VERSION or TLS_1_3_VERSION
  uint8_t key[32];
  uint8_t iv[12];
  uint64_t seq;
  uint8_t secret[48]; // TLS 1.3 traffic secret (for the KeyUpdate derivation)
};

static void put_be64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8)
    p[i] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = v << 8 | p[i];
  return v;
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

static void fill(uint8_t *p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)splitmix(&seed);
}

// RFC 8446 7.1: HKDF-Expand-Label(secret, label, "", len)
static void expand_label(const EVP_MD *md, const uint8_t *secret, size_t secret_len,
                         const char *label, uint8_t *out, size_t len) {
  uint8_t info[2 + 1 + 255 + 1];
  size_t ll = 6 + strlen(label), n = 0;
  info[n++] = (uint8_t)(len >> 8);
  info[n++] = (uint8_t)len;
  info[n++] = (uint8_t)ll;
  memcpy(info + n, "tls13 ", 6);
  memcpy(info + n + 6, label, ll - 6);
  n += ll;
  info[n++] = 0; // empty context
  if (!HKDF_expand(out, len, md, secret, secret_len, info, n)) {
    fprintf(stderr, "HKDF_expand failed\n");
    exit(1);
  }
}

static void keys_from_secret(struct keys *k) {
  const EVP_MD *md = k->c->md();
  size_t hl = EVP_MD_size(md);
  expand_label(md, k->secret, hl, "key", k->key, k->c->key_len);
  expand_label(md, k->secret, hl, "iv", k->iv, 12);
}

static struct keys make_keys(const struct cipher *c, uint16_t version, uint64_t seed,
                             uint64_t seq) {
  struct keys k;
  memset(&k, 0, sizeof k);
  k.c = c;
  k.version = version;
  k.seq = seq;
  if (version == TLS_1_3_VERSION) {
    fill(k.secret, EVP_MD_size(c->md()), seed);
    keys_from_secret(&k);
  } else {
    fill(k.key, c->key_len, seed);
    fill(k.iv, 12, seed ^ 0x5a5a);
    if (!is_chacha(c))
      put_be64(k.iv + 4, seq); // the explicit nonce starts at the sequence number
  }
  return k;
}

// RFC 8446 7.2: application_traffic_secret_N+1 = HKDF-Expand-Label(secret_N, "traffic upd")
static struct keys next_keys(const struct keys *k) {
  struct keys n = *k;
  const EVP_MD *md = k->c->md();
  size_t hl = EVP_MD_size(md);
  expand_label(md, k->secret, hl, "traffic upd", n.secret, hl);
  keys_from_secret(&n);
  n.seq = 0;
  return n;
}

union crypto_info {
  struct tls_crypto_info info;
  struct tls12_crypto_info_aes_gcm_128 g128;
  struct tls12_crypto_info_aes_gcm_256 g256;
  struct tls12_crypto_info_chacha20_poly1305 cc;
};

static socklen_t to_kernel(const struct keys *k, union crypto_info *ci) {
  memset(ci, 0, sizeof *ci);
  ci->info.version = k->version;
  ci->info.cipher_type = k->c->kernel_id;
  switch (k->c->kernel_id) {
  case TLS_CIPHER_AES_GCM_128:
    memcpy(ci->g128.salt, k->iv, 4);
    memcpy(ci->g128.iv, k->iv + 4, 8);
    memcpy(ci->g128.key, k->key, 16);
    put_be64(ci->g128.rec_seq, k->seq);
    return sizeof ci->g128;
  case TLS_CIPHER_AES_GCM_256:
    memcpy(ci->g256.salt, k->iv, 4);
    memcpy(ci->g256.iv, k->iv + 4, 8);
    memcpy(ci->g256.key, k->key, 32);
    put_be64(ci->g256.rec_seq, k->seq);
    return sizeof ci->g256;
  default:
    memcpy(ci->cc.iv, k->iv, 12);
    memcpy(ci->cc.key, k->key, 32);
    put_be64(ci->cc.rec_seq, k->seq);
    return sizeof ci->cc;
  }
}

// ---------------------------------------------------------------------------------------
// The user-space record layer (the other end of the wire-format checks)

static void aead_init(EVP_AEAD_CTX *ctx, const struct keys *k) {
  if (!EVP_AEAD_CTX_init(ctx, k->c->aead(), k->key, k->c->key_len, 16, NULL)) {
    fprintf(stderr, "EVP_AEAD_CTX_init failed\n");
    exit(1);
  }
}

static void nonce_xor_seq(const struct keys *k, uint64_t seq, uint8_t nonce[12]) {
  memcpy(nonce, k->iv, 12);
  uint8_t s[8];
  put_be64(s, seq);
  for (int i = 0; i < 8; i++)
    nonce[4 + i] ^= s[i];
}

// Seal one record of `type` with k->seq (then advanced) into out; returns its length.
static size_t seal_record(struct keys *k, uint8_t type, const uint8_t *pt, size_t n,
                          uint8_t *out) {
  EVP_AEAD_CTX ctx;
  aead_init(&ctx, k);
  uint8_t nonce[12], ad[13];
  size_t out_len = 0, ad_len, body;
  uint8_t *ct;
  bool ok;
  if (k->version == TLS_1_3_VERSION) {
    static uint8_t inner[TLS_MAX_PLAIN + 1];
    memcpy(inner, pt, n);
    inner[n] = type;
    size_t len = n + 1 + 16;
    out[0] = REC_DATA, out[1] = 3, out[2] = 3, out[3] = (uint8_t)(len >> 8), out[4] = (uint8_t)len;
    nonce_xor_seq(k, k->seq, nonce);
    ok = EVP_AEAD_CTX_seal(&ctx, out + 5, &out_len, len, nonce, 12, inner, n + 1, out, 5);
    body = out_len;
  } else {
    put_be64(ad, k->seq);
    ad[8] = type, ad[9] = 3, ad[10] = 3, ad[11] = (uint8_t)(n >> 8), ad[12] = (uint8_t)n;
    ad_len = 13;
    size_t explicit = is_chacha(k->c) ? 0 : 8;
    if (explicit) {
      memcpy(nonce, k->iv, 4);
      put_be64(nonce + 4, k->seq); // explicit nonce = sequence number
      memcpy(out + 5, nonce + 4, 8);
    } else {
      nonce_xor_seq(k, k->seq, nonce);
    }
    ct = out + 5 + explicit;
    ok = EVP_AEAD_CTX_seal(&ctx, ct, &out_len, n + 16, nonce, 12, pt, n, ad, ad_len);
    body = explicit + out_len;
    out[0] = type, out[1] = 3, out[2] = 3, out[3] = (uint8_t)(body >> 8), out[4] = (uint8_t)body;
  }
  EVP_AEAD_CTX_cleanup(&ctx);
  if (!ok) {
    fprintf(stderr, "EVP_AEAD_CTX_seal failed\n");
    exit(1);
  }
  k->seq++;
  return 5 + body;
}

// Open the record in rec[0..len) (header included) with k->seq (then advanced). Returns
// the plaintext length and its type, or -1 when it does not authenticate. For TLS 1.2
// AES-GCM, *explicit receives the record's explicit nonce.
static long open_record(struct keys *k, uint8_t *rec, size_t len, uint8_t *type, uint8_t *pt,
                        uint64_t *explicit) {
  EVP_AEAD_CTX ctx;
  aead_init(&ctx, k);
  uint8_t nonce[12], ad[13];
  size_t out_len = 0;
  bool ok;
  if (k->version == TLS_1_3_VERSION) {
    nonce_xor_seq(k, k->seq, nonce);
    ok = EVP_AEAD_CTX_open(&ctx, pt, &out_len, len - 5, nonce, 12, rec + 5, len - 5, rec, 5);
    while (ok && out_len > 0 && pt[out_len - 1] == 0) // padding
      out_len--;
    if (ok && out_len == 0)
      ok = false;
    if (ok)
      *type = pt[--out_len];
  } else {
    size_t ex = is_chacha(k->c) ? 0 : 8;
    size_t n = len - 5 - ex - 16;
    put_be64(ad, k->seq);
    ad[8] = rec[0], ad[9] = 3, ad[10] = 3, ad[11] = (uint8_t)(n >> 8), ad[12] = (uint8_t)n;
    if (ex) {
      memcpy(nonce, k->iv, 4);
      memcpy(nonce + 4, rec + 5, 8);
      *explicit = get_be64(rec + 5);
    } else {
      nonce_xor_seq(k, k->seq, nonce);
    }
    ok = EVP_AEAD_CTX_open(&ctx, pt, &out_len, n, nonce, 12, rec + 5 + ex, len - 5 - ex, ad,
                           13);
    *type = rec[0];
  }
  EVP_AEAD_CTX_cleanup(&ctx);
  if (!ok)
    return -1;
  k->seq++;
  return (long)out_len;
}

// ---------------------------------------------------------------------------------------
// Sockets

static void set_timeouts(int fd) {
  struct timeval tv = {.tv_sec = 10};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// A connected TCP pair over 127.0.0.1.
static void tcp_pair(int *a, int *b) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0)
    die("socket");
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  if (bind(l, (struct sockaddr *)&sa, sizeof sa) || listen(l, 1) ||
      getsockname(l, (struct sockaddr *)&sa, &sl))
    die("bind/listen on 127.0.0.1 (is lo up?)");
  *a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (*a < 0 || connect(*a, (struct sockaddr *)&sa, sizeof sa))
    die("connect");
  *b = accept4(l, NULL, NULL, SOCK_CLOEXEC);
  if (*b < 0)
    die("accept");
  close(l);
  int one = 1;
  setsockopt(*a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(*b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  set_timeouts(*a);
  set_timeouts(*b);
}

static int ulp(int fd) {
  return setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") ? errno : 0;
}

static int install(int fd, int dir, const struct keys *k) {
  union crypto_info ci;
  socklen_t len = to_kernel(k, &ci);
  return setsockopt(fd, SOL_TLS, dir, &ci, len) ? errno : 0;
}

static int installs_tx, installs_rx; // for the tls_stat check

// Both directions on one socket; every failure is a failed check.
static bool ktls_both(int fd, const struct keys *tx, const struct keys *rx, const char *who) {
  int e = ulp(fd);
  check(e == 0, "%s: setsockopt(TCP_ULP, \"tls\") = %s", who, errname(e));
  if (e)
    return false;
  e = install(fd, TLS_TX, tx);
  check(e == 0, "%s: setsockopt(SOL_TLS, TLS_TX) = %s", who, errname(e));
  installs_tx += !e;
  int e2 = install(fd, TLS_RX, rx);
  check(e2 == 0, "%s: setsockopt(SOL_TLS, TLS_RX) = %s", who, errname(e2));
  installs_rx += !e2;
  return !e && !e2;
}

static int send_typed(int fd, uint8_t type, const void *p, size_t n) {
  struct iovec iov = {.iov_base = (void *)p, .iov_len = n};
  union {
    char buf[CMSG_SPACE(sizeof(uint8_t))];
    struct cmsghdr align;
  } cb;
  memset(&cb, 0, sizeof cb);
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.buf,
                     .msg_controllen = sizeof cb.buf};
  struct cmsghdr *c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_TLS;
  c->cmsg_type = TLS_SET_RECORD_TYPE;
  c->cmsg_len = CMSG_LEN(sizeof(uint8_t));
  *CMSG_DATA(c) = type;
  ssize_t r = sendmsg(fd, &m, MSG_NOSIGNAL);
  return r == (ssize_t)n ? 0 : r < 0 ? errno : EIO;
}

// recvmsg with a control buffer: the record type lands in *type (-1: no cmsg).
static ssize_t recv_typed(int fd, void *p, size_t n, int *type, int flags) {
  struct iovec iov = {.iov_base = p, .iov_len = n};
  union {
    char buf[CMSG_SPACE(sizeof(uint8_t))];
    struct cmsghdr align;
  } cb;
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.buf,
                     .msg_controllen = sizeof cb.buf};
  ssize_t r = recvmsg(fd, &m, flags);
  *type = -1;
  if (r >= 0)
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
      if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE)
        *type = *CMSG_DATA(c);
  return r;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0)
      return errno;
    p += w, n -= (size_t)w;
  }
  return 0;
}

static int read_exact(int fd, uint8_t *p, size_t n) {
  while (n) {
    ssize_t r = recv(fd, p, n, 0);
    if (r < 0)
      return errno;
    if (r == 0)
      return ENODATA; // end of stream
    p += r, n -= (size_t)r;
  }
  return 0;
}

// One raw TLS record (header included) from fd; returns its length or -errno.
static long read_record(int fd, uint8_t *rec) {
  int e = read_exact(fd, rec, 5);
  if (e)
    return -e;
  size_t len = (size_t)rec[3] << 8 | rec[4];
  if (len > REC_MAX - 5)
    return -EBADMSG;
  e = read_exact(fd, rec + 5, len);
  return e ? -e : (long)(5 + len);
}

// Send n bytes on tx (a kTLS socket) while receiving them on rx (a kTLS socket) with
// recvmsg: both in one poll loop, so a large transfer cannot fill both buffers. Every
// received piece must be a data record. Returns true when rx got exactly what was sent.
static bool transfer(int tx, int rx, const uint8_t *data, size_t n, uint8_t *got) {
  size_t sent = 0, recvd = 0;
  int fl = fcntl(tx, F_GETFL);
  fcntl(tx, F_SETFL, fl | O_NONBLOCK);
  bool ok = true;
  while (recvd < n && ok) {
    struct pollfd p[2] = {{.fd = rx, .events = POLLIN},
                          {.fd = tx, .events = sent < n ? POLLOUT : 0}};
    if (poll(p, 2, 10000) <= 0) {
      note("transfer: poll timed out at %zu/%zu sent, %zu received", sent, n, recvd);
      ok = false;
      break;
    }
    if (sent < n && (p[1].revents & POLLOUT)) {
      ssize_t w = send(tx, data + sent, n - sent, MSG_NOSIGNAL);
      if (w > 0)
        sent += (size_t)w;
      else if (w < 0 && errno != EAGAIN) {
        note("transfer: send: %s", strerror(errno));
        ok = false;
      }
    }
    if (p[0].revents & (POLLIN | POLLERR | POLLHUP)) {
      int type;
      ssize_t r = recv_typed(rx, got + recvd, n - recvd, &type, MSG_DONTWAIT);
      if (r > 0 && type == REC_DATA)
        recvd += (size_t)r;
      else if (r < 0 && errno == EAGAIN)
        continue;
      else {
        note("transfer: recvmsg = %zd (%s), record type %d", r, r < 0 ? errname(errno) : "-",
             type);
        ok = false;
      }
    }
  }
  fcntl(tx, F_SETFL, fl);
  return ok && recvd == n && memcmp(data, got, n) == 0;
}

// ---------------------------------------------------------------------------------------
// /proc/net/tls_stat

enum { STAT_MAX = 32 };
struct tls_stat {
  int n;
  char name[STAT_MAX][40];
  long long v[STAT_MAX];
};

static bool read_tls_stat(struct tls_stat *s) {
  s->n = 0;
  FILE *f = fopen("/proc/net/tls_stat", "r");
  if (!f)
    return false;
  while (s->n < STAT_MAX && fscanf(f, "%39s %lld", s->name[s->n], &s->v[s->n]) == 2)
    s->n++;
  fclose(f);
  return s->n > 0;
}

static long long stat_get(const struct tls_stat *s, const char *name) {
  for (int i = 0; i < s->n; i++)
    if (!strcmp(s->name[i], name))
      return s->v[i];
  return -1;
}

// ---------------------------------------------------------------------------------------
// The checks

static const char *vname(uint16_t v) { return v == TLS_1_3_VERSION ? "TLS1.3" : "TLS1.2"; }

static uint8_t *g_data, *g_got;
static const size_t SIZES[] = {1, 100, TLS_MAX_PLAIN, TLS_MAX_PLAIN + 1, 200000};
enum { BIG = 200000 };

// Plain recv() of a pending non-data record must fail with EIO and leave it queued;
// recvmsg with a control buffer then returns it with its type.
static void expect_control(int fd, int want_type, const uint8_t *payload, size_t n,
                           const char *tag) {
  uint8_t buf[64];
  ssize_t r = recv(fd, buf, sizeof buf, 0);
  int e = r < 0 ? errno : 0;
  check(r < 0 && e == EIO, "%s: plain recv() of a type-%d record = %zd %s (want EIO)", tag,
        want_type, r, errname(e));
  int type;
  r = recv_typed(fd, buf, sizeof buf, &type, 0);
  check(r == (ssize_t)n && type == want_type && !memcmp(buf, payload, n),
        "%s: recvmsg then returns it: %zd bytes, TLS_GET_RECORD_TYPE = %d (want %d)", tag, r,
        type, want_type);
}

static void test_kernel_pair(const struct cipher *c, uint16_t v) {
  char tag[64];
  snprintf(tag, sizeof tag, "kernel<->kernel %s %s", vname(v), c->name);
  struct keys ab = make_keys(c, v, 0x1000 + c->kernel_id * 7 + v, 3);
  struct keys ba = make_keys(c, v, 0x2000 + c->kernel_id * 7 + v, 5);
  int a, b;
  tcp_pair(&a, &b);
  if (!ktls_both(a, &ab, &ba, "a") || !ktls_both(b, &ba, &ab, "b")) {
    close(a), close(b);
    return;
  }
  for (size_t i = 0; i < sizeof SIZES / sizeof *SIZES; i++) {
    size_t n = SIZES[i];
    check(transfer(a, b, g_data, n, g_got), "%s: %zu bytes a->b", tag, n);
    check(transfer(b, a, g_data + 7, n, g_got), "%s: %zu bytes b->a", tag, n);
  }
  static const uint8_t close_notify[2] = {1, 0};
  int e = send_typed(a, REC_ALERT, close_notify, 2);
  check(e == 0, "%s: alert sent with TLS_SET_RECORD_TYPE = %s", tag, errname(e));
  expect_control(b, REC_ALERT, close_notify, 2, tag);
  static const uint8_t ticket[8] = {4, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef}; // a handshake msg
  e = send_typed(b, REC_HANDSHAKE, ticket, sizeof ticket);
  check(e == 0, "%s: handshake record sent with TLS_SET_RECORD_TYPE = %s", tag, errname(e));
  expect_control(a, REC_HANDSHAKE, ticket, sizeof ticket, tag);
  check(transfer(a, b, g_data + 3, 5000, g_got), "%s: data flows after the control records",
        tag);
  close(a), close(b);
}

// The kernel's records, opened in user space; user space's records, opened by the kernel.
static void test_wire(const struct cipher *c, uint16_t v) {
  char tag[64];
  snprintf(tag, sizeof tag, "wire %s %s", vname(v), c->name);
  struct keys to_kernel = make_keys(c, v, 0x3000 + c->kernel_id * 7 + v, 11);
  struct keys from_kernel = make_keys(c, v, 0x4000 + c->kernel_id * 7 + v, 13);
  int user, kern;
  tcp_pair(&user, &kern);
  if (!ktls_both(kern, &from_kernel, &to_kernel, "kernel end")) {
    close(user), close(kern);
    return;
  }
  static uint8_t rec[REC_MAX], pt[REC_MAX];

  // kernel -> user space: 40000 bytes and a close_notify
  const size_t n = 40000;
  int e = write_all(kern, g_data, n);
  static const uint8_t close_notify[2] = {1, 0};
  if (!e)
    e = send_typed(kern, REC_ALERT, close_notify, 2);
  check(e == 0, "%s: kTLS sent %zu bytes and an alert = %s", tag, n, errname(e));
  size_t got = 0;
  int records = 0;
  bool ok = true, alert = false, nonce_ok = true;
  uint64_t first_seq = from_kernel.seq;
  while (ok && !alert) {
    long len = read_record(user, rec);
    if (len < 0) {
      note("%s: reading a raw record: %s", tag, errname((int)-len));
      ok = false;
      break;
    }
    if (rec[1] != 3 || rec[2] != 3 || (v == TLS_1_3_VERSION && rec[0] != REC_DATA)) {
      note("%s: bad record header %02x %02x%02x", tag, rec[0], rec[1], rec[2]);
      ok = false;
      break;
    }
    uint8_t type = 0;
    uint64_t explicit = 0, seq = from_kernel.seq;
    long m = open_record(&from_kernel, rec, (size_t)len, &type, pt, &explicit);
    if (m < 0) {
      note("%s: record %d (seq %" PRIu64 ") does not open in user space", tag, records, seq);
      ok = false;
      break;
    }
    if (v == TLS_1_2_VERSION && !is_chacha(c) && explicit != seq)
      nonce_ok = false;
    records++;
    if (type == REC_DATA) {
      if (got + (size_t)m > n || memcmp(pt, g_data + got, (size_t)m)) {
        ok = false;
        break;
      }
      got += (size_t)m;
    } else {
      alert = type == REC_ALERT && m == 2 && pt[0] == 1 && pt[1] == 0;
      ok = alert;
    }
  }
  check(ok && got == n && alert,
        "%s: kernel's %d records open in user space with seq %" PRIu64 "..%" PRIu64
        " (%zu bytes, then the alert)",
        tag, records, first_seq, from_kernel.seq - 1, got);
  if (v == TLS_1_2_VERSION && !is_chacha(c))
    check(nonce_ok, "%s: the kernel's explicit nonce is its TLS_TX iv + record number", tag);

  // user space -> kernel: records of several sizes, then an alert and a handshake record
  size_t off = 0, total = 0;
  static const size_t chunks[] = {1, 1000, TLS_MAX_PLAIN, 333};
  uint64_t seq0 = to_kernel.seq;
  for (size_t i = 0; i < sizeof chunks / sizeof *chunks; i++) {
    size_t rl = seal_record(&to_kernel, REC_DATA, g_data + off, chunks[i], rec);
    if (write_all(user, rec, rl))
      die("write");
    off += chunks[i];
  }
  while (total < off) {
    int type;
    ssize_t r = recv_typed(kern, g_got + total, off - total, &type, 0);
    if (r <= 0 || type != REC_DATA) {
      note("%s: kernel recvmsg = %zd %s type %d", tag, r, r < 0 ? errname(errno) : "", type);
      break;
    }
    total += (size_t)r;
  }
  check(total == off && !memcmp(g_got, g_data, off),
        "%s: user-space records (seq %" PRIu64 "..%" PRIu64 ") open in the kernel", tag, seq0,
        to_kernel.seq - 1);
  static const uint8_t warn[2] = {1, 0};
  size_t rl = seal_record(&to_kernel, REC_ALERT, warn, 2, rec);
  write_all(user, rec, rl);
  expect_control(kern, REC_ALERT, warn, 2, tag);
  close(user), close(kern);
}

// TLS 1.3 KeyUpdate arriving on a kTLS receiver.
static int g_rekey_supported = -1;
static int g_read_on_tests;

// Everything the client can still read: each record opened with the server's keys.
static void client_drain(int client, struct keys *s2c, const char *tag) {
  static uint8_t rec[REC_MAX], pt[REC_MAX];
  char seen[256] = "";
  size_t used = 0;
  for (int i = 0; i < 8; i++) {
    long len = read_record(client, rec);
    if (len < 0) {
      int cerr = 0;
      socklen_t sl = sizeof cerr;
      getsockopt(client, SOL_SOCKET, SO_ERROR, &cerr, &sl);
      used += (size_t)snprintf(seen + used, sizeof seen - used, "%s (SO_ERROR %s)",
                               -len == ENODATA ? "EOF" : errname((int)-len), errname(cerr));
      break;
    }
    uint8_t type = 0;
    uint64_t ex;
    long m = open_record(s2c, rec, (size_t)len, &type, pt, &ex);
    used += (size_t)snprintf(seen + used, sizeof seen - used, "%s, ",
                             m < 0 ? "a record that does not open"
                             : type == REC_ALERT && m == 2 && pt[0] == 1 && pt[1] == 0
                                 ? "close_notify"
                                 : "a record");
    if (used >= sizeof seen)
      break;
  }
  note("%s:   the client then reads: %s", tag, seen);
}

// The client sends data, a KeyUpdate and data under the next traffic secret in one
// segment. Then the relay end either answers at once (close_notify and FIN, then tries
// to install the next keys), or, with read_on, first reads on with the keys it has.
static void test_key_update(const struct cipher *c, bool read_on) {
  char tag[64];
  snprintf(tag, sizeof tag, "KeyUpdate %s%s", c->name, read_on ? " (read on)" : "");
  struct keys c2s = make_keys(c, TLS_1_3_VERSION, 0x5000 + c->kernel_id, 0);
  struct keys s2c = make_keys(c, TLS_1_3_VERSION, 0x6000 + c->kernel_id, 0);
  int client, server;
  tcp_pair(&client, &server);
  if (!ktls_both(server, &s2c, &c2s, "relay end")) {
    close(client), close(server);
    return;
  }
  struct keys c2s_next = next_keys(&c2s);
  static uint8_t wire[3 * REC_MAX];
  static const char before[] = "data under traffic secret 0";
  static const char after[] = "data under traffic secret 1";
  // KeyUpdate: msg_type 24, length 1, request_update = update_requested (1)
  static const uint8_t key_update[5] = {24, 0, 0, 1, 1};
  static const uint8_t close_notify[2] = {1, 0};
  size_t n = seal_record(&c2s, REC_DATA, (const uint8_t *)before, sizeof before - 1, wire);
  n += seal_record(&c2s, REC_HANDSHAKE, key_update, sizeof key_update, wire + n);
  n += seal_record(&c2s_next, REC_DATA, (const uint8_t *)after, sizeof after - 1, wire + n);
  if (write_all(client, wire, n)) // one segment: all three records arrive together
    die("write");

  uint8_t buf[256];
  int type;
  ssize_t r = recv_typed(server, buf, sizeof buf, &type, 0);
  check(r == (ssize_t)sizeof before - 1 && type == REC_DATA && !memcmp(buf, before, (size_t)r),
        "%s: the data before it arrives alone (%zd bytes, type %d)", tag, r, type);
  r = recv_typed(server, buf, sizeof buf, &type, 0);
  check(r == 5 && type == REC_HANDSHAKE && !memcmp(buf, key_update, 5),
        "%s: the KeyUpdate arrives as a record of type %d with %zd bytes "
        "(%02x %02x %02x %02x %02x)",
        tag, type, r, buf[0], buf[1], buf[2], buf[3], buf[4]);

  if (!read_on) {
    // The relay's answer on a kernel without rekey: close_notify on its (still valid)
    // TX keys and a FIN, before any further read. The client must see both.
    int e = send_typed(server, REC_ALERT, close_notify, 2);
    if (!e && shutdown(server, SHUT_WR))
      e = errno;
    static uint8_t rec[REC_MAX], pt[REC_MAX];
    long rl = e ? -1 : read_record(client, rec);
    uint8_t at = 0;
    uint64_t ex;
    long m = rl > 0 ? open_record(&s2c, rec, (size_t)rl, &at, pt, &ex) : -1;
    ssize_t eof = recv(client, buf, sizeof buf, 0);
    check(m == 2 && at == REC_ALERT && pt[0] == 1 && pt[1] == 0 && eof == 0,
          "%s: the relay end can still send close_notify on its TX keys and a FIN "
          "(client: alert %ld bytes, then recv = %zd)",
          tag, m, eof);

    // Install the next RX keys: refused without kernel rekey support (before 6.14).
    union crypto_info ci;
    socklen_t cl = to_kernel(&c2s_next, &ci);
    e = setsockopt(server, SOL_TLS, TLS_RX, &ci, cl) ? errno : 0;
    if (g_rekey_supported < 0)
      g_rekey_supported = e == 0;
    note("%s: second setsockopt(TLS_RX) with the next keys = %s%s", tag, errname(e),
         e == EBUSY ? " (this kernel cannot rekey kTLS RX)" : "");
    check(e == 0 || e == EBUSY, "%s: a second TLS_RX is either a rekey (0) or EBUSY: %s",
          tag, errname(e));
    // And TX: the relay could not answer update_requested with its own KeyUpdate either.
    struct keys s2c_next = next_keys(&s2c);
    cl = to_kernel(&s2c_next, &ci);
    int etx = setsockopt(server, SOL_TLS, TLS_TX, &ci, cl) ? errno : 0;
    note("%s: second setsockopt(TLS_TX) with the next keys = %s", tag, errname(etx));
    if (e == 0) {
      r = recv_typed(server, buf, sizeof buf, &type, 0);
      check(r == (ssize_t)sizeof after - 1 && type == REC_DATA &&
                !memcmp(buf, after, (size_t)r),
            "%s: after the rekey the next record opens (%zd bytes)", tag, r);
    }
    close(server); // the record under the new keys is still queued, unread
    struct pollfd pc = {.fd = client, .events = POLLIN};
    poll(&pc, 1, 1000);
    int cerr = 0;
    socklen_t csl = sizeof cerr;
    getsockopt(client, SOL_SOCKET, SO_ERROR, &cerr, &csl);
    note("%s:   client after the relay end's close(): poll revents 0x%x, SO_ERROR = %s", tag,
         pc.revents, errname(cerr));
    close(client);
    return;
  }

  // Reading on with the keys it has: the record under the new secret.
  g_read_on_tests++;
  r = recv_typed(server, buf, sizeof buf, &type, 0);
  int er = r < 0 ? errno : 0;
  note("%s: next recvmsg (the record under the new secret) = %zd %s", tag, r, errname(er));
  bool rekey_kernel = g_rekey_supported == 1;
  check(r < 0 && (er == EBADMSG || (rekey_kernel && er != EAGAIN)),
        "%s: it yields no plaintext: %s%s", tag, errname(er),
        er == EBADMSG ? " (decrypted with the old keys: authentication fails)" : "");
  struct tls_stat st;
  read_tls_stat(&st);
  note("%s:   TlsDecryptError is now %lld", tag, stat_get(&st, "TlsDecryptError"));
  // The failed read leaves EBADMSG as the socket error (sk_err). kTLS sends fail with it
  // without clearing it; only reading SO_ERROR does.
  int es1 = send_typed(server, REC_ALERT, close_notify, 2);
  int es2 = send_typed(server, REC_ALERT, close_notify, 2);
  note("%s:   sendmsg(close_notify) = %s, and again = %s", tag, errname(es1), errname(es2));
  if (!rekey_kernel)
    check(es1 == EBADMSG && es2 == EBADMSG,
          "%s: sends fail with the read's EBADMSG while it is pending (%s, %s)", tag,
          errname(es1), errname(es2));
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  getsockopt(server, SOL_SOCKET, SO_ERROR, &soerr, &sl);
  struct pollfd p = {.fd = server, .events = POLLIN};
  poll(&p, 1, 0);
  r = recv_typed(server, buf, sizeof buf, &type, MSG_DONTWAIT);
  er = r < 0 ? errno : 0;
  read_tls_stat(&st);
  note("%s:   then SO_ERROR = %s, poll revents 0x%x; recvmsg again = %zd %s, "
       "TlsDecryptError %lld",
       tag, errname(soerr), p.revents, r, errname(er), stat_get(&st, "TlsDecryptError"));
  check(r < 0, "%s: reading again yields no plaintext either (%s)", tag, errname(er));
  getsockopt(server, SOL_SOCKET, SO_ERROR, &soerr, &sl);
  int es3 = send_typed(server, REC_ALERT, close_notify, 2);
  note("%s:   then SO_ERROR = %s (reading it clears it), sendmsg(close_notify) = %s", tag,
       errname(soerr), errname(es3));
  if (!rekey_kernel)
    check(es3 == 0, "%s: once SO_ERROR has been read, close_notify can be sent (%s)", tag,
          errname(es3));
  close(server);
  client_drain(client, &s2c, tag);
  close(client);
}

static bool probe_ktls(void) {
  struct utsname u;
  uname(&u);
  note("kernel %s %s", u.release, u.version);
  int a, b;
  tcp_pair(&a, &b);
  int e = ulp(a);
  close(a), close(b);
  if (e == ENOENT) {
    printf("ktls_selftest: no kTLS: setsockopt(IPPROTO_TCP, TCP_ULP, \"tls\") on a connected "
           "TCP socket failed with ENOENT (%s): the kernel has no \"tls\" ULP (CONFIG_TLS "
           "off, or tls.ko absent/not loadable); /proc/net/tls_stat %s\n",
           strerror(e), access("/proc/net/tls_stat", R_OK) ? "is absent" : "exists");
    return false;
  }
  check(e == 0, "setsockopt(TCP_ULP, \"tls\") on a connected socket = %s%s%s", errname(e),
        e ? ": " : "", e ? strerror(e) : "");
  if (e) {
    printf("ktls_selftest: %d passed, %d failed\n", g_pass, g_fail);
    exit(1);
  }
  return true;
}

int main(int argc, char **argv) {
  bool probe_only = argc > 1 && !strcmp(argv[1], "--probe");
  if (!probe_ktls()) {
    printf("ktls_selftest: exit %d (no kTLS)\n", EXIT_NO_KTLS);
    return EXIT_NO_KTLS;
  }
  if (probe_only)
    return 0;
  g_data = malloc(BIG + 64);
  g_got = malloc(BIG + 64);
  if (!g_data || !g_got)
    die("malloc");
  fill(g_data, BIG + 64, 42);

  struct tls_stat s0, s1, s2;
  bool have_stat = read_tls_stat(&s0);
  check(have_stat, "/proc/net/tls_stat is readable");

  // Hold one kTLS pair open across the run to see the "current" gauges move.
  const struct keys hk = make_keys(&CIPHERS[0], TLS_1_3_VERSION, 99, 0);
  int ha, hb;
  tcp_pair(&ha, &hb);
  ktls_both(ha, &hk, &hk, "held pair a");
  ktls_both(hb, &hk, &hk, "held pair b");
  read_tls_stat(&s1);
  check(stat_get(&s1, "TlsCurrTxSw") >= stat_get(&s0, "TlsCurrTxSw") + 2 &&
            stat_get(&s1, "TlsCurrRxSw") >= stat_get(&s0, "TlsCurrRxSw") + 2,
        "tls_stat: TlsCurrTxSw %lld -> %lld, TlsCurrRxSw %lld -> %lld with a kTLS pair open",
        stat_get(&s0, "TlsCurrTxSw"), stat_get(&s1, "TlsCurrTxSw"),
        stat_get(&s0, "TlsCurrRxSw"), stat_get(&s1, "TlsCurrRxSw"));

  static const uint16_t versions[] = {TLS_1_2_VERSION, TLS_1_3_VERSION};
  for (size_t vi = 0; vi < 2; vi++)
    for (size_t ci = 0; ci < sizeof CIPHERS / sizeof *CIPHERS; ci++) {
      test_kernel_pair(&CIPHERS[ci], versions[vi]);
      test_wire(&CIPHERS[ci], versions[vi]);
    }
  for (size_t ci = 0; ci < sizeof CIPHERS / sizeof *CIPHERS; ci++) {
    test_key_update(&CIPHERS[ci], false);
    test_key_update(&CIPHERS[ci], true);
  }
  close(ha), close(hb);

  read_tls_stat(&s2);
  printf("# /proc/net/tls_stat: name, before, after, delta\n");
  for (int i = 0; i < s2.n; i++) {
    long long b = stat_get(&s0, s2.name[i]);
    printf("#   %-22s %8lld %8lld %+8lld\n", s2.name[i], b, s2.v[i], s2.v[i] - b);
  }
  long long dtx = stat_get(&s2, "TlsTxSw") - stat_get(&s0, "TlsTxSw");
  long long drx = stat_get(&s2, "TlsRxSw") - stat_get(&s0, "TlsRxSw");
  long long dde = stat_get(&s2, "TlsDecryptError") - stat_get(&s0, "TlsDecryptError");
  check(dtx >= installs_tx && drx >= installs_rx,
        "tls_stat: TlsTxSw +%lld, TlsRxSw +%lld (installed: %d TX, %d RX)", dtx, drx,
        installs_tx, installs_rx);
  if (g_rekey_supported == 0)
    check(dde >= g_read_on_tests,
          "tls_stat: TlsDecryptError +%lld (at least one per KeyUpdate test that read on: %d)",
          dde, g_read_on_tests);
  check(stat_get(&s2, "TlsCurrTxSw") <= stat_get(&s0, "TlsCurrTxSw") &&
            stat_get(&s2, "TlsCurrRxSw") <= stat_get(&s0, "TlsCurrRxSw"),
        "tls_stat: the current gauges are back to %lld/%lld after close",
        stat_get(&s2, "TlsCurrTxSw"), stat_get(&s2, "TlsCurrRxSw"));
  note("kTLS RX rekey on this kernel: %s",
       g_rekey_supported == 1 ? "supported" : g_rekey_supported == 0 ? "not supported" : "?");
  printf("ktls_selftest: %d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}
