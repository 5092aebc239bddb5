// `sidekick` command line. Each command lives in its own module; this file only wires them to commander.
import { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { checkCommand } from './check.js';
import { serveCommand } from './serve.js';
import { agentCommand } from './agent.js';
import { healthCommand, statusCommand, varsCommand } from './inspect.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

export function buildProgram(): Command {
  const program = new Command('sidekick')
    .description('Long-running helpers beside a Node.js web app: live vars for HTTP workers, and a telemetry agent.')
    .version(pkg.version)
    .showHelpAfterError();

  const run =
    (fn: (opts: { config?: string }, ...rest: string[]) => Promise<number>) =>
    async (...args: unknown[]): Promise<void> => {
      const cmd = args[args.length - 1] as Command;
      const positional = args.slice(0, -2) as string[];
      process.exitCode = await fn(cmd.opts(), ...positional);
    };

  program
    .command('serve')
    .description('run the apps of a config: HTTP workers, their sidekicks and (if configured) the agent')
    .option('-c, --config <file>', 'config file (default: sidekick.config.{mjs,js,json} in the working directory)')
    .action(run(serveCommand));
  program
    .command('agent')
    .description('run only the telemetry agent of a config (the `agent` section)')
    .option('-c, --config <file>', 'config file (default: sidekick.config.{mjs,js,json} in the working directory)')
    .action(run(agentCommand));
  program
    .command('check')
    .description('validate a config; exit 0 if valid, 78 (EX_CONFIG) with the bad field named otherwise')
    .option('-c, --config <file>', 'config file (default: sidekick.config.{mjs,js,json} in the working directory)')
    .action(run(checkCommand));
  program
    .command('status')
    .description(
      'show what a running instance is doing: apps, HTTP workers, sidekicks, the agent (via its admin socket)',
    )
    .option('-c, --config <file>', 'config file naming the admin socket')
    .option('--json', 'print the full status JSON instead of the summary')
    .action(run(statusCommand));
  program
    .command('vars')
    .argument('<app/name>', 'sidekick to show, e.g. shop/flags')
    .description(
      "show a running sidekick's latest vars (via the admin socket): keys, sizes and hashes unless admin.showValues",
    )
    .option('-c, --config <file>', 'config file naming the admin socket')
    .option('--json', 'print the JSON reply')
    .action(run(varsCommand));
  program
    .command('health')
    .description(
      'ask a running instance whether it is alive (GET /healthz) or, with --ready, ready (GET /readyz) via its admin socket; print the JSON line, exit 0 if so, 1 if not',
    )
    .option('-c, --config <file>', 'config file naming the admin socket')
    .option('--ready', 'readiness: apps listening, boot sidekicks published, the agent taking records')
    .option('--wait <seconds>', 'poll until the answer is 200 or this many seconds pass (ExecStartPost)')
    .action(run(healthCommand));
  return program;
}

export async function main(argv = process.argv): Promise<void> {
  await buildProgram().parseAsync(argv);
}
