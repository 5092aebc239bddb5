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
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "php.h"
#include "php_sidekick.h"

/* This process's pid: set at MINIT and in every forked child (pthread_atfork), so a request needs no getpid(2). */
pid_t sk_pid;
void sk_transport_minit(void)
{
	sk_pid = getpid();
}

void sk_transport_mshutdown(void)
{
	sk_drops_mshutdown();
}

void sk_transport_atfork_child(void)
{
	sk_pid = getpid();
	sk_settings_atfork_child();
	/* The connection belongs to the parent: two processes writing lines on one stream would interleave them. */
	if (SKG(fd) >= 0) {
		close(SKG(fd));
		SKG(fd) = -1;
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
	zend_long sndbuf = sk_setting_long("SIDEKICK_AGENT_SNDBUF", "sidekick.agent_sndbuf", SK_DEFAULT_SNDBUF);
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
		uint64_t now = sk_now_ns();
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
	alive_at = sk_now_ns();
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
			zend_long us = sk_setting_long("SIDEKICK_AGENT_MAX_WAIT_US", "sidekick.agent_max_wait_us",
				SK_DEFAULT_MAX_WAIT_US);
			*deadline = sk_now_ns() + (uint64_t)(us < 0 ? 0 : us) * 1000;
		}
		uint64_t now = sk_now_ns();
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
		zend_long count = sk_take_unreported();
		ssize_t written;
		size_t clen = 0, total = len;
		if (count > 0) {
			char control[64];
			clen = sk_dropped_line(control, sizeof(control), count);
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
			sk_give_back(count); /* cut or not written: the agent discards a cut line, the count waits */
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
		sk_count_drop();
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
		zend_long count = sk_take_unreported();
		char control[64];
		size_t clen = sk_dropped_line(control, sizeof(control), count);
		bool spilled;
		if (clen) {
			char *buf = emalloc(clen + len);
			memcpy(buf, control, clen);
			memcpy(buf + clen, ZSTR_VAL(line->s), len);
			spilled = sk_spill(buf, clen + len, len, false);
			efree(buf);
		} else {
			spilled = sk_spill(ZSTR_VAL(line->s), len, len, false);
		}
		if (spilled) {
			SKG(spilled)++;
			return true;
		}
		sk_give_back(count);
	}
	sk_count_drop();
	return false;
}
