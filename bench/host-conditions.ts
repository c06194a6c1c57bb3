/**
 * What a benchmark prints about the machine it ran on: the CPUs this process (and so every server and guest it
 * starts) may run on, from /proc/self/status — `taskset -c 1 node build/bench/main.js …` pins a whole run to one
 * CPU — and the load average, since other work on this shared 2-core machine moves every figure.
 */
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';

export function cpusAllowed(): string {
  const status = readFileSync('/proc/self/status', 'utf8');
  return /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1] ?? 'unknown';
}

/** "CPUs allowed 0-1; load average 1.2 0.9 0.8". */
export function hostConditions(): string {
  return `CPUs allowed ${cpusAllowed()}; load average ${loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')}`;
}
