/*
 * config.h - command line, environment and boot checks (reference §7.1, §7.3, §7.4,
 * §1.5, §1.6), as pure functions: argv and envp in, a struct config or a refusal out.
 *
 * The module, by job:
 *   flags.c   defaults, the flag table, Go-flag-style argv parsing, numbers, booleans,
 *             durations
 *   usage.c   the --help / usage-error text, generated from the flag table
 *   boot.c    the environment, config_check's boot checks in order, the capability
 *             check and /proc/self/status
 *   fcm.c     the FCM service-account key check, on the project's JSON scanner
 * Listener addresses are parsed by core/addr.h (shared with engine/net.c); JSON by
 * envelope/json.h. config/ sits above core/ and envelope/ in the include graph:
 * nothing below it includes config/.
 *
 * Contract:
 * - config_parse follows Go's flag package: "-x" and "--x" both work, "-x=v" and
 *   "-x v" for valued flags, booleans as "-x" or "-x=true|false|1|0|t|f|T|F|TRUE|FALSE|True|False",
 *   "--" ends flags. Unknown flag, missing value, bad value, or a positional argument
 *   -> CONFIG_EXIT_USAGE (2) with a one-line reason in err->msg; main prints usage.
 *   "-h", "-help", "--help" -> CONFIG_HELP (print usage to stdout, exit 0).
 *   "--version" -> cfg->show_version.
 * - config_check runs the boot checks in the reference's exact order (§7.4 steps 3-10
 *   and the metrics-listen / listener-port validation), stopping at the first refusal.
 *   A refusal carries the reference's log message ("refusing to start: ...") and its
 *   structured fields (err, fix, env_var, reason, value, ...) so main can log it with
 *   the reference's keys, and an exit code (2, or 1 where the reference says 1).
 * - Nothing here performs I/O except config_read_cap_eff, which reads
 *   /proc/self/status, and config_print_usage, which writes the usage text; the checks
 *   themselves (config_check and what it calls) are pure.
 * - Strings in struct config point into argv/envp (never copied, never freed).
 * - No allocation, except BoringSSL's while the FCM check parses the private key; the
 *   largest stack user is that check (a 16 KiB key buffer).
 */
#ifndef PYRELAY_CONFIG_H
#define PYRELAY_CONFIG_H

#include "core/common.h"
#include "core/simd.h"

/* Reference defaults (§7.1) and ours where the reference's do not fit bare metal. */
#define CONFIG_HTTPS_LISTEN_DEFAULT ":443"
#define CONFIG_HTTP_LISTEN_DEFAULT ":80"
#define CONFIG_METRICS_LISTEN_DEFAULT "127.0.0.1:9090"
#define CONFIG_MAX_CONNECTIONS_DEFAULT 100000u
#define CONFIG_RATE_LIMIT_BURST_DEFAULT 20u
#define CONFIG_RATE_LIMIT_REFILL_MS_DEFAULT 6000u
#define CONFIG_GRACE_PERIOD_MS_DEFAULT 30000u
#define CONFIG_HEARTBEAT_INTERVAL_MS_DEFAULT 30000u
#define CONFIG_HEARTBEAT_TIMEOUT_MS_DEFAULT 30000u
#define CONFIG_CONFLICT_PROBE_TIMEOUT_MS_DEFAULT 10000u
/* Push wake (§7.2): where FCM messages go, and how long each HTTP call may take. */
#define CONFIG_FCM_ENDPOINT_DEFAULT "https://fcm.googleapis.com/v1/projects/pyrycode-mobile/messages:send"
#define CONFIG_FCM_TIMEOUT_MS_DEFAULT 10000u
#define CONFIG_MAX_CONNECTIONS_LIMIT 16000000u
/* --domain mode: the ACME directory (Let's Encrypt production, as Go's autocert) */
#define CONFIG_ACME_DIRECTORY_DEFAULT "https://acme-v02.api.letsencrypt.org/directory"
/* --batch-wait-us: default and bound (a worker wakes at most this late for a batch;
 * the default is measured in docs/benchmarks.md). */
#define CONFIG_BATCH_WAIT_US_DEFAULT 250u
#define CONFIG_BATCH_WAIT_US_MAX 1000u
/* --payload-isa: "auto" picks the widest the CPU has (core/simd.h) */
#define CONFIG_PAYLOAD_ISA_DEFAULT "auto"
/* --max-connections-per-ip default: a tenth of --max-connections, at least
 * CONFIG_PER_IP_DEFAULT_MIN and at most CONFIG_PER_IP_DEFAULT_MAX, never above the cap
 * (config_per_ip_default): one address cannot take the relay. 0 turns it off. */
#define CONFIG_PER_IP_DEFAULT_DIVISOR 10u
#define CONFIG_PER_IP_DEFAULT_MIN 16u
#define CONFIG_PER_IP_DEFAULT_MAX 1000u
/* --workers: at most this many (the metrics exposition is sized for it). */
#define CONFIG_WORKERS_MAX 256u
/* sun_path of a unix socket address, less its terminating NUL (--handover-socket). */
#define CONFIG_HANDOVER_PATH_BYTES_MAX 107u

enum config_exit {
	CONFIG_OK = 0,
	CONFIG_HELP = -1,      /* print usage on stdout, exit 0 */
	CONFIG_EXIT_RUNTIME = 1,
	CONFIG_EXIT_USAGE = 2, /* also: configuration refused at boot */
};

/* Which listener the relay serves, from the flags (config_mode). */
enum config_mode {
	CONFIG_MODE_INSECURE = 0, /* --insecure-listen: plaintext behind a TLS proxy */
	CONFIG_MODE_TLS_FILES,    /* --tls-cert/--tls-key on --https-listen (our addition) */
	CONFIG_MODE_AUTOCERT,     /* --domain: ACME (reference §1.3) */
};

struct config {
	/* flags (§7.1) */
	const char *domain;          /* "" when unset */
	const char *cert_cache;      /* default $HOME/.pyrycode-relay/certs, else .pyrycode-relay/certs */
	const char *insecure_listen; /* "" when unset */
	const char *https_listen;
	const char *http_listen;
	const char *metrics_listen;  /* "" disables */
	const char *tls_cert;        /* certificate-files mode: PEM chain, "" when unset */
	const char *tls_key;         /* and its private key, "" when unset */
	const char *handover_socket; /* listener hand-over unix socket (ADR 0018), "" when unset */
	bool trust_x_forwarded_for;
	bool https_proxy_protocol;
	bool show_version;
	bool check_only; /* --check: run the boot checks, print what would be served, bind nothing */
	uint32_t max_connections;
	uint32_t max_connections_per_ip; /* 0: off; config_check sets the default when not given */
	bool max_connections_per_ip_set;
	/* which of these were given explicitly (§1.1: refused with --insecure-listen) */
	bool https_listen_set;
	bool http_listen_set;
	bool https_proxy_protocol_set;

	/* our flags (issue: settable limits and timers; Go duration syntax, e.g. 30s, 1m30s, 250ms) */
	uint32_t rate_limit_burst; /* 0 turns the per-IP limiter off */
	uint32_t zerocopy_min_bytes; /* sends of at least this many bytes use send_zc; 0: never */
	uint32_t batch_wait_us;      /* a worker may wait this long for more completions; 0: off */
	const char *payload_isa;     /* "auto", "avx2", "sse2" or "word" (config_payload_isa) */
	uint64_t rate_limit_refill_ms;
	uint64_t grace_period_ms;
	uint64_t heartbeat_interval_ms;
	uint64_t heartbeat_timeout_ms;
	uint64_t conflict_probe_timeout_ms;
	uint32_t workers; /* 0 = one per online CPU */
	/* outbound HTTPS (push wake): the FCM send URL (an https:// URL, core/url.h), an
	 * extra CA bundle trusted besides the system's ("" for none), the per-call timeout */
	const char *fcm_endpoint;
	const char *acme_directory; /* --domain mode: the ACME directory URL (https://) */
	const char *outbound_ca_file;
	uint64_t fcm_timeout_ms;

	/* environment (§7.3) */
	bool production;      /* PYRYCODE_RELAY_PRODUCTION=1 */
	bool single_instance; /* PYRYCODE_RELAY_SINGLE_INSTANCE=1 */
	bool handover_no_sessions; /* PYRYCODE_RELAY_HANDOVER_NO_SESSIONS=1: take no live sessions (ADR 0018) */
	/* the raw values (NULL when unset): config_check refuses anything but "1" and
	 * names the bad value in its reason, as the reference does */
	const char *production_env;
	const char *single_instance_env;
	const char *handover_no_sessions_env;
	const char *fcm_credentials; /* NULL when unset */
	const char *fly_app_name;    /* NULL or "" when unset */
	const char *home;

	/* backing store for the one composed string, the default cert_cache */
	char cert_cache_buf[4096];
};

#define BOOT_FIELDS_MAX 6
/* = LOG_VALUE_BYTES_MAX: the logger truncates longer values anyway, and the
 * capability refusal needs the room to name every offending bit */
#define BOOT_FIELD_VALUE_BYTES 512

struct boot_field {
	const char *key;   /* a log key from the boot allowlist (docs/logging.md) */
	char value[BOOT_FIELD_VALUE_BYTES];
};

/* fields[0] is always "err"; the others follow in the reference's key order. */
struct boot_refusal {
	int exit_code;     /* enum config_exit */
	const char *msg;   /* e.g. "refusing to start: invalid env-var config" */
	size_t nfields;
	struct boot_field fields[BOOT_FIELDS_MAX];
};

enum config_mode config_mode(const struct config *cfg);
/* The public listener's address in cfg's mode. */
const char *config_public_listen(const struct config *cfg);

/* Fill defaults, then apply argv (argv[0] is the program name) and envp. On
 * CONFIG_EXIT_USAGE, refusal->msg / fields say why (key "err"). */
int config_parse(struct config *cfg, int argc, char *const argv[], char *const envp[],
		 struct boot_refusal *refusal);

/* --domain: 1-253 bytes of [A-Za-z0-9-.], labels of 1-63 bytes that neither start nor
 * end with '-', no trailing dot. Pure. */
bool config_domain_valid(const char *domain);

/* --payload-isa: the instructions it names for the payload passes ("auto": the widest
 * this CPU has). False for any other name; a level the CPU lacks is returned as named
 * (config_check refuses it). Pure but for asking the CPU. */
bool config_payload_isa(const char *name, enum simd_level *level);

/* config_check in two halves, for --domain mode, where the cache directory is set up
 * between them (§7.4 step 14: cert-cache setup, exit 1, before the port checks):
 * config_check_boot is everything up to the listener addresses, config_check_listeners
 * the rest. config_check = both. */
int config_check_boot(const struct config *cfg, uint64_t cap_eff, bool cap_eff_ok, uint32_t euid,
		      struct boot_refusal *refusal);
int config_check_listeners(const struct config *cfg, struct boot_refusal *refusal);

/* Boot checks of §7.4 steps 3-10 in order, then --metrics-listen (§1.5) and the
 * listener port allowlist (§1.6). cap_eff is the CapEff bitmask read from
 * /proc/self/status (cap_eff_ok false when it could not be read or parsed), euid the
 * effective uid. Returns CONFIG_OK or the exit code, with *refusal filled. */
int config_check(const struct config *cfg, uint64_t cap_eff, bool cap_eff_ok, uint32_t euid,
		 struct boot_refusal *refusal);

/* --metrics-listen rule (§1.5): addr_parse_listen's rules with a host required, and
 * the host an IP literal in 127.0.0.0/8 or exactly ::1. Returns false with a reason
 * in *why (a static string that never contains input bytes). */
bool config_metrics_listen_valid(const char *s, const char **why);

/*
 * PYRYCODE_RELAY_FCM_CREDENTIALS (§7.2, §7.3): is value (NUL-terminated) a usable
 * Google service-account key, and what the push sender needs from it. The rules are
 * the Go relay's parseFCMCredentials (encoding/json into a struct, then
 * golang.org/x/oauth2's key parsing):
 * - the whole value is exactly one JSON value (whitespace around it allowed), parsed
 *   by envelope/json.h: RFC 8259 strictly, nesting at most JSON_DEPTH_MAX over the
 *   whole document (Go's limit too), every member validated, unknown ones ignored;
 * - that value is an object; member names "type", "client_email", "private_key",
 *   "private_key_id" and "token_uri" match after unescaping, ASCII case-insensitively
 *   (encoding/json folds case);
 * - for those members the last duplicate wins; a null value leaves the member as it
 *   was (unset if it came first); any other non-string value refuses the key;
 * - type is exactly "service_account"; client_email is non-empty;
 * - private_key unescapes to at most CONFIG_FCM_PRIVATE_KEY_BYTES_MAX - 1 bytes with
 *   no NUL, and is an RSA private key: the first PEM block in it (any label, as Go's
 *   pem.Decode) or, without one, the bytes themselves, parsed as PKCS#8 and then as
 *   PKCS#1 DER with BoringSSL. An EC or Ed25519 key, an encrypted block or a
 *   truncated body refuses the key;
 * - token_uri, when present and non-empty, is an https:// URL core/url.h accepts
 *   (absent or "": CONFIG_FCM_TOKEN_URI_DEFAULT).
 * Divergences from Go (deliberate): invalid UTF-8 inside a JSON string refuses the
 * key (json.h rejects it everywhere; Go would replace it with U+FFFD); a token_uri
 * that is not https:// refuses the key (Go would send the signed assertion over
 * plaintext HTTP); client_email, private_key_id and token_uri longer than their
 * buffers below refuse the key (Google's are far shorter).
 * The value is never copied anywhere that outlives the call except into *out's
 * fields, and never logged. No I/O; BoringSSL allocates while it parses the key.
 */
#define CONFIG_FCM_PRIVATE_KEY_BYTES_MAX 16384 /* an RSA-4096 PKCS#8 PEM is ~3.3 KiB */
#define CONFIG_FCM_EMAIL_BYTES_MAX 256         /* an address is at most 254 bytes */
#define CONFIG_FCM_KEY_ID_BYTES_MAX 128        /* Google's are 40 hex digits */
#define CONFIG_FCM_TOKEN_URI_BYTES_MAX 2048
#define CONFIG_FCM_TOKEN_URI_DEFAULT "https://oauth2.googleapis.com/token"

struct evp_pkey_st; /* BoringSSL's EVP_PKEY: config.h stays free of <openssl/...> */

struct config_fcm_credentials {
	struct evp_pkey_st *pkey; /* the RSA private key; owned, config_fcm_credentials_free */
	char client_email[CONFIG_FCM_EMAIL_BYTES_MAX];
	char private_key_id[CONFIG_FCM_KEY_ID_BYTES_MAX]; /* "" when absent */
	char token_uri[CONFIG_FCM_TOKEN_URI_BYTES_MAX];   /* the default when absent */
};

/* Parse value by the rules above. True with *out filled (free it with
 * config_fcm_credentials_free); false with *out zeroed. */
bool config_fcm_credentials_parse(const char *value, struct config_fcm_credentials *out);
/* Release the key and wipe the struct (safe on a zeroed or freed one). */
void config_fcm_credentials_free(struct config_fcm_credentials *c);
/* parse + free: the boot check of §7.3. */
bool config_fcm_credentials_usable(const char *value);

/* The key bytes alone (private_key after unescaping): PEM block or raw DER, PKCS#8
 * then PKCS#1, RSA only. Returns the key (EVP_PKEY_free it) or NULL. For tests. */
struct evp_pkey_st *config_fcm_parse_rsa_key(const uint8_t *key, size_t len);

/* Go time.ParseDuration subset: [0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h), concatenated,
 * non-negative. Rounds down to milliseconds. */
bool config_parse_duration_ms(const char *s, uint64_t *ms);

/* Read CapEff from /proc/self/status (the only read in this module). */
bool config_read_cap_eff(uint64_t *cap_eff);

/* Usage text listing every flag with its default, for --help and usage errors. */
void config_print_usage(int fd);

/* --check's report after every boot check passed: "configuration ok", then one
 * "key: value" line per thing the relay would serve (mode, listeners, workers, limits,
 * environment), so an operator or a script sees what the command line means. workers is
 * the resolved count (--workers 0 already turned into the CPU count). */
void config_print_summary(int fd, const struct config *cfg, uint32_t workers);
/* The --max-connections-per-ip a relay with this --max-connections gets by default. */
static inline uint32_t config_per_ip_default(uint32_t max_connections)
{
	uint32_t n = max_connections / CONFIG_PER_IP_DEFAULT_DIVISOR;
	n = MAX(n, CONFIG_PER_IP_DEFAULT_MIN);
	n = MIN(n, CONFIG_PER_IP_DEFAULT_MAX);
	return MIN(n, max_connections);
}

#endif
