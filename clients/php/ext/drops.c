/*
 * Drops: counted in stats(), in APCu's pool total when APCu is on, and as "not reported yet" until a line that gets out
 * carries them to the agent as one control line {"_sidekick":"dropped","count":N}. And the spill file, where lines go
 * while the agent cannot take them. The rules are the userland client's (clients/php/sidekick-agent.php).
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "php.h"
#include "SAPI.h"
#include "php_sidekick.h"

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
/* A directory where the file could not be mapped is tried again after SK_PROCESS_CACHE_NS, not on every send. */
static uint64_t failed_key, failed_at;

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
	if (failed_at && key == failed_key && sk_now_ns() - failed_at < SK_PROCESS_CACHE_NS) {
		return NULL;
	}
	sk_drops_mshutdown();
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
	failed_key = key;
	failed_at = sk_now_ns();
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
	failed_at = 0;
	pool_key = key;
	return pool_unreported = (_Atomic int64_t *)p;
}

/* Counts one drop: in stats(), in APCu's pool total when APCu is on, and as not reported yet. */
void sk_count_drop(void)
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
zend_long sk_take_unreported(void)
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

void sk_give_back(zend_long n)
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

size_t sk_dropped_line(char *buf, size_t size, zend_long count)
{
	return count > 0 ? (size_t)snprintf(buf, size, "{\"_sidekick\":\"dropped\",\"count\":" ZEND_LONG_FMT "}\n", count)
					 : 0;
}

/* ------------------------------------------------------------------------------------------------ spill */

/*
 * Appends whole lines to <spill dir>/spill.ndjson in one O_APPEND write, no lock: $capped bytes of them must fit
 * under the cap (+ 64 KiB with allowance). False when spilling is off, full or not writable.
 */
bool sk_spill(const char *lines, size_t len, size_t capped, bool allowance)
{
	zend_long max = sk_setting_long("SIDEKICK_AGENT_SPILL_MAX_BYTES", "sidekick.agent_spill_max_bytes",
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
	size_t n = sk_dropped_line(line, sizeof(line), SKG(unreported));
	if (sk_spill(line, n, n, true)) {
		SKG(unreported) = 0;
	}
}

void sk_drops_mshutdown(void)
{
	if (pool_unreported) {
		munmap((void *)pool_unreported, sizeof(*pool_unreported));
		pool_unreported = NULL;
	}
}
