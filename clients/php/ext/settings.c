/*
 * Settings and per-process facts: a setting is an env variable or FastCGI param (PHP's getenv() order), else the ini
 * entry; the socket path and spill dir are resolved once per request; the host name and the default socket once per
 * 10 s per process. Also calling PHP functions (APCu's, fastcgi_finish_request) quietly.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "php.h"
#include "SAPI.h"
#include "zend_exceptions.h"
#include "php_sidekick.h"

/* Per process, re-read every SK_PROCESS_CACHE_NS: one uname(2) (and one stat(2) for the default socket) per 10 s. */
static char host[256];
static size_t host_len;
static uint64_t host_at;
static char default_socket[256];
static uint64_t default_socket_at;
uint64_t sk_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts); /* vDSO: no system call */
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* getenv() as PHP's: the SAPI's request variables first (FastCGI params under FPM), then the environment. */
zend_string *sk_getenv(const char *name)
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

zend_long sk_setting_long(const char *env, const char *ini, zend_long def)
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
	uint64_t now = sk_now_ns();
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
	uint64_t now = sk_now_ns();
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

/* A forked child may run as another user (FPM): look again. */
void sk_settings_atfork_child(void)
{
	host_at = default_socket_at = 0;
}
