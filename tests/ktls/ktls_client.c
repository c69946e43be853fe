// ktls_client: drive the relay's kTLS hand-over (src/engine/ktls_phase.c) through the
// cases a real client can produce, for the test VM (tests/ktls/relay.sh): two GET
// /healthz on one keep-alive TLS connection, with the bytes of the first request placed
// against the handshake's end as the case asks.
//
//   --first separate   the client's last handshake flight, then the request, each in
//                      its own write (the ordinary case)
//   --first coalesce   the last flight and the whole first request record in ONE write:
//                      the relay receives application data with the Finished and must
//                      decrypt it in user space before it installs the kernel's keys
//   --first split      one write of the last flight and the first request record minus
//                      its last SPLIT_TAIL_BYTES, then the rest 300 ms later: the relay
//                      holds part of a record and must receive exactly its rest before
//                      the kernel can take over
//   --key-update closed|answered
//                      after the first answer, a KeyUpdate (update_requested) and the
//                      second request. closed: the relay must close the connection
//                      (EOF, close_notify or reset) without answering: kTLS, whose keys
//                      cannot follow here; answered: it answers (user-space TLS)
//   --tls12 / --tls13  the protocol version (default: either)
//   --proxy-v2         a PROXY protocol v2 header (TCP over IPv4 from PROXY_V2_SOURCE)
//                      in the same write as the ClientHello, for a relay with
//                      --https-proxy-protocol (src/engine/proxy_phase.c)
//
// Every answer must be "HTTP/1.1 200" with the body its Content-Length announces.
// Exit 0 when the case behaved, 1 otherwise (the reason on stderr).
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/mem.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define SPLIT_TAIL_BYTES 7
/* --proxy-v2: 127.0.0.77:4077 -> 127.0.0.1:443, command PROXY, TCP over IPv4 */
#define PROXY_V2_SOURCE "127.0.0.77"
static const uint8_t proxy_v2_header[28] = {
	0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x0C,
	127,  0,    0,    77,   127,  0,    0,    1,    0x0F, 0xED, 0x01, 0xBB,
};
#define SPLIT_PAUSE_US 300000
#define IO_TIMEOUT_S 10
#define ANSWER_BYTES_MAX 8192
#define FLIGHT_BYTES_MAX 65536

static const char request[] = "GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n";

static int fail(const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[160] = "";
	if (e)
		ERR_error_string_n(e, buf, sizeof buf);
	fprintf(stderr, "ktls_client: %s%s%s (errno %s)\n", what, e ? ": " : "", buf, strerror(errno));
	return 1;
}

static bool write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t k = write(fd, p, n);
		if (k <= 0)
			return false;
		p += k;
		n -= (size_t)k;
	}
	return true;
}

/* Take what BoringSSL wrote into the memory BIO. */
static size_t take(BIO *wb, uint8_t *buf, size_t cap)
{
	size_t n = 0;
	while (n < cap) {
		int k = BIO_read(wb, buf + n, (int)(cap - n));
		if (k <= 0)
			break;
		n += (size_t)k;
	}
	return n;
}

static bool flush(BIO *wb, int fd)
{
	uint8_t buf[FLIGHT_BYTES_MAX];
	size_t n = take(wb, buf, sizeof buf);
	return write_all(fd, buf, n);
}

/* Move what the socket has into the read BIO (blocking, bounded by IO_TIMEOUT_S).
 * False at EOF, reset or timeout. */
static bool pump(int fd, BIO *rb)
{
	uint8_t buf[FLIGHT_BYTES_MAX];
	ssize_t k = read(fd, buf, sizeof buf);
	return k > 0 && BIO_write(rb, buf, (int)k) == (int)k;
}

/* SSL_read with the socket behind a memory BIO: <= 0 when the connection ended. */
static int ssl_read(SSL *ssl, int fd, BIO *rb, char *out, int cap)
{
	for (;;) {
		int k = SSL_read(ssl, out, cap);
		if (k > 0)
			return k;
		if (SSL_get_error(ssl, k) != SSL_ERROR_WANT_READ || !pump(fd, rb))
			return 0;
	}
}

/* One HTTP answer: its head and the body its Content-Length announces. 1 = a 200,
 * 0 = the connection ended before any byte, -1 = anything else. */
static int read_answer(SSL *ssl, int fd, BIO *rb)
{
	char buf[ANSWER_BYTES_MAX + 1];
	size_t n = 0;
	for (;;) {
		int k = ssl_read(ssl, fd, rb, buf + n, (int)(ANSWER_BYTES_MAX - n));
		if (k <= 0) {
			ERR_clear_error();
			return n == 0 ? 0 : -1;
		}
		n += (size_t)k;
		buf[n] = '\0';
		char *end = strstr(buf, "\r\n\r\n");
		if (end == NULL) {
			if (n == ANSWER_BYTES_MAX)
				return -1;
			continue;
		}
		char *cl = strcasestr(buf, "\r\nContent-Length:");
		size_t want = (size_t)(end + 4 - buf) + (cl ? strtoul(cl + 17, NULL, 10) : 0);
		if (want > ANSWER_BYTES_MAX)
			return -1;
		if (n < want)
			continue;
		return strncmp(buf, "HTTP/1.1 200", 12) == 0 && n == want ? 1 : -1;
	}
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1", *ca = NULL, *first = "separate";
	int port = 0, version = 0;
	bool key_update = false, ku_closed = false, proxy_v2 = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--port") && i + 1 < argc)
			port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--host") && i + 1 < argc)
			host = argv[++i];
		else if (!strcmp(argv[i], "--ca") && i + 1 < argc)
			ca = argv[++i];
		else if (!strcmp(argv[i], "--first") && i + 1 < argc)
			first = argv[++i];
		else if (!strcmp(argv[i], "--tls12"))
			version = TLS1_2_VERSION;
		else if (!strcmp(argv[i], "--tls13"))
			version = TLS1_3_VERSION;
		else if (!strcmp(argv[i], "--proxy-v2"))
			proxy_v2 = true;
		else if (!strcmp(argv[i], "--key-update") && i + 1 < argc) {
			key_update = true;
			ku_closed = !strcmp(argv[++i], "closed");
			if (!ku_closed && strcmp(argv[i], "answered"))
				return fail("--key-update takes closed or answered");
		}
		else {
			fprintf(stderr, "usage: ktls_client --port N --ca FILE [--host IP] [--first separate|coalesce|split] [--tls12|--tls13] [--key-update closed|answered] [--proxy-v2]\n");
			return 2;
		}
	}
	if (port <= 0 || ca == NULL || (strcmp(first, "separate") && strcmp(first, "coalesce") && strcmp(first, "split")))
		return fail("bad arguments (see the usage)");

	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL || !SSL_CTX_load_verify_locations(ctx, ca, NULL))
		return fail("CA file");
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_min_proto_version(ctx, version ? version : TLS1_2_VERSION);
	SSL_CTX_set_max_proto_version(ctx, version ? version : TLS1_3_VERSION);

	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	inet_pton(AF_INET, host, &a.sin_addr);
	struct timeval tv = { .tv_sec = IO_TIMEOUT_S };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
		return fail("connect");

	/* Both directions through memory, so this program decides where each write's
	 * bytes end. */
	SSL *ssl = SSL_new(ctx);
	BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
	BIO_set_mem_eof_return(rb, -1);
	SSL_set_bio(ssl, rb, wb);
	SSL_set_connect_state(ssl);
	for (;;) {
		int rc = SSL_do_handshake(ssl);
		if (rc == 1)
			break;
		if (SSL_get_error(ssl, rc) != SSL_ERROR_WANT_READ)
			return fail("handshake");
		if (proxy_v2) { /* the header and the ClientHello in one write */
			uint8_t hello[sizeof proxy_v2_header + FLIGHT_BYTES_MAX];
			memcpy(hello, proxy_v2_header, sizeof proxy_v2_header);
			size_t k = take(wb, hello + sizeof proxy_v2_header, FLIGHT_BYTES_MAX);
			proxy_v2 = false;
			if (!write_all(fd, hello, sizeof proxy_v2_header + k))
				return fail("write");
		}
		if (!flush(wb, fd))
			return fail("write");
		if (!pump(fd, rb))
			return fail("handshake: the connection ended");
	}
	/* The last flight is still in wb: the first request joins it or follows it. */
	if (!strcmp(first, "separate") && !flush(wb, fd))
		return fail("write");
	if (SSL_write(ssl, request, (int)strlen(request)) != (int)strlen(request))
		return fail("SSL_write");
	uint8_t out[FLIGHT_BYTES_MAX];
	size_t n = take(wb, out, sizeof out);
	if (!strcmp(first, "split")) {
		if (n <= SPLIT_TAIL_BYTES || !write_all(fd, out, n - SPLIT_TAIL_BYTES))
			return fail("write");
		usleep(SPLIT_PAUSE_US);
		if (!write_all(fd, out + n - SPLIT_TAIL_BYTES, SPLIT_TAIL_BYTES))
			return fail("write");
	} else if (!write_all(fd, out, n)) {
		return fail("write");
	}
	if (read_answer(ssl, fd, rb) != 1)
		return fail("first answer is not a whole 200");

	if (key_update && !SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED))
		return fail("SSL_key_update");
	if (SSL_write(ssl, request, (int)strlen(request)) != (int)strlen(request) || !flush(wb, fd))
		return fail("second request");
	int second = read_answer(ssl, fd, rb);
	if (key_update && ku_closed) {
		if (second != 0)
			return fail("the relay answered after a KeyUpdate it cannot follow");
	} else if (second != 1) {
		return fail("second answer is not a whole 200");
	}
	printf("ktls_client: ok (%s %s, first=%s%s)\n", SSL_get_version(ssl), SSL_get_cipher_name(ssl), first, !key_update ? "" : ku_closed ? ", key update: closed" : ", key update: answered");
	SSL_free(ssl);
	close(fd);
	SSL_CTX_free(ctx);
	return 0;
}
