/*
 * Sidekick agent client for PHP, as an extension: the request's record built and sent in C at request end.
 * Same record, settings, spill, drop reporting and public API as clients/php/sidekick-agent.php (docs/clients.md).
 *
 *   sidekick.c    the module: lifecycle, \Sidekick\Agent's methods
 *   record.c      the request's record, built and sent at RSHUTDOWN
 *   transport.c   the persistent connection and the bounded write of a line
 *   drops.c       drop accounting (reported to the agent) and the spill file
 *   settings.c    settings, the socket path and spill dir, per-process facts (host), PHP function calls
 */
#ifndef PHP_SIDEKICK_H
#define PHP_SIDEKICK_H

#include "php.h"
#include "zend_smart_str.h"

#define PHP_SIDEKICK_VERSION "0.1.0"

extern zend_module_entry sidekick_module_entry;
#define phpext_sidekick_ptr &sidekick_module_entry

/* The same limits as the userland client (clients/php/sidekick-agent.php): see its constants. */
#define SK_MAX_RECORD_BYTES 1048576
#define SK_SPILL_MAX_LINE_BYTES 65536
#define SK_DEFAULT_SPILL_MAX_BYTES 67108864
#define SK_DEFAULT_MAX_WAIT_US 500
#define SK_DEFAULT_SNDBUF 1048576
#define SK_MAX_CONNECTS_PER_REQUEST 2
#define SK_DEFAULT_ROOT_SOCKET "/run/sidekick/agent.sock"
#define SK_SPILL_FILE "spill.ndjson"
#define SK_APCU_DROPPED_KEY "sidekick.agent.dropped"
/* A reused connection is peeked for the agent's "bye" at most this often (transport.c: alive()). */
#define SK_ALIVE_CHECK_NS (100 * 1000000ULL)
/* The host name and the default socket are re-read this often per process (a renamed host shows within it). */
#define SK_PROCESS_CACHE_NS (10 * 1000000000ULL)

ZEND_BEGIN_MODULE_GLOBALS(sidekick)
	/* Per process: the persistent connection (-1: none) and the socket path it was opened to. */
	int fd;
	char *fd_path;
	/* Per request (reset in RINIT). */
	bool disabled;       /* Agent::disable(), or this request's record is done */
	int switched_off;    /* the operator's switch: -1 not read yet */
	bool finished;       /* the request's record was sent or dropped */
	uint64_t start_ns;   /* CLOCK_MONOTONIC at RINIT */
	zend_long start_ms;  /* Unix epoch ms at RINIT */
	zend_string *route;  /* Agent::route() */
	HashTable *tags;     /* Agent::tag(), NULL until the first */
	zend_string *socket; /* resolved at the first need of the request */
	zend_string *spill_dir;
	zend_long sent, spilled, dropped;
	zend_long unreported; /* drops only this request holds (see transport.c) */
	int connects;
	bool connect_failed; /* a connect failed during the current send: the spill takes the line */
	bool checked;        /* the connection's liveness was checked in this request */
	int profiling;       /* profilingEnabled()'s decision: -1 not asked */
ZEND_END_MODULE_GLOBALS(sidekick)

ZEND_EXTERN_MODULE_GLOBALS(sidekick)
#define SKG(v) ZEND_MODULE_GLOBALS_ACCESSOR(sidekick, v)

/* json_encode() flags of the userland client: the same bytes for the same record (needs ext/json/php_json.h). */
#define SK_JSON_FLAGS                                                                                                  \
	(PHP_JSON_UNESCAPED_SLASHES | PHP_JSON_UNESCAPED_UNICODE | PHP_JSON_INVALID_UTF8_SUBSTITUTE                        \
		| PHP_JSON_PARTIAL_OUTPUT_ON_ERROR | PHP_JSON_PRESERVE_ZERO_FRACTION)
#define SK_JSON_DEPTH 512

/* record.c */
bool sk_switched_off(void);
void sk_finish(void);

/* settings.c */
uint64_t sk_now_ns(void);
zend_string *sk_getenv(const char *name);
zend_string *sk_setting(const char *env, const char *ini);
bool sk_flag(const char *env, const char *ini);
zend_long sk_setting_long(const char *env, const char *ini, zend_long def);
zend_string *sk_socket_path(void);
zend_string *sk_spill_dir(void);
const char *sk_host(size_t *len);
void sk_settings_atfork_child(void);
zval *sk_call(const char *fn, uint32_t argc, zval *argv, zval *ret);
bool sk_apcu_enabled(void);

/* drops.c */
void sk_count_drop(void);
zend_long sk_take_unreported(void);
void sk_give_back(zend_long n);
size_t sk_dropped_line(char *buf, size_t size, zend_long count);
bool sk_spill(const char *lines, size_t len, size_t capped, bool allowance);
void sk_persist_unreported(void);
void sk_drops_mshutdown(void);

/* transport.c */
extern pid_t sk_pid;
void sk_transport_minit(void);
void sk_transport_mshutdown(void);
void sk_transport_atfork_child(void);
int sk_connection(void);
bool sk_deliver(smart_str *line, bool ok);

#endif
