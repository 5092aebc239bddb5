// The one rule for where the agent's socket is when nobody says (the agent, the Node client and the PHP client
// follow it; clients/php/sidekick-agent.php restates it in PHP).
import { statSync } from 'node:fs';
import { join } from 'node:path';

/** The systemd unit's RuntimeDirectory, and the default for root. */
export const SYSTEM_AGENT_SOCKET = '/run/sidekick/agent.sock';

/**
 * The agent socket when none is configured: env SIDEKICK_AGENT_SOCKET; else /run/sidekick/agent.sock as root or when
 * /run/sidekick exists; else $XDG_RUNTIME_DIR/sidekick/agent.sock; else `<baseDir>/var/agent.sock` (the agent passes
 * its config file's folder, clients their working directory).
 */
export function defaultAgentSocketPath(env: NodeJS.ProcessEnv = process.env, baseDir: string = process.cwd()): string {
  if (env.SIDEKICK_AGENT_SOCKET) return env.SIDEKICK_AGENT_SOCKET;
  if (process.getuid?.() === 0 || isDir('/run/sidekick')) return SYSTEM_AGENT_SOCKET;
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'sidekick', 'agent.sock');
  return join(baseDir, 'var', 'agent.sock');
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}
