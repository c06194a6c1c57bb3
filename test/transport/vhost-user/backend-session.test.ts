import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  VhostUserBackendSession,
  SUPPORTED_PROTOCOL_FEATURES,
} from '../../../src/transport/vhost-user/backend-session.js';
import { VhostUserMessageParser } from '../../../src/transport/vhost-user/message-parser.js';
import { encodeRequest } from '../../../src/transport/vhost-user/message-writer.js';
import {
  decodeConfig,
  decodeU64,
  decodeVringState,
  encodeConfig,
  encodeMemTable,
  encodeSingleMemRegion,
} from '../../../src/transport/vhost-user/payloads.js';
import {
  FrontendRequest as R,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserProtocolFeature,
} from '../../../src/transport/vhost-user/protocol.js';
import type { VirtioError } from '../../../src/virtio/errors.js';
import { VirtioFeature, featureBit, hasFeature } from '../../../src/virtio/features.js';
import type { SplitQueueLayout } from '../../../src/virtio/split/split-virtqueue.js';
import { SplitVirtqueue } from '../../../src/virtio/split/split-virtqueue.js';
import type { SplitQueue } from '../../../src/virtio/split/split-queue.js';
import type { DeviceContext } from '../../../src/virtio/device/virtio-device.js';
import { DeviceStatus } from '../../../src/virtio/status.js';
import {
  ECHO_CONFIG_SIZE,
  ECHO_DEVICE_ID,
  ECHO_MAGIC,
  EchoDevice,
  expectedEcho,
} from '../../fixtures/echo-device.js';
import { FakeFrontEnd, FakeHostIo, feed, feedExpectingError, type Sent } from './fake-host.js';

const BIT30 = featureBit(VHOST_USER_F_PROTOCOL_FEATURES);

/** Parses the back-end's replies independently of the session. */
function replies(bytes: Uint8Array[]): { request: number; flags: number; payload: Uint8Array }[] {
  const p = new VhostUserMessageParser({ mode: 'replies' });
  for (const b of bytes) p.push(b);
  const out = [];
  for (let m = p.next(); m !== null; m = p.next()) out.push(m);
  return out;
}

function only(bytes: Uint8Array[]): { request: number; flags: number; payload: Uint8Array } {
  const r = replies(bytes);
  assert.equal(r.length, 1);
  return r[0]!;
}

interface Rig {
  readonly io: FakeHostIo;
  readonly fe: FakeFrontEnd;
  readonly device: EchoDevice;
  readonly session: VhostUserBackendSession;
  readonly faults: VirtioError[];
  readonly features: bigint;
}

function rig(
  options: { queues?: number; userBase?: number; device?: EchoDevice; io?: FakeHostIo } = {},
): Rig {
  const io = options.io ?? new FakeHostIo();
  const queues = options.queues ?? 2;
  const device =
    options.device ?? new EchoDevice({ queueMaxSizes: Array.from({ length: queues }, () => 256) });
  const fe = new FakeFrontEnd(io, {
    queues,
    ...(options.userBase === undefined ? {} : { userBase: options.userBase }),
  });
  const faults: VirtioError[] = [];
  const session = new VhostUserBackendSession(device, io, { onFault: (f) => faults.push(f) });
  return { io, fe, device, session, faults, features: 0n };
}

/** The negotiation part of UML's probe (vhost_user_init + finalize_features). Returns the acked features. */
function umlNegotiate(r: Rig, protocol = featureBit(VhostUserProtocolFeature.CONFIG)): bigint {
  const { fe, session } = r;
  assert.deepEqual(feed(session, fe.plain(R.SET_OWNER)), []);
  const features = decodeU64(only(feed(session, fe.plain(R.GET_FEATURES))).payload);
  assert.ok(hasFeature(features, VHOST_USER_F_PROTOCOL_FEATURES));
  const proto = decodeU64(only(feed(session, fe.plain(R.GET_PROTOCOL_FEATURES))).payload);
  assert.equal(proto, SUPPORTED_PROTOCOL_FEATURES);
  feed(session, fe.u64(R.SET_PROTOCOL_FEATURES, proto & protocol));
  const acked = features; // UML accepts everything the echo device offers, plus bit 30
  feed(session, fe.u64(R.SET_FEATURES, acked));
  return acked;
}

/** UML's find_vqs: mem table, then per vq CALL, NUM, BASE, ADDR; then per vq KICK and ENABLE. */
function umlFindVqs(r: Rig, queues: number): void {
  const { fe, session } = r;
  feed(session, fe.memTable());
  for (let i = 0; i < queues; i++) {
    feed(
      session,
      fe.vringFd(R.SET_VRING_CALL, i),
      fe.state(R.SET_VRING_NUM, i, fe.queueSize),
      fe.state(R.SET_VRING_BASE, i, 0),
      fe.vringAddr(i),
    );
  }
  for (let i = 0; i < queues; i++)
    feed(session, fe.vringFd(R.SET_VRING_KICK, i), fe.state(R.SET_VRING_ENABLE, i, 1));
}

/** A driver-side queue over the front-end's memory. */
function driverQueue(
  r: Rig,
  index: number,
  features: bigint,
): { vq: SplitVirtqueue<string>; kicks: () => number } {
  let kicks = 0;
  const vq = new SplitVirtqueue<string>({
    index,
    name: `vq${index}`,
    memory: r.fe.memory,
    size: r.fe.queueSize,
    addresses: r.fe.layouts[index] as SplitQueueLayout,
    eventIdx: hasFeature(features, VirtioFeature.VIRTIO_F_EVENT_IDX),
    indirect: hasFeature(features, VirtioFeature.VIRTIO_F_INDIRECT_DESC),
    allocator: r.fe.allocator,
    notify: () => {
      kicks++;
    },
  });
  return { vq, kicks: () => kicks };
}

/** Adds one echo request (text in, same-size buffer out); returns where the answer lands. */
function addEcho(r: Rig, vq: SplitVirtqueue<string>, text: string): { out: number; len: number } {
  const input = new TextEncoder().encode(text);
  const a = r.fe.allocator.alloc(input.length, 1);
  const b = r.fe.allocator.alloc(input.length, 1);
  r.fe.memory.write(a, input);
  vq.addBuf([{ addr: a, len: input.length }], [{ addr: b, len: input.length }], text);
  return { out: b, len: input.length };
}

function readText(r: Rig, addr: number, len: number): string {
  const buf = new Uint8Array(len);
  r.fe.memory.read(addr, buf);
  return new TextDecoder().decode(buf);
}

describe('VhostUserBackendSession: a UML probe, end to end', () => {
  test('negotiation, config, rings, an echo request, a call, GET_VRING_BASE', () => {
    const r = rig();
    const acked = umlNegotiate(r);
    // virtio_uml reads config with offset 0 and size = offset + len.
    const cfg = only(
      feed(r.session, {
        bytes: encodeRequest(R.GET_CONFIG, encodeConfig(0, 0, new Uint8Array(16))),
        fds: [],
      }),
    );
    assert.equal(cfg.flags, 5);
    const c = decodeConfig(cfg.payload);
    assert.equal(c.size, 16);
    assert.equal(new DataView(c.data.buffer, c.data.byteOffset).getUint32(0, true), ECHO_MAGIC);
    assert.equal(r.device.deviceType, ECHO_DEVICE_ID);

    umlFindVqs(r, 2);
    assert.equal(r.session.ring(0)?.live, true);
    assert.equal(r.session.ring(1)?.live, true);
    assert.equal(r.device.isActive, true);
    assert.equal(r.session.ring(0)?.kickFd, r.fe.kickFds[0]);

    const { vq, kicks } = driverQueue(r, 0, acked & ~BIT30);
    const uppercase = hasFeature(acked, 0);
    const texts = ['hello vhost', 'from uml', 'third'];
    const outs = texts.map((t) => addEcho(r, vq, t));
    vq.kick();
    assert.equal(kicks(), 1);
    assert.equal(r.session.kick(0), true);
    assert.deepEqual(r.io.calls, [[0, r.fe.callFds[0]]]);
    for (const [i, t] of texts.entries()) {
      const used = vq.getBuf();
      assert.equal(used?.token, t);
      assert.equal(used.len, t.length);
      const want = new TextDecoder().decode(expectedEcho(new TextEncoder().encode(t), uppercase));
      assert.equal(readText(r, outs[i]!.out, outs[i]!.len), want);
    }

    // GET_VRING_BASE: the next avail index (3), and the ring stops.
    const base = only(feed(r.session, r.fe.state(R.GET_VRING_BASE, 0, 0)));
    assert.deepEqual(decodeVringState(base.payload), { index: 0, num: 3 });
    assert.equal(r.session.ring(0)?.started, false);
    assert.equal(r.session.ring(0)?.kickFd, null);
    assert.ok(r.io.closed.includes(r.fe.kickFds[0]!));
    addEcho(r, vq, 'ignored');
    vq.kick();
    assert.equal(r.session.kick(0), false);
    assert.equal(r.session.ring(1)?.live, true);

    // Restart from the returned base: the pending request is served.
    feed(r.session, r.fe.state(R.SET_VRING_BASE, 0, 3), r.fe.vringFd(R.SET_VRING_KICK, 0));
    assert.equal(r.session.kick(0), true);
    assert.equal(vq.getBuf()?.token, 'ignored');

    r.session.close();
    r.io.assertClean();
    assert.equal(r.device.isActive, false);
    assert.deepEqual(r.faults, []);
  });

  test('GET_VRING_BASE asks the device to give back the chains it popped ahead of need (quiesce)', () => {
    /** An echo device that can pop a chain ahead and hold it, as virtio-net receive does for a tap. */
    class LookaheadEcho extends EchoDevice {
      queues: readonly SplitQueue[] = [];
      held: number | null = null;
      override activate(context: DeviceContext): void {
        this.queues = context.queues;
        super.activate(context);
      }
      holdOne(queue: number): void {
        this.held = this.queues[queue]?.popChain()?.head ?? null;
      }
      quiesce(): void {
        if (this.held !== null) this.queues[0]?.unpop(this.held);
        this.held = null;
      }
    }
    const device = new LookaheadEcho({ queueMaxSizes: [256, 256] });
    const r = rig({ device });
    const acked = umlNegotiate(r);
    umlFindVqs(r, 2);
    const { vq } = driverQueue(r, 0, acked & ~BIT30);
    addEcho(r, vq, 'served');
    vq.kick();
    assert.equal(r.session.kick(0), true);
    assert.equal(vq.getBuf()?.token, 'served');
    addEcho(r, vq, 'held ahead');
    vq.kick();
    device.holdOne(0);
    assert.notEqual(device.held, null);
    const base = only(feed(r.session, r.fe.state(R.GET_VRING_BASE, 0, 0)));
    assert.deepEqual(decodeVringState(base.payload), { index: 0, num: 1 }, 'the held chain is not consumed');
    feed(r.session, r.fe.state(R.SET_VRING_BASE, 0, 1), r.fe.vringFd(R.SET_VRING_KICK, 0));
    assert.equal(r.session.kick(0), true);
    assert.equal(vq.getBuf()?.token, 'held ahead');
    r.session.close();
    assert.deepEqual(r.faults, []);
  });

  test('reconnect after close: the same session and a new session serve a new front-end', () => {
    const io = new FakeHostIo();
    const device = new EchoDevice({ queueMaxSizes: [256, 256] });
    const first = rig({ io, device });
    umlNegotiate(first);
    umlFindVqs(first, 2);
    first.session.close();
    io.assertClean();

    for (const session of [first.session, new VhostUserBackendSession(device, io)]) {
      const r: Rig = { ...rig({ io, device }), session };
      const acked = umlNegotiate(r);
      umlFindVqs(r, 2);
      const { vq } = driverQueue(r, 1, acked & ~BIT30);
      addEcho(r, vq, 'again');
      vq.kick();
      assert.equal(session.kick(1), true);
      assert.equal(vq.getBuf()?.token, 'again');
      session.close();
      io.assertClean();
    }
  });

  test('REPLY_ACK: NEED_REPLY requests get u64 0; GET_* replies are unchanged', () => {
    const r = rig();
    umlNegotiate(r, SUPPORTED_PROTOCOL_FEATURES);
    const ack = only(feed(r.session, r.fe.state(R.SET_VRING_NUM, 0, 128, true)));
    assert.equal(ack.request, R.SET_VRING_NUM);
    assert.equal(ack.flags, 5);
    assert.equal(decodeU64(ack.payload), 0n);
    const qn = only(feed(r.session, r.fe.plain(R.GET_QUEUE_NUM, true)));
    assert.equal(decodeU64(qn.payload), 2n);
    assert.equal(decodeU64(only(feed(r.session, r.fe.plain(R.GET_MAX_MEM_SLOTS))).payload), 32n);
    r.session.close();
    r.io.assertClean();
  });

  test('without PROTOCOL_FEATURES rings are enabled by SET_FEATURES and start on their kick', () => {
    const r = rig({ queues: 1 });
    const features = decodeU64(only(feed(r.session, r.fe.plain(R.GET_FEATURES))).payload) & ~BIT30;
    feed(r.session, r.fe.u64(R.SET_FEATURES, features), r.fe.memTable());
    feed(
      r.session,
      r.fe.state(R.SET_VRING_NUM, 0, 256),
      r.fe.vringAddr(0),
      r.fe.vringFd(R.SET_VRING_CALL, 0),
    );
    assert.equal(r.session.ring(0)?.enabled, true);
    assert.equal(r.session.ring(0)?.live, false);
    feed(r.session, r.fe.vringFd(R.SET_VRING_KICK, 0));
    assert.equal(r.session.ring(0)?.live, true);
    r.session.close();
    r.io.assertClean();
  });

  test('with PROTOCOL_FEATURES a started ring waits for SET_VRING_ENABLE; disabling stops it', () => {
    const r = rig({ queues: 1 });
    umlNegotiate(r);
    feed(r.session, r.fe.memTable(), r.fe.state(R.SET_VRING_NUM, 0, 256), r.fe.vringAddr(0));
    feed(r.session, r.fe.vringFd(R.SET_VRING_KICK, 0, false)); // polling
    assert.equal(r.session.ring(0)?.polling, true);
    assert.equal(r.session.ring(0)?.live, false);
    feed(r.session, r.fe.state(R.SET_VRING_ENABLE, 0, 1));
    assert.equal(r.session.ring(0)?.live, true);
    feed(r.session, r.fe.state(R.SET_VRING_ENABLE, 0, 0));
    assert.equal(r.session.ring(0)?.live, false);
    assert.equal(r.session.kick(0), false);
    r.session.close();
    r.io.assertClean();
  });

  test('QEMU-style addresses: user addresses differ from guest addresses and are translated', () => {
    const r = rig({ queues: 1, userBase: 0x7f12_3456_0000 });
    const acked = umlNegotiate(r);
    umlFindVqs(r, 1);
    const { vq } = driverQueue(r, 0, acked & ~BIT30);
    addEcho(r, vq, 'translated');
    vq.kick();
    r.session.kick(0);
    assert.equal(vq.getBuf()?.token, 'translated');
    r.session.close();
    r.io.assertClean();
  });

  test('ADD_MEM_REG / REM_MEM_REG maintain the table', () => {
    const r = rig({ queues: 1 });
    umlNegotiate(r, SUPPORTED_PROTOCOL_FEATURES);
    const fd = r.io.memFd(r.fe.file);
    feed(r.session, {
      bytes: encodeRequest(R.ADD_MEM_REG, encodeSingleMemRegion(r.fe.region()), true),
      fds: [fd],
    });
    assert.equal(r.session.memory?.regions.length, 1);
    assert.equal(r.io.liveMappings, 1);
    assert.ok(!r.io.open.has(fd), 'the region fd is closed after mapping');
    feed(r.session, { bytes: encodeRequest(R.REM_MEM_REG, encodeSingleMemRegion(r.fe.region())), fds: [] });
    assert.equal(r.session.memory, null);
    assert.equal(r.io.liveMappings, 0);
    r.session.close();
    r.io.assertClean();
  });

  test('a second vhost device on the connection (QEMU multiqueue net): same features and region change nothing', () => {
    const r = rig({ queues: 1 });
    const acked = umlNegotiate(r, SUPPORTED_PROTOCOL_FEATURES);
    umlFindVqs(r, 1);
    const { vq } = driverQueue(r, 0, acked & ~BIT30);
    const echo = (token: string) => {
      addEcho(r, vq, token);
      vq.kick();
      r.session.kick(0);
      assert.equal(vq.getBuf()?.token, token);
    };
    echo('first device');
    // The next queue pair's device: SET_FEATURES and ADD_MEM_REG again, identical.
    feed(r.session, r.fe.u64(R.SET_FEATURES, acked));
    assert.equal(r.session.ring(0)?.live, true, 'the running ring was not reset');
    const fd = r.io.memFd(r.fe.file);
    const add = {
      bytes: encodeRequest(R.ADD_MEM_REG, encodeSingleMemRegion(r.fe.region()), true),
      fds: [fd],
    };
    feed(r.session, add);
    assert.equal(r.io.liveMappings, 1, 'mapped once');
    assert.ok(!r.io.open.has(fd), 'the duplicate fd is closed');
    echo('after the second device');
    // One device removes it: still mapped for the other.
    const rem = { bytes: encodeRequest(R.REM_MEM_REG, encodeSingleMemRegion(r.fe.region())), fds: [] };
    feed(r.session, rem);
    assert.equal(r.io.liveMappings, 1);
    echo('one removal later');
    feed(r.session, rem);
    assert.equal(r.session.memory, null);
    assert.equal(r.io.liveMappings, 0);
    r.session.close();
    r.io.assertClean();
  });

  test('a new SET_MEM_TABLE unmaps the previous one; the live ring keeps its base', () => {
    const r = rig({ queues: 1 });
    const acked = umlNegotiate(r);
    umlFindVqs(r, 1);
    const { vq } = driverQueue(r, 0, acked & ~BIT30);
    addEcho(r, vq, 'one');
    vq.kick();
    r.session.kick(0);
    feed(r.session, r.fe.memTable());
    assert.equal(r.io.liveMappings, 1);
    addEcho(r, vq, 'two');
    vq.kick();
    r.session.kick(0);
    assert.equal(vq.getBuf()?.token, 'one');
    assert.equal(vq.getBuf()?.token, 'two');
    r.session.close();
    r.io.assertClean();
  });

  test('GET_CONFIG outside the config space: zero-length reply, the session goes on', () => {
    const r = rig({ queues: 1 });
    umlNegotiate(r);
    const bad = only(
      feed(r.session, {
        bytes: encodeRequest(R.GET_CONFIG, encodeConfig(0, 0, new Uint8Array(ECHO_CONFIG_SIZE + 4))),
        fds: [],
      }),
    );
    assert.equal(bad.payload.length, 0);
    const ok = only(
      feed(r.session, { bytes: encodeRequest(R.GET_CONFIG, encodeConfig(4, 0, new Uint8Array(4))), fds: [] }),
    );
    assert.equal(decodeConfig(ok.payload).size, 4);
    r.session.close();
    r.io.assertClean();
  });

  test('a guest fault: DEVICE_NEEDS_RESET in GET_STATUS, the err eventfd signalled, the connection stays', () => {
    const r = rig({ queues: 1 });
    const acked = umlNegotiate(r, SUPPORTED_PROTOCOL_FEATURES);
    feed(r.session, r.fe.vringFd(R.SET_VRING_ERR, 0));
    const errFd = r.session.ring(0)?.errFd;
    umlFindVqs(r, 1);
    const { vq } = driverQueue(r, 0, acked & ~BIT30);
    addEcho(r, vq, 'x');
    // Corrupt the avail ring entry: head 999 ≥ queue size.
    const l = r.fe.layouts[0]!;
    r.fe.memory.writeU16(l.availRing + 4, 999);
    vq.kick();
    r.session.kick(0);
    const status = Number(decodeU64(only(feed(r.session, r.fe.plain(R.GET_STATUS))).payload));
    assert.ok((status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0);
    assert.deepEqual(r.io.errs, [[0, errFd]]);
    assert.ok(r.faults.length > 0);
    r.session.close();
    r.io.assertClean();
  });
});

describe('VhostUserBackendSession: hostile front-ends end the session cleanly', () => {
  /** Negotiated, memory table set, ring 0 called: the state most attacks start from. */
  function prepared(): Rig {
    const r = rig();
    umlNegotiate(r, SUPPORTED_PROTOCOL_FEATURES);
    feed(r.session, r.fe.memTable(), r.fe.vringFd(R.SET_VRING_CALL, 0), r.fe.state(R.SET_VRING_NUM, 0, 256));
    return r;
  }

  function expectEnd(r: Rig, bad: Sent, code: string): Uint8Array[] {
    const res = feedExpectingError(r.session, bad);
    assert.equal(res.error?.code, code, res.error?.message);
    r.io.assertClean();
    assert.equal(r.session.memory, null);
    assert.equal(r.device.isActive, false);
    return res.replies;
  }

  test('ring address outside the memory table', () => {
    const r = prepared();
    expectEnd(r, r.fe.vringAddr(0, { desc: 0x9000_0000n }), 'RING_ADDRESS_NOT_MAPPED');
  });

  test('a used ring that runs past the end of its region', () => {
    const r = prepared();
    const end = r.fe.user(r.fe.guestBase + r.fe.memorySize - 16);
    expectEnd(r, r.fe.vringAddr(0, { used: end }), 'RING_ADDRESS_NOT_MAPPED');
  });

  test('overlapping regions (both fds closed)', () => {
    const r = prepared();
    const a = r.fe.region();
    const b = { ...a, guestAddr: a.guestAddr + 0x1000n, userAddr: a.userAddr + 0x10_0000_0000n };
    const fds = [r.io.memFd(r.fe.file), r.io.memFd(r.fe.file)];
    expectEnd(r, { bytes: encodeRequest(R.SET_MEM_TABLE, encodeMemTable([a, b])), fds }, 'BAD_MEMORY_REGION');
  });

  test('SET_MEM_TABLE with more fds than regions', () => {
    const r = prepared();
    const fds = [r.io.memFd(r.fe.file), r.io.memFd(r.fe.file)];
    expectEnd(
      r,
      { bytes: encodeRequest(R.SET_MEM_TABLE, encodeMemTable([r.fe.region()])), fds },
      'WRONG_FD_COUNT',
    );
  });

  test('SET_VRING_CALL with an fd and the no-fd bit', () => {
    const r = prepared();
    const call = r.fe.vringFd(R.SET_VRING_CALL, 1, false);
    expectEnd(r, { bytes: call.bytes, fds: [r.io.eventFd()] }, 'WRONG_FD_COUNT');
  });

  test('SET_FEATURES with an fd (parser)', () => {
    const r = prepared();
    expectEnd(r, { bytes: r.fe.u64(R.SET_FEATURES, 0n).bytes, fds: [r.io.eventFd()] }, 'WRONG_FD_COUNT');
  });

  test('SET_VRING_NUM not a power of two, and above the maximum; NEED_REPLY gets a failure', () => {
    const r = prepared();
    const replyBytes = expectEnd(r, r.fe.state(R.SET_VRING_NUM, 0, 100, true), 'BAD_RING_SIZE');
    assert.equal(decodeU64(only(replyBytes).payload), 1n);
    const r2 = prepared();
    expectEnd(r2, r2.fe.state(R.SET_VRING_NUM, 0, 512), 'BAD_RING_SIZE');
  });

  test('SET_VRING_ADDR for a ring the device does not have', () => {
    const r = prepared();
    const bad = r.fe.vringAddr(0);
    new DataView(bad.bytes.buffer).setUint32(12, 2, true); // index 2 of 2 queues
    expectEnd(r, bad, 'RING_INDEX_OUT_OF_RANGE');
  });

  test('SET_VRING_KICK for ring 7', () => {
    const r = prepared();
    expectEnd(r, r.fe.vringFd(R.SET_VRING_KICK, 7), 'RING_INDEX_OUT_OF_RANGE');
  });

  test('unknown request with NEED_REPLY', () => {
    const r = prepared();
    expectEnd(r, { bytes: encodeRequest(77, new Uint8Array(0), true), fds: [] }, 'UNKNOWN_REQUEST');
  });

  test('payload size mismatch', () => {
    const r = prepared();
    expectEnd(r, { bytes: encodeRequest(R.SET_VRING_NUM, new Uint8Array(4)), fds: [] }, 'BAD_PAYLOAD_SIZE');
  });

  test('a region fd that fails to map', () => {
    const r = prepared();
    r.io.failMap = true;
    expectEnd(r, r.fe.memTable(), 'MAP_FAILED');
  });

  test('a feature that was not offered', () => {
    const r = prepared();
    expectEnd(r, r.fe.u64(R.SET_FEATURES, 1n << 60n), 'FEATURE_NOT_OFFERED');
  });

  test('features the device refuses (no VERSION_1)', () => {
    const r = prepared();
    expectEnd(r, r.fe.u64(R.SET_FEATURES, BIT30), 'FEATURES_REJECTED');
  });

  test('an unsupported request (SET_LOG_BASE)', () => {
    const r = prepared();
    expectEnd(
      r,
      { bytes: encodeRequest(R.SET_LOG_BASE, new Uint8Array(16)), fds: [] },
      'UNSUPPORTED_REQUEST',
    );
  });

  test('SET_VRING_ADDR before any memory table', () => {
    const r = rig();
    umlNegotiate(r);
    expectEnd(r, r.fe.vringAddr(0), 'NO_MEMORY_TABLE');
  });

  test('a live device: an error ends everything, the device is reset', () => {
    const r = rig();
    umlNegotiate(r);
    umlFindVqs(r, 2);
    assert.equal(r.device.isActive, true);
    expectEnd(r, r.fe.state(R.SET_VRING_ENABLE, 0, 2), 'BAD_VALUE');
  });
});
