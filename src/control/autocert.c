/*
 * autocert.c - --domain mode's certificate (contract in autocert.h): the cache
 * directory rule, the cache files, the challenge answers and the issuance thread.
 */
#include "control/autocert.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "config/config.h"
#include "core/clock.h"
#include "core/log.h"
#include "transport/tls_x509.h"

#define CACHE_FILE_BYTES_MAX TLS_PEM_FILE_BYTES_MAX
#define PATH_BYTES 4096u

struct challenge {
	char token[ACME_TOKEN_BYTES]; /* "" when free */
	char key_auth[ACME_KEY_AUTH_BYTES];
};

struct autocert {
	char domain[AUTOCERT_DOMAIN_BYTES]; /* lowercase */
	const char *cache_dir;
	const char *directory_url;
	const char *outbound_ca_file;
	int64_t *cert_not_after_s;
	EVP_PKEY *account_key;
	struct tls_cert *cached; /* until autocert_cert_take */
	/* the served certificate's validity (0 / 0: none yet); the thread's own */
	int64_t not_before_s, not_after_s;
	struct tls_server *tls;
	struct acme_client *acme;
	pthread_t tid;
	bool started;
	int stop_fd; /* eventfd: shutdown (also cancels a call in progress) */
	int kick_fd; /* eventfd: a handshake wants a certificate */
	bool wanted; /* atomic: a kick is pending (one write per wait, not one per handshake) */
	struct autocert_stats stats;
	pthread_mutex_t lock; /* guards challenges */
	struct challenge challenges[AUTOCERT_CHALLENGES_MAX];
};

/* ------------------------------------------------------------------ pure rules */

enum autocert_cache_verdict autocert_cache_verdict(bool exists, uint32_t mode, uint32_t owner, uint32_t euid)
{
	if (!exists)
		return AUTOCERT_CACHE_CREATE;
	if (!S_ISDIR(mode))
		return AUTOCERT_CACHE_REFUSE_NOT_DIR;
	if ((mode & 077) == 0)
		return AUTOCERT_CACHE_OK;
	return owner == euid ? AUTOCERT_CACHE_TIGHTEN : AUTOCERT_CACHE_REFUSE_INSECURE;
}

int64_t autocert_renew_at_s(int64_t not_before_s, int64_t not_after_s)
{
	if (not_after_s <= not_before_s)
		return not_before_s;
	return not_before_s + (not_after_s - not_before_s) / 3 * 2;
}

/* ------------------------------------------------------------------ the cache directory */

/* mkdir -p with 0700 for every directory it creates (Go's os.MkdirAll(dir, 0700)). */
static bool mkdir_all(const char *path, char why[AUTOCERT_WHY_BYTES])
{
	char p[PATH_BYTES];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof p) {
		snprintf(why, AUTOCERT_WHY_BYTES, "--cert-cache path is empty or too long");
		return false;
	}
	memcpy(p, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (p[i] != '/' && p[i] != '\0')
			continue;
		char saved = p[i];
		p[i] = '\0';
		if (mkdir(p, 0700) != 0 && errno != EEXIST) {
			snprintf(why, AUTOCERT_WHY_BYTES, "creating cert cache dir %s: %s", p, strerror(errno));
			return false;
		}
		p[i] = saved;
	}
	return true;
}

bool autocert_cache_prepare(const char *path, uint32_t euid, struct autocert_cache_result *res,
			    char why[AUTOCERT_WHY_BYTES])
{
	struct stat st;
	memset(res, 0, sizeof *res);
	bool exists = stat(path, &st) == 0;
	if (!exists && errno != ENOENT) {
		snprintf(why, AUTOCERT_WHY_BYTES, "cert cache dir %s: %s", path, strerror(errno));
		return false;
	}
	switch (autocert_cache_verdict(exists, exists ? st.st_mode : 0, exists ? st.st_uid : 0, euid)) {
	case AUTOCERT_CACHE_OK:
		return true;
	case AUTOCERT_CACHE_CREATE:
		return mkdir_all(path, why);
	case AUTOCERT_CACHE_TIGHTEN:
		if (chmod(path, 0700) != 0) {
			snprintf(why, AUTOCERT_WHY_BYTES, "tightening cert cache dir %s: %s", path, strerror(errno));
			return false;
		}
		res->tightened = true;
		res->from_mode = st.st_mode & 07777;
		return true;
	case AUTOCERT_CACHE_REFUSE_NOT_DIR:
		snprintf(why, AUTOCERT_WHY_BYTES, "cert cache %s exists but is not a directory", path);
		return false;
	case AUTOCERT_CACHE_REFUSE_INSECURE:
		snprintf(why, AUTOCERT_WHY_BYTES,
			 "relay: cert cache dir is group/world accessible and not owned by this process; "
			 "must be 0700: %s has mode %04o and owner uid %u (effective uid %u)",
			 path, (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid, euid);
		return false;
	}
	return false;
}

/* ------------------------------------------------------------------ cache files */

static bool cache_path(const struct autocert *a, const char *name, char out[PATH_BYTES])
{
	int n = snprintf(out, PATH_BYTES, "%s/%s", a->cache_dir, name);
	return n > 0 && (size_t)n < PATH_BYTES;
}

/* The whole file (at most CACHE_FILE_BYTES_MAX), malloc'd and NUL-terminated; NULL
 * with errno (ENOENT: no such file; EFBIG: too large). */
static char *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	char *buf = malloc(CACHE_FILE_BYTES_MAX + 1);
	size_t n = 0;
	int err = 0;
	while (buf != NULL && n <= CACHE_FILE_BYTES_MAX) {
		ssize_t r = read(fd, buf + n, CACHE_FILE_BYTES_MAX + 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			err = errno;
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	if (buf == NULL || err || n > CACHE_FILE_BYTES_MAX) {
		if (buf)
			OPENSSL_cleanse(buf, n > CACHE_FILE_BYTES_MAX ? CACHE_FILE_BYTES_MAX : n);
		free(buf);
		errno = buf == NULL ? ENOMEM : err ? err : EFBIG;
		return NULL;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}

static void free_secret(char *buf, size_t len)
{
	if (buf) {
		OPENSSL_cleanse(buf, len);
		free(buf);
	}
}

/* Write name in the cache: a temporary file 0600, fsync, rename over the old one. */
static bool write_file(const struct autocert *a, const char *name, const char *p1, size_t n1, const char *p2,
		       size_t n2, char why[AUTOCERT_WHY_BYTES])
{
	char path[PATH_BYTES], tmp[PATH_BYTES + 16];
	if (!cache_path(a, name, path)) {
		snprintf(why, AUTOCERT_WHY_BYTES, "cache path too long");
		return false;
	}
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	(void)unlink(tmp);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(why, AUTOCERT_WHY_BYTES, "writing %.300s: %s", tmp, strerror(errno));
		return false;
	}
	const char *parts[2] = { p1, p2 };
	size_t lens[2] = { n1, n2 };
	bool ok = true;
	for (int k = 0; k < 2 && ok; k++) {
		size_t off = 0;
		while (off < lens[k] && ok) {
			ssize_t w = write(fd, parts[k] + off, lens[k] - off);
			if (w < 0 && errno == EINTR)
				continue;
			ok = w > 0;
			if (ok)
				off += (size_t)w;
		}
	}
	ok = ok && fsync(fd) == 0;
	int err = errno;
	close(fd);
	if (!ok || rename(tmp, path) != 0) {
		if (ok)
			err = errno;
		(void)unlink(tmp);
		snprintf(why, AUTOCERT_WHY_BYTES, "writing %.300s: %s", path, strerror(err));
		return false;
	}
	return true;
}

/* The account key: read it from the cache, or make one and store it. */
static EVP_PKEY *account_key(const struct autocert *a, char why[AUTOCERT_WHY_BYTES])
{
	char path[PATH_BYTES];
	size_t len = 0;
	if (!cache_path(a, AUTOCERT_ACCOUNT_KEY_FILE, path)) {
		snprintf(why, AUTOCERT_WHY_BYTES, "cache path too long");
		return NULL;
	}
	char *pem = read_file(path, &len);
	if (pem != NULL) {
		BIO *b = BIO_new_mem_buf(pem, (int)len);
		EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
		BIO_free(b);
		free_secret(pem, len);
		ERR_clear_error();
		const EC_KEY *ec = k ? EVP_PKEY_get0_EC_KEY(k) : NULL;
		if (ec == NULL || EC_GROUP_get_curve_name(EC_KEY_get0_group(ec)) != NID_X9_62_prime256v1) {
			EVP_PKEY_free(k);
			snprintf(why, AUTOCERT_WHY_BYTES, "%.300s is not an EC P-256 private key (PEM); move it away to "
				 "register a new ACME account", path);
			return NULL;
		}
		return k;
	}
	if (errno != ENOENT) {
		snprintf(why, AUTOCERT_WHY_BYTES, "reading %.300s: %s", path, strerror(errno));
		return NULL;
	}
	EVP_PKEY *k = acme_key_generate();
	BIO *b = BIO_new(BIO_s_mem());
	const uint8_t *p = NULL;
	size_t n = 0;
	bool ok = k && b && PEM_write_bio_ECPrivateKey(b, EVP_PKEY_get0_EC_KEY(k), NULL, NULL, 0, NULL, NULL) &&
		  BIO_mem_contents(b, &p, &n);
	ok = ok && write_file(a, AUTOCERT_ACCOUNT_KEY_FILE, (const char *)p, n, "", 0, why);
	if (p != NULL)
		OPENSSL_cleanse((void *)p, n); /* the BIO frees its buffer without wiping it */
	BIO_free(b);
	ERR_clear_error();
	if (!ok) {
		if (why[0] == '\0')
			snprintf(why, AUTOCERT_WHY_BYTES, "cannot make the ACME account key");
		EVP_PKEY_free(k);
		return NULL;
	}
	LOG_INFO("acme account key created", KV_STR("path", path));
	return k;
}

/* The leaf's validity, and that it names domain. */
static bool leaf_check(const char *pem, size_t len, const char *domain, int64_t *nb, int64_t *na)
{
	BIO *b = BIO_new_mem_buf(pem, (int)len);
	X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
	bool ok = x != NULL && tls_asn1_time_posix(X509_get0_notBefore(x), nb) && tls_asn1_time_posix(X509_get0_notAfter(x), na) &&
		  X509_check_host(x, domain, strlen(domain), 0, NULL) == 1;
	X509_free(x);
	BIO_free(b);
	ERR_clear_error();
	return ok;
}

/* A certificate file (key PEM then chain PEM) as a served certificate; NULL with why. */
static struct tls_cert *cert_from_pem(struct autocert *a, const char *pem, size_t len, int64_t *nb, int64_t *na,
				      char why[AUTOCERT_WHY_BYTES])
{
	struct tls_load_error err;
	struct tls_cert *c = tls_cert_from_pem(pem, len, pem, len, (int64_t)time(NULL), &err);
	if (c == NULL) {
		snprintf(why, AUTOCERT_WHY_BYTES, "%s", err.reason);
		return NULL;
	}
	if (!leaf_check(pem, len, a->domain, nb, na)) {
		tls_cert_put(c);
		snprintf(why, AUTOCERT_WHY_BYTES, "the certificate is not for %s", a->domain);
		return NULL;
	}
	return c;
}

static void load_cached(struct autocert *a)
{
	char path[PATH_BYTES], why[AUTOCERT_WHY_BYTES] = "";
	size_t len = 0;
	if (!cache_path(a, a->domain, path))
		return;
	char *pem = read_file(path, &len);
	if (pem == NULL) {
		if (errno != ENOENT)
			LOG_WARN("cached certificate unusable; a new one will be obtained", KV_STR("path", path),
				 KV_STR("err", strerror(errno)));
		return;
	}
	a->cached = cert_from_pem(a, pem, len, &a->not_before_s, &a->not_after_s, why);
	free_secret(pem, len);
	if (a->cached == NULL) {
		a->not_before_s = a->not_after_s = 0;
		LOG_WARN("cached certificate unusable; a new one will be obtained", KV_STR("path", path), KV_STR("err", why));
		return;
	}
	__atomic_store_n(a->cert_not_after_s, a->not_after_s, __ATOMIC_RELAXED);
	char exp[24];
	snprintf(exp, sizeof exp, "%lld", (long long)a->not_after_s);
	LOG_INFO("serving cached certificate", KV_STR("path", path), KV_STR("not_after", exp));
}

/* ------------------------------------------------------------------ challenges */

static void publish(void *ctx, const char *token, const char *key_auth)
{
	struct autocert *a = ctx;
	pthread_mutex_lock(&a->lock);
	for (size_t i = 0; i < AUTOCERT_CHALLENGES_MAX; i++) {
		struct challenge *c = &a->challenges[i];
		if (c->token[0] == '\0' || strcmp(c->token, token) == 0) {
			snprintf(c->token, sizeof c->token, "%s", token);
			snprintf(c->key_auth, sizeof c->key_auth, "%s", key_auth);
			break;
		}
	}
	pthread_mutex_unlock(&a->lock);
}

static void unpublish(void *ctx, const char *token)
{
	struct autocert *a = ctx;
	pthread_mutex_lock(&a->lock);
	for (size_t i = 0; i < AUTOCERT_CHALLENGES_MAX; i++)
		if (strcmp(a->challenges[i].token, token) == 0)
			memset(&a->challenges[i], 0, sizeof a->challenges[i]);
	pthread_mutex_unlock(&a->lock);
}

bool autocert_challenge_lookup(void *ctx, struct span token, char *out, size_t cap)
{
	struct autocert *a = ctx;
	bool found = false;
	if (token.len == 0 || token.len >= ACME_TOKEN_BYTES)
		return false;
	pthread_mutex_lock(&a->lock);
	for (size_t i = 0; i < AUTOCERT_CHALLENGES_MAX && !found; i++) {
		const struct challenge *c = &a->challenges[i];
		if (c->token[0] != '\0' && strlen(c->token) == token.len && memcmp(c->token, token.ptr, token.len) == 0) {
			found = strlen(c->key_auth) < cap;
			if (found)
				memcpy(out, c->key_auth, strlen(c->key_auth) + 1);
		}
	}
	pthread_mutex_unlock(&a->lock);
	return found;
}

/* ------------------------------------------------------------------ the manager */

struct autocert *autocert_create(const struct autocert_config *cfg, char why[AUTOCERT_WHY_BYTES])
{
	why[0] = '\0';
	if (!config_domain_valid(cfg->domain)) {
		snprintf(why, AUTOCERT_WHY_BYTES, "--domain is not a DNS name");
		return NULL;
	}
	struct autocert *a = calloc(1, sizeof *a);
	if (a == NULL) {
		snprintf(why, AUTOCERT_WHY_BYTES, "out of memory");
		return NULL;
	}
	for (size_t i = 0; cfg->domain[i]; i++)
		a->domain[i] = (char)((cfg->domain[i] >= 'A' && cfg->domain[i] <= 'Z') ? cfg->domain[i] + 32 : cfg->domain[i]);
	a->cache_dir = cfg->cache_dir;
	a->directory_url = cfg->directory_url;
	a->outbound_ca_file = cfg->outbound_ca_file;
	a->cert_not_after_s = cfg->cert_not_after_s;
	pthread_mutex_init(&a->lock, NULL);
	a->stop_fd = eventfd(0, EFD_CLOEXEC);
	a->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (a->stop_fd < 0 || a->kick_fd < 0) {
		snprintf(why, AUTOCERT_WHY_BYTES, "eventfd: %s", strerror(errno));
		autocert_destroy(a);
		return NULL;
	}
	a->account_key = account_key(a, why);
	if (a->account_key == NULL) {
		autocert_destroy(a);
		return NULL;
	}
	char awhy[ACME_WHY_BYTES];
	a->acme = acme_client_create(a->directory_url, a->account_key, a->outbound_ca_file, a->stop_fd, awhy);
	if (a->acme == NULL) {
		snprintf(why, AUTOCERT_WHY_BYTES, "%s", awhy);
		autocert_destroy(a);
		return NULL;
	}
	load_cached(a);
	return a;
}

struct tls_cert *autocert_cert_take(struct autocert *a)
{
	struct tls_cert *c = a->cached;
	a->cached = NULL;
	return c;
}

const char *autocert_domain(const struct autocert *a)
{
	return a->domain;
}

const struct autocert_stats *autocert_stats_of(const struct autocert *a)
{
	return &a->stats;
}

void autocert_want_cert(void *ctx)
{
	struct autocert *a = ctx;
	/* one eventfd write per wait, however many handshakes ask */
	if (__atomic_exchange_n(&a->wanted, true, __ATOMIC_ACQ_REL))
		return;
	uint64_t one = 1;
	(void)!write(a->kick_fd, &one, sizeof one);
}

/* One attempt: obtain, store, serve. */
static bool attempt(struct autocert *a, const char *why_now)
{
	struct acme_challenge_port port = { .ctx = a, .publish = publish, .unpublish = unpublish };
	struct acme_issued got;
	enum acme_stage stage = ACME_STAGE_ORDER;
	char why[AUTOCERT_WHY_BYTES] = "", awhy[ACME_WHY_BYTES] = "";
	uint64_t t0 = monotonic_ms();
	LOG_INFO("acme certificate request started", KV_STR("stage", why_now));
	bool ok = acme_obtain(a->acme, a->domain, &port, &got, &stage, awhy);
	snprintf(why, sizeof why, "%s", awhy);
	struct tls_cert *cert = NULL;
	int64_t nb = 0, na = 0;
	if (ok) {
		/* the cache file: key, then chain (Go autocert's layout) */
		char *both = malloc(got.key_len + got.chain_len + 1);
		ok = both != NULL;
		if (ok) {
			memcpy(both, got.key_pem, got.key_len);
			memcpy(both + got.key_len, got.chain_pem, got.chain_len);
			both[got.key_len + got.chain_len] = '\0';
			cert = cert_from_pem(a, both, got.key_len + got.chain_len, &nb, &na, why);
			free_secret(both, got.key_len + got.chain_len);
		}
		if (cert == NULL) {
			stage = ACME_STAGE_CERTIFICATE;
			ok = false;
		} else if (!write_file(a, a->domain, got.key_pem, got.key_len, got.chain_pem, got.chain_len, why)) {
			/* served anyway: a restart will obtain another */
			stage = ACME_STAGE_CACHE;
			__atomic_add_fetch(&a->stats.failures[stage], 1, __ATOMIC_RELAXED);
			LOG_WARN("acme certificate not cached; make --cert-cache writable by the relay's user",
				 KV_STR("err", why));
		}
		acme_issued_free(&got);
	}
	char ms[24];
	snprintf(ms, sizeof ms, "%llums", (unsigned long long)(monotonic_ms() - t0));
	if (!ok) {
		if (stage != ACME_STAGE_CANCELLED) {
			__atomic_add_fetch(&a->stats.failures[stage], 1, __ATOMIC_RELAXED);
			LOG_WARN("acme certificate request failed", KV_STR("stage", acme_stage_name(stage)),
				 KV_STR("err", why), KV_STR("duration", ms));
		}
		return false;
	}
	a->not_before_s = nb;
	a->not_after_s = na;
	tls_server_swap_cert(a->tls, cert);
	__atomic_store_n(a->cert_not_after_s, na, __ATOMIC_RELAXED);
	__atomic_store_n(&a->stats.last_success_s, (int64_t)time(NULL), __ATOMIC_RELAXED);
	__atomic_add_fetch(&a->stats.issued, 1, __ATOMIC_RELAXED);
	char exp[24];
	snprintf(exp, sizeof exp, "%lld", (long long)na);
	LOG_INFO("acme certificate obtained", KV_STR("not_after", exp), KV_STR("duration", ms));
	return true;
}

static void drain(int fd)
{
	uint64_t v;
	(void)!read(fd, &v, sizeof v);
}

static void *autocert_thread(void *arg)
{
	struct autocert *a = arg;
	uint64_t backoff_ms = 0, retry_at_ms = 0;
	bool kicked = false;
	for (;;) {
		uint64_t now_ms = monotonic_ms();
		int64_t now_s = (int64_t)time(NULL);
		bool have = a->not_after_s != 0;
		int64_t renew_at_s = have ? autocert_renew_at_s(a->not_before_s, a->not_after_s) : 0;
		bool due_time = now_ms >= retry_at_ms;
		bool due = due_time && (have ? now_s >= renew_at_s : kicked);
		if (due) {
			bool ok = attempt(a, have ? "renewal" : "issuance");
			if (ok) {
				backoff_ms = 0;
				retry_at_ms = 0;
				kicked = false;
				__atomic_store_n(&a->wanted, false, __ATOMIC_RELEASE);
			} else {
				backoff_ms = backoff_ms ? MIN(backoff_ms * 2, (uint64_t)AUTOCERT_BACKOFF_MAX_MS)
							: AUTOCERT_BACKOFF_MIN_MS;
				retry_at_ms = monotonic_ms() + backoff_ms;
				if (!have) {
					/* wait for the next handshake that asks, not sooner than the back-off */
					kicked = false;
					__atomic_store_n(&a->wanted, false, __ATOMIC_RELEASE);
				}
			}
			struct pollfd sp = { .fd = a->stop_fd, .events = POLLIN };
			if (poll(&sp, 1, 0) > 0)
				break;
			continue;
		}
		/* wait for: shutdown, a kick, the renewal time, the end of the back-off */
		/* not due: the renewal time is ahead, or a back-off runs (then wait for its end
		 * even when the renewal time has passed), or nothing asked for a certificate yet */
		int64_t wait_ms = -1;
		if (have)
			wait_ms = MAX((int64_t)0, (renew_at_s - now_s) * 1000);
		if (!due_time && (have || kicked)) {
			int64_t b = (int64_t)(retry_at_ms - now_ms);
			wait_ms = MAX(wait_ms, b);
		}
		if (wait_ms > 0)
			wait_ms = MIN(wait_ms, (int64_t)60000); /* the wall clock may jump: look again each minute */
		struct pollfd p[2] = { { .fd = a->stop_fd, .events = POLLIN }, { .fd = a->kick_fd, .events = POLLIN } };
		int r = poll(p, 2, (int)wait_ms);
		if (r < 0 && errno != EINTR)
			break;
		if (r > 0 && (p[0].revents & POLLIN))
			break;
		if (r > 0 && (p[1].revents & POLLIN)) {
			drain(a->kick_fd);
			kicked = true;
		}
	}
	return NULL;
}

bool autocert_start(struct autocert *a, struct tls_server *tls)
{
	a->tls = tls;
	a->started = pthread_create(&a->tid, NULL, autocert_thread, a) == 0;
	return a->started;
}

void autocert_stop(struct autocert *a)
{
	if (a == NULL || !a->started)
		return;
	uint64_t one = 1;
	(void)!write(a->stop_fd, &one, sizeof one);
	pthread_join(a->tid, NULL);
	a->started = false;
}

void autocert_destroy(struct autocert *a)
{
	if (a == NULL)
		return;
	autocert_stop(a);
	acme_client_destroy(a->acme);
	EVP_PKEY_free(a->account_key);
	tls_cert_put(a->cached);
	if (a->stop_fd >= 0)
		close(a->stop_fd);
	if (a->kick_fd >= 0)
		close(a->kick_fd);
	pthread_mutex_destroy(&a->lock);
	OPENSSL_cleanse(a->challenges, sizeof a->challenges);
	free(a);
}
