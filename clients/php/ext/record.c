/*
 * The request's record, built at RSHUTDOWN with the userland client's fields in its order (sidekick-agent.php finish()),
 * the same JSON flags, built-in fields winning over tags. Values that need JSON encoding (strings, tags) go
 * through ext/json, so the bytes are the ones json_encode() would write.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <string.h>
#include <time.h>

#include "php.h"
#include "SAPI.h"
#include "ext/json/php_json.h"
#include "ext/standard/php_math.h"
#include "php_sidekick.h"

/* PHP's fatal types (php_error_cb bails out on each), E_USER_ERROR included. */
#define SK_FATAL (E_ERROR | E_PARSE | E_CORE_ERROR | E_COMPILE_ERROR | E_USER_ERROR | E_RECOVERABLE_ERROR)

/* The operator's switch (SIDEKICK_AGENT_DISABLE / sidekick.agent_disable), read once per request. */
bool sk_switched_off(void)
{
	if (SKG(switched_off) < 0) {
		SKG(switched_off) = sk_flag("SIDEKICK_AGENT_DISABLE", "sidekick.agent_disable");
	}
	return SKG(switched_off) == 1;
}

static void json_str(smart_str *buf, const char *s, size_t len)
{
	zval v;
	ZVAL_STRINGL(&v, s, len);
	php_json_encode_ex(buf, &v, SK_JSON_FLAGS, SK_JSON_DEPTH);
	zval_ptr_dtor(&v);
}

/* REQUEST_URI's path (no query or fragment, 2048 bytes max); else $_SERVER's SCRIPT_NAME or PHP_SELF (the CLI). */
static zend_string *default_route(void)
{
	zend_string *uri = sk_getenv("REQUEST_URI");
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
	zend_string *method = sk_getenv("REQUEST_METHOD");
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
void sk_finish(void)
{
	if (SKG(finished)) {
		return;
	}
	SKG(finished) = true;
	if (sk_switched_off()) {
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
