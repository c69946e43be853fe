/*
 * loadgen - a load generator for pyrycode-relay (and tools/rawfwd) on io_uring.
 *
 * B binaries claim server-ids on /v1/server, P phones per binary join them on
 * /v1/client; phones send JSON frames, binaries echo the relay's envelopes back, and
 * phones check every returned byte and time the round trip. See README.md here.
 *
 * This file: the command line, splitting the server-ids over --threads loops (one
 * thread and one ring each), the progress line, and the report, which merges the
 * loops' counters and histograms after they have all stopped.
 *
 * Exit status: 0 when every connection was ready and no error, loss, reordering or
 * corruption was seen; 1 otherwise; 2 for bad usage (or too few file descriptors).
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine/uring.h"
#include "lg.h"
#include "rawproto.h"

#define EXIT_USAGE 2
#define FD_HEADROOM 64u

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: loadgen [flags]\n"
		"\n"
		"Connects B binaries (/v1/server) and P phones per binary (/v1/client) to a\n"
		"pyrycode relay, sends JSON frames from every phone, echoes them back from the\n"
		"binaries, checks every returned byte and times each round trip\n"
		"(phone -> relay -> binary -> relay -> phone). With --raw it speaks the raw\n"
		"protocol of tools/rawfwd instead (same traffic, no WebSocket).\n"
		"\n"
		"Progress goes to stderr once a second, a summary to stderr at the end, and one\n"
		"JSON object on one line to stdout. Exit status 0 when every connection came up\n"
		"and errors = lost = reordered = corrupted = 0; 1 otherwise; 2 for bad usage.\n"
		"\n"
		"Target:\n"
		"  --url URL               ws://HOST:PORT, wss://HOST:PORT, or tcp://HOST:PORT with\n"
		"                          --raw (default ws://127.0.0.1:8080)\n"
		"  --raw                   speak rawfwd's protocol (tcp:// URLs imply it)\n"
		"  --insecure              wss: do not verify the server certificate\n"
		"  --ca FILE               wss: trust the CA certificates in FILE (PEM) instead\n"
		"                          of /etc/ssl/certs/ca-certificates.crt\n"
		"  --tls-version 1.2|1.3   wss: offer only this TLS version (default: both)\n"
		"  --tls-cipher NAME       wss, TLS 1.2: offer only this cipher suite\n"
		"                          (BoringSSL's name, e.g. ECDHE-ECDSA-AES128-GCM-SHA256\n"
		"                          or ECDHE-RSA-CHACHA20-POLY1305); TLS 1.3's suite is\n"
		"                          the library's choice\n"
		"\n"
		"Shape:\n"
		"  --binaries N            binaries (server-ids), default 1\n"
		"  --phones N              phones per binary, default 1 (the relay allows 16)\n"
		"  --server-prefix STR     server-id prefix; ids are STR<n> (default lg-<pid>-)\n"
		"  --src-ips N             bind connections round-robin to 127.0.0.1..127.0.0.N,\n"
		"                          so the ephemeral port range is per address\n"
		"                          (default 0: the kernel picks the source)\n"
		"  --connect-concurrency N handshakes in flight at once (over all threads),\n"
		"                          default %u\n"
		"\n"
		"Generator:\n"
		"  --threads N             N generator threads, 1..%u, default 1. Each has its own\n"
		"                          io_uring ring and whole server-ids (a binary with all\n"
		"                          its phones), split as evenly as they divide, so N can\n"
		"                          be at most --binaries; --rate and --connect-concurrency\n"
		"                          are split between them, --window is per phone as\n"
		"                          always. Results are merged (counts summed, histograms\n"
		"                          bucket by bucket): the output is the same as with one.\n"
		"\n"
		"Traffic:\n"
		"  --mode closed|open|idle closed: every phone keeps --window frames in flight\n"
		"                          (capacity); open: --rate frames/s in total at fixed\n"
		"                          intended send times, latency counted from the intended\n"
		"                          time (no coordinated omission); idle: connect, one\n"
		"                          probe round trip per phone, then hold with no traffic\n"
		"                          (pings are answered in every mode). Default closed.\n"
		"  --mode handshakes       connection churn: --binaries connections at a time,\n"
		"                          each connects, completes TLS (wss) and a /v1/server\n"
		"                          upgrade with a server-id of its own, closes (1000,\n"
		"                          echoed) and starts over; reports upgrades per second\n"
		"                          and their latency (connect -> 101). No phones.\n"
		"  --count N               handshakes mode: start at most N connections in the\n"
		"                          whole run (warm-up included); the window then ends\n"
		"                          when the last has ended. Default: no limit\n"
		"  --window W              closed loop: frames in flight per phone, default 1\n"
		"  --rate R                open loop: frames per second over all phones\n"
		"  --size BYTES            phone frame size in bytes, %u..%u, default 64\n"
		"\n"
		"Time (seconds, decimals allowed, optional 's' suffix):\n"
		"  --warmup S              traffic before measuring, default 1\n"
		"  --duration S            measurement window, default 10\n"
		"  --connect-timeout S     limit for connecting everything, default 30\n"
		"  --drain S               after the window, wait this long for frames in flight;\n"
		"                          the ones still missing are lost. Default 2\n"
		"\n"
		"Output:\n"
		"  --quiet                 no progress lines (errors and the summary still print)\n"
		"  -h, --help              this text\n"
		"\n"
		"Against pyrycode-relay, start the relay with --rate-limit-burst 0 (its per-IP\n"
		"upgrade limiter allows 20 attempts per address) and a --max-connections above\n"
		"the connection count.\n",
		LG_CONNECT_CONCURRENCY_DEFAULT, LG_THREADS_MAX, LG_SIZE_BYTES_MIN, LG_SIZE_BYTES_MAX);
}

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "loadgen: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, " (see --help)\n");
	va_end(ap);
	exit(EXIT_USAGE);
}

static uint64_t parse_u64(const char *s, const char *flag, uint64_t lo, uint64_t hi)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) {
		fprintf(stderr, "loadgen: %s wants an integer in %llu..%llu, got \"%s\" (see --help)\n", flag,
			(unsigned long long)lo, (unsigned long long)hi, s);
		exit(EXIT_USAGE);
	}
	return v;
}

static uint64_t parse_seconds_ns(const char *s, const char *flag, bool allow_zero)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end != s && *end == 's' && end[1] == '\0')
		end++;
	if (errno || end == s || *end || !(v >= 0) || v > 86400 || (!allow_zero && v <= 0)) {
		fprintf(stderr, "loadgen: %s wants seconds (e.g. 2 or 0.5s)%s, got \"%s\" (see --help)\n", flag,
			allow_zero ? "" : " above 0", s);
		exit(EXIT_USAGE);
	}
	return (uint64_t)(v * 1e9);
}

static void parse_url(struct lg_config *c, const char *url, bool raw_flag)
{
	if (strlen(url) >= sizeof c->url)
		die_usage("--url is too long: %s", url);
	snprintf(c->url, sizeof c->url, "%s", url);
	const char *rest;
	uint16_t def_port;
	if (strncmp(url, "ws://", 5) == 0) {
		c->transport = LG_TR_WS, rest = url + 5, def_port = 80;
	} else if (strncmp(url, "wss://", 6) == 0) {
		c->transport = LG_TR_WSS, rest = url + 6, def_port = 443;
	} else if (strncmp(url, "tcp://", 6) == 0) {
		c->transport = LG_TR_RAW, rest = url + 6, def_port = 0;
	} else {
		die_usage("--url must start with ws://, wss:// or tcp://: %s", url);
	}
	if (raw_flag && c->transport != LG_TR_RAW)
		die_usage("--raw needs a tcp://HOST:PORT URL, got %s", url);
	char hostport[LG_HOST_BYTES_MAX + 16];
	size_t n = strcspn(rest, "/?#");
	if (n == 0 || n >= sizeof hostport)
		die_usage("--url has no usable host: %s", url);
	memcpy(hostport, rest, n);
	hostport[n] = '\0';
	char *host = hostport, *port = NULL;
	if (host[0] == '[') {
		char *close = strchr(host, ']');
		if (!close)
			die_usage("--url has an unterminated [IPv6] host: %s", url);
		*close = '\0';
		host++;
		if (close[1] == ':')
			port = close + 2;
		else if (close[1] != '\0')
			die_usage("--url: junk after the [IPv6] host: %s", url);
	} else {
		char *colon = strrchr(host, ':');
		if (colon) {
			*colon = '\0';
			port = colon + 1;
		}
	}
	if (host[0] == '\0' || strlen(host) >= sizeof c->host)
		die_usage("--url has an empty or too long host: %s", url);
	snprintf(c->host, sizeof c->host, "%s", host);
	if (port)
		c->port = (uint16_t)parse_u64(port, "--url port", 1, 65535);
	else if (def_port)
		c->port = def_port;
	else
		die_usage("tcp:// URLs need a port: %s", url);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
	char ps[8];
	snprintf(ps, sizeof ps, "%u", c->port);
	int rc = getaddrinfo(c->host, ps, &hints, &res);
	if (rc != 0 || res == NULL) {
		fprintf(stderr, "loadgen: cannot resolve %s: %s\n", c->host, gai_strerror(rc));
		exit(EXIT_USAGE);
	}
	memcpy(&c->addr, res->ai_addr, res->ai_addrlen);
	c->addr_len = res->ai_addrlen;
	freeaddrinfo(res);
}

static void parse_args(struct lg_config *c, int argc, char **argv)
{
	enum {
		O_URL = 256, O_RAW, O_INSECURE, O_CA, O_BINARIES, O_PHONES, O_PREFIX, O_SRC_IPS, O_CONC, O_MODE,
		O_WINDOW, O_RATE, O_SIZE, O_WARMUP, O_DURATION, O_CTIMEOUT, O_DRAIN, O_QUIET, O_THREADS, O_COUNT,
		O_TLS_VERSION, O_TLS_CIPHER,
	};
	static const struct option opts[] = {
		{ "url", required_argument, NULL, O_URL },
		{ "raw", no_argument, NULL, O_RAW },
		{ "insecure", no_argument, NULL, O_INSECURE },
		{ "ca", required_argument, NULL, O_CA },
		{ "tls-version", required_argument, NULL, O_TLS_VERSION },
		{ "tls-cipher", required_argument, NULL, O_TLS_CIPHER },
		{ "binaries", required_argument, NULL, O_BINARIES },
		{ "phones", required_argument, NULL, O_PHONES },
		{ "server-prefix", required_argument, NULL, O_PREFIX },
		{ "src-ips", required_argument, NULL, O_SRC_IPS },
		{ "connect-concurrency", required_argument, NULL, O_CONC },
		{ "mode", required_argument, NULL, O_MODE },
		{ "window", required_argument, NULL, O_WINDOW },
		{ "rate", required_argument, NULL, O_RATE },
		{ "size", required_argument, NULL, O_SIZE },
		{ "warmup", required_argument, NULL, O_WARMUP },
		{ "duration", required_argument, NULL, O_DURATION },
		{ "connect-timeout", required_argument, NULL, O_CTIMEOUT },
		{ "drain", required_argument, NULL, O_DRAIN },
		{ "quiet", no_argument, NULL, O_QUIET },
		{ "threads", required_argument, NULL, O_THREADS },
		{ "count", required_argument, NULL, O_COUNT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *url = "ws://127.0.0.1:8080";
	bool raw = false, rate_set = false, window_set = false, phones_set = false, count_set = false;
	*c = (struct lg_config){
		.mode = LG_MODE_CLOSED,
		.binaries = 1,
		.phones_per_binary = 1,
		.window = 1,
		.size_bytes = 64,
		.warmup_ns = 1 * NS_PER_S,
		.duration_ns = 10 * NS_PER_S,
		.connect_timeout_ns = 30 * NS_PER_S,
		.drain_ns = 2 * NS_PER_S,
		.connect_concurrency = LG_CONNECT_CONCURRENCY_DEFAULT,
		.threads = 1,
	};
	snprintf(c->server_prefix, sizeof c->server_prefix, "lg-%d-", (int)getpid());
	opterr = 0;
	int o;
	while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (o) {
		case 'h':
			usage(stdout);
			exit(0);
		case O_URL:
			url = optarg;
			break;
		case O_RAW:
			raw = true;
			break;
		case O_INSECURE:
			c->insecure = true;
			break;
		case O_CA:
			c->ca_file = optarg;
			break;
		case O_TLS_VERSION:
			if (strcmp(optarg, "1.2") == 0)
				c->tls_version = LG_TLS_12;
			else if (strcmp(optarg, "1.3") == 0)
				c->tls_version = LG_TLS_13;
			else
				die_usage("--tls-version must be 1.2 or 1.3: %s", optarg);
			break;
		case O_TLS_CIPHER:
			c->tls_cipher = optarg;
			break;
		case O_BINARIES:
			c->binaries = (uint32_t)parse_u64(optarg, "--binaries", 1, LG_BINARIES_MAX);
			break;
		case O_PHONES:
			c->phones_per_binary = (uint32_t)parse_u64(optarg, "--phones", 0, LG_PHONES_PER_BINARY_MAX);
			phones_set = true;
			break;
		case O_PREFIX:
			if (optarg[0] == '\0' || strlen(optarg) > LG_SERVER_PREFIX_BYTES_MAX ||
			    strpbrk(optarg, "\r\n\"\\ ") != NULL)
				die_usage("--server-prefix must be 1..64 bytes without spaces, quotes, backslashes or newlines: \"%s\"",
					  optarg);
			snprintf(c->server_prefix, sizeof c->server_prefix, "%s", optarg);
			break;
		case O_SRC_IPS:
			c->src_ips = (uint32_t)parse_u64(optarg, "--src-ips", 0, 65535);
			break;
		case O_CONC:
			c->connect_concurrency =
				(uint32_t)parse_u64(optarg, "--connect-concurrency", 1, LG_CONNECT_CONCURRENCY_MAX);
			break;
		case O_MODE:
			if (strcmp(optarg, "closed") == 0)
				c->mode = LG_MODE_CLOSED;
			else if (strcmp(optarg, "open") == 0)
				c->mode = LG_MODE_OPEN;
			else if (strcmp(optarg, "idle") == 0)
				c->mode = LG_MODE_IDLE;
			else if (strcmp(optarg, "handshakes") == 0)
				c->mode = LG_MODE_HANDSHAKES;
			else
				die_usage("--mode is closed, open, idle or handshakes, got \"%s\"", optarg);
			break;
		case O_WINDOW:
			c->window = (uint32_t)parse_u64(optarg, "--window", 1, LG_WINDOW_MAX);
			window_set = true;
			break;
		case O_RATE: {
			char *end;
			errno = 0;
			c->rate_per_s = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(c->rate_per_s > 0) || c->rate_per_s > 1e9)
				die_usage("--rate wants frames per second above 0 (up to 1e9), got \"%s\"", optarg);
			rate_set = true;
			break;
		}
		case O_SIZE:
			c->size_bytes = (uint32_t)parse_u64(optarg, "--size", LG_SIZE_BYTES_MIN, LG_SIZE_BYTES_MAX);
			break;
		case O_WARMUP:
			c->warmup_ns = parse_seconds_ns(optarg, "--warmup", true);
			break;
		case O_DURATION:
			c->duration_ns = parse_seconds_ns(optarg, "--duration", false);
			break;
		case O_CTIMEOUT:
			c->connect_timeout_ns = parse_seconds_ns(optarg, "--connect-timeout", false);
			break;
		case O_DRAIN:
			c->drain_ns = parse_seconds_ns(optarg, "--drain", true);
			break;
		case O_QUIET:
			c->quiet = true;
			break;
		case O_THREADS:
			c->threads = (uint32_t)parse_u64(optarg, "--threads", 1, LG_THREADS_MAX);
			break;
		case O_COUNT:
			c->hs_count_max = parse_u64(optarg, "--count", 1, LG_HS_COUNT_MAX);
			count_set = true;
			break;
		case ':':
			die_usage("%s needs a value", argv[optind - 1]);
			break;
		default:
			die_usage("unknown flag %s", argv[optind - 1]);
		}
	}
	if (optind < argc)
		die_usage("unexpected argument \"%s\"", argv[optind]);
	parse_url(c, url, raw);
	if (c->mode == LG_MODE_OPEN && !rate_set)
		die_usage("--mode open needs --rate");
	if (c->mode != LG_MODE_OPEN && rate_set)
		die_usage("--rate only applies to --mode open");
	if (c->mode != LG_MODE_CLOSED && window_set)
		die_usage("--window only applies to --mode closed");
	if (c->mode == LG_MODE_HANDSHAKES) {
		if (phones_set && c->phones_per_binary != 0)
			die_usage("--mode handshakes has no phones: each connection is a binary (/v1/server) of its own");
		if (c->transport == LG_TR_RAW)
			die_usage("--mode handshakes needs a ws:// or wss:// URL (it counts WebSocket upgrades)");
		c->phones_per_binary = 0;
	} else if (count_set) {
		die_usage("--count only applies to --mode handshakes");
	}
	if (c->phones_per_binary == 0 && c->mode != LG_MODE_IDLE && c->mode != LG_MODE_HANDSHAKES)
		die_usage("--phones 0 only makes sense with --mode idle");
	if ((uint64_t)c->binaries * (1u + c->phones_per_binary) > LG_CONNECTIONS_MAX)
		die_usage("too many connections (binaries x (1 + phones) over %u)", LG_CONNECTIONS_MAX);
	if (c->transport != LG_TR_WSS && (c->insecure || c->ca_file))
		die_usage("--insecure and --ca only apply to wss:// URLs");
	if (c->insecure && c->ca_file)
		die_usage("--insecure and --ca exclude each other");
	if (c->transport != LG_TR_WSS && (c->tls_version || c->tls_cipher))
		die_usage("--tls-version and --tls-cipher only apply to wss:// URLs");
	if (c->tls_cipher && c->tls_version == LG_TLS_13)
		die_usage("--tls-cipher applies to TLS 1.2 (TLS 1.3's suite is the library's choice)");
	if (c->src_ips && c->addr.ss_family != AF_INET)
		die_usage("--src-ips binds to 127.0.0.x: it needs an IPv4 target");
	if (c->threads > c->binaries)
		die_usage("--threads %u is more than --binaries %u: a thread drives whole server-ids "
			  "(a binary and all its phones), so each needs one", c->threads, c->binaries);
}

static size_t align64(size_t v)
{
	return (v + 63u) & ~(size_t)63u;
}

static void raise_nofile(uint64_t need)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
		perror("loadgen: getrlimit(RLIMIT_NOFILE)");
		exit(1);
	}
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
		(void)getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
		fprintf(stderr,
			"loadgen: %llu connections need %llu file descriptors but RLIMIT_NOFILE is %llu (hard limit %llu).\n"
			"loadgen: raise the hard limit first, e.g. `ulimit -Hn %llu` as root or LimitNOFILE= in a unit,\n"
			"loadgen: or run fewer connections.\n",
			(unsigned long long)(need - FD_HEADROOM), (unsigned long long)need,
			(unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max, (unsigned long long)need);
		exit(EXIT_USAGE);
	}
}

static uint64_t pow2_at_least(uint64_t v)
{
	uint64_t p = 1;
	while (p < v)
		p <<= 1;
	return p;
}

/* Reserve the buffers of every connection of one loop from one MAP_NORESERVE slab. */
static void setup_conns(struct lg_worker *w)
{
	const struct lg_config *c = w->cfg;
	w->phones_n = w->binaries_n * c->phones_per_binary;
	w->conns_n = w->binaries_n + w->phones_n;
	w->conns = calloc(w->conns_n, sizeof *w->conns);
	w->queue = calloc(w->conns_n, sizeof *w->queue);
	w->dirty = calloc(w->conns_n, sizeof *w->dirty);
	w->hs_parked = calloc(w->conns_n, sizeof *w->hs_parked);
	if (!w->conns || !w->queue || !w->dirty || !w->hs_parked) {
		fprintf(stderr, "loadgen: out of memory for %u connections\n", w->conns_n);
		exit(1);
	}
	bool raw = c->transport == LG_TR_RAW, tls = c->transport == LG_TR_WSS;
	size_t hdr = raw ? RAW_HEADER_BYTES : LG_WS_HEADER_BYTES_MAX;
	size_t phone_frame = hdr + c->size_bytes;
	size_t binary_frame = hdr + c->size_bytes + (raw ? 0 : LG_ENVELOPE_OVERHEAD_BYTES_MAX);
	size_t phone_in = align64(MAX(phone_frame, (size_t)LG_HEAD_BYTES_MAX) + LG_RECV_CHUNK_BYTES);
	size_t binary_in = align64(MAX(binary_frame, (size_t)LG_HEAD_BYTES_MAX) + LG_RECV_CHUNK_BYTES);
	size_t batch = c->mode == LG_MODE_CLOSED ? MIN(c->window, LG_PHONE_OUT_FRAMES_MAX) : 4;
	size_t extra = LG_CTRL_RESERVE_BYTES + LG_REQUEST_BYTES_MAX;
	size_t phone_half = align64(MAX((size_t)LG_OUT_HALF_BYTES_MIN, batch * phone_frame) + extra);
	size_t binary_half = align64(
		MAX(c->mode == LG_MODE_IDLE || c->mode == LG_MODE_HANDSHAKES ? (size_t)LG_OUT_HALF_BYTES_MIN
									      : (size_t)LG_BINARY_OUT_HALF_BYTES_MIN,
		    4 * binary_frame) + extra);
	size_t ring_slots = c->mode == LG_MODE_CLOSED ? pow2_at_least(c->window) : 0;
	size_t rx = tls ? LG_RECV_CHUNK_BYTES : 0;
	size_t per_phone = phone_in + 2 * phone_half + rx + align64(ring_slots * sizeof(uint64_t));
	size_t per_binary = binary_in + 2 * binary_half + rx;
	size_t total = per_phone * w->phones_n + per_binary * w->binaries_n;
	uint8_t *slab = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (slab == MAP_FAILED) {
		fprintf(stderr, "loadgen: cannot reserve %.1f MiB of buffers: %s\n", (double)total / 1048576.0,
			strerror(errno));
		exit(1);
	}
	uint8_t *p = slab;
	for (uint32_t i = 0; i < w->conns_n; i++) {
		struct conn *k = &w->conns[i];
		bool is_binary = i < w->binaries_n;
		k->fd = -1;
		k->idx = i; /* in this loop's conns */
		k->role = is_binary ? LG_ROLE_BINARY : LG_ROLE_PHONE;
		k->state = CS_QUEUED;
		/* global numbers: server-ids and payloads are the same whatever the split */
		if (is_binary) {
			k->binary = w->binary0 + i;
		} else {
			k->phone = w->phone0 + (i - w->binaries_n);
			k->binary = k->phone / c->phones_per_binary;
		}
		k->in_cap = (uint32_t)(is_binary ? binary_in : phone_in);
		k->half_cap = (uint32_t)(is_binary ? binary_half : phone_half);
		k->in = p;
		p += k->in_cap;
		k->half[0] = p;
		p += k->half_cap;
		k->half[1] = p;
		p += k->half_cap;
		if (tls) {
			k->rx = p;
			p += rx;
		}
		if (!is_binary && ring_slots) {
			k->t_ring = (uint64_t *)p;
			k->t_ring_mask = (uint32_t)(ring_slots - 1);
			p += align64(ring_slots * sizeof(uint64_t));
		}
	}
	ASSERT((size_t)(p - slab) == total);
}

/* Contiguous blocks of whole server-ids, as even as they divide; each loop gets its
 * share of the open-loop rate (in proportion to its phones, so every phone sends
 * --rate / phones frames per second) and of the connect concurrency. */
static struct lg_worker *plan_workers(struct lg_run *r)
{
	const struct lg_config *c = r->cfg;
	uint32_t n = c->threads;
	struct lg_worker *ws = calloc(n, sizeof *ws);
	if (ws == NULL) {
		fprintf(stderr, "loadgen: out of memory for %u threads\n", n);
		exit(1);
	}
	uint32_t b = 0;
	for (uint32_t t = 0; t < n; t++) {
		struct lg_worker *w = &ws[t];
		w->cfg = c;
		w->run = r;
		w->index = t;
		w->binary0 = b;
		w->binaries_n = c->binaries / n + (t < c->binaries % n ? 1u : 0u);
		b += w->binaries_n;
		w->phone0 = w->binary0 * c->phones_per_binary;
		w->connect_concurrency =
			MAX(1u, c->connect_concurrency / n + (t < c->connect_concurrency % n ? 1u : 0u));
		w->rate_per_s = c->rate_per_s * (double)w->binaries_n / (double)c->binaries;
		/* --count split like the connect concurrency: evenly, the remainder to the first */
		w->hs_budget = c->hs_count_max == 0 ? UINT64_MAX
						    : c->hs_count_max / n + (t < c->hs_count_max % n ? 1u : 0u);
		int rc = pthread_mutex_init(&w->pub_lock, NULL);
		ASSERT(rc == 0);
		hist_reset(&w->pub.iv_lat);
		setup_conns(w);
	}
	ASSERT(b == c->binaries);
	return ws;
}

/* What plan_workers allocated with calloc (the buffer slabs are mappings the exit
 * unmaps): returned, so a leak checker sees the generator's own leaks only. */
static void free_workers(struct lg_worker *ws, uint32_t n)
{
	for (uint32_t t = 0; t < n; t++) {
		free(ws[t].conns);
		free(ws[t].queue);
		free(ws[t].dirty);
		free(ws[t].hs_parked);
		pthread_mutex_destroy(&ws[t].pub_lock);
	}
	free(ws);
}

/* ---- the run as a whole: the loops' figures merged ---- */

struct lg_result {
	struct lg_stats st;
	uint32_t ready;
	uint32_t conns_n;
	uint64_t t_connect_end_ns;
	uint64_t measured_ns;
};

/* Counts add up; worst-case figures take the worst; histograms add bucket by bucket,
 * so every percentile is the one a single loop with all the samples would report. */
static void merge_stats(struct lg_stats *into, const struct lg_stats *from)
{
	into->sent += from->sent;
	into->p2b += from->p2b;
	into->b2p += from->b2p;
	into->round_trips += from->round_trips;
	into->sent_bytes += from->sent_bytes;
	into->sent_total += from->sent_total;
	into->p2b_total += from->p2b_total;
	into->b2p_total += from->b2p_total;
	into->errors_connect += from->errors_connect;
	into->errors_handshake += from->errors_handshake;
	into->errors_register += from->errors_register;
	into->errors_closed += from->errors_closed;
	into->errors_protocol += from->errors_protocol;
	into->lost += from->lost;
	into->reordered += from->reordered;
	into->corrupted += from->corrupted;
	into->pings_answered += from->pings_answered;
	into->close_notices += from->close_notices;
	into->open_behind_max_frames = MAX(into->open_behind_max_frames, from->open_behind_max_frames);
	into->open_held += from->open_held;
	into->send_lag_max_ns = MAX(into->send_lag_max_ns, from->send_lag_max_ns);
	into->loop_max_ns = MAX(into->loop_max_ns, from->loop_max_ns);
	into->hs_started += from->hs_started;
	into->hs_completed += from->hs_completed;
	into->hs_window += from->hs_window;
	into->hs_closed += from->hs_closed;
	into->hs_tls13 += from->hs_tls13;
	into->hs_resumed += from->hs_resumed;
	hist_merge(&into->hs_lat, &from->hs_lat);
	for (uint32_t i = 0; i < LG_CODES_TRACKED && from->close_codes[i].count; i++)
		lg_code_add(into->close_codes, from->close_codes[i].code, from->close_codes[i].count);
	for (uint32_t i = 0; i < LG_CODES_TRACKED && from->http_statuses[i].count; i++)
		lg_code_add(into->http_statuses, from->http_statuses[i].code, from->http_statuses[i].count);
	for (uint32_t i = 0; i < LG_CODES_TRACKED && from->errnos[i].count; i++)
		lg_code_add(into->errnos, from->errnos[i].code, from->errnos[i].count);
	hist_merge(&into->lat, &from->lat);
	/* iv_*: progress only, handed over while running (struct lg_progress) */
}

/* Called after every loop has been joined. All loops share one measurement window
 * (they start traffic at the same instant); stopped early by a signal, each loop ends
 * its window when it notices (within one iteration), and the longest one counts. */
static void merge_results(struct lg_result *res, const struct lg_worker *ws, uint32_t n)
{
	memset(res, 0, sizeof *res);
	hist_reset(&res->st.lat);
	hist_reset(&res->st.hs_lat);
	for (uint32_t t = 0; t < n; t++) {
		const struct lg_worker *w = &ws[t];
		merge_stats(&res->st, &w->st);
		res->ready += w->ready_binaries + w->ready_phones;
		res->conns_n += w->conns_n;
		res->t_connect_end_ns = MAX(res->t_connect_end_ns, w->t_connect_end_ns);
		res->measured_ns = MAX(res->measured_ns, w->measured_ns);
	}
}

static bool result_ok(const struct lg_config *c, const struct lg_result *res)
{
	const struct lg_stats *s = &res->st;
	if (c->mode == LG_MODE_HANDSHAKES) /* every connection started got its 101, no error */
		return lg_errors_total(s) == 0 && s->hs_completed > 0 && s->hs_completed == s->hs_started;
	return lg_errors_total(s) == 0 && s->lost == 0 && s->corrupted == 0 && s->reordered == 0 &&
	       res->ready == res->conns_n;
}

static const char *mode_name(const struct lg_config *c)
{
	return c->mode == LG_MODE_CLOSED ? "closed"
	       : c->mode == LG_MODE_OPEN ? "open"
	       : c->mode == LG_MODE_IDLE ? "idle"
					 : "handshakes";
}

static const char *transport_name(const struct lg_config *c)
{
	return c->transport == LG_TR_WS ? "ws" : c->transport == LG_TR_WSS ? "wss" : "raw";
}

static void print_codes(const char *label, const struct lg_code_count *t, bool as_errno)
{
	if (t[0].count == 0)
		return;
	fprintf(stderr, "  %s:", label);
	for (uint32_t i = 0; i < LG_CODES_TRACKED && t[i].count; i++) {
		if (as_errno)
			fprintf(stderr, " %s x%llu", strerror((int)t[i].code), (unsigned long long)t[i].count);
		else
			fprintf(stderr, " %u x%llu", t[i].code, (unsigned long long)t[i].count);
	}
	fputc('\n', stderr);
}

static bool saw_code(const struct lg_code_count *t, uint32_t code)
{
	for (uint32_t i = 0; i < LG_CODES_TRACKED && t[i].count; i++)
		if (t[i].code == code)
			return true;
	return false;
}

static void report(const struct lg_config *c, const struct lg_result *res)
{
	const struct lg_stats *s = &res->st;
	double dur = (double)res->measured_ns / 1e9;
	double per = dur > 0 ? 1.0 / dur : 0.0;
	uint32_t ready = res->ready;
	double p2b_s = (double)s->p2b * per, b2p_s = (double)s->b2p * per, rt_s = (double)s->round_trips * per;
	double mb_s = (double)(s->p2b + s->b2p) * c->size_bytes * per / 1e6;
	double achieved = (double)s->sent * per;
	double q50 = (double)hist_quantile_ns(&s->lat, 0.50) / 1e3, q90 = (double)hist_quantile_ns(&s->lat, 0.90) / 1e3,
	       q99 = (double)hist_quantile_ns(&s->lat, 0.99) / 1e3, q999 = (double)hist_quantile_ns(&s->lat, 0.999) / 1e3,
	       qmax = (double)s->lat.max_ns / 1e3, mean = hist_mean_ns(&s->lat) / 1e3;
	uint64_t errors = lg_errors_total(s);
	bool ok = result_ok(c, res);

	fprintf(stderr, "\nloadgen: %s  %s loop", c->url, mode_name(c));
	if (c->mode == LG_MODE_CLOSED)
		fprintf(stderr, ", window %u", c->window);
	if (c->mode == LG_MODE_OPEN)
		fprintf(stderr, ", target %.0f frames/s", c->rate_per_s);
	if (c->mode == LG_MODE_HANDSHAKES)
		fprintf(stderr, ", %u connections at a time", c->binaries);
	else
		fprintf(stderr, ", %u binaries x %u phones, %u B frames", c->binaries, c->phones_per_binary,
			c->size_bytes);
	if (c->threads > 1)
		fprintf(stderr, ", %u threads", c->threads);
	fputc('\n', stderr);
	if (c->mode != LG_MODE_HANDSHAKES)
		fprintf(stderr, "  connections   %u/%u ready in %.2f s\n", ready, res->conns_n,
			(double)res->t_connect_end_ns / 1e9);
	fprintf(stderr, "  measured      %.2f s after %.2f s of warm-up\n", dur, (double)c->warmup_ns / 1e9);
	if (c->mode == LG_MODE_HANDSHAKES) {
		fprintf(stderr, "  handshakes    %.0f/s (%llu in the window; whole run: %llu started, %llu upgraded, "
				"%llu closes echoed, %llu over TLS 1.3, %llu resumed)\n",
			(double)s->hs_window * per, (unsigned long long)s->hs_window, (unsigned long long)s->hs_started,
			(unsigned long long)s->hs_completed, (unsigned long long)s->hs_closed,
			(unsigned long long)s->hs_tls13, (unsigned long long)s->hs_resumed);
		fprintf(stderr, "  latency (us)  connect -> 101: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n",
			(double)hist_quantile_ns(&s->hs_lat, 0.50) / 1e3, (double)hist_quantile_ns(&s->hs_lat, 0.90) / 1e3,
			(double)hist_quantile_ns(&s->hs_lat, 0.99) / 1e3, (double)hist_quantile_ns(&s->hs_lat, 0.999) / 1e3,
			(double)s->hs_lat.max_ns / 1e3, hist_mean_ns(&s->hs_lat) / 1e3);
		fprintf(stderr, "  generator     longest loop iteration %.0f us\n", (double)s->loop_max_ns / 1e3);
	} else if (c->mode != LG_MODE_IDLE) {
		fprintf(stderr, "  throughput    %.0f round trips/s   phone->binary %.0f frames/s   binary->phone %.0f frames/s   %.2f MB/s\n",
			rt_s, p2b_s, b2p_s, mb_s);
		if (c->mode == LG_MODE_OPEN)
			fprintf(stderr, "  open loop     sent %.0f frames/s of %.0f intended (worst per-phone backlog %llu frames, "
				"held back at the in-flight cap %llu times)\n",
				achieved, c->rate_per_s, (unsigned long long)s->open_behind_max_frames,
				(unsigned long long)s->open_held);
		fprintf(stderr, "  generator     longest loop iteration %.0f us%s", (double)s->loop_max_ns / 1e3,
			c->mode == LG_MODE_OPEN ? "" : "\n");
		if (c->mode == LG_MODE_OPEN)
			fprintf(stderr, ", worst send lag %.0f us behind the intended time\n",
				(double)s->send_lag_max_ns / 1e3);
		fprintf(stderr, "  latency (us)  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f  (%llu samples)\n",
			q50, q90, q99, q999, qmax, mean, (unsigned long long)s->lat.count);
	}
	fprintf(stderr, "  errors        %llu (connect %llu, handshake %llu, register %llu, closed %llu, protocol %llu)\n",
		(unsigned long long)errors, (unsigned long long)s->errors_connect,
		(unsigned long long)s->errors_handshake, (unsigned long long)s->errors_register,
		(unsigned long long)s->errors_closed, (unsigned long long)s->errors_protocol);
	fprintf(stderr, "  frames        lost %llu  reordered %llu  corrupted %llu   pings answered %llu\n",
		(unsigned long long)s->lost, (unsigned long long)s->reordered, (unsigned long long)s->corrupted,
		(unsigned long long)s->pings_answered);
	print_codes("close codes", s->close_codes, false);
	print_codes("HTTP statuses", s->http_statuses, false);
	print_codes("socket errors", s->errnos, true);
	if (saw_code(s->http_statuses, 429))
		fprintf(stderr, "  hint: 429 is the relay's per-IP upgrade limiter: start it with --rate-limit-burst 0\n");
	if (saw_code(s->http_statuses, 503))
		fprintf(stderr, "  hint: 503 is the relay's connection cap: raise its --max-connections\n");
	if (saw_code(s->close_codes, 4429))
		fprintf(stderr, "  hint: 4429: the relay allows 16 phones per server-id\n");
	if (saw_code(s->errnos, EADDRNOTAVAIL))
		fprintf(stderr, "  hint: out of ephemeral ports: use --src-ips N\n");
	if (saw_code(s->errnos, EMFILE) || saw_code(s->errnos, ENFILE))
		fprintf(stderr, "  hint: out of file descriptors\n");
	fprintf(stderr, "  result        %s\n", ok ? "ok" : "FAILED");

	printf("{\"mode\":\"%s\",\"transport\":\"%s\",\"url\":\"%s\",\"binaries\":%u,\"phones_per_binary\":%u,"
	       "\"connections\":%u,\"connections_target\":%u,\"size_bytes\":%u,\"window\":%u,"
	       "\"target_rate\":%.0f,\"achieved_rate\":%.1f,\"warmup_s\":%.3f,\"duration_s\":%.3f,\"connect_s\":%.3f,"
	       "\"frames_sent\":%llu,\"frames_p2b\":%llu,\"frames_b2p\":%llu,\"round_trips\":%llu,"
	       "\"frames_p2b_per_s\":%.1f,\"frames_b2p_per_s\":%.1f,\"round_trips_per_s\":%.1f,\"mbytes_per_s\":%.3f,"
	       "\"lat_samples\":%llu,\"lat_mean_us\":%.1f,\"lat_p50_us\":%.1f,\"lat_p90_us\":%.1f,\"lat_p99_us\":%.1f,"
	       "\"lat_p999_us\":%.1f,\"lat_max_us\":%.1f,"
	       "\"errors\":%llu,\"errors_connect\":%llu,\"errors_handshake\":%llu,\"errors_register\":%llu,"
	       "\"errors_closed\":%llu,\"errors_protocol\":%llu,\"lost\":%llu,\"reordered\":%llu,\"corrupted\":%llu,"
	       "\"pings_answered\":%llu,\"close_notices\":%llu,\"open_backlog_max\":%llu,\"open_held\":%llu,"
	       "\"send_lag_max_us\":%.1f,\"loop_max_us\":%.1f,",
	       mode_name(c), transport_name(c), c->url, c->binaries, c->phones_per_binary, ready, res->conns_n,
	       c->size_bytes, c->mode == LG_MODE_CLOSED ? c->window : 0,
	       c->mode == LG_MODE_OPEN ? c->rate_per_s : 0.0, c->mode == LG_MODE_OPEN ? achieved : 0.0,
	       (double)c->warmup_ns / 1e9, dur, (double)res->t_connect_end_ns / 1e9, (unsigned long long)s->sent,
	       (unsigned long long)s->p2b, (unsigned long long)s->b2p, (unsigned long long)s->round_trips, p2b_s,
	       b2p_s, rt_s, mb_s, (unsigned long long)s->lat.count, mean, q50, q90, q99, q999, qmax,
	       (unsigned long long)errors, (unsigned long long)s->errors_connect,
	       (unsigned long long)s->errors_handshake, (unsigned long long)s->errors_register,
	       (unsigned long long)s->errors_closed, (unsigned long long)s->errors_protocol,
	       (unsigned long long)s->lost, (unsigned long long)s->reordered, (unsigned long long)s->corrupted,
	       (unsigned long long)s->pings_answered, (unsigned long long)s->close_notices,
	       (unsigned long long)s->open_behind_max_frames, (unsigned long long)s->open_held,
	       (double)s->send_lag_max_ns / 1e3,
	       (double)s->loop_max_ns / 1e3);
	if (c->mode == LG_MODE_HANDSHAKES)
		printf("\"handshakes\":%llu,\"handshakes_per_s\":%.1f,\"handshakes_started\":%llu,"
		       "\"handshakes_completed\":%llu,\"handshakes_closed\":%llu,\"handshakes_tls13\":%llu,"
		       "\"handshakes_resumed\":%llu,\"hs_lat_samples\":%llu,\"hs_lat_mean_us\":%.1f,"
		       "\"hs_lat_p50_us\":%.1f,\"hs_lat_p90_us\":%.1f,\"hs_lat_p99_us\":%.1f,\"hs_lat_p999_us\":%.1f,"
		       "\"hs_lat_max_us\":%.1f,",
		       (unsigned long long)s->hs_window, (double)s->hs_window * per, (unsigned long long)s->hs_started,
		       (unsigned long long)s->hs_completed, (unsigned long long)s->hs_closed,
		       (unsigned long long)s->hs_tls13, (unsigned long long)s->hs_resumed,
		       (unsigned long long)s->hs_lat.count, hist_mean_ns(&s->hs_lat) / 1e3,
		       (double)hist_quantile_ns(&s->hs_lat, 0.50) / 1e3, (double)hist_quantile_ns(&s->hs_lat, 0.90) / 1e3,
		       (double)hist_quantile_ns(&s->hs_lat, 0.99) / 1e3, (double)hist_quantile_ns(&s->hs_lat, 0.999) / 1e3,
		       (double)s->hs_lat.max_ns / 1e3);
	printf("\"ok\":%s}\n", ok ? "true" : "false");
	fflush(stdout);
}

static void on_signal(int sig)
{
	(void)sig;
	__atomic_store_n(&lg_stop_requested, 1, __ATOMIC_RELAXED);
}

/* ---- threads ---- */

/* The main thread sleeps on this until every loop has returned (waking once a second
 * for the progress line). */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint32_t done;
} finished = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void *worker_thread(void *arg)
{
	struct lg_worker *w = arg;
	w->result = lg_run(w);
	pthread_mutex_lock(&finished.lock);
	finished.done++;
	pthread_cond_signal(&finished.cond);
	pthread_mutex_unlock(&finished.lock);
	return NULL;
}

/* One line for all loops, in the one-loop format: gauges summed, the interval's
 * counters and latency histogram taken over from each loop and merged. */
static void progress(struct lg_worker *ws, uint32_t n, uint64_t now_ns, double iv_s)
{
	static const char *const names[] = { "connect", "warmup", "measure", "drain", "close", "done" };
	static struct hist iv_lat; /* main thread only; 30 KiB */
	enum lg_phase phase = PH_DONE;
	uint32_t ready = 0, conns = 0, handshaking = 0, open_n = 0;
	uint64_t errors = 0, lost = 0, corrupted = 0, rt = 0, p2b = 0, b2p = 0, hs = 0;
	hist_reset(&iv_lat);
	for (uint32_t t = 0; t < n; t++) {
		struct lg_worker *w = &ws[t];
		struct lg_progress *p = &w->pub;
		conns += w->conns_n;
		pthread_mutex_lock(&w->pub_lock);
		phase = MIN(phase, p->phase); /* the run is where its slowest loop is */
		ready += p->ready;
		handshaking += p->handshaking;
		open_n += p->open_n;
		errors += p->errors;
		lost += p->lost;
		corrupted += p->corrupted;
		rt += p->iv_round_trips;
		p2b += p->iv_p2b;
		b2p += p->iv_b2p;
		hs += p->iv_handshakes;
		hist_merge(&iv_lat, &p->iv_lat);
		p->iv_round_trips = p->iv_p2b = p->iv_b2p = p->iv_handshakes = 0;
		hist_reset(&p->iv_lat);
		pthread_mutex_unlock(&w->pub_lock);
	}
	if (iv_s <= 0)
		iv_s = 1;
	if (phase == PH_CONNECT)
		fprintf(stderr, "loadgen: %5.1fs connect  ready %u/%u  handshaking %u  errors %llu\n",
			(double)now_ns / 1e9, ready, conns, handshaking, (unsigned long long)errors);
	else if (ws[0].cfg->mode == LG_MODE_HANDSHAKES)
		fprintf(stderr,
			"loadgen: %5.1fs %-7s handshakes/s %.0f  handshaking %u  closing %u  p99 %.0fus  max %.0fus  "
			"errors %llu\n",
			(double)now_ns / 1e9, names[phase], (double)hs / iv_s, handshaking, open_n,
			(double)hist_quantile_ns(&iv_lat, 0.99) / 1e3, (double)iv_lat.max_ns / 1e3,
			(unsigned long long)errors);
	else
		fprintf(stderr,
			"loadgen: %5.1fs %-7s open %u  rt/s %.0f  p2b/s %.0f  b2p/s %.0f  p99 %.0fus  max %.0fus  "
			"errors %llu lost %llu corrupted %llu\n",
			(double)now_ns / 1e9, names[phase], open_n, (double)rt / iv_s, (double)p2b / iv_s,
			(double)b2p / iv_s, (double)hist_quantile_ns(&iv_lat, 0.99) / 1e3,
			(double)iv_lat.max_ns / 1e3, (unsigned long long)errors, (unsigned long long)lost,
			(unsigned long long)corrupted);
}

static void abs_monotonic(struct timespec *ts, uint64_t abs_ns)
{
	ts->tv_sec = (time_t)(abs_ns / NS_PER_S);
	ts->tv_nsec = (long)(abs_ns % NS_PER_S);
}

/* Start the loops, print progress until they have all returned, join them. Every
 * loop stops by itself (each phase has a deadline), so this wait is bounded. */
static void run_workers(struct lg_run *r, struct lg_worker *ws)
{
	uint32_t n = r->threads;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&finished.cond, &ca);
	pthread_condattr_destroy(&ca);
	int rc = pthread_barrier_init(&r->rings_ready, NULL, n);
	ASSERT(rc == 0);

	/* Signals go to this thread, which only sleeps: the loops see the flag within
	 * LG_WAIT_NS_MAX, and their io_uring_enter is never interrupted. */
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	r->t_origin_abs_ns = lg_clock_ns();
	uint32_t started = 0;
	for (; started < n; started++) {
		int e = pthread_create(&ws[started].tid, NULL, worker_thread, &ws[started]);
		if (e != 0) {
			fprintf(stderr, "loadgen: cannot start thread %u of %u: %s\n", started + 1, n, strerror(e));
			break;
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (started < n) {
		/* the ones started wait at the ring barrier for all n: never released */
		exit(1);
	}

	uint64_t last_ns = lg_clock_ns(), next_ns = last_ns + LG_PROGRESS_INTERVAL_NS;
	pthread_mutex_lock(&finished.lock);
	while (finished.done < n) {
		if (r->cfg->quiet) {
			pthread_cond_wait(&finished.cond, &finished.lock);
			continue;
		}
		struct timespec ts;
		abs_monotonic(&ts, next_ns);
		(void)pthread_cond_timedwait(&finished.cond, &finished.lock, &ts);
		uint64_t now = lg_clock_ns();
		if (now >= next_ns && finished.done < n) {
			pthread_mutex_unlock(&finished.lock);
			progress(ws, n, now - r->t_origin_abs_ns, (double)(now - last_ns) / 1e9);
			pthread_mutex_lock(&finished.lock);
			last_ns = now;
			next_ns = now + LG_PROGRESS_INTERVAL_NS;
		}
	}
	pthread_mutex_unlock(&finished.lock);
	for (uint32_t t = 0; t < n; t++)
		pthread_join(ws[t].tid, NULL);
	pthread_barrier_destroy(&r->rings_ready);
}

static struct lg_config cfg;
static struct lg_run run = { .t_traffic0_ns = LG_TIME_UNSET };
static struct lg_result result;

int main(int argc, char **argv)
{
	parse_args(&cfg, argc, argv);
	if (strpbrk(cfg.url, "\"\\") != NULL)
		die_usage("--url must not contain quotes or backslashes: %s", cfg.url);
	raise_nofile((uint64_t)cfg.binaries * (1u + cfg.phones_per_binary) + FD_HEADROOM);
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESETHAND };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	lg_pattern_init();
	if (cfg.transport == LG_TR_WSS) {
		char why[256];
		if (!lgtls_init(&cfg, why, sizeof why)) {
			fprintf(stderr, "loadgen: %s\n", why);
			return 1;
		}
	}
	char why[URING_WHY_BYTES];
	if (!uring_probe(&run.features, why)) {
		fprintf(stderr, "loadgen: %s\n", why);
		return 1;
	}
	run.cfg = &cfg;
	run.threads = cfg.threads;
	struct lg_worker *ws = plan_workers(&run);
	uint32_t conns_n = cfg.binaries * (1u + cfg.phones_per_binary);
	if (!cfg.quiet && cfg.mode == LG_MODE_HANDSHAKES) {
		fprintf(stderr, "loadgen: %s: handshakes loop, %u connections at a time", cfg.url, conns_n);
		if (cfg.hs_count_max)
			fprintf(stderr, ", %llu at most", (unsigned long long)cfg.hs_count_max);
	} else if (!cfg.quiet) {
		fprintf(stderr, "loadgen: %s: %u binaries x %u phones = %u connections, %s loop, %u B frames",
			cfg.url, cfg.binaries, cfg.phones_per_binary, conns_n, mode_name(&cfg), cfg.size_bytes);
	}
	if (!cfg.quiet) {
		if (cfg.threads > 1)
			fprintf(stderr, ", %u threads", cfg.threads);
		fputc('\n', stderr);
	}
	run_workers(&run, ws);
	bool failed = false;
	for (uint32_t t = 0; t < cfg.threads; t++)
		failed |= ws[t].result != 0;
	if (!failed) {
		merge_results(&result, ws, cfg.threads);
		report(&cfg, &result);
	}
	free_workers(ws, cfg.threads);
	return !failed && result_ok(&cfg, &result) ? 0 : 1;
}
