<?php
// B5 helper: the cost of one send from PHP, timed send by send with hrtime, in one php-cli process.
//
//   php bench/php/client-send.php SOCKET N [WARMUP] [PACE_US]
//
// Measures, against the same socket and interleaved in blocks so drift hits both alike:
//   client — \Sidekick\Agent::send($record): the code path of the include's shutdown send (JSON encode, silenced
//            error handler, non-blocking connect, stream_set_blocking(false), one fwrite, fclose, drop counting);
//   raw    — the bare minimum: stream_socket_client('unix://…') + fwrite + fclose of the same pre-encoded line.
// PACE_US (default 0) sleeps that long after each timed send, outside the timed region: requests arrive spaced out
// in real life, and a listener needs time to accept (back to back, php connects far faster than any listener
// accepts, the accept backlog fills, and the later sends measure the EAGAIN drop path instead).
// Prints one JSON object: per variant p50/p90/p99/max/mean in ns, ok/failed counts; plus the clock's own overhead.
declare(strict_types=1);

require __DIR__ . '/../../clients/php/sidekick-agent.php';
\Sidekick\Agent::disable(); // the script's own shutdown record is not part of the measurement

$socket = $argv[1] ?? '';
$n = max(1, (int) ($argv[2] ?? 20000));
$warmup = max(0, (int) ($argv[3] ?? 1000));
$pace = max(0, (int) ($argv[4] ?? 0));
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
$client = static fn (): bool => \Sidekick\Agent::send($record);

$variants = ['client' => $client, 'raw' => $raw];
$times = ['client' => [], 'raw' => []];
$ok = ['client' => 0, 'raw' => 0];

for ($i = 0; $i < $warmup; $i++) {
    $client();
    $raw();
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
                usleep($pace);
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
$out['agent_stats'] = \Sidekick\Agent::stats();
echo json_encode($out), "\n";
