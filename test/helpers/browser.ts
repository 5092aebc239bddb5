// A real headless Chromium for page tests: Debian's /usr/bin/chromium driven by playwright-core (no browser download).
// The flags keep it off the network (this machine's is closed: background fetches would hang or fail) and a fresh
// profile in the test's temp dir keeps runs independent.
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Why a browser test cannot run here (undefined: it can). */
export function chromiumMissing(): string | undefined {
  return existsSync(CHROMIUM)
    ? undefined
    : `${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does) to run this test`;
}

/** Chromium with a fresh profile under `dir`; every wait on its pages defaults to `timeoutMs`. Close it when done. */
export async function launchChromium(dir: string, timeoutMs = 15_000): Promise<BrowserContext> {
  const profile = join(dir, 'chromium-profile');
  mkdirSync(profile, { recursive: true });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1280, height: 900 },
    timeout: timeoutMs,
  });
  context.setDefaultTimeout(timeoutMs);
  return context;
}
