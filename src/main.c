/*
 * main.c - boot: flags, environment and boot checks (reference §7.4), then the
 * workers, then wait for SIGTERM/SIGINT and drain (§7.6).
 *
 * Exit codes (reference §7.4): 0 --version, --help, or a signal-triggered drain (even
 * one cut short by the deadline); 1 runtime failure (bind, io_uring unavailable);
 * 2 configuration refused at boot.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "core/clock.h"
#include "control/autocert.h"
#include "control/push.h"
#include "core/log.h"
#include "core/notify.h"
#include "core/simd.h"
#include "engine/group.h"
#include "engine/handover.h"
#include "engine/migrate.h"
#include "engine/net.h"
#include "engine/worker.h"
#include "metrics/metrics_server.h"
#include "relay/relay.h"
#include "transport/tls.h"
#include "ws/ws_handshake.h"

#ifndef PYRELAY_VERSION
#define PYRELAY_VERSION "dev"
#endif

extern char **environ;

/* The served certificate's earliest notAfter (certificate-files mode), for the metrics
 * thread: written here at boot and on every reload. */
static int64_t served_cert_not_after_s;

/* SIGHUP in certificate-files mode: load and check the files again; a good pair is
 * served to new handshakes (live connections keep theirs), a bad one is logged and the
 * old certificate stays. */
static void reload_certificate(const struct config *cfg, struct tls_server *tls)
{
	struct tls_load_error err;
	struct tls_cert *cert = tls_cert_load(cfg->tls_cert, cfg->tls_key, (int64_t)time(NULL), &err);
	if (cert == NULL) {
		LOG_WARN("tls certificate reload failed; keeping the current one", KV_STR("err", err.reason),
			 KV_STR("reason", tls_load_result_name(err.result)), KV_STR("fix", err.fix));
		return;
	}
	__atomic_store_n(&served_cert_not_after_s, tls_cert_not_after_s(cert), __ATOMIC_RELAXED);
	tls_server_swap_cert(tls, cert);
	LOG_INFO("tls certificate reloaded");
}

/* §1.3: the cert-cache directory policy, at boot; false after logging "autocert setup
 * failed" (exit 1). */
static bool prepare_cert_cache(const struct config *cfg)
{
	struct autocert_cache_result res;
	char why[AUTOCERT_WHY_BYTES];
	if (!autocert_cache_prepare(cfg->cert_cache, (uint32_t)geteuid(), &res, why)) {
		LOG_ERROR("autocert setup failed", KV_STR("err", why), KV_STR("path", cfg->cert_cache),
			  KV_STR("fix", "give --cert-cache a directory owned by the relay's user with mode 0700 "
					"(chown, chmod 0700), or a path that does not exist yet"));
		return false;
	}
	if (res.tightened) {
		char from[8];
		snprintf(from, sizeof from, "%04o", res.from_mode);
		LOG_INFO("tightened cert cache dir perms", KV_STR("path", cfg->cert_cache), KV_STR("from", from),
			 KV_STR("to", "0700"));
	}
	return true;
}

/* Message and queue bytes may use at most this share of physical memory; the pool
 * takes it on demand and it is a ceiling, never a reservation. */
#define BUFFER_BUDGET_RAM_DIVISOR 4u
#define BUFFER_BUDGET_BYTES_MIN (64u * 1024u * 1024u)
/* File descriptors besides connections: listeners, eventfds, io_uring, stdio. */
#define FD_RESERVE 64u

static void log_refusal(const struct boot_refusal *r)
{
	struct log_kv kvs[BOOT_FIELDS_MAX];
	for (size_t i = 0; i < r->nfields && i < BOOT_FIELDS_MAX; i++)
		kvs[i] = KV_STR(r->fields[i].key, r->fields[i].value);
	log_event(LOG_LEVEL_ERROR, r->msg, kvs, r->nfields);
}

static uint64_t buffer_budget_bytes(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
	if (pages <= 0 || page <= 0)
		return BUFFER_BUDGET_BYTES_MIN;
	uint64_t budget = (uint64_t)pages * (uint64_t)page / BUFFER_BUDGET_RAM_DIVISOR;
	return budget < BUFFER_BUDGET_BYTES_MIN ? BUFFER_BUDGET_BYTES_MIN : budget;
}

/* Each connection is a descriptor. The soft RLIMIT_NOFILE is raised to what
 * --max-connections needs (its WebSockets, the connections still in their HTTP phase,
 * and the relay's own descriptors) when the hard limit allows; otherwise as far as it
 * allows, with a warning that names the numbers to change. */
static void raise_fd_limit(uint32_t max_connections)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	uint64_t want = (uint64_t)max_connections + HTTP_PHASE_CONNECTIONS_MAX + FD_RESERVE;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want ? rl.rlim_max : (rlim_t)want;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
		(void)getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
		return;
	uint64_t have = rl.rlim_cur;
	uint64_t reserved = (uint64_t)HTTP_PHASE_CONNECTIONS_MAX + FD_RESERVE;
	char value[32], fix[256];
	snprintf(value, sizeof value, "%llu", (unsigned long long)have);
	int n = snprintf(fix, sizeof fix,
			 "raise the hard limit to %llu (LimitNOFILE=%llu in the systemd unit, deploy/systemd/pyrycode-relay.service; "
			 "or ulimit -Hn %llu before starting)",
			 (unsigned long long)want, (unsigned long long)want, (unsigned long long)want);
	if (have > reserved && n > 0 && (size_t)n < sizeof fix)
		snprintf(fix + n, sizeof fix - (size_t)n, ", or lower --max-connections to %llu",
			 (unsigned long long)(have - reserved));
	LOG_WARN("file descriptor limit below --max-connections", KV_STR("value", value), KV_STR("fix", fix));
}

struct worker_thread {
	struct worker *w;
	const char *addr;
	pthread_t tid;
	int result;
	char why[URING_WHY_BYTES];
};

struct metrics_thread {
	struct metrics_server *m;
	const char *addr;
	pthread_t tid;
	bool started;
	bool failed; /* set before the SIGTERM it sends main; read after joining */
	char why[URING_WHY_BYTES];
};

static void *metrics_thread(void *arg)
{
	struct metrics_thread *t = arg;
	if (!metrics_server_run(t->m, t->why)) {
		/* A listener that stops serving is a listener failure (reference §7.6). */
		LOG_ERROR("listener failed", KV_STR("addr", t->addr), KV_STR("err", t->why));
		__atomic_store_n(&t->failed, true, __ATOMIC_RELEASE);
		kill(getpid(), SIGTERM);
	}
	return NULL;
}

/* RFC 6455 section 1.3's example key and accept: the loaded libcrypto's SHA-1 works
 * before the first client depends on it (and its code is paged in at start, not by
 * the first handshake). */
static bool handshake_self_test(void)
{
	static const char key[] = "dGhlIHNhbXBsZSBub25jZQ==";
	char accept[WS_ACCEPT_KEY_LEN + 1];
	return ws_handshake_accept(span_make(key, sizeof key - 1), accept) &&
	       strcmp(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0;
}

/* The relay's view of the push sender (relay/relay.h): admission on the worker. */
static const char *push_port_submit(void *ctx, struct span server_id, struct json_str token)
{
	return push_submit(ctx, server_id, token);
}

/* §7.4 step 11: push on when the credentials are set (config_check has already
 * refused a key it cannot use); NULL with *exit_code 0 when push is off. */
static struct push_sender *build_push(const struct config *cfg, int *exit_code)
{
	*exit_code = 0;
	if (cfg->fcm_credentials == NULL) {
		LOG_INFO("push off: PYRYCODE_RELAY_FCM_CREDENTIALS unset");
		return NULL;
	}
	struct config_fcm_credentials creds;
	char why[PUSH_WHY_BYTES] = "fcm credentials are not a service-account JSON key";
	struct push_sender *p = NULL;
	if (config_fcm_credentials_parse(cfg->fcm_credentials, &creds))
		p = push_sender_create(cfg, &creds, why);
	config_fcm_credentials_free(&creds);
	if (p == NULL || !push_sender_start(p)) {
		if (p != NULL)
			snprintf(why, sizeof why, "cannot start the push sender thread");
		push_sender_destroy(p);
		LOG_ERROR("refusing to start: cannot build the FCM push sender", KV_STR("err", why),
			  KV_STR("fix", "make --outbound-ca-file readable PEM, or unset PYRYCODE_RELAY_FCM_CREDENTIALS "
					"to run with push wake off"));
		*exit_code = CONFIG_EXIT_USAGE;
		return NULL;
	}
	return p;
}

static double wall_clock_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The CPUs this process may run on (sched_getaffinity), in order, at most cap; at least
 * one (CPU 0 when the mask cannot be read). */
static uint32_t allowed_cpus(int *cpus, uint32_t cap)
{
	cpu_set_t set;
	uint32_t n = 0;
	if (sched_getaffinity(0, sizeof set, &set) == 0) {
		for (int cpu = 0; cpu < CPU_SETSIZE && n < cap; cpu++)
			if (CPU_ISSET(cpu, &set))
				cpus[n++] = cpu;
	}
	if (n == 0)
		cpus[n++] = 0;
	return n;
}

static void *worker_thread(void *arg);

/* For the service manager (core/notify.h): READY=1 once, WATCHDOG=1 while true. */
static bool workers_running(void *group)
{
	return group_all_running(group);
}

/* A listener failed before any worker ran (bind error and the like): the reference logs
 * the failure, then drains (nothing to drain yet) and exits 1 (§7.6). */
/* What the boot has built so far, so a boot that fails after building some of it
 * returns everything before it exits (a leak checker sees the relay's own leaks only). */
static struct {
	struct push_sender *push;
	struct autocert *autocert;
	struct tls_cert *cert; /* until the TLS server takes it */
	struct tls_server *tls;
	struct worker_group *group;
	struct relay_shared *shared;
	struct worker *workers[CONFIG_WORKERS_MAX];
	uint32_t nworkers;
	struct metrics_server *metrics; /* until its thread runs */
	/* Running responders (metrics, HTTP-01): their listeners are handed over too. */
	struct metrics_server *responders[2];
	uint32_t nresponders;
} boot;

static void boot_release(void)
{
	for (uint32_t i = 0; i < boot.nworkers; i++)
		worker_destroy(boot.workers[i]);
	boot.nworkers = 0;
	if (boot.metrics)
		metrics_server_destroy(boot.metrics);
	relay_shared_destroy(boot.shared);
	worker_group_destroy(boot.group);
	if (boot.tls)
		tls_server_free(boot.tls);
	tls_cert_put(boot.cert);
	push_sender_destroy(boot.push);
	autocert_destroy(boot.autocert);
	boot.autocert = NULL;
	boot.metrics = NULL;
	boot.shared = NULL;
	boot.group = NULL;
	boot.tls = NULL;
	boot.cert = NULL;
	boot.push = NULL;
}

/* A successor serves our listeners (engine/handover.h). */
static void stop_accepting_all(void *arg)
{
	(void)arg;
	for (uint32_t i = 0; i < boot.nworkers; i++)
		worker_stop_accepting(boot.workers[i]);
	for (uint32_t i = 0; i < boot.nresponders; i++)
		metrics_server_stop_accepting(boot.responders[i]);
}

/* The successor takes live sessions: each worker gives up its movable ones. */
static void export_sessions(void *arg, struct handover_sessions *out)
{
	(void)arg;
	migrate_export(boot.workers, boot.nworkers, out);
}

/* Our predecessor's live sessions: to the workers that own their server-ids. */
static void resume_sessions(void *arg, struct handover_sessions *s)
{
	migrate_resume(arg, s);
}

static int boot_listener_failed(const char *addr, const char *err)
{
	boot_release();
	LOG_ERROR("listener failed", KV_STR("addr", addr), KV_STR("err", err));
	LOG_ERROR("listener error; draining");
	LOG_INFO("shutdown complete");
	return CONFIG_EXIT_RUNTIME;
}

static bool start_worker(struct worker_thread *t, int cpu)
{
	pthread_attr_t attr;
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	if (pthread_attr_init(&attr) != 0)
		return false;
	pthread_attr_setaffinity_np(&attr, sizeof one, &one);
	bool ok = pthread_create(&t->tid, &attr, worker_thread, t) == 0;
	pthread_attr_destroy(&attr);
	return ok;
}

static void *worker_thread(void *arg)
{
	struct worker_thread *t = arg;
	int result = worker_run(t->w, t->why);
	__atomic_store_n(&t->result, result, __ATOMIC_RELEASE);
	if (result == WORKER_EXIT_FATAL) {
		/* Reference §7.6: the listener's failure is logged when it happens, then main
		 * wakes from sigwait and drains (a dead worker means a dead relay: exit 1). */
		LOG_ERROR("listener failed", KV_STR("addr", t->addr), KV_STR("err", t->why));
		kill(getpid(), SIGTERM);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	double start_time_seconds = wall_clock_seconds();
	struct config cfg;
	struct boot_refusal refusal;
	int rc = config_parse(&cfg, argc, argv, environ, &refusal);
	if (rc == CONFIG_HELP) {
		config_print_usage(STDOUT_FILENO);
		return 0;
	}
	if (rc != CONFIG_OK) {
		fprintf(stderr, "%s\n", refusal.nfields ? refusal.fields[0].value : refusal.msg);
		config_print_usage(STDERR_FILENO);
		return CONFIG_EXIT_USAGE;
	}
	if (cfg.show_version) {
		printf("%s\n", PYRELAY_VERSION);
		return 0;
	}

	uint64_t cap_eff = 0;
	bool cap_ok = config_read_cap_eff(&cap_eff);
	rc = config_check_boot(&cfg, cap_eff, cap_ok, (uint32_t)geteuid(), &refusal);
	if (rc != CONFIG_OK) {
		log_refusal(&refusal);
		return rc;
	}
	/* the payload passes' instructions (core/simd.h), before any thread starts that
	 * could run one (the workers, push wake and autocert parse JSON);
	 * config_check_boot accepted the name and the CPU has the level */
	enum simd_level isa = SIMD_BASELINE;
	(void)config_payload_isa(cfg.payload_isa, &isa);
	simd_select(isa);
	/* §7.4 step 14, autocert branch: the cache directory (exit 1), then the ports */
	if (config_mode(&cfg) == CONFIG_MODE_AUTOCERT && !prepare_cert_cache(&cfg))
		return CONFIG_EXIT_RUNTIME;
	rc = config_check_listeners(&cfg, &refusal);
	if (rc != CONFIG_OK) {
		log_refusal(&refusal);
		return rc;
	}
	const char *listen = config_public_listen(&cfg);
	struct tls_cert *cert = NULL;
	if (config_mode(&cfg) == CONFIG_MODE_TLS_FILES) {
		struct tls_load_error err;
		cert = tls_cert_load(cfg.tls_cert, cfg.tls_key, (int64_t)time(NULL), &err);
		if (cert == NULL) {
			LOG_ERROR("refusing to start: invalid TLS certificate", KV_STR("err", err.reason),
				  KV_STR("reason", tls_load_result_name(err.result)), KV_STR("fix", err.fix));
			return CONFIG_EXIT_USAGE;
		}
		__atomic_store_n(&served_cert_not_after_s, tls_cert_not_after_s(cert), __ATOMIC_RELAXED);
	}
	struct autocert *ac = NULL;
	if (config_mode(&cfg) == CONFIG_MODE_AUTOCERT && !cfg.check_only) {
		/* the account key (created once) and the cached certificate, if any */
		char why[AUTOCERT_WHY_BYTES];
		struct autocert_config acfg = {
			.domain = cfg.domain,
			.cache_dir = cfg.cert_cache,
			.directory_url = cfg.acme_directory,
			.outbound_ca_file = cfg.outbound_ca_file,
			.cert_not_after_s = &served_cert_not_after_s,
		};
		ac = autocert_create(&acfg, why);
		if (ac == NULL) {
			LOG_ERROR("autocert setup failed", KV_STR("err", why),
				  KV_STR("fix", "make --cert-cache a directory the relay's user owns (mode 0700), and "
						"--outbound-ca-file readable PEM when given"));
			return CONFIG_EXIT_RUNTIME;
		}
	}
	boot.autocert = ac;

	/* Signals are taken by this thread alone with sigwait; workers never see them. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	if (config_mode(&cfg) == CONFIG_MODE_TLS_FILES)
		sigaddset(&sigs, SIGHUP); /* reloads the certificate files; elsewhere it ends us, as Go's */
	if (cfg.handover_socket[0] != '\0')
		sigaddset(&sigs, SIGUSR2); /* starts our successor (engine/handover.h) */
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* The sender thread starts with SIGTERM/SIGINT blocked, like every thread. */
	boot.cert = cert;
	struct push_sender *push = build_push(&cfg, &rc);
	boot.push = push;
	if (rc != 0) {
		boot_release();
		return rc;
	}
	static struct relay_push_port push_port;
	push_port = (struct relay_push_port){ .ctx = push, .submit = push_port_submit };

	if (!handshake_self_test()) {
		LOG_ERROR("refusing to start: SHA-1 self-test failed", KV_STR("fix", "check the BoringSSL libcrypto this binary loads"));
		boot_release();
		return CONFIG_EXIT_RUNTIME;
	}
	raise_fd_limit(cfg.max_connections);

	static int cpus[CONFIG_WORKERS_MAX];
	uint32_t ncpus = allowed_cpus(cpus, CONFIG_WORKERS_MAX);
	uint32_t nworkers = cfg.workers ? cfg.workers : ncpus;
	char nworkers_text[16];
	snprintf(nworkers_text, sizeof nworkers_text, "%u", nworkers);
	if (cfg.check_only) { /* every boot check passed; bind nothing */
		config_print_summary(STDOUT_FILENO, &cfg, nworkers);
		boot_release();
		return 0;
	}
	if (ac != NULL)
		LOG_INFO("starting", KV_STR("version", PYRELAY_VERSION), KV_STR("mode", "autocert"),
			 KV_STR("domain", cfg.domain), KV_STR("cert_cache", cfg.cert_cache), KV_STR("listen", listen),
			 KV_STR("https_proxy_protocol", cfg.https_proxy_protocol ? "true" : "false"),
			 KV_STR("workers", nworkers_text));
	else if (cert != NULL)
		LOG_INFO("starting", KV_STR("version", PYRELAY_VERSION), KV_STR("mode", "tls"), KV_STR("listen", listen),
			 KV_STR("https_proxy_protocol", cfg.https_proxy_protocol ? "true" : "false"),
			 KV_STR("workers", nworkers_text));
	else
		LOG_INFO("starting", KV_STR("version", PYRELAY_VERSION), KV_STR("mode", "insecure"),
			 KV_STR("listen", listen), KV_STR("workers", nworkers_text));
	struct tls_server *tls = NULL;
	if (cert != NULL) {
		tls = tls_server_new(cert, TLS_SNI_ANY, monotonic_ms());
		boot.cert = NULL; /* the server took it, also on failure */
		boot.tls = tls;
		if (tls == NULL)
			return boot_listener_failed(listen, "out of memory for TLS");
	} else if (ac != NULL) {
		/* only the domain; the cached certificate at once, else issuance on the first handshake */
		tls = tls_server_new(autocert_cert_take(ac), TLS_SNI_REQUIRED, monotonic_ms());
		boot.tls = tls;
		if (tls == NULL)
			return boot_listener_failed(listen, "out of memory for TLS");
		tls_server_set_acme(tls, autocert_domain(ac), autocert_want_cert, ac);
	}

	/* ADR 0018: a predecessor serving --handover-socket hands its listeners over;
	 * net_listen (workers, metrics) adopts them instead of binding. */
	int handover_conn = -1;
	bool handover_sessions = false;
	if (cfg.handover_socket[0] != '\0') {
		char hwhy[HANDOVER_WHY_BYTES];
		uint32_t adopted = 0;
		handover_conn = handover_take(cfg.handover_socket, !cfg.handover_no_sessions, &adopted,
					      &handover_sessions, hwhy);
		if (handover_conn == -2)
			return boot_listener_failed(cfg.handover_socket, hwhy);
		if (handover_conn >= 0)
			LOG_INFO("took over listeners", KV_STR("addr", cfg.handover_socket), KV_UINT("workers", adopted));
	}
	struct worker_group *group = worker_group_create(nworkers, cfg.max_connections);
	struct relay_shared *shared = relay_shared_create(&cfg, nworkers, push ? &push_port : NULL);
	boot.group = group;
	boot.shared = shared;
	if (group == NULL || shared == NULL || !group_set_ip_cap(group, cfg.max_connections_per_ip))
		return boot_listener_failed(listen, "out of memory for the workers");
	/* One ceiling for the relay, split evenly: a worker's pool never takes another's share. */
	uint64_t budget_per_worker = buffer_budget_bytes() / nworkers;
	static struct worker_thread threads[CONFIG_WORKERS_MAX];
	static struct metrics_source sources[CONFIG_WORKERS_MAX];
	char why[URING_WHY_BYTES];
	for (uint32_t i = 0; i < nworkers; i++) {
		struct worker *w = worker_create(&cfg, group, i, listen, tls, budget_per_worker, &relay_hooks, shared,
						 why);
		if (w == NULL)
			return boot_listener_failed(listen, why);
		boot.workers[boot.nworkers++] = w;
		threads[i].w = w;
		threads[i].addr = listen;
		sources[i] = (struct metrics_source){
			.engine = worker_stats_of(w),
			.relay = relay_stats_of(worker_app(w)),
			.pool = worker_pool_of(w),
		};
	}

	/* A predecessor with more workers had more listeners: ours share them out. */
	for (uint32_t k = 0, fd; (int)(fd = (uint32_t)net_take_adopted(listen)) >= 0; k++)
		if (!worker_add_listener(boot.workers[k % nworkers], (int)fd))
			close((int)fd);

	static struct metrics_thread mt;
	if (cfg.metrics_listen[0] != '\0') {
		/* The reference says so before its listeners start, so also before a bind failure. */
		LOG_INFO("starting metrics listener", KV_STR("listen", cfg.metrics_listen));
		mt.m = metrics_server_create(cfg.metrics_listen, sources, nworkers, PYRELAY_VERSION, start_time_seconds, why);
		if (mt.m == NULL)
			return boot_listener_failed(cfg.metrics_listen, why);
		boot.metrics = mt.m;
		mt.addr = cfg.metrics_listen;
		if (tls != NULL)
			metrics_server_set_tls(mt.m, &served_cert_not_after_s);
		if (tls != NULL && cfg.https_proxy_protocol)
			metrics_server_set_proxy_protocol(mt.m);
		if (ac != NULL)
			metrics_server_set_acme(mt.m, autocert_stats_of(ac));
		if (push != NULL)
			metrics_server_set_push(mt.m, push_sender_counts(push));
		if (pthread_create(&mt.tid, NULL, metrics_thread, &mt) != 0)
			return boot_listener_failed(cfg.metrics_listen, "cannot start metrics thread");
		mt.started = true;
		boot.metrics = NULL; /* its thread's now: stopped and destroyed at the end */
		boot.responders[boot.nresponders++] = mt.m;
	}

	/* --domain: the HTTP-01 listener (its own thread, as the metrics responder), then
	 * the issuance and renewal thread */
	static struct metrics_thread ct;
	if (ac != NULL) {
		ct.m = metrics_server_create_challenge(cfg.http_listen, autocert_challenge_lookup, ac, why);
		if (ct.m == NULL)
			return boot_listener_failed(cfg.http_listen, why);
		ct.addr = cfg.http_listen;
		/* the autocert thread first: a failure after it is undone by boot_release
		 * (autocert_destroy joins it); nothing undoes a running listener thread */
		if (!autocert_start(ac, tls)) {
			metrics_server_destroy(ct.m);
			return boot_listener_failed(listen, "cannot start the autocert thread");
		}
		if (pthread_create(&ct.tid, NULL, metrics_thread, &ct) != 0) {
			metrics_server_destroy(ct.m);
			return boot_listener_failed(cfg.http_listen, "cannot start the ACME challenge listener thread");
		}
		ct.started = true;
		boot.responders[boot.nresponders++] = ct.m;
	}

	for (uint32_t i = 0; i < nworkers; i++) {
		/* Worker i on the i-th CPU this process may use (round robin when there are
		 * more workers than CPUs): its ring, buffers and connections stay in one cache. */
		if (!start_worker(&threads[i], cpus[i % ncpus])) {
			/* The started workers wait at the start barrier for this one: nothing can
			 * drain, so leave at once. */
			LOG_ERROR("listener failed", KV_STR("addr", listen), KV_STR("err", "cannot start worker thread"));
			_exit(CONFIG_EXIT_RUNTIME);
		}
	}

	net_close_adopted(); /* handed over but not ours to serve (an address we no longer use) */
	struct notifier notifier;
	notify_init_from_env(&notifier);
	struct handover_server *handover = NULL;
	if (cfg.handover_socket[0] != '\0') {
		char hwhy[HANDOVER_WHY_BYTES];
		if (handover_conn >= 0 &&
		    !handover_finish(handover_conn, workers_running, group, &notifier, handover_sessions))
			LOG_WARN("handover aborted", KV_STR("err", "this relay did not start serving in time"));
		else if (handover_conn >= 0 && handover_sessions)
			handover_receive_sessions(handover_conn, resume_sessions, group); /* closes it */
		handover = handover_serve(cfg.handover_socket, stop_accepting_all, export_sessions, NULL, hwhy);
		if (handover == NULL)
			LOG_WARN("handover aborted", KV_STR("err", hwhy),
				 KV_STR("fix", "make the --handover-socket directory writable; restarts will not be seamless"));
	}
	int sig;
	while ((sig = notify_wait_signal(&notifier, &sigs, workers_running, workers_running, group)) == SIGHUP ||
	       sig == SIGUSR2) {
		if (sig == SIGUSR2) {
			handover_spawn(argv);
			continue;
		}
		notify_send(&notifier, "RELOADING=1");
		reload_certificate(&cfg, tls);
		notify_send(&notifier, "READY=1");
	}
	bool handed_over = handover_completed(handover);
	handover_server_stop(handover);
	if (!handed_over) /* after a hand-over the service goes on in our successor */
		notify_send(&notifier, "STOPPING=1");
	bool worker_failed = false;
	for (uint32_t i = 0; i < nworkers; i++)
		worker_failed |= __atomic_load_n(&threads[i].result, __ATOMIC_ACQUIRE) == WORKER_EXIT_FATAL;
	bool listener_failed = worker_failed || __atomic_load_n(&mt.failed, __ATOMIC_ACQUIRE) ||
			       __atomic_load_n(&ct.failed, __ATOMIC_ACQUIRE);
	/* §7.6: the trigger is logged before the drain; the failing listener logged itself. */
	if (listener_failed)
		LOG_ERROR("listener error; draining");
	else if (!handed_over)
		LOG_INFO("shutdown signal received; draining");
	/* A second signal is ignored (reference §7.6): it stays blocked and pending. */
	for (uint32_t i = 0; i < nworkers; i++)
		worker_stop(threads[i].w);
	if (mt.started)
		metrics_server_stop(mt.m);
	if (ct.started)
		metrics_server_stop(ct.m);
	autocert_stop(ac); /* cancels an issuance in progress */
	bool incomplete = false;
	const char *fatal_why = NULL;
	for (uint32_t i = 0; i < nworkers; i++) {
		pthread_join(threads[i].tid, NULL);
		if (threads[i].result == WORKER_EXIT_FATAL && fatal_why == NULL)
			fatal_why = threads[i].why;
		incomplete |= threads[i].result == WORKER_EXIT_DRAIN_INCOMPLETE;
		/* a worker whose loop failed could not close what it held */
		incomplete |= threads[i].result == WORKER_EXIT_FATAL &&
			      STAT_GET(worker_stats_of(threads[i].w)->connections_open) > 0;
	}
	/* §7.6: after the drain, cancel the wakes still in flight (each logs its outcome);
	 * no worker can submit any more */
	if (push != NULL)
		push_sender_stop(push);
	if (mt.started) {
		pthread_join(mt.tid, NULL);
		metrics_server_destroy(mt.m);
	}
	if (ct.started) {
		pthread_join(ct.tid, NULL);
		metrics_server_destroy(ct.m);
	}
	/* Every failed worker logged itself; the exit code says a listener failed. */
	int exit_code = (fatal_why != NULL || mt.failed || ct.failed) ? CONFIG_EXIT_RUNTIME : 0;
	if (incomplete) {
		LOG_WARN("shutdown deadline exceeded; force-closed listeners");
		LOG_WARN("drain incomplete");
	} else {
		LOG_INFO("shutdown complete");
	}
	for (uint32_t i = 0; i < nworkers; i++)
		worker_destroy(threads[i].w);
	relay_shared_destroy(shared);
	worker_group_destroy(group);
	if (tls != NULL)
		tls_server_free(tls);
	autocert_destroy(ac);
	notify_close(&notifier);
	push_sender_destroy(push);
	return exit_code;
}
