// One agent test's world: a temp dir with its config file, the `sidekick agent` processes and fake centrals the test
// started there. Everything is torn down after the test (agents killed, centrals closed, the dir removed), whatever
// the test did or where it failed, so a test body holds only its steps and assertions.
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import {
  agentConfig,
  startAgent,
  startCentral,
  tmpDir,
  writeConfig,
  type AgentProcess,
  type CentralReply,
  type CentralRequest,
  type FakeCentral,
} from './agent.ts';

export interface AgentScope {
  dir: string;
  /** The agent's socket (agentConfig puts it at `<dir>/agent.sock`). */
  sock: string;
  /** The config file (written by writeConfig). */
  configFile: string;
  /** Writes the config file with agentConfig(dir, overrides); returns its path. */
  writeConfig(overrides?: Record<string, unknown>): string;
  /** Starts `sidekick agent` on the config file; killed after the test. */
  startAgent(opts?: Parameters<typeof startAgent>[1]): Promise<AgentProcess>;
  /** Starts a fake central; closed after the test. */
  startCentral(reply?: (req: CentralRequest, n: number) => CentralReply, port?: number): Promise<FakeCentral>;
  /** A loopback port with no listener (central is down: connections are refused) to start a central on later. */
  deadPort(): Promise<number>;
}

export function agentScope(t: TestContext): AgentScope {
  const { dir, cleanup } = tmpDir();
  const agents: AgentProcess[] = [];
  const centrals: FakeCentral[] = [];
  const configFile = join(dir, 'sidekick.config.json');
  t.after(async () => {
    for (const a of agents) await a.crash();
    for (const c of centrals) await c.close();
    cleanup();
  });
  const scope: AgentScope = {
    dir,
    sock: join(dir, 'agent.sock'),
    configFile,
    writeConfig: (overrides = {}) => writeConfig(dir, agentConfig(dir, overrides)),
    startAgent: async (opts) => {
      const a = await startAgent(configFile, opts);
      agents.push(a);
      return a;
    },
    startCentral: async (reply, port) => {
      const c = await startCentral(reply, port);
      centrals.push(c);
      return c;
    },
    deadPort: async () => {
      const probe = await startCentral();
      await probe.close();
      return probe.port;
    },
  };
  return scope;
}
