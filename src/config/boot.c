/*
 * boot.c - the environment (reference §7.3) and the boot checks of config_check
 * (§7.4 steps 3-10, then the metrics listener §1.5 and the listener addresses §1.6),
 * including the Linux capability check and reading CapEff from /proc/self/status.
 *
 * Every check is a pure function of struct config and the numbers main reads from the
 * kernel; only config_read_cap_eff does I/O. A refusal is data (a message, fields, an
 * exit code) so main logs it with the reference's exact keys and the checks are
 * testable one by one, in order.
 */
#include "config/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "core/addr.h"

#define CAP_NET_BIND_SERVICE_BIT 10u
#define CAP_ALLOWED_MASK (1ull << CAP_NET_BIND_SERVICE_BIT)

/* /proc/self/status is under 2 KiB on current kernels: ample headroom. */
#define PROC_STATUS_BYTES_MAX 16384

/* ---- the environment (§7.3) -------------------------------------------------- */

/* getenv over envp: the first entry wins, as with glibc and Go. */
static const char *env_get(char *const envp[], const char *name)
{
	size_t n = strlen(name);

	for (; envp && *envp; envp++) {
		if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
			return *envp + n + 1;
	}
	return NULL;
}

void config_read_env(struct config *cfg, char *const envp[])
{
	cfg->production_env = env_get(envp, "PYRYCODE_RELAY_PRODUCTION");
	cfg->single_instance_env = env_get(envp, "PYRYCODE_RELAY_SINGLE_INSTANCE");
	cfg->production = cfg->production_env && strcmp(cfg->production_env, "1") == 0;
	cfg->single_instance = cfg->single_instance_env && strcmp(cfg->single_instance_env, "1") == 0;
	cfg->handover_no_sessions_env = env_get(envp, "PYRYCODE_RELAY_HANDOVER_NO_SESSIONS");
	cfg->handover_no_sessions =
		cfg->handover_no_sessions_env && strcmp(cfg->handover_no_sessions_env, "1") == 0;
	cfg->fcm_credentials = env_get(envp, "PYRYCODE_RELAY_FCM_CREDENTIALS");
	cfg->fly_app_name = env_get(envp, "FLY_APP_NAME");
	cfg->home = env_get(envp, "HOME");
}

/* ---- the payload passes' instructions (ours, ADR 19) -------------------------- */

bool config_payload_isa(const char *name, enum simd_level *level)
{
	static const enum simd_level named[] = { SIMD_AVX2, SIMD_SSE2, SIMD_WORD };

	if (strcmp(name, "auto") == 0) {
		*level = simd_detect();
		return true;
	}
	for (size_t i = 0; i < ARRAY_LEN(named); i++) {
		if (strcmp(name, simd_name(named[i])) == 0) {
			*level = named[i];
			return true;
		}
	}
	return false;
}

static int check_payload_isa(const char *name, struct boot_refusal *r)
{
	enum simd_level level, most = simd_detect();
	char q[QUOTE_BYTES];

	if (!config_payload_isa(name, &level)) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid --payload-isa");
		field_add(r, "err", "relay: --payload-isa %s: not auto, avx2, sse2 or word",
			  config_quote(q, sizeof q, name));
		if (name[0] != '\0')
			field_add(r, "value", "%s", name);
		field_add(r, "fix", "pass auto (the widest this CPU has, the default), avx2, sse2 or word");
		return CONFIG_EXIT_USAGE;
	}
	if (level > most) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid --payload-isa");
		field_add(r, "err", "relay: --payload-isa %s: this CPU or build has at most %s", simd_name(level),
			  simd_name(most));
		field_add(r, "value", "%s", name);
		field_add(r, "fix", "pass auto, or %s or narrower", simd_name(most));
		return CONFIG_EXIT_USAGE;
	}
	return CONFIG_OK;
}

/* ---- the metrics listener (§1.5) -------------------------------------------- */

bool config_metrics_listen_valid(const char *s, const char **why)
{
	struct listen_addr a;
	enum addr_error e;

	if (!s || s[0] == '\0') {
		*why = "metrics listener bind address is empty";
		return false;
	}
	e = addr_parse_listen(s, false, &a);
	if (e == ADDR_ERR_HOST_NOT_IP) {
		/* Say why a name is refused: resolving it would reopen a DNS-rebinding
		 * window between this check and bind. */
		*why = "host is not an IP literal (hostnames are rejected to avoid DNS-time "
		       "TOCTOU; provide a loopback IP literal such as 127.0.0.1 or [::1])";
		return false;
	}
	if (e != ADDR_OK) {
		*why = addr_error_text(e);
		return false;
	}
	/* ::ffff:127.0.0.1 is refused too: the rule is 127.0.0.0/8 or exactly ::1 */
	if (!addr_is_loopback(&a)) {
		*why = "host is not a loopback IP (127.0.0.0/8 or ::1)";
		return false;
	}
	return true;
}

/* ---- Linux capabilities (§7.4 step 10) --------------------------------------- */

/* include/uapi/linux/capability.h; bit positions are ABI and only ever appended. */
static const char *const cap_names[] = {
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
	"CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
	"CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
	"CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
	"CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
	"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
};

_Static_assert(ARRAY_LEN(cap_names) == 41, "capability table covers bits 0..40");

static void cap_name(char *out, size_t cap, unsigned bit)
{
	if (bit < ARRAY_LEN(cap_names))
		snprintf(out, cap, "%s (bit %u)", cap_names[bit], bit);
	else
		snprintf(out, cap, "bit %u", bit);
}

/* "<prefix><CAP_X (bit N), ...>; allowlist: [...]", naming every offending bit that
 * fits the field; a full root set does not, so the rest is counted and the raw mask
 * goes into its own field. */
static void cap_refusal_err(char *out, size_t cap, uint64_t unexpected)
{
	static const char prefix[] = "relay: process has unexpected effective Linux capabilities: ";
	static const char suffix[] = "; allowlist: [CAP_NET_BIND_SERVICE (bit 10)]";
	static const size_t more_room = 48; /* ", and NN more (see value)" */
	size_t n = 0, budget;

	ASSERT(cap > sizeof prefix + sizeof suffix + more_room);
	budget = cap - sizeof suffix - more_room;
	memcpy(out, prefix, sizeof prefix - 1);
	n = sizeof prefix - 1;
	for (unsigned bit = 0; bit < 64; bit++) {
		if (!(unexpected & (1ull << bit)))
			continue;
		char item[48];
		cap_name(item, sizeof item, bit);
		size_t len = strlen(item) + (n > sizeof prefix - 1 ? 2 : 0);
		if (n + len >= budget) {
			unsigned rest = (unsigned)__builtin_popcountll(unexpected >> bit);
			n += (size_t)snprintf(out + n, cap - n, ", and %u more (see value)", rest);
			break;
		}
		n += (size_t)snprintf(out + n, cap - n, "%s%s", n > sizeof prefix - 1 ? ", " : "", item);
	}
	snprintf(out + n, cap - n, "%s", suffix);
}

/* ---- config_check ------------------------------------------------------------ */

static int refuse_env(struct boot_refusal *r, const char *name, const char *reason,
		      const char *fix)
{
	refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid env-var config");
	field_add(r, "err", "relay: invalid env-var config: %s: %s", name, reason);
	field_add(r, "env_var", "%s", name);
	field_add(r, "reason", "%s", reason);
	field_add(r, "fix", "%s", fix);
	return CONFIG_EXIT_USAGE;
}

/* §7.3: the first failing variable, in the reference's registry order. */
static int check_env(const struct config *cfg, struct boot_refusal *r)
{
	const struct {
		const char *name;
		const char *value;
		const char *fix;
	} one_or_unset[] = {
		{ "PYRYCODE_RELAY_PRODUCTION", cfg->production_env,
		  "set PYRYCODE_RELAY_PRODUCTION=1 for production mode, or unset it" },
		{ "PYRYCODE_RELAY_SINGLE_INSTANCE", cfg->single_instance_env,
		  "set PYRYCODE_RELAY_SINGLE_INSTANCE=1 to assert single-instance intent, or unset it" },
		{ "PYRYCODE_RELAY_HANDOVER_NO_SESSIONS", cfg->handover_no_sessions_env,
		  "set PYRYCODE_RELAY_HANDOVER_NO_SESSIONS=1 to take no live sessions at a hand-over, or unset it" },
	};

	for (size_t i = 0; i < ARRAY_LEN(one_or_unset); i++) {
		const char *v = one_or_unset[i].value;
		char q[QUOTE_BYTES], reason[BOOT_FIELD_VALUE_BYTES];

		if (!v || strcmp(v, "1") == 0)
			continue;
		snprintf(reason, sizeof reason, "malformed-value: expected \"1\" or unset, got %s",
			 config_quote(q, sizeof q, v));
		return refuse_env(r, one_or_unset[i].name, reason, one_or_unset[i].fix);
	}
	if (cfg->fcm_credentials && !config_fcm_credentials_usable(cfg->fcm_credentials))
		/* never echo any of it: it is a private key */
		return refuse_env(r, "PYRYCODE_RELAY_FCM_CREDENTIALS",
				  "not a service-account JSON key (value withheld)",
				  "set PYRYCODE_RELAY_FCM_CREDENTIALS to the whole service-account JSON key "
				  "file, or unset it to run with push wake off");
	return CONFIG_OK;
}

static int check_listener(const char *addr, bool allow_empty_host, struct boot_refusal *r)
{
	struct listen_addr a;
	char q[QUOTE_BYTES];
	enum addr_error e = addr_parse_listen(addr, allow_empty_host, &a);

	if (e == ADDR_OK)
		return CONFIG_OK;
	refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid listener address");
	field_add(r, "err", "relay: parsing listener address %s: %s", config_quote(q, sizeof q, addr),
		  addr_error_text(e));
	field_add(r, "addr", "%s", addr);
	field_add(r, "fix", "use IP:PORT or :PORT with a numeric port 1-65535, e.g. :8443, "
			    "0.0.0.0:8080 or [::1]:8080; hostnames are not resolved");
	return CONFIG_EXIT_USAGE;
}

enum config_mode config_mode(const struct config *cfg)
{
	if (cfg->insecure_listen[0] != '\0')
		return CONFIG_MODE_INSECURE;
	if (cfg->tls_cert[0] != '\0' || cfg->tls_key[0] != '\0')
		return CONFIG_MODE_TLS_FILES;
	return CONFIG_MODE_AUTOCERT;
}

const char *config_public_listen(const struct config *cfg)
{
	return config_mode(cfg) == CONFIG_MODE_INSECURE ? cfg->insecure_listen : cfg->https_listen;
}

/* Certificate-files mode (our addition): both files, and none of the other modes'
 * flags. Their contents are checked by main (transport/tls.h), after these. */
static int check_tls_files_mode(const struct config *cfg, struct boot_refusal *r)
{
	bool files = cfg->tls_cert[0] != '\0' || cfg->tls_key[0] != '\0';
	if (!files)
		return CONFIG_OK;
	if (cfg->insecure_listen[0] != '\0' || cfg->domain[0] != '\0') {
		refusal_begin(r, CONFIG_EXIT_USAGE,
			      "refusing to start: --tls-cert / --tls-key are mutually exclusive with --insecure-listen and --domain");
		field_add(r, "err", "relay: --tls-cert/--tls-key given with%s%s",
			  cfg->insecure_listen[0] ? " --insecure-listen" : "", cfg->domain[0] ? " --domain" : "");
		field_add(r, "fix", "use --tls-cert and --tls-key with --https-listen (certificate files), OR "
				    "--domain (autocert), OR --insecure-listen behind a TLS proxy");
		return CONFIG_EXIT_USAGE;
	}
	if (cfg->tls_cert[0] == '\0' || cfg->tls_key[0] == '\0' || cfg->http_listen_set) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid certificate-files mode");
		if (cfg->http_listen_set)
			field_add(r, "err", "relay: --http-listen is the ACME challenge listener; certificate-files mode opens none");
		else
			field_add(r, "err", "relay: %s given without %s", cfg->tls_cert[0] ? "--tls-cert" : "--tls-key",
				  cfg->tls_cert[0] ? "--tls-key" : "--tls-cert");
		field_add(r, "fix", "pass both --tls-cert PATH and --tls-key PATH, and no --http-listen");
		return CONFIG_EXIT_USAGE;
	}
	return CONFIG_OK;
}

/* --domain as a DNS name (the certificate is for it and the cache file is named by it). */
bool config_domain_valid(const char *d)
{
	size_t n = strlen(d), label = 0;
	if (n == 0 || n > 253 || d[0] == '.' || d[n - 1] == '.')
		return false;
	for (size_t i = 0; i <= n; i++) {
		char ch = d[i];
		if (ch == '.' || ch == '\0') {
			if (label == 0 || label > 63 || d[i - 1] == '-' || d[i - label] == '-')
				return false;
			label = 0;
			continue;
		}
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-'))
			return false;
		label++;
	}
	return true;
}

int config_check(const struct config *cfg, uint64_t cap_eff, bool cap_eff_ok, uint32_t euid,
		 struct boot_refusal *r)
{
	int rc = config_check_boot(cfg, cap_eff, cap_eff_ok, euid, r);
	return rc != CONFIG_OK ? rc : config_check_listeners(cfg, r);
}

int config_check_boot(const struct config *cfg, uint64_t cap_eff, bool cap_eff_ok, uint32_t euid,
		      struct boot_refusal *r)
{
	bool insecure = cfg->insecure_listen[0] != '\0';
	bool files = config_mode(cfg) == CONFIG_MODE_TLS_FILES;
	char q[QUOTE_BYTES];
	int rc;

	refusal_begin(r, CONFIG_OK, NULL);

	/* our certificate-files mode first: its flags decide what a mode is */
	rc = check_tls_files_mode(cfg, r);
	if (rc != CONFIG_OK)
		return rc;

	/* 3. a mode */
	if (!insecure && !files && cfg->domain[0] == '\0') {
		refusal_begin(r, CONFIG_EXIT_USAGE,
			      "either --domain (for autocert) or --insecure-listen (for behind-proxy mode) must be set");
		field_add(r, "err", "relay: neither --domain nor --insecure-listen is set");
		field_add(r, "fix", "pass --domain FQDN to terminate TLS here, or --insecure-listen "
				    "IP:PORT behind a TLS-terminating reverse proxy");
		return CONFIG_EXIT_USAGE;
	}

	/* 3b. (ours) the domain is a DNS name: it names the certificate and its cache file */
	if (config_mode(cfg) == CONFIG_MODE_AUTOCERT && !config_domain_valid(cfg->domain)) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid --domain");
		field_add(r, "err", "relay: --domain %s is not a DNS name", config_quote(q, sizeof q, cfg->domain));
		field_add(r, "value", "%s", cfg->domain);
		field_add(r, "fix", "pass the fully qualified host name clients connect to, e.g. --domain relay.example.com "
				    "(letters, digits, '-' and '.', no scheme, port or trailing dot)");
		return CONFIG_EXIT_USAGE;
	}

	/* 4. autocert-only flags given explicitly (even with their defaults) */
	if (insecure && (cfg->https_listen_set || cfg->http_listen_set || cfg->https_proxy_protocol_set)) {
		refusal_begin(r, CONFIG_EXIT_USAGE,
			      "refusing to start: --insecure-listen is mutually exclusive with --http-listen / --https-listen / --https-proxy-protocol");
		field_add(r, "err", "relay: --insecure-listen given with%s%s%s",
			  cfg->http_listen_set ? " --http-listen" : "",
			  cfg->https_listen_set ? " --https-listen" : "",
			  cfg->https_proxy_protocol_set ? " --https-proxy-protocol" : "");
		field_add(r, "fix", "use --insecure-listen alone (proxy-fronted plaintext mode), OR use "
				    "--domain with optional --http-listen / --https-listen (autocert mode); "
				    "the autocert flags have no effect in insecure mode");
		return CONFIG_EXIT_USAGE;
	}

	/* 5. the connection cap */
	if (cfg->max_connections == 0 || cfg->max_connections > CONFIG_MAX_CONNECTIONS_LIMIT) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid --max-connections");
		if (cfg->max_connections == 0)
			field_add(r, "err", "max-connections 0: relay: connection cap must be positive");
		else
			field_add(r, "err", "max-connections %u: relay: connection cap must be at most %u",
				  cfg->max_connections, CONFIG_MAX_CONNECTIONS_LIMIT);
		field_add(r, "value", "%u", cfg->max_connections);
		field_add(r, "fix", "pass a connection count from 1 to %u, or omit the flag for the "
				    "default (%u)", CONFIG_MAX_CONNECTIONS_LIMIT,
			  CONFIG_MAX_CONNECTIONS_DEFAULT);
		return CONFIG_EXIT_USAGE;
	}

	/* 5b. the per-IP connection cap (ours): 0 is off (config_parse set the default) */
	if (cfg->max_connections_per_ip > CONFIG_MAX_CONNECTIONS_LIMIT) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid --max-connections-per-ip");
		field_add(r, "err", "max-connections-per-ip %u: relay: per-IP cap must be at most %u",
			  cfg->max_connections_per_ip, CONFIG_MAX_CONNECTIONS_LIMIT);
		field_add(r, "value", "%u", cfg->max_connections_per_ip);
		field_add(r, "fix", "pass 0 (off) to %u, or omit the flag for the default (a tenth of "
				    "--max-connections, %u to %u)", CONFIG_MAX_CONNECTIONS_LIMIT,
			  CONFIG_PER_IP_DEFAULT_MIN, CONFIG_PER_IP_DEFAULT_MAX);
		return CONFIG_EXIT_USAGE;
	}

	/* 5c. (ours) the payload passes' instructions */
	rc = check_payload_isa(cfg->payload_isa, r);
	if (rc != CONFIG_OK)
		return rc;

	/* 6. environment */
	rc = check_env(cfg, r);
	if (rc != CONFIG_OK)
		return rc;

	/* 7. one registry per deploy */
	if (!cfg->single_instance && cfg->fly_app_name && cfg->fly_app_name[0] != '\0') {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: multi-instance deploy detected");
		field_add(r, "err", "relay: multi-instance deploy detected; set "
				    "PYRYCODE_RELAY_SINGLE_INSTANCE=1 to bypass");
		field_add(r, "bypass_env_var", "PYRYCODE_RELAY_SINGLE_INSTANCE");
		field_add(r, "fix", "set PYRYCODE_RELAY_SINGLE_INSTANCE=1 in the deploy manifest (e.g. "
				    "fly.toml [env]) to assert single-instance intent; the registry lives "
				    "in one process (docs/configuration.md)");
		return CONFIG_EXIT_USAGE;
	}

	/* 8, 9. production mode */
	if (cfg->production && insecure) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: production-mode misconfiguration");
		field_add(r, "err", "relay: --insecure-listen is set with PYRYCODE_RELAY_PRODUCTION=1; "
				    "refusing to start");
		field_add(r, "env_var", "PYRYCODE_RELAY_PRODUCTION");
		field_add(r, "fix", "remove --insecure-listen and set --domain, or unset "
				    "PYRYCODE_RELAY_PRODUCTION");
		return CONFIG_EXIT_USAGE;
	}
	if (cfg->production && euid == 0) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: production-mode misconfiguration");
		field_add(r, "err", "relay: effective uid is 0 with PYRYCODE_RELAY_PRODUCTION=1; "
				    "refusing to start");
		field_add(r, "env_var", "PYRYCODE_RELAY_PRODUCTION");
		field_add(r, "effective_uid", "%u", euid);
		field_add(r, "fix", "drop privileges before exec (systemd User=, docker --user <non-zero>, "
				    "kubernetes securityContext.runAsUser), or unset "
				    "PYRYCODE_RELAY_PRODUCTION if the deploy is truly dev");
		return CONFIG_EXIT_USAGE;
	}

	/* 10. capabilities: only CAP_NET_BIND_SERVICE, and only CapEff */
	if (!cap_eff_ok || (cap_eff & ~CAP_ALLOWED_MASK) != 0) {
		static const char fix[] = "drop extra capabilities (e.g. --cap-drop=ALL "
					  "--cap-add=NET_BIND_SERVICE on docker, "
					  "AmbientCapabilities=CAP_NET_BIND_SERVICE with no other "
					  "capabilities in systemd, or securityContext.capabilities on "
					  "kubernetes)";
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: unexpected Linux capabilities");
		if (!cap_eff_ok) {
			field_add(r, "err", "relay: could not read the CapEff line of /proc/self/status");
		} else {
			ASSERT(r->nfields == 0);
			r->fields[0].key = "err";
			cap_refusal_err(r->fields[0].value, sizeof r->fields[0].value,
					cap_eff & ~CAP_ALLOWED_MASK);
			r->nfields = 1;
			field_add(r, "value", "%016llx", (unsigned long long)cap_eff);
		}
		field_add(r, "fix", "%s", fix);
		return CONFIG_EXIT_USAGE;
	}

	/* 12. metrics listener: loopback IP literal, or "" for none */
	if (cfg->metrics_listen[0] != '\0') {
		const char *why;
		if (!config_metrics_listen_valid(cfg->metrics_listen, &why)) {
			refusal_begin(r, CONFIG_EXIT_USAGE,
				      "refusing to start: invalid --metrics-listen address");
			field_add(r, "err", "relay: metrics listener address %s: %s",
				  config_quote(q, sizeof q, cfg->metrics_listen), why);
			field_add(r, "value", "%s", cfg->metrics_listen);
			field_add(r, "fix", "use a loopback IP literal such as 127.0.0.1:9090 or [::1]:9090, "
					    "or pass --metrics-listen= to disable");
			return CONFIG_EXIT_USAGE;
		}
	}

	/* 13. the hand-over socket (ADR 0018): a unix socket path, with room for the
	 * ".PID" suffix of the name it is bound under before the rename */
	if (cfg->handover_socket[0] != '\0' && strlen(cfg->handover_socket) + 12 > CONFIG_HANDOVER_PATH_BYTES_MAX) {
		refusal_begin(r, CONFIG_EXIT_USAGE, "refusing to start: invalid --handover-socket");
		field_add(r, "err", "relay: handover socket path longer than %u bytes",
			  CONFIG_HANDOVER_PATH_BYTES_MAX - 12);
		field_add(r, "value", "%s", cfg->handover_socket);
		field_add(r, "fix", "use a shorter path, such as /run/pyrycode-relay/handover.sock");
		return CONFIG_EXIT_USAGE;
	}

	return CONFIG_OK;
}

int config_check_listeners(const struct config *cfg, struct boot_refusal *r)
{
	bool insecure = cfg->insecure_listen[0] != '\0';
	bool files = config_mode(cfg) == CONFIG_MODE_TLS_FILES;
	int rc;

	refusal_begin(r, CONFIG_OK, NULL);
	/* 14. the ports of the mode's listeners (§1.6). The expected and actual sets are
	 * built from the same flags, so the surplus check belongs to whoever adds a
	 * listener that is not a flag; what can fail here is the address itself. */
	if (insecure) {
		rc = check_listener(cfg->insecure_listen, true, r);
	} else if (files) {
		rc = check_listener(cfg->https_listen, true, r);
	} else {
		rc = check_listener(cfg->https_listen, true, r);
		if (rc == CONFIG_OK)
			rc = check_listener(cfg->http_listen, true, r);
	}
	if (rc != CONFIG_OK)
		return rc;
	if (cfg->metrics_listen[0] != '\0')
		return check_listener(cfg->metrics_listen, false, r);
	return CONFIG_OK;
}

/* ---- /proc/self/status ------------------------------------------------------- */

/* The hex mask on the "CapEff:" line; false when the line is missing or malformed. */
static bool parse_cap_eff(const char *status, uint64_t *out)
{
	const char *p = status;

	for (;;) {
		if (strncmp(p, "CapEff:", 7) == 0)
			break;
		p = strchr(p, '\n');
		if (!p)
			return false;
		p++;
	}
	p += 7;
	while (*p == ' ' || *p == '\t')
		p++;

	uint64_t v = 0;
	const char *digits = p;
	for (; hex_digit_value((uint8_t)*p) >= 0; p++) {
		if (v >> 60)
			return false; /* more than 64 bits */
		v = v << 4 | (uint64_t)hex_digit_value((uint8_t)*p);
	}
	if (p == digits)
		return false;
	while (*p == ' ' || *p == '\t' || *p == '\r')
		p++;
	if (*p != '\n' && *p != '\0')
		return false;
	*out = v;
	return true;
}

bool config_read_cap_eff(uint64_t *cap_eff)
{
	char buf[PROC_STATUS_BYTES_MAX];
	size_t len = 0;
	int fd;

	fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	while (len < sizeof buf - 1) {
		ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	return parse_cap_eff(buf, cap_eff);
}
