<?php
// B5 helper: the cost of one send from PHP, timed send by send with hrtime, in one php-cli process.
//
//   php bench/php/client-send.php SOCKET N [WARMUP] [PACE_US]
//
// Measures, against the same socket and interleaved in blocks so drift hits all alike:
//   client         — \Sidekick\Agent::send($record) as the first send of a new request: the request-scoped handle
//                    is reset first (what a new FPM request starts with; the two setters cost ~0.1 µs, included), so
//                    each send takes the persistent connection again (PHP's liveness check: one peek),
//                    JSON-encodes and writes one line;
//   raw_persistent — the bare minimum on a persistent connection: stream_socket_client(…, PERSISTENT) + fwrite of the
//                    pre-encoded line (the baseline for the client);
//   raw            — one connection per record, as the client did before: stream_socket_client + fwrite + fclose.
//   client_ext     — instead of client when the extension (clients/php/ext) is loaded: its Agent::send().
// PACE_US (default 0) spins that long after each timed send, outside the timed region: requests arrive spaced out
// in real life, and a listener needs time to accept (back to back, php connects far faster than a listener
// accepts, the accept backlog fills, and the later sends measure the EAGAIN drop path instead). A busy wait, not
// usleep(): a PHP worker under load is running PHP between two sends, not sleeping (a sleeping CPU wakes up cold
// and makes every send look 2x slower). Negative PACE_US sleeps instead (usleep), to see that cold case.
// Prints one JSON object: per variant p50/p90/p99/max/mean in ns, ok/failed counts; plus the clock's own overhead.
declare(strict_types=1);

require __DIR__ . '/../../clients/php/sidekick-agent.php';
\Sidekick\Agent::disable(); // the script's own shutdown record is not part of the measurement

$socket = $argv[1] ?? '';
$n = max(1, (int) ($argv[2] ?? 20000));
$warmup = max(0, (int) ($argv[3] ?? 1000));
$pace = (int) ($argv[4] ?? 0);
putenv('SIDEKICK_AGENT_SOCKET=' . $socket);

$record = [
    'ts' => (int) (microtime(true) * 1000),
    'type' => 'php_request',
    'route' => '/shop/cart',
    'method' => 'GET',
    'status' => 200,
    'duration_ms' => 12.345,
    'memory_peak_bytes' => 2097152,
    'host' => (string) gethostname(),
    'pid' => getmypid(),
    'sapi' => 'fpm-fcgi',
    'user' => 'u-1234',
];
$line = json_encode($record, JSON_UNESCAPED_SLASHES) . "\n";
$target = 'unix://' . $socket;

$raw = static function () use ($target, $line): bool {
    $fp = @stream_socket_client($target, $errno, $errstr, 0.0005, STREAM_CLIENT_CONNECT | STREAM_CLIENT_ASYNC_CONNECT);
    if ($fp === false) {
        return false;
    }
    stream_set_blocking($fp, false);
    $w = @fwrite($fp, $line);
    fclose($fp);
    return $w === strlen($line);
};
// A persistent connection of its own: PHP keys persistent sockets by the address string, so another spelling of the
// same path (dir/./name) gives a separate connection.
$aliasTarget = 'unix://' . dirname($socket) . '/./' . basename($socket);
$rawPersistent = static function () use ($aliasTarget, $line): bool {
    $fp = @stream_socket_client($aliasTarget, $errno, $errstr, 0.0005, STREAM_CLIENT_CONNECT | STREAM_CLIENT_PERSISTENT);
    if ($fp === false) {
        return false;
    }
    if (ftell($fp) === 0) {
        stream_set_blocking($fp, false);
    }
    $w = @fwrite($fp, $line);
    if ($w !== strlen($line)) {
        fclose($fp);
        return false;
    }
    return true;
};
if (extension_loaded('sidekick')) {
    // The extension (php -d extension=…/sidekick.so): its connection state is C's, not reachable from here. It
    // peeks the connection at most every 100 ms, so a send of a busy FPM child is what this measures: encode + one
    // send(2).
    $variants = ['client_ext' => static fn (): bool => \Sidekick\Agent::send($record)];
} else {
    // Each timed client send is the first of a new request: the request-scoped handle and connect count start empty.
    $conn = new ReflectionProperty(\Sidekick\Agent::class, 'conn');
    $connects = new ReflectionProperty(\Sidekick\Agent::class, 'connects');
    $variants = ['client' => static function () use ($record, $conn, $connects): bool {
        $conn->setValue(null, null);
        $connects->setValue(null, 0);
        return \Sidekick\Agent::send($record);
    }];
}
$variants += ['raw_persistent' => $rawPersistent, 'raw' => $raw];
$times = array_map(static fn () => [], $variants);
$ok = array_map(static fn () => 0, $variants);

for ($i = 0; $i < $warmup; $i++) {
    foreach ($variants as $fn) {
        $fn();
    }
}
$block = 500;
for ($done = 0; $done < $n; $done += $block) {
    $m = min($block, $n - $done);
    foreach ($variants as $name => $fn) {
        for ($i = 0; $i < $m; $i++) {
            $t0 = hrtime(true);
            $r = $fn();
            $times[$name][] = hrtime(true) - $t0;
            if ($r) {
                $ok[$name]++;
            }
            if ($pace > 0) {
                $until = hrtime(true) + $pace * 1000;
                while (hrtime(true) < $until) {
                    // spin
                }
            } elseif ($pace < 0) {
                usleep(-$pace);
            }
        }
    }
}

// The clock's own cost (two hrtime calls), to read the numbers above against.
$clock = [];
for ($i = 0; $i < 10000; $i++) {
    $t0 = hrtime(true);
    $clock[] = hrtime(true) - $t0;
}

function summary(array $ns): array
{
    sort($ns);
    $c = count($ns);
    $at = static fn (float $p): int => $ns[min($c - 1, max(0, (int) ceil($p / 100 * $c) - 1))];
    return [
        'n' => $c,
        'p50' => $at(50),
        'p90' => $at(90),
        'p99' => $at(99),
        'max' => $ns[$c - 1],
        'mean' => (int) (array_sum($ns) / $c),
    ];
}

$out = ['php' => PHP_VERSION, 'clock' => summary($clock)];
foreach ($times as $name => $ns) {
    $out[$name] = summary($ns) + ['ok' => $ok[$name], 'failed' => count($ns) - $ok[$name]];
}
$out['variants'] = array_keys($variants);
$out['agent_stats'] = \Sidekick\Agent::stats();
echo json_encode($out), "\n";
