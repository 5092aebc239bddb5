<?php
/**
 * Sidekick agent client for PHP — one request-scoped include, no extension, no Composer package.
 *
 * It measures the request it is loaded into and, at the very end of the request, sends one NDJSON line to the local
 * Sidekick agent over its Unix stream socket. The send is fire-and-forget and bounded: non-blocking connect, one
 * non-blocking write, close. When the agent is down (no socket file, stale file) or hung (backlog full, buffer full)
 * the record is dropped and counted; the request never waits for the agent, never sees an exception or a warning, and
 * its response (status, headers, body) is never changed.
 *
 * INSTALL (pick one)
 *   php.ini / conf.d:     auto_prepend_file = /opt/sidekick/clients/php/sidekick-agent.php
 *   PHP-FPM pool (.conf): php_admin_value[auto_prepend_file] = /opt/sidekick/clients/php/sidekick-agent.php
 *                         env[SIDEKICK_AGENT_SOCKET] = /run/sidekick/agent.sock
 *   in code:              require '/opt/sidekick/clients/php/sidekick-agent.php';   // as early as possible
 *   Loading it twice in one request (prepend + require) is harmless: one record per request.
 *
 * SOCKET PATH (first match wins)
 *   1. env SIDEKICK_AGENT_SOCKET (getenv(), or a FastCGI param of that name in $_SERVER)
 *   2. constant SIDEKICK_AGENT_SOCKET, defined before this file is loaded
 *   3. php.ini entry sidekick.agent_socket (read with get_cfg_var(); any php.ini/conf.d file, or -d on the CLI)
 *   4. the agent's documented default: /run/sidekick/agent.sock when running as root or when /run/sidekick exists
 *      (the systemd unit's RuntimeDirectory), else $XDG_RUNTIME_DIR/sidekick/agent.sock, else ./var/agent.sock
 *      relative to the working directory.
 *   Switches: SIDEKICK_AGENT_DISABLE=1 (env) or sidekick.agent_disable=1 (ini) turns the client off;
 *   SIDEKICK_AGENT_FINISH_REQUEST=1 / sidekick.agent_finish_request=1 calls fastcgi_finish_request() before the send.
 *
 * TRANSPORT. With ext-sockets loaded (it is in Debian's php-cli/php-fpm) the send uses socket_create +
 * socket_set_nonblock + socket_connect + socket_send(MSG_DONTWAIT|MSG_NOSIGNAL) + socket_close, which skips PHP's
 * stream layer (~40% cheaper); otherwise stream_socket_client(…, STREAM_CLIENT_CONNECT|STREAM_CLIENT_ASYNC_CONNECT)
 * + stream_set_blocking(false) + fwrite + fclose. Both never wait: a Unix connect either succeeds at once or fails
 * at once (ENOENT, ECONNREFUSED, EAGAIN when the accept backlog is full). SIDEKICK_AGENT_TRANSPORT=stream forces
 * the stream path.
 *
 * RECORD (one JSON object, one line):
 *   {"ts": Unix epoch ms at include, "type": "php_request", "route": REQUEST_URI path without the query (script name
 *    on the CLI), "method", "status": http_response_code() (null on the CLI when never set), "duration_ms",
 *    "memory_peak_bytes": memory_get_peak_usage(true), "host": gethostname(), "pid", "sapi", ["error": last fatal
 *    error message when one ended the request], ...fields added with Agent::tag()}
 *
 * API (namespace Sidekick)
 *   Agent::tag('key', 'value')   add a field to this request's record (any JSON value; built-in fields win)
 *   Agent::route('/users/{id}')  replace the route (keep cardinality low: use your router's pattern, not the URL)
 *   Agent::disable()             send nothing for this request;  Agent::enable() undoes it
 *   Agent::send(array $record)   send one extra record now, same code path; returns true when the kernel took it
 *   Agent::stats()               ['sent' => n, 'dropped' => n, 'dropped_total' => APCu counter or null]
 *
 * WHEN THE SEND HAPPENS. The shutdown function registered here re-registers itself so it runs after every other
 * shutdown function of the request (so it sees the final status code, e.g. a 500 set by a fatal-error handler).
 * Under PHP-FPM, shutdown functions run before PHP flushes its last output buffer and ends the FastCGI request,
 * unless the app already called fastcgi_finish_request() — Symfony's Response::send() (and so Laravel) does, and then
 * the send happens after the response was flushed to the web server and the user. With
 * SIDEKICK_AGENT_FINISH_REQUEST=1 this client calls fastcgi_finish_request() itself just before the send; it is off by
 * default because output or headers produced later (object destructors) would then be discarded. The send itself
 * costs tens of microseconds (see docs/benchmarks.md, B5), so either way the user does not wait for the agent.
 *
 * DROPS. A record is dropped (never retried, never blocking) when: the socket file is missing or stale, the agent's
 * accept backlog is full, the write would block or is short, the line exceeds 1 MiB, or encoding fails. Drops are
 * counted per process (Agent::stats()) and, when APCu is enabled, in the shared counter 'sidekick.agent.dropped'.
 *
 * Requires PHP >= 8.1 (tested with Debian's PHP 8.2 CLI). Docs: docs/clients.md.
 */

declare(strict_types=1);

namespace Sidekick;

if (!\class_exists(Agent::class, false)) {
    final class Agent
    {
        public const MAX_RECORD_BYTES = 1048576;
        public const APCU_DROPPED_KEY = 'sidekick.agent.dropped';
        public const DEFAULT_ROOT_SOCKET = '/run/sidekick/agent.sock';
        /** Seconds PHP may poll for a connect that reports EAGAIN; unix connects never report EINPROGRESS. */
        public const CONNECT_TIMEOUT_S = 0.0005;

        private static bool $booted = false;
        private static bool $disabled = false;
        private static int $startNs = 0;
        private static float $startMs = 0.0;
        private static ?string $route = null;
        /** @var array<string, mixed> */
        private static array $tags = [];
        private static ?string $socket = null;
        private static ?string $transport = null;
        private static int $sent = 0;
        private static int $dropped = 0;

        /** Called once per request by this file; later calls (second include) are no-ops. */
        public static function boot(): void
        {
            if (self::$booted) {
                return;
            }
            self::$booted = true;
            self::$startNs = \hrtime(true);
            self::$startMs = \microtime(true) * 1000.0;
            if (self::flag('SIDEKICK_AGENT_DISABLE', 'sidekick.agent_disable')) {
                self::$disabled = true;
                return;
            }
            \register_shutdown_function([self::class, 'onShutdown']);
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

        /** @return array{sent: int, dropped: int, dropped_total: int|null} */
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
            return ['sent' => self::$sent, 'dropped' => self::$dropped, 'dropped_total' => $total];
        }

        /** The socket path this process sends to (resolved once per request). */
        public static function socketPath(): string
        {
            if (self::$socket !== null) {
                return self::$socket;
            }
            $path = \getenv('SIDEKICK_AGENT_SOCKET');
            if (!\is_string($path) || $path === '') {
                $path = $_SERVER['SIDEKICK_AGENT_SOCKET'] ?? null;
            }
            if ((!\is_string($path) || $path === '') && \defined('SIDEKICK_AGENT_SOCKET')) {
                $path = (string) \constant('SIDEKICK_AGENT_SOCKET');
            }
            if (!\is_string($path) || $path === '') {
                $path = \get_cfg_var('sidekick.agent_socket');
            }
            if (!\is_string($path) || $path === '') {
                $path = self::defaultSocket();
            }
            return self::$socket = $path;
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
            try {
                if (self::$disabled) {
                    return;
                }
                self::$disabled = true; // one record per request, whatever happens next
                $durationMs = (\hrtime(true) - self::$startNs) / 1e6;
                $status = \http_response_code();
                $record = [];
                $record['ts'] = (int) self::$startMs;
                $record['type'] = 'php_request';
                $record['route'] = self::$route ?? self::defaultRoute();
                $record['method'] = isset($_SERVER['REQUEST_METHOD']) && \is_string($_SERVER['REQUEST_METHOD'])
                    ? $_SERVER['REQUEST_METHOD'] : (\PHP_SAPI === 'cli' ? 'CLI' : null);
                $record['status'] = \is_int($status) ? $status : null;
                $record['duration_ms'] = \round($durationMs, 3);
                $record['memory_peak_bytes'] = \memory_get_peak_usage(true);
                $record['host'] = (string) \gethostname();
                $record['pid'] = \getmypid();
                $record['sapi'] = \PHP_SAPI;
                $err = \error_get_last();
                if ($err !== null && ($err['type'] & (\E_ERROR | \E_PARSE | \E_CORE_ERROR | \E_COMPILE_ERROR)) !== 0) {
                    $record['error'] = \substr((string) $err['message'], 0, 512);
                }
                $record += self::$tags; // built-in fields win over tags of the same name
                if (\function_exists('fastcgi_finish_request')
                    && self::flag('SIDEKICK_AGENT_FINISH_REQUEST', 'sidekick.agent_finish_request')) {
                    \fastcgi_finish_request();
                }
                self::send($record);
            } catch (\Throwable) {
                self::drop();
            }
        }

        /**
         * Sends one record as one line: non-blocking connect, one non-blocking write, close. Returns true when the
         * kernel accepted the whole line, false when the record was dropped (and counted). Never throws, never warns.
         *
         * @param array<string, mixed> $record
         */
        public static function send(array $record): bool
        {
            try {
                $line = \json_encode(
                    $record,
                    \JSON_UNESCAPED_SLASHES | \JSON_UNESCAPED_UNICODE | \JSON_INVALID_UTF8_SUBSTITUTE
                        | \JSON_PARTIAL_OUTPUT_ON_ERROR | \JSON_PRESERVE_ZERO_FRACTION,
                );
                if (!\is_string($line) || \strlen($line) >= self::MAX_RECORD_BYTES) {
                    return self::drop();
                }
                $line .= "\n";
                // Silence everything in here, including user error handlers (the @ operator alone still calls them).
                \set_error_handler(static fn (): bool => true);
                try {
                    $n = self::transport() === 'socket' ? self::writeSocket($line) : self::writeStream($line);
                } finally {
                    \restore_error_handler();
                }
                if ($n !== \strlen($line)) {
                    return self::drop(); // would block (0), short write, or error (false)
                }
                self::$sent++;
                return true;
            } catch (\Throwable) {
                return self::drop();
            }
        }

        /**
         * 'socket' (ext-sockets: socket_create/socket_connect/socket_send, about 8 µs cheaper per send than the
         * stream layer) when the extension is loaded, else 'stream' (stream_socket_client). Force one with env
         * SIDEKICK_AGENT_TRANSPORT=stream|socket.
         */
        public static function transport(): string
        {
            if (self::$transport !== null) {
                return self::$transport;
            }
            $forced = \getenv('SIDEKICK_AGENT_TRANSPORT');
            $sockets = \function_exists('socket_create') && \defined('MSG_NOSIGNAL') && \defined('AF_UNIX');
            if ($forced === 'stream' || !$sockets) {
                return self::$transport = 'stream';
            }
            return self::$transport = 'socket';
        }

        /** ext-sockets: non-blocking connect, one send(MSG_DONTWAIT|MSG_NOSIGNAL), close. Bytes sent or false. */
        private static function writeSocket(string $line): int|false
        {
            $sock = @\socket_create(\AF_UNIX, \SOCK_STREAM, 0);
            if ($sock === false) {
                return false;
            }
            try {
                @\socket_set_nonblock($sock);
                // ENOENT (no agent), ECONNREFUSED (stale file), EAGAIN (backlog full): false at once.
                if (!@\socket_connect($sock, self::socketPath())) {
                    return false;
                }
                return @\socket_send($sock, $line, \strlen($line), \MSG_DONTWAIT | \MSG_NOSIGNAL);
            } finally {
                @\socket_close($sock);
            }
        }

        /** Streams: non-blocking (async) connect, stream_set_blocking(false), one fwrite, close. */
        private static function writeStream(string $line): int|false
        {
            $fp = @\stream_socket_client(
                'unix://' . self::socketPath(),
                $errno,
                $errstr,
                self::CONNECT_TIMEOUT_S,
                \STREAM_CLIENT_CONNECT | \STREAM_CLIENT_ASYNC_CONNECT,
            );
            if ($fp === false) {
                return false; // ENOENT (no agent), ECONNREFUSED (stale file), EAGAIN (backlog full)
            }
            @\stream_set_blocking($fp, false);
            $n = @\fwrite($fp, $line);
            @\fclose($fp);
            return $n;
        }

        private static function drop(): bool
        {
            self::$dropped++;
            try {
                if (\function_exists('apcu_enabled') && \apcu_enabled()) {
                    @\apcu_inc(self::APCU_DROPPED_KEY);
                }
            } catch (\Throwable) {
                // counting is best effort
            }
            return false;
        }

        private static function defaultRoute(): string
        {
            $uri = $_SERVER['REQUEST_URI'] ?? null;
            if (\is_string($uri) && $uri !== '') {
                $cut = \strcspn($uri, '?#');
                return \substr($uri, 0, \min($cut, 2048));
            }
            $script = $_SERVER['SCRIPT_NAME'] ?? $_SERVER['PHP_SELF'] ?? null;
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

        private static function flag(string $env, string $ini): bool
        {
            $v = \getenv($env);
            if (!\is_string($v) || $v === '') {
                $v = \get_cfg_var($ini);
            }
            return \is_string($v) && \in_array(\strtolower($v), ['1', 'on', 'true', 'yes'], true);
        }
    }
}

try {
    Agent::boot();
} catch (\Throwable) {
    // never break the page
}
