// `sidekick status`, `sidekick vars APP/NAME` and `sidekick health`: read a running instance through its admin socket.
// A person gets aligned text (status-table.ts); `--json` gives the socket's JSON as it is, for scripts.
import { setTimeout as sleep } from 'node:timers/promises';
import { adminGet, adminRequest } from '../admin/client.js';
import { loadConfig } from '../config/load.js';
import { reportStartupError } from './check.js';
import { hasControl, paint, table } from './format.js';
import { formatStatus, type LooseStatus } from './status-table.js';

async function adminSocket(config?: string): Promise<string> {
  const loaded = await loadConfig(config);
  return loaded.config.admin.socket!;
}

/** Colour only for a person at a terminal, and never when NO_COLOR is set (https://no-color.org). */
function useColor(): boolean {
  return process.stdout.isTTY === true && !process.env.NO_COLOR;
}

export async function statusCommand(opts: { config?: string; json?: boolean }): Promise<number> {
  try {
    const status = await adminGet(await adminSocket(opts.config), '/status');
    process.stdout.write(
      opts.json
        ? `${JSON.stringify(status, null, 2)}\n`
        : formatStatus(status as LooseStatus, Date.now(), { color: useColor() }),
    );
    return 0;
  } catch (err) {
    return reportStartupError(err);
  }
}

/** GET /vars/APP/NAME: the values when the config's `admin.showValues` allows them, else each key's size and hash. */
interface VarsReply {
  app: string;
  name: string;
  generation: number;
  masked?: true;
  vars: Record<string, string> | Record<string, { bytes: number; hash: string }>;
}

/** Keys are arbitrary strings: one with control characters (or blank) is shown quoted, as JSON. */
function keyText(key: string): string {
  return hasControl(key) || key.trim() !== key || !key ? JSON.stringify(key) : key;
}

export function formatMaskedVars(reply: VarsReply, color = false): string {
  const vars = reply.vars as Record<string, { bytes: number; hash: string }>;
  const keys = Object.keys(vars).sort();
  const lines = [
    `${paint(`${reply.app}/${reply.name}`, 'bold', color)}  generation ${reply.generation}  ${keys.length} key${keys.length === 1 ? '' : 's'}, values hidden`,
  ];
  if (keys.length) {
    lines.push(
      ...table(
        ['KEY', 'BYTES', 'HASH'],
        keys.map((k) => [keyText(k), String(vars[k]!.bytes), vars[k]!.hash]),
        { color },
      ),
    );
  }
  lines.push(
    paint(
      'To see the values, set `admin: { showValues: true }` in the config and reload (kill -HUP); --json prints this as JSON.',
      'dim',
      color,
    ),
  );
  return `${lines.join('\n')}\n`;
}

export async function varsCommand(opts: { config?: string; json?: boolean }, target?: string): Promise<number> {
  try {
    const [app, name] = (target ?? '').split('/');
    if (!app || !name) {
      process.stderr.write('sidekick: expected APP/NAME, e.g. `sidekick vars shop/flags`\n');
      return 2;
    }
    const reply = (await adminGet(
      await adminSocket(opts.config),
      `/vars/${encodeURIComponent(app)}/${encodeURIComponent(name)}`,
    )) as VarsReply;
    // Unmasked values stay JSON even for a person: binary-safe, and a value with newlines cannot pose as another key.
    process.stdout.write(
      reply.masked && !opts.json ? formatMaskedVars(reply, useColor()) : `${JSON.stringify(reply, null, 2)}\n`,
    );
    return 0;
  } catch (err) {
    return reportStartupError(err);
  }
}

/**
 * `sidekick health [--ready] [--wait SECONDS]`: GET /healthz (or /readyz) on the admin socket, print its JSON line,
 * exit 0 on 200 and 1 otherwise, so systemd's ExecStartPost and Docker's HEALTHCHECK need no curl. `--wait` polls
 * (also while nothing answers yet) until 200 or the deadline: for ExecStartPost, which runs as soon as the process
 * is forked, before it is ready.
 */
export async function healthCommand(opts: { config?: string; ready?: boolean; wait?: string }): Promise<number> {
  const waitS = opts.wait === undefined ? 0 : Number(opts.wait);
  if (!Number.isFinite(waitS) || waitS < 0) {
    process.stderr.write(`sidekick: --wait expects seconds (a number >= 0), not ${JSON.stringify(opts.wait)}\n`);
    return 2;
  }
  let socket: string;
  try {
    socket = await adminSocket(opts.config);
  } catch (err) {
    return reportStartupError(err);
  }
  const path = opts.ready ? '/readyz' : '/healthz';
  const deadline = Date.now() + waitS * 1000;
  for (;;) {
    let answer: { status: number | undefined; text: string } | undefined;
    let failure: unknown;
    try {
      answer = await adminRequest(socket, path, 5000);
    } catch (err) {
      failure = err;
    }
    if (answer?.status === 200 || Date.now() >= deadline) {
      if (!answer) return reportStartupError(failure);
      process.stdout.write(answer.text.endsWith('\n') ? answer.text : `${answer.text}\n`);
      return answer.status === 200 ? 0 : 1;
    }
    await sleep(Math.min(250, Math.max(0, deadline - Date.now())));
  }
}
