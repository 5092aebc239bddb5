<?php
/**
 * Sidekick agent client for PHP — one request-scoped include, no extension, no Composer package.
 *
 * It measures the request it is loaded into and, at the very end of the request, sends one NDJSON line to the local
 * Sidekick agent over its Unix stream socket. The send is fire-and-forget and bounded: one non-blocking write on a
 * connection that this PHP process keeps open across requests. When the agent is down, restarting or stalled the
 * record is appended to a spill file that the agent replays later; only past the spill's cap is it dropped (and the
 * drop counted by the agent). The request never waits for more than SIDEKICK_AGENT_MAX_WAIT_US (500 µs), never sees an
 * exception or a warning, and its response (status, headers, body) is never changed.
 *
 * INSTALL (pick one)
 *   php.ini / conf.d:     auto_prepend_file = /opt/sidekick/clients/php/sidekick-agent.php
 *   PHP-FPM pool (.conf): php_admin_value[auto_prepend_file] = /opt/sidekick/clients/php/sidekick-agent.php
 *                         env[SIDEKICK_AGENT_SOCKET] = /run/sidekick/agent.sock
 *   in code:              require '/opt/sidekick/clients/php/sidekick-agent.php';   // as early as possible
 *   Loading it twice in one request (prepend + require) is harmless: one record per request.
 *
 * SETTINGS (each: env var, or a FastCGI param of that name, or the php.ini entry; first match wins)
 *   SIDEKICK_AGENT_SOCKET      sidekick.agent_socket      the socket (also: constant SIDEKICK_AGENT_SOCKET). Default as
 *       the agent's: /run/sidekick/agent.sock when running as root or when /run/sidekick exists (the systemd unit's
 *       RuntimeDirectory), else $XDG_RUNTIME_DIR/sidekick/agent.sock, else ./var/agent.sock under the working dir.
 *   SIDEKICK_AGENT_SPILL_DIR   sidekick.agent_spill_dir   where records wait while the agent is unreachable (file
 *       spill.ndjson); default: the socket's directory + /spill. Writable by the pool's group (the agent makes it 2770).
 *   SIDEKICK_AGENT_SPILL_MAX_BYTES sidekick.agent_spill_max_bytes  cap on the spill file (default 64 MiB; 0 = no spill).
 *   SIDEKICK_AGENT_MAX_WAIT_US sidekick.agent_max_wait_us total time one send may wait for the socket (default 500).
 *   SIDEKICK_AGENT_SNDBUF      sidekick.agent_sndbuf      socket send buffer asked for (default 1 MiB; the kernel caps
 *       it at net.core.wmem_max; 0 keeps the system default). Needs ext-sockets; without it the default stays.
 *   SIDEKICK_AGENT_DISABLE=1   sidekick.agent_disable=1   turns the client off (the request's record and Agent::send()).
 *   SIDEKICK_AGENT_FINISH_REQUEST=1 / sidekick.agent_finish_request=1: fastcgi_finish_request() before the send.
 *
 * CONNECTION. One persistent stream per PHP process (stream_socket_client with STREAM_CLIENT_PERSISTENT), reused by
 * every request that process serves, so a request costs one write(2) and no connect/accept/close. PHP checks a reused
 * persistent socket for liveness (poll + peek) before handing it out: when the agent died and the connection is dead,
 * it reconnects. A stopping agent half-closes every connection ("bye") and keeps reading: the same liveness check sees
 * that FIN before the next write, PHP closes the connection and connects again, so nothing written is lost at an
 * agent restart, at no extra cost per request. A write that fails on a connection that looked alive is retried on a new
 * connection once per request. A fresh connection is made non-blocking and gets a larger send buffer (the agent can
 * be off the CPU for tens of milliseconds on a busy host; the default buffer holds ~170 records), and is marked as
 * set up, with the pid of the process that did it, in the stream's chunk size (kept by PHP across requests): a later
 * request of an FPM or Apache worker takes its "pid" from there instead of a getpid(2). Per request, on a working
 * connection: PHP's liveness poll, one write(2), and nothing else of the kernel's (with APCu; without it, one more
 * uname(2) for the host name).
 *
 * RECORD (one JSON object, one line):
 *   {"ts": Unix epoch ms at include, "type": "php_request", "route": REQUEST_URI path without the query (script name
 *    on the CLI), "method", "status": http_response_code() (null on the CLI when never set), "duration_ms",
 *    "memory_peak_bytes": memory_get_peak_usage(true), "host": gethostname() (with APCu, shared by the pool and
 *    re-read every 10 s), "pid", "sapi", ["error": last fatal
 *    error message when one ended the request], ...fields added with Agent::tag()}
 *
 * API (namespace Sidekick)
 *   Agent::tag('key', 'value')   add a field to this request's record (any JSON value; built-in fields win)
 *   Agent::route('/users/{id}')  replace the route (keep cardinality low: use your router's pattern, not the URL)
 *   Agent::disable()             send nothing for this request;  Agent::enable() undoes it
 *   Agent::send(array $record)   send one extra record now, same code path; true when the socket or the spill took it
 *   Agent::stats()               ['sent' => n, 'spilled' => n, 'dropped' => n, 'dropped_total' => APCu count or null]
 *
 * WHEN THE SEND HAPPENS. The shutdown function registered here re-registers itself so it runs after every other
 * shutdown function of the request (so it sees the final status code, e.g. a 500 set by a fatal-error handler).
 * Under PHP-FPM, shutdown functions run before PHP flushes its last output buffer and ends the FastCGI request,
 * unless the app already called fastcgi_finish_request() — Symfony's Response::send() (and so Laravel) does, and then
 * the send happens after the response was flushed to the web server and the user. With
 * SIDEKICK_AGENT_FINISH_REQUEST=1 this client calls fastcgi_finish_request() itself just before the send; it is off by
 * default because output or headers produced later (object destructors) would then be discarded.
 *
 * SPILL. When the line cannot go to the agent now (no socket file, stale file, backlog full, the socket does not take
 * the whole line within the wait budget: then the connection is closed and the agent discards the cut line), it is
 * appended to <spill dir>/spill.ndjson: one O_APPEND write of the whole line (lines over 64 KiB are not spilled), no
 * lock, umask 0007, skipped when the file is past its cap. The agent replays the file at start and while running
 * (docs/clients.md "Spill").
 *
 * DROPS. A record is dropped when: it cannot be sent nor spilled (spill full or not writable), the line exceeds 1 MiB,
 * or encoding fails. Every drop is reported to the agent, which counts it as client_dropped, exactly once: the drops
 * not reported yet travel as ONE control line {"_sidekick":"dropped","count":N} leading the next line that gets out —
 * on the socket, or a record appended to the spill file. With APCu (PHP-FPM, Apache) that count is pool-wide
 * ('sidekick.agent.unreported', taken with apcu_cas by one sender, given back if its write fails), so drops never
 * use spill space and any child's next working send reports them. Without APCu (and on the CLI) nothing outlives the
 * request: at its end one control line with the request's drops goes to the spill file, allowed up to 64 KiB past
 * the cap. Per process: Agent::stats(); pool-wide with APCu: 'sidekick.agent.dropped'. docs/clients.md "Drops".
 *
 * EXTENSION. clients/php/ext is this client in C (the same record, settings, spill, drops and API, at a few µs per
 * request): when it is loaded this file does nothing, so keeping the prepend is harmless. docs/clients.md.
 *
 * Requires PHP >= 8.1 (tested with Debian's PHP 8.2 CLI). Docs: docs/clients.md.
 */

declare(strict_types=1);

namespace Sidekick;

// The extension (clients/php/ext) is this client in C: when it is loaded it measures and sends every request itself
// and provides \Sidekick\Agent, so this file steps aside (one record per request, never two).
if (\extension_loaded('sidekick')) {
    return;
}

if (!\class_exists(Agent::class, false)) {
    final class Agent
    {
        public const MAX_RECORD_BYTES = 1048576;
        public const APCU_DROPPED_KEY = 'sidekick.agent.dropped';
        /** Drops of the pool not yet reported to the agent (APCu): the next send that works, in any child, takes them. */
        public const APCU_UNREPORTED_KEY = 'sidekick.agent.unreported';
        public const DEFAULT_ROOT_SOCKET = '/run/sidekick/agent.sock';
        /** Seconds PHP may poll for a connect that reports EAGAIN; unix connects never report EINPROGRESS. */
        public const CONNECT_TIMEOUT_S = 0.0005;
        public const DEFAULT_MAX_WAIT_US = 500;
        public const DEFAULT_SNDBUF = 1048576;
        /** Connections one request may open: the first, and one more when a write finds it dead. */
        public const MAX_CONNECTS_PER_REQUEST = 2;
        /** The spill file's name inside the spill dir (the agent reads it, then renames it aside). */
        public const SPILL_FILE = 'spill.ndjson';
        public const DEFAULT_SPILL_MAX_BYTES = 67108864;
        /** Longer records are dropped rather than spilled: every append stays one small, whole write. */
        public const SPILL_MAX_LINE_BYTES = 65536;
        /** APCu key of the host name, shared by the pool's requests for HOST_TTL_S seconds (one uname(2) per TTL). */
        public const APCU_HOST_KEY = 'sidekick.agent.host';
        public const HOST_TTL_S = 10;
        /**
         * A connection this process set up carries CONNECTED_MARK + its pid as its stream chunk size (connection()):
         * above any line this client writes, and it never reads from the stream: the chunk size changes nothing.
         */
        private const CONNECTED_MARK = 0x1000000;

        private static bool $booted = false;
        /** Sends from its destructor when exit() in another shutdown function skipped ours (finish() runs once). */
        private static ?object $guard = null;
        private static bool $disabled = false;
        /** The operator's switch, read once: null until first needed. */
        private static ?bool $switchedOff = null;
        private static int $startNs = 0;
        private static float $startMs = 0.0;
        private static ?string $route = null;
        /** @var array<string, mixed> */
        private static array $tags = [];
        private static ?string $socket = null;
        private static ?string $spillDir = null;
        private static int $sent = 0;
        private static int $dropped = 0;
        private static int $spilled = 0;
        /**
         * Drops not yet reported to the agent that live in this request only: all of them without APCu (nothing else
         * outlives the request), else only those APCu failed to take.
         */
        private static int $unreported = 0;
        /** APCu usable for the pool's counters (checked once per request). */
        private static ?bool $apcu = null;
        /** This request's record was sent (or dropped): a later drop cannot wait for the end of the request. */
        private static bool $finished = false;
        /** @var resource|null this request's handle on the process's persistent connection */
        private static $conn = null;
        private static int $connects = 0;
        /** A connect failed during the current send: the send does not try again (the spill takes the line). */
        private static bool $connectFailed = false;
        /** The pid of the process that set up the current connection (see connection()). */
        private static int $connPid = 0;
        /** @var array{profiling: bool, sampleRate: float}|null the agent's last state, parsed when asked */
        private static ?array $state = null;
        /** This request's profiling decision, once asked. */
        private static ?bool $profiling = null;

        /** Called once per request by this file; later calls (second include) are no-ops. */
        public static function boot(): void
        {
            if (self::$booted) {
                return;
            }
            self::$booted = true;
            self::$startNs = \hrtime(true);
            self::$startMs = \microtime(true) * 1000.0;
            self::$switchedOff = self::flag('SIDEKICK_AGENT_DISABLE', 'sidekick.agent_disable');
            if (self::$switchedOff) {
                self::$disabled = true;
                return;
            }
            \register_shutdown_function([self::class, 'onShutdown']);
            // exit() inside another shutdown function skips the ones after it, our send included; destructors still
            // run after that (not after a fatal error: PHP marks every object destructed), so this one sends then.
            self::$guard = new class () {
                public function __destruct()
                {
                    Agent::finish();
                }
            };
        }

        /**
         * Whether this request should run the profiler (XHProf, Tideways, SPX, …): false while the agent's breaker is
         * open (central failing), when an operator turned profiling off (agent.profiling), when the agent cannot be
         * reached, or when this request was not sampled (agent.profiling.sampleRate). Decided once per request; the
         * record says it as "sampled". Costs the connection lookup and one readlink of the agent's state link.
         */
        public static function profilingEnabled(): bool
        {
            if (self::$profiling !== null) {
                return self::$profiling;
            }
            \set_error_handler(static fn (): bool => true);
            try {
                $conn = self::$disabled ? null : self::connection();
                if ($conn === null) {
                    return self::$profiling = false;
                }
                self::readState();
                $state = self::$state ?? ['profiling' => true, 'sampleRate' => 1.0]; // connected, not told yet
                $rate = $state['sampleRate'];
                return self::$profiling = $state['profiling']
                    && ($rate >= 1.0 || ($rate > 0.0 && \mt_rand() / \mt_getrandmax() < $rate));
            } catch (\Throwable) {
                return self::$profiling = false;
            } finally {
                \restore_error_handler();
            }
        }

        /** Any JSON-encodable value (scalars, null, arrays); resources and the like encode as null. */
        public static function tag(string $key, mixed $value): void
        {
            self::$tags[$key] = $value;
        }

        public static function route(string $route): void
        {
            self::$route = $route;
        }

        public static function disable(): void
        {
            self::$disabled = true;
        }

        public static function enable(): void
        {
            self::$disabled = false;
        }

        /** @return array{sent: int, spilled: int, dropped: int, dropped_total: int|null} */
        public static function stats(): array
        {
            $total = null;
            try {
                if (\function_exists('apcu_enabled') && \apcu_enabled()) {
                    $v = \apcu_fetch(self::APCU_DROPPED_KEY);
                    $total = \is_int($v) ? $v : 0;
                }
            } catch (\Throwable) {
                $total = null;
            }
            return [
                'sent' => self::$sent,
                'spilled' => self::$spilled,
                'dropped' => self::$dropped,
                'dropped_total' => $total,
            ];
        }

        /** The socket path this process sends to (resolved once per request). */
        public static function socketPath(): string
        {
            if (self::$socket !== null) {
                return self::$socket;
            }
            $path = self::setting('SIDEKICK_AGENT_SOCKET', null);
            if ($path === null && \defined('SIDEKICK_AGENT_SOCKET')) {
                $path = (string) \constant('SIDEKICK_AGENT_SOCKET');
            }
            if ($path === null || $path === '') {
                $path = self::setting(null, 'sidekick.agent_socket') ?? self::defaultSocket();
            }
            return self::$socket = $path;
        }

        /** Where spilled records and drop counts wait for the agent: setting, else <socket dir>/spill. */
        public static function spillDir(): string
        {
            return self::$spillDir ??= self::setting('SIDEKICK_AGENT_SPILL_DIR', 'sidekick.agent_spill_dir')
                ?? \dirname(self::socketPath()) . '/spill';
        }

        /** First of our shutdown functions: queue the real send behind every other shutdown function. */
        public static function onShutdown(): void
        {
            try {
                \register_shutdown_function([self::class, 'finish']);
            } catch (\Throwable) {
                self::finish();
            }
        }

        /** Builds this request's record and sends it. Never throws, never prints. */
        public static function finish(): void
        {
            if (self::$finished) {
                return;
            }
            self::$finished = true;
            if (self::$disabled) {
                self::persistUnreported(); // drops of this request's Agent::send() calls
                return;
            }
            self::$disabled = true; // one record per request, whatever happens next
            // Silence everything in here, including user error handlers (the @ operator alone still calls them).
            \set_error_handler(static fn (): bool => true);
            try {
                $durationMs = (\hrtime(true) - self::$startNs) / 1e6;
                $status = \http_response_code();
                $record = [];
                $record['ts'] = (int) self::$startMs;
                $record['type'] = 'php_request';
                $record['route'] = self::$route ?? self::defaultRoute();
                $method = \getenv('REQUEST_METHOD');
                $record['method'] = \is_string($method) ? $method : (\PHP_SAPI === 'cli' ? 'CLI' : null);
                $record['status'] = \is_int($status) ? $status : null;
                $record['duration_ms'] = \round($durationMs, 3);
                $record['memory_peak_bytes'] = \memory_get_peak_usage(true);
                $record['host'] = self::host();
                $record['pid'] = 0; // below, after fastcgi_finish_request(): it may come with the connection
                $record['sapi'] = \PHP_SAPI;
                if (self::$profiling !== null) {
                    $record['sampled'] = self::$profiling;
                }
                $err = \error_get_last();
                // PHP's own set of fatal types (php_error_cb bails out on each): trigger_error(…, E_USER_ERROR) too.
                $fatal = \E_ERROR | \E_PARSE | \E_CORE_ERROR | \E_COMPILE_ERROR | \E_USER_ERROR | \E_RECOVERABLE_ERROR;
                if ($err !== null && ($err['type'] & $fatal) !== 0) {
                    $record['error'] = \substr((string) $err['message'], 0, 512);
                }
                $record += self::$tags; // built-in fields win over tags of the same name
                if (\function_exists('fastcgi_finish_request')
                    && self::flag('SIDEKICK_AGENT_FINISH_REQUEST', 'sidekick.agent_finish_request')) {
                    \fastcgi_finish_request();
                }
                self::$connectFailed = false;
                $record['pid'] = self::pid();
                self::deliver($record);
            } catch (\Throwable) {
                self::countDrop();
            } finally {
                \restore_error_handler();
            }
            self::persistUnreported();
        }

        /**
         * Sends one record as one line on the persistent connection. Returns true when the kernel accepted the whole
         * line, false when the record was dropped (counted, and reported to the agent). Never throws, never warns.
         *
         * @param array<string, mixed> $record
         */
        public static function send(array $record): bool
        {
            // The operator's switch (SIDEKICK_AGENT_DISABLE / sidekick.agent_disable) turns explicit sends off too: not
            // a drop, the client is off. disable() only concerns this request's own record.
            self::$switchedOff ??= self::flag('SIDEKICK_AGENT_DISABLE', 'sidekick.agent_disable');
            if (self::$switchedOff) {
                return false;
            }
            // Silence everything in here, including user error handlers (the @ operator alone still calls them).
            \set_error_handler(static fn (): bool => true);
            try {
                self::$connectFailed = false;
                return self::deliver($record);
            } finally {
                \restore_error_handler();
            }
        }

        /**
         * send() without the switch and the error-handler swap (the caller silenced errors).
         *
         * @param array<string, mixed> $record
         */
        private static function deliver(array $record): bool
        {
            try {
                $line = \json_encode(
                    $record,
                    \JSON_UNESCAPED_SLASHES | \JSON_UNESCAPED_UNICODE | \JSON_INVALID_UTF8_SUBSTITUTE
                        | \JSON_PARTIAL_OUTPUT_ON_ERROR | \JSON_PRESERVE_ZERO_FRACTION,
                );
                if (!\is_string($line) || \strlen($line) >= self::MAX_RECORD_BYTES) {
                    // Nothing wrong with the connection: report the drop on it now (a control line alone).
                    self::countDrop();
                    if (!self::write('')) {
                        self::afterDrop();
                    }
                    return false;
                }
                $line .= "\n";
                if (self::write($line)) {
                    self::$sent++;
                    return true;
                }
                if (\strlen($line) <= self::SPILL_MAX_LINE_BYTES) {
                    // The unreported drops lead the record in the same append: one whole write, they travel together.
                    $count = self::takeUnreported();
                    $control = $count > 0 ? self::droppedLine($count) : '';
                    if (self::spill($control . $line, \strlen($line))) {
                        self::$spilled++;
                        return true;
                    }
                    self::giveBack($count);
                }
                return self::drop();
            } catch (\Throwable) {
                return self::drop();
            }
        }

        /**
         * Writes $line (prefixed with a control line for unreported drops) within the wait budget. On failure the
         * connection is closed, so a cut line is discarded by the agent. True when everything was written.
         */
        private static function write(string $line): bool
        {
            $deadline = 0; // set at the first short write: the usual write never needs the clock or the setting
            while (($conn = self::connection()) !== null) {
                $count = self::takeUnreported();
                $control = $count > 0 ? self::droppedLine($count) : '';
                $payload = $control . $line;
                $written = self::writeAll($conn, $payload, $deadline);
                if ($written < \strlen($control)) {
                    self::giveBack($count); // cut or not written: the agent discards a cut line, the count waits
                }
                if ($written === \strlen($payload)) {
                    return true;
                }
                self::disconnect();
                if ($written !== -1) {
                    return false; // stalled, or cut mid-line: never wait for a second connection
                }
                // -1: the connection was dead before anything was written (agent restarted): reopen once.
            }
            return false;
        }

        /**
         * Bytes written: all of them, fewer when the socket did not take the rest before the deadline, or -1 when
         * the connection failed before the first byte.
         *
         * @param resource $conn
         */
        private static function writeAll($conn, string $payload, int &$deadline): int
        {
            $len = \strlen($payload);
            if ($len === 0) {
                return 0;
            }
            $off = 0;
            for (;;) {
                $n = @\fwrite($conn, $off === 0 ? $payload : \substr($payload, $off));
                if ($n === false) {
                    return $off === 0 ? -1 : $off; // EPIPE / ECONNRESET
                }
                $off += $n;
                if ($off >= $len) {
                    return $off;
                }
                // The send buffer is full (the agent is behind): wait for room, within the budget.
                if ($deadline === 0) {
                    $deadline = \hrtime(true) + self::maxWaitUs() * 1000;
                }
                $left = $deadline - \hrtime(true);
                if ($left <= 0) {
                    return $off;
                }
                $r = null;
                $w = [$conn];
                $e = null;
                if (@\stream_select($r, $w, $e, 0, \intdiv($left, 1000)) !== 1) {
                    return $off;
                }
            }
        }

        /** @return resource|null the persistent connection, opened (or reopened) if needed */
        private static function connection()
        {
            if (self::$conn !== null) {
                return self::$conn;
            }
            if (self::$connectFailed || self::$connects >= self::MAX_CONNECTS_PER_REQUEST) {
                return null;
            }
            self::$connects++;
            // Reuses this process's connection when PHP finds it alive (a peek: not closed, not half-closed by a
            // stopping agent), else connects: ENOENT (no agent), ECONNREFUSED (stale file) and EAGAIN (backlog full)
            // fail at once.
            $conn = @\stream_socket_client(
                'unix://' . self::socketPath(),
                $errno,
                $errstr,
                self::CONNECT_TIMEOUT_S,
                \STREAM_CLIENT_CONNECT | \STREAM_CLIENT_PERSISTENT,
            );
            if (!\is_resource($conn)) {
                self::$connectFailed = true;
                return null;
            }
            // PHP keeps a persistent stream's chunk size from request to request, and nothing reads from this one
            // (PHP's liveness check peeks one byte with recv(2) itself): the request that sets the connection up marks
            // it there with its pid, so a later request knows, without a system call, that it is set up and which
            // process did it. Reading the mark means setting a value: the mark is put back at once.
            $mark = @\stream_set_chunk_size($conn, self::CONNECTED_MARK);
            if (\is_int($mark) && $mark > self::CONNECTED_MARK) {
                @\stream_set_chunk_size($conn, $mark);
                self::$connPid = $mark - self::CONNECTED_MARK;
            } else {
                // A fresh connection (or one set up by an older version of this file).
                @\stream_set_blocking($conn, false);
                self::tuneSendBuffer($conn);
                self::$connPid = (int) \getmypid();
                @\stream_set_chunk_size($conn, self::CONNECTED_MARK + self::$connPid);
            }
            return self::$conn = $conn;
        }

        /**
         * This process's pid without a system call when it can: the pid that set up the persistent connection is this
         * process's as long as no process was forked from this one with the connection open. An FPM (or Apache)
         * worker is forked by a master that never runs PHP requests, so never holds this connection, and a worker
         * cannot fork without pcntl (Debian builds it for the CLI only); where pcntl_fork() exists, and on the CLI,
         * getmypid() it is.
         */
        private static function pid(): int
        {
            if (\PHP_SAPI !== 'cli' && \PHP_SAPI !== 'phpdbg' && !\function_exists('pcntl_fork')
                && self::connection() !== null) {
                return self::$connPid;
            }
            return (int) \getmypid();
        }

        /**
         * gethostname(), shared by the pool through APCu for HOST_TTL_S seconds where APCu serves many processes
         * (a renamed host shows in the records within that time); else one uname(2) per request.
         */
        private static function host(): string
        {
            if (self::apcu()) {
                $host = @\apcu_fetch(self::APCU_HOST_KEY);
                if (\is_string($host)) {
                    return $host;
                }
                $host = (string) \gethostname();
                @\apcu_store(self::APCU_HOST_KEY, $host, self::HOST_TTL_S);
                return $host;
            }
            return (string) \gethostname();
        }

        /**
         * The agent's state: `agent.state` beside the socket is a symbolic link whose target is the state
         * ("sidekick-state:<0|1>:<sampleRate>:<reason>"), replaced atomically by the agent when the breaker or the
         * config changes. One readlink(2) per request, and only when profilingEnabled() asks.
         */
        private static function readState(): void
        {
            $target = @\readlink(\dirname(self::socketPath()) . '/agent.state');
            if (!\is_string($target)) {
                return; // no state yet (an older agent): profiling stays on
            }
            $part = \explode(':', $target);
            if (\count($part) >= 3 && $part[0] === 'sidekick-state' && \is_numeric($part[2])) {
                self::$state = ['profiling' => $part[1] === '1', 'sampleRate' => (float) $part[2]];
            }
        }

        private static function disconnect(): void
        {
            if (self::$conn !== null) {
                @\fclose(self::$conn); // closes the persistent socket too: the next request connects anew
                self::$conn = null;
            }
        }

        /** @param resource $conn */
        private static function tuneSendBuffer($conn): void
        {
            $bytes = (int) (self::setting('SIDEKICK_AGENT_SNDBUF', 'sidekick.agent_sndbuf') ?? self::DEFAULT_SNDBUF);
            if ($bytes <= 0 || !\function_exists('socket_import_stream')) {
                return;
            }
            $sock = @\socket_import_stream($conn);
            if ($sock !== false && $sock !== null) {
                @\socket_set_option($sock, \SOL_SOCKET, \SO_SNDBUF, $bytes);
            }
        }

        /** Counts one drop whose line never reached the agent; the count waits for the next send that works. */
        private static function drop(): bool
        {
            self::countDrop();
            self::afterDrop();
            return false;
        }

        /**
         * Counts one drop: in this process's stats, in the pool's APCu total, and as not reported yet — pool-wide in
         * APCu (any child's next send that works reports it), else in this request.
         */
        private static function countDrop(): void
        {
            self::$dropped++;
            $shared = false;
            try {
                if (\function_exists('apcu_enabled') && \apcu_enabled()) {
                    @\apcu_inc(self::APCU_DROPPED_KEY);
                    $shared = self::apcu() && @\apcu_inc(self::APCU_UNREPORTED_KEY) !== false;
                }
            } catch (\Throwable) {
                // counting in APCu is best effort: the request keeps it
            }
            if (!$shared) {
                self::$unreported++;
            }
        }

        /**
         * Takes every drop not reported yet (this request's, and with APCu the pool's, atomically: each drop is taken
         * by one sender only). The caller writes them as one control line, or gives them back.
         */
        private static function takeUnreported(): int
        {
            $n = self::$unreported;
            self::$unreported = 0;
            if (self::apcu()) {
                try {
                    for ($i = 0; $i < 8; $i++) { // bounded: another child taking or adding at the same moment
                        $v = @\apcu_fetch(self::APCU_UNREPORTED_KEY);
                        if (!\is_int($v) || $v <= 0) {
                            break;
                        }
                        if (@\apcu_cas(self::APCU_UNREPORTED_KEY, $v, 0)) {
                            $n += $v;
                            break;
                        }
                    }
                } catch (\Throwable) {
                    // left in APCu for the next sender
                }
            }
            return $n;
        }

        /** $n taken drops did not reach the agent or the spill file: they wait again. */
        private static function giveBack(int $n): void
        {
            if ($n <= 0) {
                return;
            }
            if (self::apcu()) {
                try {
                    if (@\apcu_inc(self::APCU_UNREPORTED_KEY, $n) !== false) {
                        return;
                    }
                } catch (\Throwable) {
                    // kept in this request below
                }
            }
            self::$unreported += $n;
        }

        /** After a drop: once this request's own record is done, nothing later in the request will carry the count. */
        private static function afterDrop(): void
        {
            if (self::$finished) {
                self::persistUnreported();
            }
        }

        /**
         * Whether unreported drops can wait in APCu: enabled, and shared by the requests of many processes (PHP-FPM,
         * Apache). On the CLI (apc.enable_cli) APCu dies with the process, so the count stays in the request.
         */
        private static function apcu(): bool
        {
            try {
                return self::$apcu ??= \PHP_SAPI !== 'cli' && \PHP_SAPI !== 'phpdbg'
                    && \function_exists('apcu_enabled') && \apcu_enabled();
            } catch (\Throwable) {
                return self::$apcu = false;
            }
        }

        private static function droppedLine(int $count): string
        {
            return '{"_sidekick":"dropped","count":' . $count . "}\n";
        }

        /**
         * Appends $lines (whole lines: a record, a control line, or a control line leading a record) to the spill file
         * (the agent replays it when it can): one O_APPEND write, no lock. $capped bytes of it must fit under the
         * size cap (a control line leading a record rides free: one per record at most); with $allowance, they may
         * also go up to 64 KiB past it (a control line that cannot wait: see persistUnreported()). False when the
         * spill is off, full, or not writable.
         */
        private static function spill(string $lines, int $capped, bool $allowance = false): bool
        {
            $max = (int) (self::setting('SIDEKICK_AGENT_SPILL_MAX_BYTES', 'sidekick.agent_spill_max_bytes')
                ?? self::DEFAULT_SPILL_MAX_BYTES);
            $len = \strlen($lines);
            if ($max <= 0) {
                return false;
            }
            $dir = self::spillDir();
            $file = $dir . '/' . self::SPILL_FILE;
            \clearstatcache(false, $file);
            $size = @\filesize($file);
            if (\is_int($size) && $size + $capped > $max + ($allowance ? self::SPILL_MAX_LINE_BYTES : 0)) {
                return false;
            }
            $mask = @\umask(0007); // the agent's group reads and deletes it; no world access
            try {
                $ok = @\file_put_contents($file, $lines, \FILE_APPEND) === $len;
                if (!$ok) {
                    // No directory yet? Create it (another process may win that race: fine) and try once more.
                    @\mkdir($dir, 02770, true);
                    $ok = @\file_put_contents($file, $lines, \FILE_APPEND) === $len;
                }
            } finally {
                @\umask($mask);
            }
            return $ok;
        }

        /**
         * The end of this request's sends, with drops that only this request holds (no APCu, or APCu failed to take
         * them): nothing outlives the request, so one control line carrying all of them goes to the spill file, for
         * the agent to count when it replays it. It may use the 64 KiB allowance past the cap: one line per request
         * that dropped, however many it dropped; past the allowance the count is only in Agent::stats(). Drops held
         * in APCu wait instead for the next send that works, in any child of the pool (the socket, or a record
         * spilled under the cap), and cost no spill space.
         */
        private static function persistUnreported(): void
        {
            $count = self::$unreported;
            if ($count <= 0) {
                return;
            }
            \set_error_handler(static fn (): bool => true);
            try {
                $line = self::droppedLine($count);
                if (self::spill($line, \strlen($line), true)) {
                    self::$unreported = 0;
                }
            } catch (\Throwable) {
                // kept in Agent::stats()
            } finally {
                \restore_error_handler();
            }
        }

        private static function maxWaitUs(): int
        {
            $v = self::setting('SIDEKICK_AGENT_MAX_WAIT_US', 'sidekick.agent_max_wait_us');
            return $v === null ? self::DEFAULT_MAX_WAIT_US : \max(0, (int) $v);
        }

        private static function defaultRoute(): string
        {
            // getenv() asks the SAPI first (FastCGI params under FPM, Apache's CGI variables), then the environment:
            // what $_SERVER holds, without naming $_SERVER in this file. Naming it would make PHP build it for every
            // request, whether the page needs it or not (opcache builds the request globals a cached file names).
            $uri = \getenv('REQUEST_URI');
            if (\is_string($uri) && $uri !== '') {
                $cut = \strcspn($uri, '?#');
                return \substr($uri, 0, \min($cut, 2048));
            }
            $server = $GLOBALS['_SERVER'] ?? null; // built now if not yet: the CLI, or no REQUEST_URI
            $script = \is_array($server) ? ($server['SCRIPT_NAME'] ?? $server['PHP_SELF'] ?? null) : null;
            return \is_string($script) ? $script : '';
        }

        private static function defaultSocket(): string
        {
            $root = \function_exists('posix_geteuid') && \posix_geteuid() === 0;
            if ($root || @\is_dir(\dirname(self::DEFAULT_ROOT_SOCKET))) {
                return self::DEFAULT_ROOT_SOCKET;
            }
            $xdg = \getenv('XDG_RUNTIME_DIR');
            if (\is_string($xdg) && $xdg !== '') {
                return \rtrim($xdg, '/') . '/sidekick/agent.sock';
            }
            $cwd = @\getcwd();
            return (\is_string($cwd) ? $cwd : '.') . '/var/agent.sock';
        }

        /**
         * A setting from env or a FastCGI param (getenv(): the SAPI's request variables, then the environment), else
         * php.ini; null when unset or empty.
         */
        private static function setting(?string $env, ?string $ini): ?string
        {
            if ($env !== null) {
                $v = \getenv($env);
                if (\is_string($v) && $v !== '') {
                    return $v;
                }
            }
            if ($ini !== null) {
                $v = \get_cfg_var($ini);
                if (\is_string($v) && $v !== '') {
                    return $v;
                }
            }
            return null;
        }

        private static function flag(string $env, string $ini): bool
        {
            $v = self::setting($env, $ini);
            return $v !== null && \in_array(\strtolower($v), ['1', 'on', 'true', 'yes'], true);
        }
    }
}

try {
    Agent::boot();
} catch (\Throwable) {
    // never break the page
}
