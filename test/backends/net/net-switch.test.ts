// NetSwitch: MAC learning and ageing, flooding of broadcast / multicast / unknown unicast, no hair-pinning,
// runts, filter callbacks, per-port stats, bounded backlogs; ports in other threads (SwitchPortBackend in real
// worker threads, over SharedArrayBuffer rings) and back-end ports (stream sockets).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { NetSwitch } from '../../../src/backends/net/net-switch.js';
import { StreamNetBackend } from '../../../src/backends/net/stream-backend.js';
import { SwitchFrameRing, createFrameRingBuffer } from '../../../src/backends/net/switch-frame-ring.js';
import { SwitchPortBackend } from '../../../src/backends/net/switch-port-backend.js';
import type { EndpointSwitchPort } from '../../../src/backends/net/switch-ports.js';
import { UsageError } from '../../../src/virtio/errors.js';
import { BROADCAST, BackendProbe, mac, testFrame, until } from './net-backend-harness.js';

function recorder(port: EndpointSwitchPort): Buffer[] {
  const got: Buffer[] = [];
  port.onFrame((f) => got.push(Buffer.from(f)));
  return got;
}

describe('NetSwitch', () => {
  test('floods unknown and broadcast, learns, then forwards unicast to one port only', async () => {
    const sw = new NetSwitch();
    const [a, b, c] = [
      sw.addEndpoint({ name: 'a' }),
      sw.addEndpoint({ name: 'b' }),
      sw.addEndpoint({ name: 'c' }),
    ];
    const [ra, rb, rc] = [recorder(a), recorder(b), recorder(c)];
    // a → unknown b: flooded to b and c.
    const f1 = testFrame(mac(2), mac(1), 60, 1);
    a.send(f1);
    assert.deepEqual([ra.length, rb.length, rc.length], [0, 1, 1]);
    // b answers a: a is known now, only a gets it.
    const f2 = testFrame(mac(1), mac(2), 60, 2);
    b.send(f2);
    assert.deepEqual([ra.length, rb.length, rc.length], [1, 1, 1]);
    assert.ok(ra[0]!.equals(f2));
    // a → b: known, only b.
    a.send(testFrame(mac(2), mac(1), 64, 3));
    assert.deepEqual([ra.length, rb.length, rc.length], [1, 2, 1]);
    // Broadcast and multicast from c: everyone else.
    c.send(testFrame(BROADCAST, mac(3), 60, 4));
    c.send(testFrame(Uint8Array.of(0x01, 0x00, 0x5e, 0, 0, 1), mac(3), 60, 5));
    assert.deepEqual([ra.length, rb.length, rc.length], [3, 4, 1]);
    assert.deepEqual(
      sw
        .macTable()
        .map((e) => [e.mac, e.port])
        .sort(),
      [
        ['52:54:00:00:00:01', 'a'],
        ['52:54:00:00:00:02', 'b'],
        ['52:54:00:00:00:03', 'c'],
      ],
    );
    assert.deepEqual(a.stats, {
      rxFrames: 2,
      rxBytes: 124,
      txFrames: 3,
      txBytes: 180,
      txDropped: 0,
      rxDropped: 0,
    });
    assert.equal(sw.flooded, 3);
    await sw.close();
  });

  test('a frame to an address learned on its own port is dropped; a moved address is relearned', async () => {
    const sw = new NetSwitch();
    const [a, b] = [sw.addEndpoint(), sw.addEndpoint()];
    const [ra, rb] = [recorder(a), recorder(b)];
    a.send(testFrame(BROADCAST, mac(1), 60, 1));
    a.send(testFrame(BROADCAST, mac(5), 60, 1));
    a.send(testFrame(mac(5), mac(1), 60, 2)); // both on a: not sent back to a, not flooded
    assert.deepEqual([ra.length, rb.length], [0, 2]);
    assert.equal(a.stats.rxDropped, 1);
    b.send(testFrame(BROADCAST, mac(5), 60, 3)); // mac 5 moved to b
    a.send(testFrame(mac(5), mac(1), 60, 4));
    assert.deepEqual([ra.length, rb.length], [1, 3]);
    await sw.close();
  });

  test('learned addresses age out: unicast is flooded again', async () => {
    let now = 0;
    const sw = new NetSwitch({ ageingMs: 1000, now: () => now });
    const [a, b, c] = [sw.addEndpoint(), sw.addEndpoint(), sw.addEndpoint()];
    const [, rb, rc] = [recorder(a), recorder(b), recorder(c)];
    b.send(testFrame(BROADCAST, mac(2), 60, 1));
    now = 999;
    a.send(testFrame(mac(2), mac(1), 60, 2));
    assert.deepEqual([rb.length, rc.length], [1, 1]); // c got only the broadcast
    now = 2100;
    assert.equal(
      sw.macTable().some((e) => e.mac === '52:54:00:00:00:02'),
      false,
    );
    a.send(testFrame(mac(2), mac(1), 60, 3));
    assert.deepEqual([rb.length, rc.length], [2, 2]);
    await sw.close();
  });

  test('the MAC table is bounded: a source-address flood evicts the oldest', async () => {
    const sw = new NetSwitch({ maxMacEntries: 8 });
    const a = sw.addEndpoint();
    sw.addEndpoint();
    for (let i = 0; i < 100; i++) a.send(testFrame(BROADCAST, mac(i), 60, i));
    assert.equal(sw.macTable().length, 8);
    assert.ok(sw.macTable().some((e) => e.mac === '52:54:00:00:00:63'));
    await sw.close();
  });

  test('callbacks observe every frame with its ingress port and can drop it; runts are dropped', async () => {
    const sw = new NetSwitch();
    const [a, b] = [sw.addEndpoint({ name: 'a' }), sw.addEndpoint({ name: 'b' })];
    const rb = recorder(b);
    const seen: string[] = [];
    const off = sw.onFrame((f, from) => {
      seen.push(`${from.name}:${f.length}`);
      return f.length !== 99; // drop frames of 99 bytes
    });
    a.send(testFrame(BROADCAST, mac(1), 60, 1));
    a.send(testFrame(BROADCAST, mac(1), 99, 2));
    a.send(new Uint8Array(13));
    assert.deepEqual(seen, ['a:60', 'a:99']);
    assert.equal(rb.length, 1);
    assert.equal(a.stats.rxDropped, 2);
    off();
    a.send(testFrame(BROADCAST, mac(1), 99, 3));
    assert.equal(rb.length, 2);
    await sw.close();
  });

  test('options and names are checked', async () => {
    assert.throws(
      () => new NetSwitch({ burst: 0 }),
      (e: unknown) => e instanceof UsageError && e.code === 'INVALID_ARGUMENT',
    );
    const sw = new NetSwitch();
    sw.addEndpoint({ name: 'x' });
    assert.throws(
      () => sw.addEndpoint({ name: 'x' }),
      (e: unknown) => e instanceof UsageError,
    );
    await sw.close();
    assert.throws(
      () => sw.addEndpoint(),
      (e: unknown) => e instanceof UsageError && e.code === 'INVALID_STATE',
    );
  });

  test('frame ring: records wrap around the end, a full ring refuses, order is kept', () => {
    const ring = new SwitchFrameRing(createFrameRingBuffer(4096));
    const sizes = [1, 60, 1514, 2000, 3, 1000, 1500, 17];
    const written: Buffer[] = [];
    let seed = 0;
    for (let round = 0; round < 50; round++) {
      for (const n of sizes) {
        const f = testFrame(mac(1), mac(2), Math.max(n, 14), seed++);
        if (ring.tryWrite([f.subarray(0, 5), f.subarray(5)], f.length)) written.push(f);
        else {
          // Full: drain everything and retry once.
          for (let v = ring.peek(); v !== null; v = ring.peek()) {
            assert.ok(Buffer.from(v).equals(written.shift()!));
            ring.consume(v);
          }
          assert.equal(ring.tryWrite([f], f.length), true);
          written.push(f);
        }
      }
    }
    for (let v = ring.peek(); v !== null; v = ring.peek()) {
      assert.ok(Buffer.from(v).equals(written.shift()!));
      ring.consume(v);
    }
    assert.equal(written.length, 0);
    assert.equal(ring.used, 0);
    assert.equal(ring.tryWrite([new Uint8Array(ring.maxFrame)], ring.maxFrame), true);
    assert.equal(ring.tryWrite([new Uint8Array(ring.maxFrame)], ring.maxFrame), false);
  });

  test('ports in two worker threads reach each other through the switch, and an endpoint sees it all', async () => {
    const sw = new NetSwitch();
    const observer = sw.addEndpoint({ name: 'observer' });
    const fromVms = recorder(observer);
    const vm = [sw.addSharedPort({ name: 'vm1' }), sw.addSharedPort({ name: 'vm2' })];
    const workers = vm.map(
      (p, i) =>
        new Worker(new URL('./switch-reflector-worker.js', import.meta.url), {
          workerData: { handle: p.handle, mac: mac(0x10 + i) },
        }),
    );
    try {
      await Promise.all(workers.map((w) => new Promise((r) => w.once('message', r))));
      // Both announced themselves: the switch knows them; the observer saw both broadcasts.
      await until(() => fromVms.length === 2, 'the announcements');
      // The observer sends to each vm; each reflects back to the observer only.
      // In rounds that fit the rings (an endpoint has no back-pressure: beyond ring + backlog the switch drops).
      const sent: Buffer[] = [];
      for (let round = 0; round < 20; round++) {
        for (let i = round * 100; i < (round + 1) * 100; i++) {
          const f = testFrame(mac(0x10 + (i % 2)), mac(0x99), 64 + ((i * 13) % 1400), i);
          sent.push(f);
          observer.send(f);
        }
        await until(() => fromVms.length === 2 + sent.length, `reflections of round ${round}`, 60_000);
      }
      const back = fromVms.slice(2);
      for (const vmIndex of [0, 1]) {
        const mine = sent.filter((_, i) => i % 2 === vmIndex);
        const got = back.filter((f) => f[11] === 0x10 + vmIndex);
        assert.equal(got.length, mine.length);
        got.forEach((f, i) => {
          assert.ok(f.subarray(12).equals(mine[i]!.subarray(12)), `vm${vmIndex} frame ${i}`);
          assert.deepEqual([...f.subarray(0, 6)], [...mac(0x99)]);
        });
      }
      assert.equal(vm[0]!.stats.txFrames, 1000 + 1); // + vm2's announcement
      assert.equal(vm[0]!.stats.txDropped, 0);
      // Link down on vm1's port: its worker's device sees carrier off.
      vm[0]!.setLink(false);
      workers[0]!.postMessage('stats');
      const stats = await new Promise<{ links: boolean[] }>((resolve) => {
        const poll = (): void => {
          workers[0]!.once('message', (m: { links: boolean[] }) => {
            if (m.links.length > 0) resolve(m);
            else
              setTimeout(() => {
                workers[0]!.postMessage('stats');
                poll();
              }, 10);
          });
        };
        poll();
      });
      assert.deepEqual(stats.links, [false]);
    } finally {
      for (const w of workers) w.postMessage('stop');
      await Promise.all(workers.map((w) => new Promise((r) => w.once('exit', r))));
      await sw.close();
    }
  });

  test('a full port backlog drops and counts instead of stalling the other ports', async () => {
    const sw = new NetSwitch({ backlogFrames: 4 });
    const slow = sw.addSharedPort({ name: 'slow', ringBytes: 4096 });
    const fast = sw.addEndpoint({ name: 'fast' });
    const src = sw.addEndpoint({ name: 'src' });
    const rf = recorder(fast);
    // Nobody reads the slow port's ring: it fills, then the backlog, then frames drop; fast gets all.
    for (let i = 0; i < 200; i++) src.send(testFrame(BROADCAST, mac(1), 1000, i));
    assert.equal(rf.length, 200);
    assert.ok(slow.stats.txDropped > 0);
    assert.equal(slow.stats.txFrames + slow.backlog + slow.stats.txDropped, 200);
    assert.equal(slow.backlog, 4);
    // The device side drains: the backlog is flushed into the ring.
    const dev = new BackendProbe(new SwitchPortBackend(slow.handle));
    await until(() => slow.backlog === 0 && dev.frames.length === slow.stats.txFrames, 'backlog flushed');
    await dev.backend.close();
    await sw.close();
  });

  test('a shared port whose device stops at pendingLength 0 is woken for every later frame', async () => {
    const sw = new NetSwitch();
    const port = sw.addSharedPort({ name: 'dev' });
    const src = sw.addEndpoint({ name: 'src' });
    const dev = new BackendProbe(new SwitchPortBackend(port.handle), { asDevice: true });
    for (let i = 0; i < 5; i++) {
      src.send(testFrame(BROADCAST, mac(1), 98, i));
      await until(() => dev.frames.length === i + 1, `frame ${i}`);
    }
    await dev.backend.close();
    await sw.close();
  });

  test('stream back ends as ports: two stream links joined by the switch', async () => {
    const dir = mkdtempSync(join(tmpdir(), `ringvm-switch-${process.pid}-`));
    try {
      const sw = new NetSwitch();
      const servers = await Promise.all(
        ['s0', 's1'].map((n) =>
          StreamNetBackend.open({ mode: 'server', address: { type: 'unix', path: join(dir, `${n}.sock`) } }),
        ),
      );
      servers.forEach((s, i) => sw.addBackend(s, { name: `stream${i}` }));
      const hosts = await Promise.all(
        servers.map((s) => StreamNetBackend.open({ mode: 'client', address: s.address })),
      );
      const [h0, h1] = hosts.map((h) => new BackendProbe(h)) as [BackendProbe, BackendProbe];
      await until(() => servers.every((s) => s.linkUp), 'links');
      h0.send(testFrame(BROADCAST, mac(1), 60, 1));
      await until(() => h1.frames.length === 1, 'broadcast across');
      const frames = Array.from({ length: 500 }, (_, i) => testFrame(mac(1), mac(2), 60 + i, i));
      for (const f of frames) h1.send(f);
      await until(() => h0.frames.length === frames.length, 'unicast across');
      assert.deepEqual(h0.frames, frames);
      await Promise.all(hosts.map((h) => h.close()));
      await sw.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
