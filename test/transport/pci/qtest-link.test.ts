// The qtest link against a real QEMU: conf1 config reads, guest RAM shared both ways, typed failures, and a
// clean shutdown (QEMU gone, memory file removed). Every QEMU started here is killed at the end even if a test
// fails (close in `after`, then a sweep for the link's command-line tag).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { QtestError, QtestLink } from '../../../src/transport/pci/qtest-link.js';
import { ensureQemu, killLeftoverQemus, rawDrive, workDir } from './qtest-harness.js';

describe('QtestLink (real QEMU, -qtest unix socket)', { timeout: 5 * 60_000 }, () => {
  const work = workDir('ringvm-qtest-link-');
  let link: QtestLink | undefined;

  before(async () => {
    await ensureQemu();
    const img = work.image('d0.img', new Uint8Array(1 << 20));
    link = await QtestLink.start({
      devices: ['virtio-blk-pci,drive=d0,disable-legacy=on'],
      args: rawDrive('d0', img),
      memSize: 32 << 20,
    });
  });

  after(async () => {
    await link?.close();
    killLeftoverQemus();
    work.cleanup();
  });

  it('reads a virtio-blk-pci vendor/device id through ports 0xCF8/0xCFC', async () => {
    const l = link!;
    const ids: number[] = [];
    for (let dev = 0; dev < 32; dev++) {
      await l.outl(0xcf8, (0x8000_0000 | (dev << 11)) >>> 0);
      ids.push(await l.inl(0xcfc));
    }
    assert.equal(ids[0], 0x1237_8086, 'i440FX host bridge in slot 0');
    assert.ok(
      ids.includes(0x1042_1af4),
      `a modern virtio-blk (1af4:1042) on bus 0: ${ids.map((i) => i.toString(16)).join(' ')}`,
    );
  });

  it('pipelines commands and matches responses in order', async () => {
    const l = link!;
    const base = 0x20_0000;
    await Promise.all(Array.from({ length: 64 }, (_, i) => l.writel(base + 4 * i, (i * 0x01010101) >>> 0)));
    const back = await Promise.all(Array.from({ length: 64 }, (_, i) => l.readl(base + 4 * i)));
    back.forEach((v, i) => {
      assert.equal(v, (i * 0x01010101) >>> 0);
    });
    assert.equal(await l.readq(base), 0x0101_0101_0000_0000n);
    await l.writeq(base, 0x1122_3344_5566_7788n);
    assert.equal(await l.readq(base), 0x1122_3344_5566_7788n);
    await l.writew(base, 0xbeef);
    await l.writeb(base + 2, 0x7f);
    assert.equal(await l.readw(base), 0xbeef);
    assert.equal(await l.readb(base + 2), 0x7f);
  });

  it('shares guest RAM zero-copy: QEMU sees our writes and we see its writes', async () => {
    const l = link!;
    const addr = 0x30_0000;
    l.memory.write(addr, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9]));
    assert.deepEqual([...(await l.memread(addr, 9))], [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    await l.memwrite(addr + 16, Uint8Array.from([0xaa, 0xbb, 0xcc]));
    assert.deepEqual([...l.memory.slice(addr + 16, 3)], [0xaa, 0xbb, 0xcc]);
    await l.writel(addr + 32, 0xdead_beef);
    assert.equal(l.memory.readU32(addr + 32), 0xdead_beef);
    assert.equal(l.memory.size, 32 << 20);
  });

  it('reports FAIL/ERR as a typed error with the command and response', async () => {
    const error = await link!.command('frobnicate 1 2').then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(error instanceof QtestError);
    assert.equal(error.code, 'COMMAND_FAILED');
    assert.equal(error.command, 'frobnicate 1 2');
    assert.match(error.response ?? '', /^(FAIL|ERR)/);
    // The link still works afterwards.
    await link!.outl(0xcf8, 0x8000_0000);
    assert.equal(await link!.inl(0xcfc), 0x1237_8086);
  });

  it('refuses bad arguments before sending', async () => {
    await assert.rejects(link!.outb(0x10000, 0), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(link!.writeb(0, 256), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(
      QtestLink.start({ devices: [], memSize: 1024 << 20 }),
      (e: unknown) => e instanceof QtestError && e.code === 'INVALID_ARGUMENT',
    );
  });

  it('a QEMU that cannot start fails with START_FAILED and its stderr', async () => {
    await assert.rejects(
      QtestLink.start({ devices: ['no-such-device-xyz'], memSize: 16 << 20 }),
      (e: unknown) =>
        e instanceof QtestError && e.code === 'START_FAILED' && /no-such-device-xyz/.test(e.message),
    );
  });

  it('close stops QEMU, removes the memory file, and later commands fail CLOSED', async () => {
    const l = await QtestLink.start({ devices: [], memSize: 16 << 20 });
    const pid = l.pid!;
    assert.ok(existsSync(l.memPath));
    await l.close();
    assert.equal(existsSync(l.memPath), false);
    assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
    await assert.rejects(l.inb(0x80), { code: 'CLOSED' });
  });
});
