// Finding a test's processes through Linux /proc (returns [] where it cannot look).
import { readFileSync, readdirSync } from 'node:fs';

/** Pids of running processes (not this one) for which `keep(pid)` is true; a process gone meanwhile is skipped. */
export function pidsWhere(keep: (pid: number) => boolean): number[] {
  let entries: string[];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const e of entries) {
    const pid = Number(e);
    if (pid === process.pid) continue;
    try {
      if (keep(pid)) out.push(pid);
    } catch {
      // gone, or not ours to read
    }
  }
  return out;
}

/** True while `pid` runs: it exists (signal 0 sends nothing) and is not a zombie waiting to be reaped. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); // a zombie has exited
  } catch {
    return false;
  }
}
