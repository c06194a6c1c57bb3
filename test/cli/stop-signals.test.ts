/**
 * stopSource: the first SIGINT/SIGTERM asks for a clean stop; a repeat forces an exit only when it comes at least
 * STOP_REPEAT_GRACE_MS later (coreutils `timeout` delivers its SIGTERM twice at once).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { STOP_REPEAT_GRACE_MS, stopSource } from '../../src/cli/stop-signals.js';
import { compiled, mainJs } from './ringvm-process.js';

/** Delivers `signal` to this process and lets its handlers run. */
async function raise(signal: NodeJS.Signals): Promise<void> {
  process.kill(process.pid, signal);
  await new Promise((resolve) => setTimeout(resolve, 50));
}

describe('stopSource', () => {
  test('a signal repeated within the grace period is the same request; a later one forces', async () => {
    let clock = 1000;
    const forced: string[] = [];
    const stop = stopSource({ now: () => clock, onForce: (s) => forced.push(s) });
    try {
      assert.equal(stop.isRequested, false);
      await raise('SIGTERM');
      assert.equal(await stop.requested, 'SIGTERM');
      await raise('SIGTERM'); // timeout(1)'s second delivery, at the same moment
      clock += STOP_REPEAT_GRACE_MS - 1;
      await raise('SIGINT');
      assert.deepEqual(forced, [], 'repeats within the grace period do not force');
      clock += 1;
      await raise('SIGINT');
      assert.deepEqual(forced, ['SIGINT'], 'a repeat after the grace period forces');
    } finally {
      stop.dispose();
    }
  });

  test(
    'ringvm serve under timeout(1): its doubled SIGTERM still stops cleanly (status 143, socket removed)',
    { skip: compiled ? false : 'runs from build/', timeout: 60_000 },
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'ringvm-stop-'));
      try {
        const sock = join(dir, 'e0.sock');
        const child = spawn(
          'timeout',
          [
            '3',
            process.execPath,
            mainJs,
            'serve',
            '--blockdev',
            'driver=memory,node-name=d0,size=1M',
            '--export',
            `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${sock}`,
          ],
          { stdio: ['ignore', 'pipe', 'pipe'] },
        );
        let err = '';
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        const status = await new Promise<number | null>((resolve) => child.once('close', resolve));
        assert.doesNotMatch(err, /again/, err);
        assert.equal(status, 124, `timeout reports that it stopped the command:\n${err}`);
        assert.equal(existsSync(sock), false, 'the export removed its socket');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
