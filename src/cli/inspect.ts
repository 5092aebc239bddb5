// `sidekick status` and `sidekick vars APP/NAME`: read a running instance through its admin socket.
import { adminGet } from '../admin/client.js';
import { loadConfig } from '../config/load.js';
import { reportStartupError } from './check.js';

async function adminSocket(config?: string): Promise<string> {
  const loaded = await loadConfig(config);
  return loaded.config.admin.socket!;
}

export async function statusCommand(opts: { config?: string; json?: boolean }): Promise<number> {
  try {
    const status = await adminGet(await adminSocket(opts.config), '/status');
    process.stdout.write(`${JSON.stringify(status, null, opts.json ? 0 : 2)}\n`);
    return 0;
  } catch (err) {
    return reportStartupError(err);
  }
}

export async function varsCommand(opts: { config?: string }, target?: string): Promise<number> {
  try {
    const [app, name] = (target ?? '').split('/');
    if (!app || !name) {
      process.stderr.write('sidekick: expected APP/NAME, e.g. `sidekick vars shop/flags`\n');
      return 2;
    }
    const vars = await adminGet(
      await adminSocket(opts.config),
      `/vars/${encodeURIComponent(app)}/${encodeURIComponent(name)}`,
    );
    process.stdout.write(`${JSON.stringify(vars, null, 2)}\n`);
    return 0;
  } catch (err) {
    return reportStartupError(err);
  }
}
