/*
 * The module: \Sidekick\Agent (the userland client's public API, native), the request's start taken in RINIT and
 * its record built and sent in RSHUTDOWN. RSHUTDOWN runs after every shutdown function and destructor of the request
 * and after its output was flushed, whatever ended it (exit(), an uncaught exception, a fatal error, also one inside
 * a shutdown function), so the record sees the final status code and there is no shutdown function to order, no
 * destructor guard, no prepend to compile and run.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <dlfcn.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "php.h"
#include "php_ini.h"
#include "SAPI.h"
#include "ext/json/php_json.h"
#include "ext/random/php_random.h"
#include "ext/standard/info.h"
#include "ext/standard/php_math.h"
#include "php_sidekick.h"

ZEND_DECLARE_MODULE_GLOBALS(sidekick)

static zend_class_entry *agent_ce;

/* json_encode() flags of the userland client: the same bytes for the same record. */
#define SK_JSON_FLAGS                                                                                                  \
	(PHP_JSON_UNESCAPED_SLASHES | PHP_JSON_UNESCAPED_UNICODE | PHP_JSON_INVALID_UTF8_SUBSTITUTE                        \
		| PHP_JSON_PARTIAL_OUTPUT_ON_ERROR | PHP_JSON_PRESERVE_ZERO_FRACTION)
#define SK_JSON_DEPTH 512

/* PHP's fatal types (php_error_cb bails out on each), E_USER_ERROR included. */
#define SK_FATAL (E_ERROR | E_PARSE | E_CORE_ERROR | E_COMPILE_ERROR | E_USER_ERROR | E_RECOVERABLE_ERROR)

PHP_INI_BEGIN()
PHP_INI_ENTRY("sidekick.agent_socket", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_spill_dir", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_spill_max_bytes", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_max_wait_us", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_sndbuf", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_disable", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_finish_request", "", PHP_INI_ALL, NULL)
PHP_INI_END()

/* The operator's switch (SIDEKICK_AGENT_DISABLE / sidekick.agent_disable), read once per request. */
static bool switched_off(void)
{
	if (SKG(switched_off) < 0) {
		SKG(switched_off) = sk_flag("SIDEKICK_AGENT_DISABLE", "sidekick.agent_disable");
	}
	return SKG(switched_off) == 1;
}

/* ------------------------------------------------------------------------------------------------ the record */

static void json_str(smart_str *buf, const char *s, size_t len)
{
	zval v;
	ZVAL_STRINGL(&v, s, len);
	php_json_encode_ex(buf, &v, SK_JSON_FLAGS, SK_JSON_DEPTH);
	zval_ptr_dtor(&v);
}

/* getenv(name) as PHP's: SAPI variables first, then the environment; NULL when unset. */
static zend_string *request_var(const char *name)
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

/* REQUEST_URI's path (no query or fragment, 2048 bytes max); else $_SERVER's SCRIPT_NAME or PHP_SELF (the CLI). */
static zend_string *default_route(void)
{
	zend_string *uri = request_var("REQUEST_URI");
	if (uri && ZSTR_LEN(uri) > 0) {
		size_t cut = strcspn(ZSTR_VAL(uri), "?#");
		zend_string *r = zend_string_init(ZSTR_VAL(uri), MIN(cut, 2048), 0);
		zend_string_release(uri);
		return r;
	}
	if (uri) {
		zend_string_release(uri);
	}
	/* Only here is $_SERVER built (when the page did not): the CLI, or a SAPI without REQUEST_URI. */
	zend_is_auto_global_str(ZEND_STRL("_SERVER"));
	zval *server = &PG(http_globals)[TRACK_VARS_SERVER];
	if (Z_TYPE_P(server) == IS_ARRAY) {
		zval *v = zend_hash_str_find(Z_ARRVAL_P(server), ZEND_STRL("SCRIPT_NAME"));
		if (!v || Z_TYPE_P(v) == IS_NULL) {
			v = zend_hash_str_find(Z_ARRVAL_P(server), ZEND_STRL("PHP_SELF"));
		}
		if (v && Z_TYPE_P(v) == IS_STRING) {
			return zend_string_copy(Z_STR_P(v));
		}
	}
	return ZSTR_EMPTY_ALLOC();
}

static bool is_cli(void)
{
	return strcmp(sapi_module.name, "cli") == 0 || strcmp(sapi_module.name, "phpdbg") == 0;
}

/* Built-in fields win over tags of the same name (the userland client's `$record += $tags`). */
static bool builtin(zend_string *key, bool sampled, bool error)
{
	static const char *const names[] = {"ts", "type", "route", "method", "status", "duration_ms",
		"memory_peak_bytes", "host", "pid", "sapi", NULL};
	for (const char *const *n = names; *n; n++) {
		if (zend_string_equals_cstr(key, *n, strlen(*n))) {
			return true;
		}
	}
	return (sampled && zend_string_equals_literal(key, "sampled")) || (error && zend_string_equals_literal(key, "error"));
}

/* The request's record (the userland client's finish(): the same fields, in the same order). */
static void build_record(smart_str *b)
{
	uint64_t end;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	end = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;

	smart_str_appends(b, "{\"ts\":");
	smart_str_append_long(b, SKG(start_ms));
	smart_str_appends(b, ",\"type\":\"php_request\",\"route\":");
	zend_string *route = SKG(route) ? zend_string_copy(SKG(route)) : default_route();
	json_str(b, ZSTR_VAL(route), ZSTR_LEN(route));
	zend_string_release(route);

	smart_str_appends(b, ",\"method\":");
	zend_string *method = request_var("REQUEST_METHOD");
	if (method) {
		json_str(b, ZSTR_VAL(method), ZSTR_LEN(method));
		zend_string_release(method);
	} else {
		smart_str_appends(b, is_cli() ? "\"CLI\"" : "null");
	}

	smart_str_appends(b, ",\"status\":");
	if (SG(sapi_headers).http_response_code) {
		smart_str_append_long(b, SG(sapi_headers).http_response_code);
	} else {
		smart_str_appends(b, "null");
	}

	/* round($ms, 3) encoded as json_encode() does (serialize_precision, ".0" kept). */
	zval d;
	ZVAL_DOUBLE(&d, _php_math_round((double)(end - SKG(start_ns)) / 1e6, 3, PHP_ROUND_HALF_UP));
	smart_str_appends(b, ",\"duration_ms\":");
	php_json_encode_ex(b, &d, SK_JSON_FLAGS, SK_JSON_DEPTH);

	smart_str_appends(b, ",\"memory_peak_bytes\":");
	smart_str_append_long(b, (zend_long)zend_memory_peak_usage(true));
	size_t hlen;
	const char *h = sk_host(&hlen);
	smart_str_appends(b, ",\"host\":");
	json_str(b, h, hlen);
	smart_str_appends(b, ",\"pid\":");
	smart_str_append_long(b, (zend_long)sk_pid);
	smart_str_appends(b, ",\"sapi\":");
	json_str(b, sapi_module.name, strlen(sapi_module.name));

	bool sampled = SKG(profiling) >= 0;
	if (sampled) {
		smart_str_appends(b, SKG(profiling) ? ",\"sampled\":true" : ",\"sampled\":false");
	}
	bool error = PG(last_error_message) && (PG(last_error_type) & SK_FATAL);
	if (error) {
		smart_str_appends(b, ",\"error\":");
		json_str(b, ZSTR_VAL(PG(last_error_message)), MIN(ZSTR_LEN(PG(last_error_message)), 512));
	}

	if (SKG(tags)) {
		zend_string *key;
		zend_ulong idx;
		zval *val;
		ZEND_HASH_FOREACH_KEY_VAL(SKG(tags), idx, key, val) {
			if (key && builtin(key, sampled, error)) {
				continue;
			}
			smart_str_appendc(b, ',');
			if (key) {
				json_str(b, ZSTR_VAL(key), ZSTR_LEN(key));
			} else {
				smart_str_appendc(b, '"');
				smart_str_append_long(b, (zend_long)idx);
				smart_str_appendc(b, '"');
			}
			smart_str_appendc(b, ':');
			php_json_encode_ex(b, val, SK_JSON_FLAGS, SK_JSON_DEPTH);
		}
		ZEND_HASH_FOREACH_END();
	}
	smart_str_appendc(b, '}');
}

/* Builds this request's record and sends it, once. Never throws, never prints. */
static void finish(void)
{
	if (SKG(finished)) {
		return;
	}
	SKG(finished) = true;
	if (switched_off()) {
		return;
	}
	/* No PHP file ran (php -m, php -r, FPM's "No input file specified"): the userland prepend would not have run. */
	if (SKG(disabled) || zend_hash_num_elements(&EG(included_files)) == 0) {
		sk_persist_unreported(); /* drops of this request's Agent::send() calls */
		return;
	}
	SKG(disabled) = true;
	smart_str b = {0};
	build_record(&b);
	if (sk_flag("SIDEKICK_AGENT_FINISH_REQUEST", "sidekick.agent_finish_request")) {
		zval ret;
		if (sk_call("fastcgi_finish_request", 0, NULL, &ret)) {
			zval_ptr_dtor(&ret);
		}
	}
	SKG(connect_failed) = false;
	sk_deliver(&b, true);
	smart_str_free(&b);
	sk_persist_unreported();
}

/* ------------------------------------------------------------------------------------------------ Agent's API */

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_tag, 0, 2, IS_VOID, 0)
ZEND_ARG_TYPE_INFO(0, key, IS_STRING, 0)
ZEND_ARG_TYPE_INFO(0, value, IS_MIXED, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_route, 0, 1, IS_VOID, 0)
ZEND_ARG_TYPE_INFO(0, route, IS_STRING, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_void, 0, 0, IS_VOID, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_bool, 0, 0, _IS_BOOL, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_send, 0, 1, _IS_BOOL, 0)
ZEND_ARG_TYPE_INFO(0, record, IS_ARRAY, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_array, 0, 0, IS_ARRAY, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_string, 0, 0, IS_STRING, 0)
ZEND_END_ARG_INFO()

/* Agent::tag('key', value): one more field in this request's record (built-in fields win). */
static ZEND_METHOD(Agent, tag)
{
	zend_string *key;
	zval *value;
	ZEND_PARSE_PARAMETERS_START(2, 2)
	Z_PARAM_STR(key)
	Z_PARAM_ZVAL(value)
	ZEND_PARSE_PARAMETERS_END();
	if (!SKG(tags)) {
		ALLOC_HASHTABLE(SKG(tags));
		zend_hash_init(SKG(tags), 8, NULL, ZVAL_PTR_DTOR, 0);
	}
	Z_TRY_ADDREF_P(value);
	zend_symtable_update(SKG(tags), key, value);
}

static ZEND_METHOD(Agent, route)
{
	zend_string *route;
	ZEND_PARSE_PARAMETERS_START(1, 1)
	Z_PARAM_STR(route)
	ZEND_PARSE_PARAMETERS_END();
	if (SKG(route)) {
		zend_string_release(SKG(route));
	}
	SKG(route) = zend_string_copy(route);
}

static ZEND_METHOD(Agent, disable)
{
	ZEND_PARSE_PARAMETERS_NONE();
	SKG(disabled) = true;
}

static ZEND_METHOD(Agent, enable)
{
	ZEND_PARSE_PARAMETERS_NONE();
	if (!SKG(finished)) {
		SKG(disabled) = false;
	}
}

/* Agent::send(array): one extra record now; true when the socket or the spill file took it. */
static ZEND_METHOD(Agent, send)
{
	zval *record;
	ZEND_PARSE_PARAMETERS_START(1, 1)
	Z_PARAM_ARRAY(record)
	ZEND_PARSE_PARAMETERS_END();
	/* The operator's switch turns explicit sends off too: not a drop, the client is off. */
	if (switched_off()) {
		RETURN_FALSE;
	}
	smart_str b = {0};
	bool ok = php_json_encode_ex(&b, record, SK_JSON_FLAGS, SK_JSON_DEPTH) == SUCCESS;
	SKG(connect_failed) = false;
	ok = sk_deliver(&b, ok);
	smart_str_free(&b);
	RETURN_BOOL(ok);
}

static ZEND_METHOD(Agent, stats)
{
	ZEND_PARSE_PARAMETERS_NONE();
	array_init_size(return_value, 4);
	add_assoc_long(return_value, "sent", SKG(sent));
	add_assoc_long(return_value, "spilled", SKG(spilled));
	add_assoc_long(return_value, "dropped", SKG(dropped));
	zval ret, key;
	if (sk_apcu_enabled()) {
		ZVAL_STRINGL(&key, SK_APCU_DROPPED_KEY, sizeof(SK_APCU_DROPPED_KEY) - 1);
		zend_long total = 0;
		if (sk_call("apcu_fetch", 1, &key, &ret)) {
			total = Z_TYPE(ret) == IS_LONG ? Z_LVAL(ret) : 0;
			zval_ptr_dtor(&ret);
		}
		zval_ptr_dtor(&key);
		add_assoc_long(return_value, "dropped_total", total);
	} else {
		add_assoc_null(return_value, "dropped_total");
	}
}

static ZEND_METHOD(Agent, socketPath)
{
	ZEND_PARSE_PARAMETERS_NONE();
	RETURN_STR_COPY(sk_socket_path());
}

static ZEND_METHOD(Agent, spillDir)
{
	ZEND_PARSE_PARAMETERS_NONE();
	RETURN_STR_COPY(sk_spill_dir());
}

/*
 * Whether this request should run a profiler: false while the agent's breaker is not closed or an operator turned
 * profiling off (the agent.state link's target "sidekick-state:<0|1>:<sampleRate>:<reason>"), when the agent cannot
 * be reached, or when this request was not sampled. Decided once per request; the record says it as "sampled".
 */
static ZEND_METHOD(Agent, profilingEnabled)
{
	ZEND_PARSE_PARAMETERS_NONE();
	if (SKG(profiling) >= 0) {
		RETURN_BOOL(SKG(profiling));
	}
	if (SKG(disabled) || sk_connection() < 0) {
		SKG(profiling) = 0;
		RETURN_FALSE;
	}
	bool on = true;
	double rate = 1.0;
	zend_string *sock = sk_socket_path();
	char link[MAXPATHLEN], target[256];
	if (ZSTR_LEN(sock) + sizeof("/agent.state") <= sizeof(link)) {
		memcpy(link, ZSTR_VAL(sock), ZSTR_LEN(sock) + 1);
		size_t dlen = zend_dirname(link, ZSTR_LEN(sock));
		memcpy(link + dlen, "/agent.state", sizeof("/agent.state"));
		ssize_t n = readlink(link, target, sizeof(target) - 1);
		if (n > 0) { /* none (an agent that keeps no state): profiling stays on */
			target[n] = '\0';
			char *p1 = strchr(target, ':'), *p2 = p1 ? strchr(p1 + 1, ':') : NULL;
			const char *end;
			double r = p2 ? zend_strtod(p2 + 1, &end) : 0;
			if (p2 && strncmp(target, "sidekick-state:", 15) == 0 && end != p2 + 1 && (*end == ':' || !*end)) {
				on = p1[1] == '1' && p1 + 2 == p2;
				rate = r;
			}
		}
	}
	SKG(profiling) = on && (rate >= 1.0 || (rate > 0.0 && (double)(php_mt_rand() >> 1) / PHP_MT_RAND_MAX < rate));
	RETURN_BOOL(SKG(profiling));
}

static const zend_function_entry agent_methods[] = {
	ZEND_ME(Agent, tag, arginfo_tag, ZEND_ACC_PUBLIC | ZEND_ACC_STATIC)
	ZEND_ME(Agent, route, arginfo_route, ZEND_ACC_PUBLIC | ZEND_ACC_STATIC)
	ZEND_ME(Agent, disable, arginfo_void, ZEND_ACC_PUBLIC | ZEND_ACC_STATIC)
	ZEND_ME(Agent, enable, arginfo_void, ZEND_ACC_PUBLIC | ZEND_ACC_STATIC)
	ZEND_ME(Agent, send, arginfo_send, ZEND_ACC_PUBLIC | ZEND_ACC_STATIC)
	ZEND_ME(Agent, stats, arginfo_array, ZEND_ACC_PUBLIC | ZEND_ACC_STATIC)
	ZEND_ME(Agent, socketPath, arginfo_string, ZEND_ACC_PUBLIC | ZEND_ACC_STATIC)
	ZEND_ME(Agent, spillDir, arginfo_string, ZEND_ACC_PUBLIC | ZEND_ACC_STATIC)
	ZEND_ME(Agent, profilingEnabled, arginfo_bool, ZEND_ACC_PUBLIC | ZEND_ACC_STATIC)
	ZEND_FE_END
};

/* ------------------------------------------------------------------------------------------------ lifecycle */

static PHP_GINIT_FUNCTION(sidekick)
{
#if defined(COMPILE_DL_SIDEKICK) && defined(ZTS)
	ZEND_TSRMLS_CACHE_UPDATE();
#endif
	memset(sidekick_globals, 0, sizeof(*sidekick_globals));
	sidekick_globals->fd = -1;
}

static void atfork_child(void)
{
	sk_transport_atfork_child();
}

static PHP_MINIT_FUNCTION(sidekick)
{
	REGISTER_INI_ENTRIES();
	zend_class_entry ce;
	INIT_NS_CLASS_ENTRY(ce, "Sidekick", "Agent", agent_methods);
	agent_ce = zend_register_internal_class(&ce);
	agent_ce->ce_flags |= ZEND_ACC_FINAL;
	zend_declare_class_constant_long(agent_ce, ZEND_STRL("MAX_RECORD_BYTES"), SK_MAX_RECORD_BYTES);
	zend_declare_class_constant_string(agent_ce, ZEND_STRL("APCU_DROPPED_KEY"), SK_APCU_DROPPED_KEY);
	zend_declare_class_constant_string(agent_ce, ZEND_STRL("DEFAULT_ROOT_SOCKET"), SK_DEFAULT_ROOT_SOCKET);
	zend_declare_class_constant_long(agent_ce, ZEND_STRL("DEFAULT_MAX_WAIT_US"), SK_DEFAULT_MAX_WAIT_US);
	zend_declare_class_constant_long(agent_ce, ZEND_STRL("DEFAULT_SNDBUF"), SK_DEFAULT_SNDBUF);
	zend_declare_class_constant_string(agent_ce, ZEND_STRL("SPILL_FILE"), SK_SPILL_FILE);
	zend_declare_class_constant_long(agent_ce, ZEND_STRL("DEFAULT_SPILL_MAX_BYTES"), SK_DEFAULT_SPILL_MAX_BYTES);
	zend_declare_class_constant_long(agent_ce, ZEND_STRL("SPILL_MAX_LINE_BYTES"), SK_SPILL_MAX_LINE_BYTES);
	sk_transport_minit();
	/*
	 * The pid comes from a fork handler, not a getpid(2) per request. A fork handler cannot be removed, so this
	 * library must never be unmapped while the process lives (a server that unloads modules and forks again, as
	 * Apache does at a graceful restart, would call into nothing): RTLD_NODELETE pins it.
	 */
	Dl_info info;
	if (dladdr((void *)&sidekick_module_entry, &info) && info.dli_fname) {
		dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
	}
	pthread_atfork(NULL, NULL, atfork_child);
	return SUCCESS;
}

static PHP_MSHUTDOWN_FUNCTION(sidekick)
{
	UNREGISTER_INI_ENTRIES();
	if (SKG(fd) >= 0) {
		close(SKG(fd));
		SKG(fd) = -1;
	}
	if (SKG(fd_path)) {
		pefree(SKG(fd_path), 1);
		SKG(fd_path) = NULL;
	}
	sk_transport_mshutdown();
	return SUCCESS;
}

static PHP_RINIT_FUNCTION(sidekick)
{
#if defined(COMPILE_DL_SIDEKICK) && defined(ZTS)
	ZEND_TSRMLS_CACHE_UPDATE();
#endif
	struct timespec mono, real;
	clock_gettime(CLOCK_MONOTONIC, &mono); /* both vDSO: no system call */
	clock_gettime(CLOCK_REALTIME, &real);
	SKG(start_ns) = (uint64_t)mono.tv_sec * 1000000000ULL + (uint64_t)mono.tv_nsec;
	SKG(start_ms) = (zend_long)real.tv_sec * 1000 + real.tv_nsec / 1000000;
	SKG(disabled) = SKG(finished) = SKG(connect_failed) = SKG(checked) = false;
	SKG(switched_off) = SKG(profiling) = -1;
	SKG(route) = SKG(socket) = SKG(spill_dir) = NULL;
	SKG(tags) = NULL;
	SKG(sent) = SKG(spilled) = SKG(dropped) = SKG(unreported) = 0;
	SKG(connects) = 0;
	return SUCCESS;
}

static PHP_RSHUTDOWN_FUNCTION(sidekick)
{
	finish();
	if (SKG(tags)) {
		zend_hash_destroy(SKG(tags));
		FREE_HASHTABLE(SKG(tags));
		SKG(tags) = NULL;
	}
	zend_string *strs[] = {SKG(route), SKG(socket), SKG(spill_dir)};
	for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
		if (strs[i]) {
			zend_string_release(strs[i]);
		}
	}
	SKG(route) = SKG(socket) = SKG(spill_dir) = NULL;
	return SUCCESS;
}

static PHP_MINFO_FUNCTION(sidekick)
{
	php_info_print_table_start();
	php_info_print_table_row(2, "Sidekick agent client", "enabled");
	php_info_print_table_row(2, "Version", PHP_SIDEKICK_VERSION);
	php_info_print_table_end();
	DISPLAY_INI_ENTRIES();
}

zend_module_entry sidekick_module_entry = {
	STANDARD_MODULE_HEADER,
	"sidekick",
	NULL,
	PHP_MINIT(sidekick),
	PHP_MSHUTDOWN(sidekick),
	PHP_RINIT(sidekick),
	PHP_RSHUTDOWN(sidekick),
	PHP_MINFO(sidekick),
	PHP_SIDEKICK_VERSION,
	PHP_MODULE_GLOBALS(sidekick),
	PHP_GINIT(sidekick),
	NULL,
	NULL,
	STANDARD_MODULE_PROPERTIES_EX,
};

#ifdef COMPILE_DL_SIDEKICK
#ifdef ZTS
ZEND_TSRMLS_CACHE_DEFINE()
#endif
ZEND_GET_MODULE(sidekick)
#endif
