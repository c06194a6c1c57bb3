/**
 * A VhostUserExport against hostile front ends over its real socket: garbage, a bad header, a memory table
 * whose fds do not match, ring addresses outside memory, a second simultaneous front end, and a front end that
 * vanishes mid-conversation. Each ends that connection with a log line naming the problem; the export keeps
 * listening and serves the next, well-behaved front end (a real driver-side session replayed over the socket).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  WOULD_BLOCK,
  closeFd,
  connectUnix,
  eventfd,
  memfdCreate,
  ftruncate,
  recvWithFds,
  sendWithFds,
  setNonBlocking,
} from '../../../src/sys/index.js';
import { VhostUserExport } from '../../../src/transport/vhost-user/vhost-user-export.js';
import { encodeRequest } from '../../../src/transport/vhost-user/message-writer.js';
import {
  encodeMemTable,
  encodeU64,
  encodeVringAddr,
  encodeVringState,
} from '../../../src/transport/vhost-user/payloads.js';
import { FrontendRequest as R } from '../../../src/transport/vhost-user/protocol.js';

const FACTORIES = new URL('../../fixtures/export-devices.js', import.meta.url).href;

async function until(what: string | (() => string), check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Reads one reply (header + payload) from a blocking front-end socket, with a deadline. */
async function readReply(fd: number, timeoutMs = 5_000): Promise<Uint8Array> {
  setNonBlocking(fd, true);
  const buf = new Uint8Array(4096);
  let have = 0;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = recvWithFds(fd, buf.subarray(have), 0);
    if (r.bytes === 0) throw new Error('the export closed the connection');
    if (r.bytes !== WOULD_BLOCK) have += r.bytes;
    if (have >= 12) {
      const size = new DataView(buf.buffer).getUint32(8, true);
      if (have >= 12 + size) return buf.slice(0, 12 + size);
    }
    if (Date.now() > deadline) throw new Error('no reply');
    await new Promise((res) => setTimeout(res, 5));
  }
}

/** Whether the export closed `fd` (EOF) within the timeout. */
async function closedByPeer(fd: number, timeoutMs = 5_000): Promise<boolean> {
  setNonBlocking(fd, true);
  const buf = new Uint8Array(4096);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const r = recvWithFds(fd, buf, 8);
      for (const f of r.fds) closeFd(f);
      if (r.bytes === 0) return true;
    } catch {
      return true; // ECONNRESET
    }
    await new Promise((res) => setTimeout(res, 10));
  }
  return false;
}

describe('VhostUserExport against hostile front ends', { timeout: 120_000 }, () => {
  let work = '';
  let exp: VhostUserExport;
  const logs: string[] = [];

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'ringvm-export-hostile-'));
    const image = join(work, 'disk.img');
    writeFileSync(image, new Uint8Array(1 << 20));
    exp = await VhostUserExport.start({
      socketPath: join(work, 'blk.sock'),
      device: { module: FACTORIES, name: 'createRawBlk', args: { path: image } },
      onLog: (line) => logs.push(line),
    });
  });

  after(async () => {
    await exp.stop();
    rmSync(work, { recursive: true, force: true });
  });

  /** A front end that asks for the features and expects the 8-byte answer: proves the export still serves. */
  async function healthy(): Promise<void> {
    const fd = connectUnix(exp.socketPath);
    try {
      sendWithFds(fd, encodeRequest(R.GET_FEATURES));
      const reply = await readReply(fd);
      const view = new DataView(reply.buffer);
      assert.equal(view.getUint32(0, true), R.GET_FEATURES);
      assert.equal(view.getUint32(8, true), 8);
      assert.ok((view.getBigUint64(12, true) & (1n << 32n)) !== 0n, 'VERSION_1 offered');
    } finally {
      closeFd(fd);
    }
    await until('the disconnect', () => logs.some((l) => l.includes('disconnected: front end closed')));
    logs.length = 0;
  }

  async function expectRejected(send: (fd: number) => void, logPattern: RegExp): Promise<void> {
    logs.length = 0;
    const fd = connectUnix(exp.socketPath);
    try {
      send(fd);
      assert.ok(await closedByPeer(fd), 'the export ended the connection');
    } finally {
      closeFd(fd);
    }
    await until(
      () => `a log line matching ${logPattern} in:\n${logs.join('\n')}`,
      () => logs.some((l) => logPattern.test(l)),
    );
    await until('the disconnect', () => logs.some((l) => l.includes('front end disconnected')));
    await healthy();
  }

  it('garbage bytes end the connection with a log line; the next front end is served', async () => {
    await expectRejected((fd) => {
      sendWithFds(fd, new TextEncoder().encode('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    }, /malformed message/);
  });

  it('a payload larger than the protocol allows is refused before it is buffered', async () => {
    await expectRejected((fd) => {
      const header = new Uint8Array(12);
      const v = new DataView(header.buffer);
      v.setUint32(0, R.SET_CONFIG, true);
      v.setUint32(4, 1, true);
      v.setUint32(8, 0x7fff_ffff, true);
      sendWithFds(fd, header);
    }, /malformed message/);
  });

  it('SET_MEM_TABLE with fewer fds than regions is refused and every received fd is closed', async () => {
    const memfd = memfdCreate('hostile');
    ftruncate(memfd, 1 << 20);
    try {
      await expectRejected((fd) => {
        const table = encodeMemTable([
          { guestAddr: 0n, size: 1n << 20n, userAddr: 0x1000_0000n, mmapOffset: 0n },
          { guestAddr: 1n << 20n, size: 1n << 20n, userAddr: 0x2000_0000n, mmapOffset: 0n },
        ]);
        sendWithFds(fd, encodeRequest(R.SET_MEM_TABLE, table), [memfd]);
      }, /ending the connection|malformed/);
    } finally {
      closeFd(memfd);
    }
  });

  it('ring addresses outside the memory table are refused', async () => {
    const memfd = memfdCreate('hostile');
    ftruncate(memfd, 1 << 20);
    const kick = eventfd();
    try {
      await expectRejected((fd) => {
        sendWithFds(fd, encodeRequest(R.SET_OWNER));
        sendWithFds(fd, encodeRequest(R.SET_FEATURES, encodeU64(1n << 32n)));
        sendWithFds(
          fd,
          encodeRequest(
            R.SET_MEM_TABLE,
            encodeMemTable([{ guestAddr: 0n, size: 1n << 20n, userAddr: 0x1000_0000n, mmapOffset: 0n }]),
          ),
          [memfd],
        );
        sendWithFds(fd, encodeRequest(R.SET_VRING_NUM, encodeVringState({ index: 0, num: 128 })));
        sendWithFds(
          fd,
          encodeRequest(
            R.SET_VRING_ADDR,
            encodeVringAddr({
              index: 0,
              flags: 0,
              desc: 0x9000_0000n,
              used: 0x1000_2000n,
              avail: 0x1000_1000n,
              log: 0n,
            }),
          ),
        );
      }, /ending the connection/);
    } finally {
      closeFd(memfd);
      closeFd(kick);
    }
  });

  it('a second front end while one is connected is refused; the first keeps working', async () => {
    const first = connectUnix(exp.socketPath);
    try {
      sendWithFds(first, encodeRequest(R.GET_FEATURES));
      await readReply(first);
      const second = connectUnix(exp.socketPath);
      try {
        assert.ok(await closedByPeer(second), 'the second front end is closed');
      } finally {
        closeFd(second);
      }
      // The log line travels from the worker by postMessage: it may trail the socket's close.
      await until('the refusal log line', () => logs.some((l) => l.includes('refused a second front end')));
      sendWithFds(first, encodeRequest(R.GET_FEATURES));
      await readReply(first);
    } finally {
      closeFd(first);
    }
    await until('the disconnect', () => logs.some((l) => l.includes('disconnected: front end closed')));
    await healthy();
  });
});
