/*
 * ktls.c - the kernel's TLS keys from a BoringSSL connection, and their installation.
 * The derivations, the traps and the results are described in ktls.h.
 */
#include "transport/ktls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/hkdf.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/ssl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport/tls13_secrets.h"
#include "transport/tls_internal.h"

#ifndef SOL_TLS
#define SOL_TLS 282 /* linux/socket.h; glibc has it in bits/socket.h since 2.27 */
#endif

/* The widest key and IV of the three AEADs, and TLS 1.3's longest hash (SHA-384). */
#define KEY_BYTES_MAX 32u
#define AEAD_NONCE_BYTES 12u /* every AEAD here uses a 96-bit nonce */
#define GCM_SALT_BYTES 4u    /* the implicit part of a GCM nonce */
#define TLS13_SECRET_BYTES_MAX 48u
/* "tls13 " + the longest label used here ("traffic upd"), RFC 8446 §7.1. */
#define HKDF_LABEL_PREFIX "tls13 "
#define HKDF_LABEL_TRAFFIC_UPDATE "traffic upd"
#define HKDF_INFO_BYTES_MAX (2u + 1u + sizeof HKDF_LABEL_PREFIX - 1u + sizeof HKDF_LABEL_TRAFFIC_UPDATE - 1u + 1u)
/* RFC 8446 §4: HandshakeType key_update, a 3-byte length, one byte of request_update. */
#define KEY_UPDATE_MSG_TYPE 24u
#define KEY_UPDATE_MSG_BYTES 5u
_Static_assert(KTLS_SECRET_BYTES_MAX == TLS13_SECRET_BYTES_MAX, "one secret size");

_Static_assert(TLS_CIPHER_AES_GCM_128_SALT_SIZE + TLS_CIPHER_AES_GCM_128_IV_SIZE == AEAD_NONCE_BYTES,
	       "a GCM nonce is the salt and the explicit part");
_Static_assert(TLS_CIPHER_CHACHA20_POLY1305_IV_SIZE == AEAD_NONCE_BYTES, "ChaCha20 takes the whole nonce");

static const char *const result_names[KTLS_RESULT_COUNT] = {
	[KTLS_OK] = "ok",
	[KTLS_NOT_ESTABLISHED] = "not_established",
	[KTLS_UNSUPPORTED_VERSION] = "unsupported_version",
	[KTLS_UNSUPPORTED_CIPHER] = "unsupported_cipher",
	[KTLS_TX_PENDING] = "tx_pending",
	[KTLS_RX_PARTIAL_RECORD] = "rx_partial_record",
	[KTLS_RX_PENDING] = "rx_pending",
	[KTLS_KEY_ERROR] = "key_error",
	[KTLS_NO_KERNEL_TLS] = "no_kernel_tls",
	[KTLS_ULP_REFUSED] = "ulp_refused",
	[KTLS_TX_REFUSED] = "tx_refused",
	[KTLS_RX_REFUSED] = "rx_refused",
};

const char *ktls_result_name(enum ktls_result r)
{
	ASSERT((unsigned)r < KTLS_RESULT_COUNT);
	return result_names[r];
}

/* What the kernel calls the negotiated AEAD, and its sizes. */
struct suite {
	uint16_t kernel_cipher;
	uint8_t key_bytes;
	uint8_t tls12_fixed_iv_bytes; /* the implicit IV of the TLS 1.2 key block */
};

static bool suite_of(const SSL_CIPHER *cipher, struct suite *s)
{
	switch (cipher ? SSL_CIPHER_get_cipher_nid(cipher) : NID_undef) {
	case NID_aes_128_gcm:
		*s = (struct suite){ TLS_CIPHER_AES_GCM_128, TLS_CIPHER_AES_GCM_128_KEY_SIZE, GCM_SALT_BYTES };
		return true;
	case NID_aes_256_gcm:
		*s = (struct suite){ TLS_CIPHER_AES_GCM_256, TLS_CIPHER_AES_GCM_256_KEY_SIZE, GCM_SALT_BYTES };
		return true;
	case NID_chacha20_poly1305:
		*s = (struct suite){ TLS_CIPHER_CHACHA20_POLY1305, TLS_CIPHER_CHACHA20_POLY1305_KEY_SIZE,
				     AEAD_NONCE_BYTES };
		return true;
	default:
		return false;
	}
}

/* One direction: the AEAD key, the fixed nonce part (TLS 1.2 GCM: 4 bytes; otherwise
 * 12) and the next record's sequence number. */
struct dir_key {
	uint8_t key[KEY_BYTES_MAX];
	uint8_t iv[AEAD_NONCE_BYTES];
	uint64_t seq;
};

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

static void fill(struct ktls_crypto *out, uint16_t version, const struct suite *s, const struct dir_key *k)
{
	uint8_t seq[8];
	put_be64(seq, k->seq);
	bool tls13 = version == TLS_1_3_VERSION;
	switch (s->kernel_cipher) {
	case TLS_CIPHER_AES_GCM_128: {
		struct tls12_crypto_info_aes_gcm_128 *g = &out->u.aes_gcm_128;
		g->info = (struct tls_crypto_info){ .version = version, .cipher_type = s->kernel_cipher };
		memcpy(g->key, k->key, sizeof g->key);
		memcpy(g->salt, k->iv, sizeof g->salt);
		/* TLS 1.3: the rest of the static IV. TLS 1.2: the first explicit nonce,
		 * which BoringSSL makes the sequence number and the kernel then counts up. */
		memcpy(g->iv, tls13 ? k->iv + sizeof g->salt : seq, sizeof g->iv);
		memcpy(g->rec_seq, seq, sizeof g->rec_seq);
		out->len = sizeof *g;
		break;
	}
	case TLS_CIPHER_AES_GCM_256: {
		struct tls12_crypto_info_aes_gcm_256 *g = &out->u.aes_gcm_256;
		g->info = (struct tls_crypto_info){ .version = version, .cipher_type = s->kernel_cipher };
		memcpy(g->key, k->key, sizeof g->key);
		memcpy(g->salt, k->iv, sizeof g->salt);
		memcpy(g->iv, tls13 ? k->iv + sizeof g->salt : seq, sizeof g->iv);
		memcpy(g->rec_seq, seq, sizeof g->rec_seq);
		out->len = sizeof *g;
		break;
	}
	case TLS_CIPHER_CHACHA20_POLY1305: {
		struct tls12_crypto_info_chacha20_poly1305 *g = &out->u.chacha20_poly1305;
		g->info = (struct tls_crypto_info){ .version = version, .cipher_type = s->kernel_cipher };
		memcpy(g->key, k->key, sizeof g->key);
		memcpy(g->iv, k->iv, sizeof g->iv); /* RFC 7905 and 8446 alike: nonce = iv ^ seq */
		memcpy(g->rec_seq, seq, sizeof g->rec_seq);
		out->len = sizeof *g;
		break;
	}
	default:
		ASSERT(!"suite_of returned an unknown cipher");
	}
}

/* TLS 1.2: client write key, server write key, client IV, server IV (RFC 5246 §6.3;
 * an AEAD suite has no MAC keys). */
static bool tls12_keys(SSL *ssl, const struct suite *s, struct dir_key *tx, struct dir_key *rx)
{
	uint8_t block[2 * (KEY_BYTES_MAX + AEAD_NONCE_BYTES)];
	size_t k = s->key_bytes, iv = s->tls12_fixed_iv_bytes;
	size_t want = 2 * (k + iv);
	if (SSL_get_key_block_len(ssl) != want || !SSL_generate_key_block(ssl, block, want))
		return false;
	memcpy(rx->key, block, k);
	memcpy(tx->key, block + k, k);
	memcpy(rx->iv, block + 2 * k, iv);
	memcpy(tx->iv, block + 2 * k + iv, iv);
	OPENSSL_cleanse(block, sizeof block);
	return true;
}

/* RFC 8446 §7.1 HKDF-Expand-Label(secret, label, "", out_len). */
static bool expand_label(uint8_t *out, size_t out_len, const EVP_MD *md, const uint8_t *secret,
			 size_t secret_len, const char *label)
{
	uint8_t info[HKDF_INFO_BYTES_MAX];
	size_t label_len = strlen(label), prefix_len = sizeof HKDF_LABEL_PREFIX - 1, n = 0;
	ASSERT(3 + prefix_len + label_len + 1 <= sizeof info);
	info[n++] = (uint8_t)(out_len >> 8);
	info[n++] = (uint8_t)out_len;
	info[n++] = (uint8_t)(prefix_len + label_len);
	memcpy(info + n, HKDF_LABEL_PREFIX, prefix_len);
	n += prefix_len;
	memcpy(info + n, label, label_len);
	n += label_len;
	info[n++] = 0; /* empty context */
	return HKDF_expand(out, out_len, md, secret, secret_len, info, n) == 1;
}

static bool tls13_keys(SSL *ssl, const SSL_CIPHER *cipher, const struct suite *s, struct dir_key *tx,
		       struct dir_key *rx)
{
	uint8_t rd[TLS13_SECRET_BYTES_MAX], wr[TLS13_SECRET_BYTES_MAX];
	const EVP_MD *md = EVP_get_digestbynid(SSL_CIPHER_get_prf_nid(cipher));
	size_t len = tls13_traffic_secrets(ssl, rd, wr, sizeof rd);
	bool ok = md != NULL && len == EVP_MD_size(md) &&
		  expand_label(tx->key, s->key_bytes, md, wr, len, "key") &&
		  expand_label(tx->iv, AEAD_NONCE_BYTES, md, wr, len, "iv") &&
		  expand_label(rx->key, s->key_bytes, md, rd, len, "key") &&
		  expand_label(rx->iv, AEAD_NONCE_BYTES, md, rd, len, "iv");
	OPENSSL_cleanse(rd, sizeof rd);
	OPENSSL_cleanse(wr, sizeof wr);
	return ok;
}

enum ktls_result ktls_export(struct tls_conn *c, struct ktls_keys *out)
{
	memset(out, 0, sizeof *out);
	if (!tls_conn_established(c))
		return KTLS_NOT_ESTABLISHED;
	SSL *ssl = tls_conn_ssl(c);
	int version = SSL_version(ssl);
	if (version != TLS1_2_VERSION && version != TLS1_3_VERSION)
		return KTLS_UNSUPPORTED_VERSION;
	const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
	struct suite s;
	if (!suite_of(cipher, &s))
		return KTLS_UNSUPPORTED_CIPHER;

	/* Trap 1: records BoringSSL owes the peer (tickets, a KeyUpdate answer) must be
	 * sealed now, counted in the write sequence, and on the wire before the kernel's. */
	tls_conn_flush(c);
	if (!tls_conn_established(c))
		return KTLS_NOT_ESTABLISHED;
	if (tls_conn_out_pending(c) > 0)
		return KTLS_TX_PENDING;
	/* Trap 2: what was received must end on a record boundary, all of it decrypted. */
	if (!tls_conn_rx_drained(c) || SSL_pending(ssl) > 0)
		return KTLS_RX_PENDING;
	if (tls_conn_rx_record_remaining(c) > 0)
		return KTLS_RX_PARTIAL_RECORD;

	struct dir_key tx = { .seq = SSL_get_write_sequence(ssl) }, rx = { .seq = SSL_get_read_sequence(ssl) };
	bool ok = version == TLS1_2_VERSION ? tls12_keys(ssl, &s, &tx, &rx) : tls13_keys(ssl, cipher, &s, &tx, &rx);
	ERR_clear_error();
	if (ok) {
		uint16_t v = version == TLS1_2_VERSION ? TLS_1_2_VERSION : TLS_1_3_VERSION;
		fill(&out->tx, v, &s, &tx);
		fill(&out->rx, v, &s, &rx);
	}
	OPENSSL_cleanse(&tx, sizeof tx);
	OPENSSL_cleanse(&rx, sizeof rx);
	return ok ? KTLS_OK : KTLS_KEY_ERROR;
}

enum ktls_result ktls_install(int fd, const struct ktls_keys *k, int *err)
{
	static const char ulp[] = "tls";
	*err = 0;
	if (setsockopt(fd, SOL_TCP, TCP_ULP, ulp, sizeof ulp) != 0) {
		*err = errno;
		return errno == ENOENT ? KTLS_NO_KERNEL_TLS : KTLS_ULP_REFUSED;
	}
	/* TX first: until TLS_TX succeeds the socket still passes bytes through
	 * untouched, so a refusal leaves plain user-space TLS working. */
	if (setsockopt(fd, SOL_TLS, TLS_TX, &k->tx.u, k->tx.len) != 0) {
		*err = errno;
		return KTLS_TX_REFUSED;
	}
	if (setsockopt(fd, SOL_TLS, TLS_RX, &k->rx.u, k->rx.len) != 0) {
		*err = errno;
		return KTLS_RX_REFUSED;
	}
	return KTLS_OK;
}

enum ktls_result ktls_probe(int *err)
{
	static const char ulp[] = "tls";
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof a;
	int ls = -1, cs = -1, as = -1;
	enum ktls_result r = KTLS_ULP_REFUSED;
	*err = 0;
	ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1) != 0 ||
	    getsockname(ls, (struct sockaddr *)&a, &alen) != 0)
		goto out;
	cs = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	/* A loopback connect completes from the listen backlog, without an accept. */
	if (cs < 0 || connect(cs, (struct sockaddr *)&a, sizeof a) != 0)
		goto out;
	as = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
	if (as < 0)
		goto out;
	if (setsockopt(as, SOL_TCP, TCP_ULP, ulp, sizeof ulp) == 0)
		r = KTLS_OK;
	else
		r = errno == ENOENT ? KTLS_NO_KERNEL_TLS : KTLS_ULP_REFUSED;
out:
	if (r != KTLS_OK)
		*err = errno;
	if (as >= 0)
		close(as);
	if (cs >= 0)
		close(cs);
	if (ls >= 0)
		close(ls);
	return r;
}

void ktls_keys_wipe(struct ktls_keys *k)
{
	OPENSSL_cleanse(k, sizeof *k);
}

_Static_assert(CMSG_SPACE(sizeof(uint8_t)) <= KTLS_CMSG_BYTES, "the record type's control buffer");

uint8_t ktls_record_type(const void *control, size_t controllen)
{
	/* Walked by hand, not with CMSG_FIRSTHDR/CMSG_NXTHDR: those trust the first
	 * header's length. Bounded: each step moves forward within controllen. */
	const uint8_t *c = control;
	size_t off = 0;
	while (controllen - off >= sizeof(struct cmsghdr)) {
		struct cmsghdr h;
		memcpy(&h, c + off, sizeof h);
		if (h.cmsg_len < sizeof h || h.cmsg_len > controllen - off)
			break; /* not a message the kernel would write: no type in it */
		if (h.cmsg_level == SOL_TLS && h.cmsg_type == TLS_GET_RECORD_TYPE && h.cmsg_len >= CMSG_LEN(sizeof(uint8_t)))
			return c[off + CMSG_LEN(0)];
		size_t step = CMSG_ALIGN(h.cmsg_len);
		if (step > controllen - off)
			break;
		off += step;
	}
	return KTLS_RECORD_APPLICATION_DATA;
}

/* One record of the given type on a socket with TLS_TX, without blocking: true when
 * the kernel took all of it. */
static bool send_record(int fd, uint8_t type, const uint8_t *p, size_t n)
{
	union {
		char buf[CMSG_SPACE(sizeof(uint8_t))];
		struct cmsghdr align;
	} ctl;
	memset(&ctl, 0, sizeof ctl);
	struct iovec iov = { .iov_base = (void *)p, .iov_len = n };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	cm->cmsg_level = SOL_TLS;
	cm->cmsg_type = TLS_SET_RECORD_TYPE;
	cm->cmsg_len = CMSG_LEN(sizeof(uint8_t));
	*(uint8_t *)CMSG_DATA(cm) = type;
	return sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n;
}

bool ktls_send_alert(int fd, uint8_t level, uint8_t description)
{
	const uint8_t alert[2] = { level, description };
	return send_record(fd, KTLS_RECORD_ALERT, alert, sizeof alert);
}

bool ktls_export_secrets(struct tls_conn *c, struct ktls_secrets *out)
{
	memset(out, 0, sizeof *out);
	SSL *ssl = tls_conn_ssl(c);
	if (!tls_conn_established(c) || SSL_version(ssl) != TLS1_3_VERSION)
		return false;
	const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
	struct suite st;
	const EVP_MD *md = cipher ? EVP_get_digestbynid(SSL_CIPHER_get_prf_nid(cipher)) : NULL;
	if (md == NULL || !suite_of(cipher, &st))
		return false;
	size_t len = tls13_traffic_secrets(ssl, out->rx, out->tx, sizeof out->rx);
	if (len == 0 || len != EVP_MD_size(md)) {
		ktls_secrets_wipe(out);
		return false;
	}
	out->len = (uint8_t)len;
	out->key_bytes = st.key_bytes;
	out->kernel_cipher = st.kernel_cipher;
	out->prf_nid = SSL_CIPHER_get_prf_nid(cipher);
	return true;
}

bool ktls_next_generation(struct ktls_secrets *s, bool tx, struct ktls_crypto *out)
{
	memset(out, 0, sizeof *out);
	const EVP_MD *md = EVP_get_digestbynid(s->prf_nid);
	uint8_t *secret = tx ? s->tx : s->rx;
	uint8_t next[KTLS_SECRET_BYTES_MAX];
	struct suite st = { .kernel_cipher = s->kernel_cipher, .key_bytes = s->key_bytes };
	struct dir_key k = { .seq = 0 };
	bool ok = md != NULL && s->len != 0 && s->len <= sizeof next &&
		  expand_label(next, s->len, md, secret, s->len, HKDF_LABEL_TRAFFIC_UPDATE) &&
		  expand_label(k.key, s->key_bytes, md, next, s->len, "key") &&
		  expand_label(k.iv, AEAD_NONCE_BYTES, md, next, s->len, "iv");
	ERR_clear_error();
	if (ok) {
		memcpy(secret, next, s->len);
		fill(out, TLS_1_3_VERSION, &st, &k);
	}
	OPENSSL_cleanse(next, sizeof next);
	OPENSSL_cleanse(&k, sizeof k);
	return ok;
}

enum ktls_result ktls_rekey(int fd, struct ktls_secrets *s, bool tx, int *err)
{
	*err = 0;
	struct ktls_crypto ci;
	if (!ktls_next_generation(s, tx, &ci))
		return KTLS_KEY_ERROR;
	int rc = setsockopt(fd, SOL_TLS, tx ? TLS_TX : TLS_RX, &ci.u, ci.len);
	if (rc != 0)
		*err = errno;
	OPENSSL_cleanse(&ci, sizeof ci);
	if (rc != 0)
		return tx ? KTLS_TX_REFUSED : KTLS_RX_REFUSED;
	return KTLS_OK;
}

int ktls_key_update_request(const uint8_t *p, size_t len)
{
	if (len != KEY_UPDATE_MSG_BYTES || p[0] != KEY_UPDATE_MSG_TYPE || p[1] != 0 || p[2] != 0 || p[3] != 1 ||
	    p[4] > 1)
		return -1;
	return p[4];
}

bool ktls_send_key_update(int fd)
{
	const uint8_t msg[KEY_UPDATE_MSG_BYTES] = { KEY_UPDATE_MSG_TYPE, 0, 0, 1, 0 };
	return send_record(fd, KTLS_RECORD_HANDSHAKE, msg, sizeof msg);
}

void ktls_secrets_wipe(struct ktls_secrets *s)
{
	OPENSSL_cleanse(s, sizeof *s);
}
