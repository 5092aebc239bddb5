/*
 * The way out for a record line: one persistent Unix stream connection per process (per FPM child), one non-blocking
 * send(2) per request on it, a wait for room bounded by sidekick.agent_max_wait_us, the spill file when the agent
 * cannot take the line, and the drop count reported to the agent as one control line in front of the next line that
 * gets out. The rules are the userland client's (clients/php/sidekick-agent.php): read its comments for the why of
 * each; this file says where C does it differently.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "php.h"
#include "SAPI.h"
#include "zend_exceptions.h"
#include "php_sidekick.h"

/* This process's pid: set at MINIT and in every forked child (pthread_atfork), so a request needs no getpid(2). */
pid_t sk_pid;
/*
 * Drops not yet reported to the agent, shared by every PHP process that spills to the same directory: the userland
 * client's APCu key 'sidekick.agent.unreported', without APCu. A file of 8 bytes beside the spill file
 * (<spill dir>/drops.unreported, group-writable like it; the agent ignores it), mapped shared by each process once:
 * any process's next send that works takes the count (an atomic exchange: one sender gets it) and writes it in front
 * of its line; a write that fails gives it back. It outlives FPM restarts. Not on the CLI, where, as with the userland
 * client, a request's drops end in the spill file at the end of the request.
 */
static _Atomic int64_t *pool_unreported;
static uint64_t pool_key;

/* Per process, re-read every SK_PROCESS_CACHE_NS: one uname(2) (and one stat(2) for the default socket) per 10 s. */
static char host[256];
static size_t host_len;
static uint64_t host_at;
static char default_socket[256];
static uint64_t default_socket_at;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts); /* vDSO: no system call */
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void sk_transport_minit(void)
{
	sk_pid = getpid();
}

void sk_transport_mshutdown(void)
{
	if (pool_unreported) {
		munmap((void *)pool_unreported, sizeof(*pool_unreported));
		pool_unreported = NULL;
	}
}

void sk_transport_atfork_child(void)
{
	sk_pid = getpid();
	host_at = default_socket_at = 0; /* a child may run as another user (FPM): look again */
	/* The connection belongs to the parent: two processes writing lines on one stream would interleave them. */
	if (SKG(fd) >= 0) {
		close(SKG(fd));
		SKG(fd) = -1;
	}
}


/* ------------------------------------------------------------------------------------------------ settings */

/* getenv() as PHP's: the SAPI's request variables first (FastCGI params under FPM), then the environment. */
static zend_string *sk_getenv(const char *name)
{
	char *v = sapi_getenv(name, strlen(name));
	if (v) {
		zend_string *s = zend_string_init(v, strlen(v), 0);
		efree(v);
		return s;
	}
	const char *e = getenv(name);
	return e ? zend_string_init(e, strlen(e), 0) : NULL;
}

/* A setting: env or FastCGI param, else the ini entry (registered by this extension: php.ini, -d, php_value). */
zend_string *sk_setting(const char *env, const char *ini)
{
	if (env) {
		zend_string *v = sk_getenv(env);
		if (v && ZSTR_LEN(v) > 0) {
			return v;
		}
		if (v) {
			zend_string_release(v);
		}
	}
	if (ini) {
		char *v = zend_ini_string_ex(ini, strlen(ini), 0, NULL);
		if (v && *v) {
			return zend_string_init(v, strlen(v), 0);
		}
	}
	return NULL;
}

bool sk_flag(const char *env, const char *ini)
{
	zend_string *v = sk_setting(env, ini);
	if (!v) {
		return false;
	}
	bool on = zend_string_equals_literal_ci(v, "1") || zend_string_equals_literal_ci(v, "on")
		|| zend_string_equals_literal_ci(v, "true") || zend_string_equals_literal_ci(v, "yes");
	zend_string_release(v);
	return on;
}

static zend_long setting_long(const char *env, const char *ini, zend_long def)
{
	zend_string *v = sk_setting(env, ini);
	if (!v) {
		return def;
	}
	zend_long n = ZEND_STRTOL(ZSTR_VAL(v), NULL, 10);
	zend_string_release(v);
	return n;
}

/* As the agent's default: /run/sidekick when root or when it exists, else $XDG_RUNTIME_DIR/sidekick, else ./var. */
static const char *default_socket_path(void)
{
	uint64_t now = now_ns();
	if (default_socket_at && now - default_socket_at < SK_PROCESS_CACHE_NS) {
		return default_socket;
	}
	struct stat st;
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	char cwd[200];
	if (geteuid() == 0 || (stat("/run/sidekick", &st) == 0 && S_ISDIR(st.st_mode))) {
		snprintf(default_socket, sizeof(default_socket), "%s", SK_DEFAULT_ROOT_SOCKET);
	} else if (xdg && *xdg) {
		size_t n = strlen(xdg);
		while (n > 1 && xdg[n - 1] == '/') {
			n--;
		}
		snprintf(default_socket, sizeof(default_socket), "%.*s/sidekick/agent.sock", (int)n, xdg);
	} else {
		snprintf(default_socket, sizeof(default_socket), "%s/var/agent.sock", getcwd(cwd, sizeof(cwd)) ? cwd : ".");
	}
	default_socket_at = now;
	return default_socket;
}

/* The socket: env / FastCGI param, else constant SIDEKICK_AGENT_SOCKET, else ini, else the default. Once a request. */
zend_string *sk_socket_path(void)
{
	if (SKG(socket)) {
		return SKG(socket);
	}
	zend_string *path = sk_setting("SIDEKICK_AGENT_SOCKET", NULL);
	if (!path) {
		zval *c = zend_get_constant_str(ZEND_STRL("SIDEKICK_AGENT_SOCKET"));
		if (c && Z_TYPE_P(c) != IS_NULL) {
			path = zval_get_string(c);
			if (ZSTR_LEN(path) == 0) {
				zend_string_release(path);
				path = NULL;
			}
		}
	}
	if (!path) {
		path = sk_setting(NULL, "sidekick.agent_socket");
	}
	if (!path) {
		const char *d = default_socket_path();
		path = zend_string_init(d, strlen(d), 0);
	}
	return SKG(socket) = path;
}

static zend_string *dirname_of(zend_string *path)
{
	zend_string *d = zend_string_init(ZSTR_VAL(path), ZSTR_LEN(path), 0);
	ZSTR_LEN(d) = zend_dirname(ZSTR_VAL(d), ZSTR_LEN(d));
	return d;
}

zend_string *sk_spill_dir(void)
{
	if (!SKG(spill_dir)) {
		zend_string *d = sk_setting("SIDEKICK_AGENT_SPILL_DIR", "sidekick.agent_spill_dir");
		if (!d) {
			zend_string *parent = dirname_of(sk_socket_path());
			d = zend_string_concat2(ZSTR_VAL(parent), ZSTR_LEN(parent), ZEND_STRL("/spill"));
			zend_string_release(parent);
		}
		SKG(spill_dir) = d;
	}
	return SKG(spill_dir);
}

/* gethostname(), cached per process for SK_PROCESS_CACHE_NS. */
const char *sk_host(size_t *len)
{
	uint64_t now = now_ns();
	if (!host_at || now - host_at >= SK_PROCESS_CACHE_NS) {
		if (gethostname(host, sizeof(host) - 1) != 0) {
			host[0] = '\0';
		}
		host[sizeof(host) - 1] = '\0';
		host_len = strlen(host);
		host_at = now;
	}
	*len = host_len;
	return host;
}

/* ------------------------------------------------------------------------------------------------ PHP functions */

/*
 * Calls a PHP function by name (APCu's, fastcgi_finish_request) with the user's error handler and error reporting
 * off, as the userland client's silencing handler does. NULL when the function does not exist or threw.
 */
zval *sk_call(const char *fn, uint32_t argc, zval *argv, zval *ret)
{
	zend_function *f = zend_hash_str_find_ptr(CG(function_table), fn, strlen(fn));
	if (!f) {
		return NULL;
	}
	zval handler;
	ZVAL_COPY_VALUE(&handler, &EG(user_error_handler));
	ZVAL_UNDEF(&EG(user_error_handler));
	int reporting = EG(error_reporting);
	EG(error_reporting) = 0;
	ZVAL_UNDEF(ret);
	zend_call_known_function(f, NULL, NULL, ret, argc, argv, NULL);
	EG(error_reporting) = reporting;
	ZVAL_COPY_VALUE(&EG(user_error_handler), &handler);
	if (EG(exception)) {
		zend_clear_exception();
		zval_ptr_dtor(ret);
		return NULL;
	}
	return ret;
}

bool sk_apcu_enabled(void)
{
	zval ret;
	if (!sk_call("apcu_enabled", 0, NULL, &ret)) {
		return false;
	}
	return Z_TYPE(ret) == IS_TRUE;
}

/* ------------------------------------------------------------------------------------------------ drops */

/* mkdir -p with the userland client's mode (2770 under umask 0007). */
static void mkdir_p(char *dir)
{
	for (char *p = dir + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			mkdir(dir, 02770);
			*p = '/';
		}
	}
	mkdir(dir, 02770);
}

/* The shared count of drops not reported yet (see pool_unreported), or NULL: this request keeps them. */
static _Atomic int64_t *shared(void)
{
	if (strcmp(sapi_module.name, "cli") == 0 || strcmp(sapi_module.name, "phpdbg") == 0) {
		return NULL;
	}
	zend_string *dir = sk_spill_dir();
	uint64_t key = 14695981039346656037ULL; /* FNV-1a of the spill dir: a cheap "same as last time?" */
	for (size_t i = 0; i < ZSTR_LEN(dir); i++) {
		key = (key ^ (unsigned char)ZSTR_VAL(dir)[i]) * 1099511628211ULL;
	}
	if (pool_unreported && key == pool_key) {
		return pool_unreported;
	}
	sk_transport_mshutdown();
	zend_string *file = zend_string_concat2(ZSTR_VAL(dir), ZSTR_LEN(dir), ZEND_STRL("/drops.unreported"));
	mode_t mask = umask(0007);
	int fd = open(ZSTR_VAL(file), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0666);
	if (fd < 0 && errno == ENOENT) {
		char *d = estrndup(ZSTR_VAL(dir), ZSTR_LEN(dir));
		mkdir_p(d);
		efree(d);
		fd = open(ZSTR_VAL(file), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0666);
	}
	umask(mask);
	zend_string_release(file);
	if (fd < 0) {
		return NULL;
	}
	struct stat st;
	void *p = MAP_FAILED;
	/* A new file is empty: grow it to 8 zero bytes (a concurrent creator does the same; an old one keeps its count). */
	if (fstat(fd, &st) == 0 && (st.st_size >= (off_t)sizeof(int64_t) || ftruncate(fd, sizeof(int64_t)) == 0)) {
		p = mmap(NULL, sizeof(int64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	}
	close(fd);
	if (p == MAP_FAILED) {
		return NULL;
	}
	pool_key = key;
	return pool_unreported = (_Atomic int64_t *)p;
}

/* Counts one drop: in stats(), in APCu's pool total when APCu is on, and as not reported yet. */
static void count_drop(void)
{
	SKG(dropped)++;
	if (sk_apcu_enabled()) {
		zval ret, key;
		ZVAL_STRINGL(&key, SK_APCU_DROPPED_KEY, sizeof(SK_APCU_DROPPED_KEY) - 1);
		if (sk_call("apcu_inc", 1, &key, &ret)) {
			zval_ptr_dtor(&ret);
		}
		zval_ptr_dtor(&key);
	}
	_Atomic int64_t *pool = shared();
	if (pool) {
		atomic_fetch_add(pool, 1);
	} else {
		SKG(unreported)++;
	}
}

/* Takes every drop not reported yet (this request's, and the pool's); the caller writes them or gives them back. */
static zend_long take_unreported(void)
{
	zend_long n = SKG(unreported);
	SKG(unreported) = 0;
	/* A plain load first: the usual answer is 0, and it leaves the shared cache line alone. */
	_Atomic int64_t *pool = shared();
	if (pool && atomic_load_explicit(pool, memory_order_relaxed) > 0) {
		n += (zend_long)atomic_exchange(pool, 0);
	}
	return n;
}

static void give_back(zend_long n)
{
	if (n <= 0) {
		return;
	}
	_Atomic int64_t *pool = shared();
	if (pool) {
		atomic_fetch_add(pool, n);
	} else {
		SKG(unreported) += n;
	}
}

static size_t dropped_line(char *buf, size_t size, zend_long count)
{
	return count > 0 ? (size_t)snprintf(buf, size, "{\"_sidekick\":\"dropped\",\"count\":" ZEND_LONG_FMT "}\n", count)
					 : 0;
}

/* ------------------------------------------------------------------------------------------------ spill */

/*
 * Appends whole lines to <spill dir>/spill.ndjson in one O_APPEND write, no lock: $capped bytes of them must fit
 * under the cap (+ 64 KiB with allowance). False when spilling is off, full or not writable.
 */
static bool spill(const char *lines, size_t len, size_t capped, bool allowance)
{
	zend_long max = setting_long("SIDEKICK_AGENT_SPILL_MAX_BYTES", "sidekick.agent_spill_max_bytes",
		SK_DEFAULT_SPILL_MAX_BYTES);
	if (max <= 0) {
		return false;
	}
	zend_string *dir = sk_spill_dir();
	zend_string *file = zend_string_concat3(ZSTR_VAL(dir), ZSTR_LEN(dir), ZEND_STRL("/"), ZEND_STRL(SK_SPILL_FILE));
	struct stat st;
	if (stat(ZSTR_VAL(file), &st) == 0
		&& (zend_long)(st.st_size + capped) > max + (allowance ? SK_SPILL_MAX_LINE_BYTES : 0)) {
		zend_string_release(file);
		return false;
	}
	mode_t mask = umask(0007); /* the agent's group reads and deletes it; no world access */
	int fd = open(ZSTR_VAL(file), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
	if (fd < 0) {
		/* No directory yet? Create it (another process may win that race: fine) and try once more. */
		char *d = estrndup(ZSTR_VAL(dir), ZSTR_LEN(dir));
		mkdir_p(d);
		efree(d);
		fd = open(ZSTR_VAL(file), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
	}
	umask(mask);
	zend_string_release(file);
	if (fd < 0) {
		return false;
	}
	bool ok = write(fd, lines, len) == (ssize_t)len;
	close(fd);
	return ok;
}

/* The drops only this request holds go to the spill file as one control line, allowed 64 KiB past the cap. */
void sk_persist_unreported(void)
{
	if (SKG(unreported) <= 0) {
		return;
	}
	char line[64];
	size_t n = dropped_line(line, sizeof(line), SKG(unreported));
	if (spill(line, n, n, true)) {
		SKG(unreported) = 0;
	}
}

/* ------------------------------------------------------------------------------------------------ connection */

/* Per process: when the connection was last found alive (CLOCK_MONOTONIC ns). */
static uint64_t alive_at;

static void disconnect(void)
{
	if (SKG(fd) >= 0) {
		close(SKG(fd)); /* the agent reads up to this EOF, and discards a cut line */
		SKG(fd) = -1;
	}
	SKG(checked) = false;
}

/*
 * Whether a reused connection still leads to a running agent: one peek, as PHP's persistent streams do. It reads 0
 * when the agent said "bye" (its half-close at a graceful stop): then this end closes, and the agent reads everything
 * up to that EOF before it exits, so nothing written is lost at an agent restart.
 *
 * The userland client peeks on every request; here a connection is peeked at most once per SK_ALIVE_CHECK_NS, which
 * saves one system call on nearly every request of a busy child. Safe because a stopping agent keeps reading a
 * connection after its bye until that connection has been silent for 250 ms (DRAIN_IDLE_MS in
 * src/agent/worker/pipeline.ts): a child sending more often than every 100 ms without a peek keeps it read, and one
 * silent for longer peeks before its next send. A dead connection (the agent crashed) fails the send itself (EPIPE)
 * before a byte is written, and the send is retried on a new connection.
 */
static bool alive(int fd)
{
	char c;
	ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
}

/* A new non-blocking connection, or -1 at once: ENOENT (no agent), ECONNREFUSED (stale file), EAGAIN (backlog full). */
static int open_connection(zend_string *path)
{
	struct sockaddr_un sa;
	if (ZSTR_LEN(path) >= sizeof(sa.sun_path)) {
		return -1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, ZSTR_VAL(path), ZSTR_LEN(path));
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return -1;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		close(fd);
		return -1;
	}
	/* A larger send buffer: the agent can be off the CPU for tens of ms on a busy host (the kernel caps it). */
	zend_long sndbuf = setting_long("SIDEKICK_AGENT_SNDBUF", "sidekick.agent_sndbuf", SK_DEFAULT_SNDBUF);
	if (sndbuf > 0 && sndbuf <= INT_MAX) {
		int v = (int)sndbuf;
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
	}
	return fd;
}

/* The process's connection for this request, checked once per request, (re)opened when needed; -1 when none. */
int sk_connection(void)
{
	if (SKG(checked)) {
		return SKG(fd);
	}
	zend_string *path = sk_socket_path();
	if (SKG(fd) >= 0) {
		uint64_t now = now_ns();
		if (SKG(fd_path) && strcmp(SKG(fd_path), ZSTR_VAL(path)) == 0
			&& (now - alive_at < SK_ALIVE_CHECK_NS || alive(SKG(fd)))) {
			if (now - alive_at >= SK_ALIVE_CHECK_NS) {
				alive_at = now;
			}
			SKG(checked) = true;
			return SKG(fd);
		}
		disconnect();
	}
	if (SKG(connect_failed) || SKG(connects) >= SK_MAX_CONNECTS_PER_REQUEST) {
		return -1;
	}
	SKG(connects)++;
	int fd = open_connection(path);
	if (fd < 0) {
		SKG(connect_failed) = true;
		return -1;
	}
	if (SKG(fd_path)) {
		pefree(SKG(fd_path), 1);
	}
	SKG(fd_path) = pestrndup(ZSTR_VAL(path), ZSTR_LEN(path), 1);
	SKG(fd) = fd;
	SKG(checked) = true;
	alive_at = now_ns();
	return fd;
}

/*
 * Bytes written: all, fewer when the socket did not take the rest before the deadline, or -1 when the connection
 * failed before the first byte. The clock and the setting are read only when the first try falls short.
 */
static ssize_t write_all(int fd, const char *p, size_t len, uint64_t *deadline)
{
	size_t off = 0;
	while (off < len) {
		ssize_t n = send(fd, p + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			return off == 0 ? -1 : (ssize_t)off; /* EPIPE, ECONNRESET */
		}
		/* The send buffer is full (the agent is behind): wait for room, within the budget. */
		if (*deadline == 0) {
			zend_long us = setting_long("SIDEKICK_AGENT_MAX_WAIT_US", "sidekick.agent_max_wait_us",
				SK_DEFAULT_MAX_WAIT_US);
			*deadline = now_ns() + (uint64_t)(us < 0 ? 0 : us) * 1000;
		}
		uint64_t now = now_ns();
		if (now >= *deadline) {
			return (ssize_t)off;
		}
		uint64_t left = *deadline - now;
		struct timespec ts = {(time_t)(left / 1000000000ULL), (long)(left % 1000000000ULL)};
		struct pollfd pfd = {fd, POLLOUT, 0};
		if (ppoll(&pfd, 1, &ts, NULL) != 1) {
			return (ssize_t)off;
		}
	}
	return (ssize_t)off;
}

/*
 * Writes the line (empty: only the unreported drops' control line) on the connection, the drops not reported yet in
 * front of it in the same write. On failure the connection is closed (a cut line is discarded by the agent). True
 * when all of it was written.
 */
static bool write_line(const char *line, size_t len)
{
	uint64_t deadline = 0;
	int fd;
	while ((fd = sk_connection()) >= 0) {
		zend_long count = take_unreported();
		ssize_t written;
		size_t clen = 0, total = len;
		if (count > 0) {
			char control[64];
			clen = dropped_line(control, sizeof(control), count);
			total = clen + len;
			char *buf = emalloc(total);
			memcpy(buf, control, clen);
			memcpy(buf + clen, line, len);
			written = write_all(fd, buf, total, &deadline);
			efree(buf);
		} else if (len == 0) {
			return true;
		} else {
			written = write_all(fd, line, len, &deadline);
		}
		if (written < (ssize_t)clen) {
			give_back(count); /* cut or not written: the agent discards a cut line, the count waits */
		}
		if (written == (ssize_t)total) {
			return true;
		}
		disconnect();
		if (written != -1) {
			return false; /* stalled, or cut mid-line: never wait for a second connection */
		}
		/* -1: the connection was dead before anything was written (agent restarted): reopen once. */
	}
	return false;
}

/*
 * Sends one encoded record (line: its JSON, no newline; ok false when encoding failed) as one line, or spills it, or
 * drops it (counted, reported). True when the socket or the spill file took it.
 */
bool sk_deliver(smart_str *line, bool ok)
{
	size_t len = line->s ? ZSTR_LEN(line->s) : 0;
	if (!ok || len >= SK_MAX_RECORD_BYTES) {
		/* Nothing wrong with the connection: report the drop on it now (a control line alone). */
		count_drop();
		write_line("", 0);
		return false;
	}
	smart_str_appendc(line, '\n');
	smart_str_0(line);
	len++;
	if (write_line(ZSTR_VAL(line->s), len)) {
		SKG(sent)++;
		return true;
	}
	if (len <= SK_SPILL_MAX_LINE_BYTES) {
		/* The unreported drops lead the record in the same append: one whole write, they travel together. */
		zend_long count = take_unreported();
		char control[64];
		size_t clen = dropped_line(control, sizeof(control), count);
		bool spilled;
		if (clen) {
			char *buf = emalloc(clen + len);
			memcpy(buf, control, clen);
			memcpy(buf + clen, ZSTR_VAL(line->s), len);
			spilled = spill(buf, clen + len, len, false);
			efree(buf);
		} else {
			spilled = spill(ZSTR_VAL(line->s), len, len, false);
		}
		if (spilled) {
			SKG(spilled)++;
			return true;
		}
		give_back(count);
	}
	count_drop();
	return false;
}
