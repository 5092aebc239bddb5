import { setVars, stopSignal } from 'sidekick-runtime';
import { setTimeout as sleep } from 'node:timers/promises';

export default async function flags() {
  while (!stopSignal.aborted) {
    setVars({ checkout: process.env.CHECKOUT_ENABLED ?? '1' });
    await sleep(5000, undefined, { signal: stopSignal }).catch(() => undefined);
  }
}
