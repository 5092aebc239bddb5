/*
 * The module: \Sidekick\Agent (the userland client's public API, native), the request's start taken in RINIT and
 * its record (record.c) built and sent in RSHUTDOWN. RSHUTDOWN runs after every shutdown function and destructor of
 * the request and after its output was flushed, whatever ended it (exit(), an uncaught exception, a fatal error,
 * also one inside a shutdown function), so the record sees the final status code and there is no shutdown function
 * to order, no destructor guard, no prepend to compile and run.
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
#include "php_sidekick.h"

ZEND_DECLARE_MODULE_GLOBALS(sidekick)

static zend_class_entry *agent_ce;

PHP_INI_BEGIN()
PHP_INI_ENTRY("sidekick.agent_socket", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_spill_dir", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_spill_max_bytes", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_max_wait_us", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_sndbuf", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_disable", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("sidekick.agent_finish_request", "", PHP_INI_ALL, NULL)
PHP_INI_END()

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
	if (sk_switched_off()) {
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
	sk_finish();
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
