/*
 * ktls.h - hand an established TLS connection's keys to the kernel (kTLS).
 *
 * After the handshake (transport/tls.h) the record protection can move into the
 * kernel: setsockopt(SOL_TCP, TCP_ULP, "tls"), then SOL_TLS TLS_TX and TLS_RX with the
 * key, IV, salt and record sequence number of each direction. From then on the socket
 * carries plaintext for the relay (sends are encrypted by the kernel, receives are
 * decrypted), and the BoringSSL connection is no longer used for records.
 *
 * Two steps, so the key derivation can be proven without kernel support (the unit
 * tests decrypt and re-encrypt recorded records with exactly what ktls_export gives):
 *   ktls_export   the server's TX and RX crypto_info from a tls_conn. Pure apart from
 *                 flushing what BoringSSL queued for "the next write".
 *   ktls_install  the three setsockopt calls on the connection's socket.
 *
 * Ciphers: AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305 (everything tls.c
 * negotiates), TLS 1.2 and 1.3.
 *   TLS 1.2: the key block (SSL_generate_key_block: client key, server key, client IV,
 *            server IV; no MAC keys with an AEAD). GCM: salt = the 4-byte implicit IV,
 *            iv = the 8-byte explicit nonce, which BoringSSL sets to the record
 *            sequence number (so iv = rec_seq, and the kernel's records match
 *            BoringSSL's byte for byte). ChaCha20: iv = the 12-byte implicit IV.
 *   TLS 1.3: the traffic secrets (tls13_secrets.h), then HKDF-Expand-Label(secret,
 *            "key"/"iv", "", len) with the suite's hash. GCM: salt = iv[0..4),
 *            iv = iv[4..12); ChaCha20: iv = all 12 bytes.
 *   rec_seq: SSL_get_write_sequence / SSL_get_read_sequence, big-endian.
 *
 * Traps, and what ktls_export does about them (each has a test):
 *   - TLS 1.3 session tickets are sealed when BoringSSL next writes, which moves the
 *     write sequence. tls.c flushes them when the handshake completes, and
 *     ktls_export flushes again (a KeyUpdate answer waits the same way); if any
 *     ciphertext is then waiting in the connection's output, it returns
 *     KTLS_TX_PENDING: take it, send it, and export again. The sequence number then
 *     counts every record user space produced, and nothing user space sealed can
 *     follow kernel records.
 *   - Bytes received after the client's Finished are already out of the socket: the
 *     kernel will never see them. Whole records among them are decrypted in user
 *     space by tls_conn_input (the plaintext goes to the phases as usual) and counted
 *     in the read sequence. A record cut short would be half in user space and half
 *     in the socket: ktls_export returns KTLS_RX_PARTIAL_RECORD, and the owner
 *     receives exactly tls_conn_rx_record_remaining() more bytes, feeds them, and
 *     exports again. Plaintext not yet handed out (the last tls_conn_input returned
 *     TLS_AGAIN) gives KTLS_RX_PENDING.
 *   - For the engine (engine/ktls_phase.c): after TLS_RX, recvmsg needs a control
 *     buffer (a record that is not application data - an alert, a KeyUpdate - arrives
 *     with its type in a cmsg, or recv fails with EIO; ktls_record_type reads it),
 *     MSG_WAITALL is refused, and the kernel takes new keys after a KeyUpdate only from
 *     6.14 on; this build closes such a connection on every kernel (ADR 12). After
 *     TLS_TX, send_zc is not supported on the socket, and a record that is not
 *     application data (our close_notify) is sent with ktls_send_alert.
 *
 * Ownership: struct ktls_keys is key material on the caller's stack or memory; wipe
 * it (ktls_keys_wipe) once installed or abandoned.
 */
#ifndef PYRELAY_TRANSPORT_KTLS_H
#define PYRELAY_TRANSPORT_KTLS_H

#include <linux/tls.h>

#include "core/common.h"
#include "transport/tls.h"

/* One direction's crypto_info, exactly what setsockopt(SOL_TLS, TLS_TX or TLS_RX)
 * takes: pass &u and len. */
struct ktls_crypto {
	union {
		struct tls_crypto_info info;
		struct tls12_crypto_info_aes_gcm_128 aes_gcm_128;
		struct tls12_crypto_info_aes_gcm_256 aes_gcm_256;
		struct tls12_crypto_info_chacha20_poly1305 chacha20_poly1305;
	} u;
	uint32_t len; /* size of the member in use */
};

struct ktls_keys {
	struct ktls_crypto tx; /* what we send: the server's write key */
	struct ktls_crypto rx; /* what we receive: the client's write key */
};

enum ktls_result {
	KTLS_OK = 0,
	/* ktls_export */
	KTLS_NOT_ESTABLISHED,    /* no completed handshake, or the connection failed */
	KTLS_UNSUPPORTED_VERSION,
	KTLS_UNSUPPORTED_CIPHER,
	KTLS_TX_PENDING,         /* ciphertext waits in the output: take and send it, export again */
	KTLS_RX_PARTIAL_RECORD,  /* receive exactly tls_conn_rx_record_remaining() bytes, feed, again */
	KTLS_RX_PENDING,         /* the last tls_conn_input returned TLS_AGAIN: finish it first */
	KTLS_KEY_ERROR,          /* BoringSSL gave no key material */
	/* ktls_install */
	KTLS_NO_KERNEL_TLS,      /* TCP_ULP "tls" failed with ENOENT: no tls module; nothing changed */
	KTLS_ULP_REFUSED,        /* TCP_ULP failed otherwise (not a connected TCP socket, ...) */
	KTLS_TX_REFUSED,         /* TLS_TX failed: the ULP is attached, no keys: the socket is plain,
				  * user-space TLS continues */
	KTLS_RX_REFUSED,         /* TLS_TX is installed, TLS_RX failed: sends are the kernel's,
				  * receives stay in user space (tls_conn_input); never tls_conn_write */
	KTLS_RESULT_COUNT
};

/* A short stable name ("no_kernel_tls", ...), for metric labels and logs. */
const char *ktls_result_name(enum ktls_result r);

/* Export the server's kernel keys of c into *out (see the traps above). On any result
 * but KTLS_OK, *out is zeroed. */
enum ktls_result ktls_export(struct tls_conn *c, struct ktls_keys *out);

/* Attach the kernel's TLS to the connected TCP socket fd and install both directions.
 * *err is the errno of the step that failed (0 on KTLS_OK). */
enum ktls_result ktls_install(int fd, const struct ktls_keys *k, int *err);

/* Whether this kernel can take TLS at all: attaches the ULP to a throwaway loopback
 * TCP connection. KTLS_OK, KTLS_NO_KERNEL_TLS, or KTLS_ULP_REFUSED (*err says why, e.g.
 * no loopback). For start-up, to count and log the fallback once rather than per
 * connection. */
enum ktls_result ktls_probe(int *err);

void ktls_keys_wipe(struct ktls_keys *k);

/*
 * TLS 1.3 KeyUpdate (RFC 8446 §4.6.3, §7.2) once the kernel holds the keys. A peer's
 * KeyUpdate arrives as a handshake record; the kernel then refuses to decrypt
 * (EKEYEXPIRED) until it gets the next receive key, which kernels from 6.14 accept with
 * a second TLS_RX (older ones: EBUSY, so the connection must end). With update_requested
 * we answer with our own KeyUpdate under the current send key, then install the next
 * send key. The next secret is HKDF-Expand-Label(secret, "traffic upd", "", Hash.length);
 * keys and IVs come from it as at the start, sequence numbers restart at 0.
 */
#define KTLS_SECRET_BYTES_MAX 48u /* SHA-384 */
struct ktls_secrets {
	uint8_t rx[KTLS_SECRET_BYTES_MAX]; /* the client's application traffic secret, generation N */
	uint8_t tx[KTLS_SECRET_BYTES_MAX]; /* the server's */
	uint8_t len;                        /* the hash's size: 32 or 48 */
	uint8_t key_bytes;
	uint16_t kernel_cipher;             /* TLS_CIPHER_* */
	int prf_nid;                        /* the suite's hash (a BoringSSL NID) */
};

/* The current traffic secrets of an established TLS 1.3 connection (call right after a
 * KTLS_OK ktls_export, before freeing c). False for TLS 1.2 (no KeyUpdate there) or
 * when BoringSSL gives none. Wipe with ktls_secrets_wipe. */
bool ktls_export_secrets(struct tls_conn *c, struct ktls_secrets *out);
/* Move one direction's secret to its next generation and give that generation's
 * crypto_info (sequence 0) in *out. False (nothing changed) when BoringSSL refuses. */
bool ktls_next_generation(struct ktls_secrets *s, bool tx, struct ktls_crypto *out);
/* Move one direction to its next generation and install it (TLS_RX or TLS_TX on fd).
 * KTLS_OK, or KTLS_RX_REFUSED / KTLS_TX_REFUSED with *err (EBUSY: this kernel cannot
 * rekey), or KTLS_KEY_ERROR. */
enum ktls_result ktls_rekey(int fd, struct ktls_secrets *s, bool tx, int *err);
/* A KeyUpdate message (RFC 8446 §4.6.3) of len bytes: -1 if it is not one, else its
 * request_update (0 or 1). Pure. */
int ktls_key_update_request(const uint8_t *p, size_t len);
/* Send our KeyUpdate(update_not_requested) as a handshake record, without blocking.
 * True when the kernel took it whole. */
bool ktls_send_key_update(int fd);
void ktls_secrets_wipe(struct ktls_secrets *s);

/* TLS record content types (RFC 8446 §5.1) as kTLS reports them, and alerts (§6). */
#define KTLS_RECORD_ALERT 21u
#define KTLS_RECORD_HANDSHAKE 22u
#define KTLS_RECORD_APPLICATION_DATA 23u
#define KTLS_ALERT_LEVEL_WARNING 1u
#define KTLS_ALERT_CLOSE_NOTIFY 0u
/* The control buffer a kTLS receive needs for the record type (CMSG_SPACE of one byte). */
#define KTLS_CMSG_BYTES 24u

/* The record type in the control messages of a kTLS recvmsg (msg_control of msgh, the
 * length the kernel wrote in controllen), or KTLS_RECORD_APPLICATION_DATA when there is
 * none (the kernel adds it for every record when asked; a missing one is data). Pure;
 * reads nothing past controllen: a header longer than what is left ends the walk. */
uint8_t ktls_record_type(const void *control, size_t controllen);

/* Send an alert record (level, description) on a socket with TLS_TX installed, without
 * blocking. True when the kernel took it whole (our close_notify before the FIN). */
bool ktls_send_alert(int fd, uint8_t level, uint8_t description);

#endif
