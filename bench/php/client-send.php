<?php
// B5 helper: the cost of one send from PHP, timed send by send with hrtime, in one php-cli process.
//
//   php bench/php/client-send.php SOCKET N [WARMUP] [PACE_US]
//
// Measures, against the same socket and interleaved in blocks so drift hits all alike:
//   client        — \Sidekick\Agent::send($record): the code path of the include's shutdown send (JSON encode,
//                   silenced error handler, non-blocking connect, one non-blocking write, close, drop counting) with
//                   its default transport, ext-sockets (the setter below costs ~0.1 µs, included);
//   client_stream — the same with the stream transport (stream_socket_client), the fallback without ext-sockets;
//   raw           — the bare minimum with streams: stream_socket_client('unix://…') + fwrite + fclose of the same
//                   pre-encoded line (the baseline the brief names);
//   raw_socket    — the bare minimum with ext-sockets: socket_create + connect + send + close.
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
$rawSocket = static function () use ($socket, $line): bool {
    $s = socket_create(AF_UNIX, SOCK_STREAM, 0);
    socket_set_nonblock($s);
    $w = false;
    if (@socket_connect($s, $socket)) {
        $w = @socket_send($s, $line, strlen($line), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    socket_close($s);
    return $w === strlen($line);
};
// The client picks its transport once per request; the bench switches it between blocks to time both paths.
$transport = new ReflectionProperty(\Sidekick\Agent::class, 'transport');
$clientSocket = static function () use ($record, $transport): bool {
    $transport->setValue(null, 'socket');
    return \Sidekick\Agent::send($record);
};
$clientStream = static function () use ($record, $transport): bool {
    $transport->setValue(null, 'stream');
    return \Sidekick\Agent::send($record);
};

$variants = ['client' => $clientSocket, 'client_stream' => $clientStream, 'raw' => $raw];
if (function_exists('socket_create')) {
    $variants['raw_socket'] = $rawSocket;
} else {
    $variants = ['client' => $clientStream, 'raw' => $raw];
}
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
