/**
 * VhostUserBackendSession under arbitrary front-end message sequences: well-formed requests in any order with any
 * ring index and value, requests with random payloads (right or wrong size, unknown codes), fds attached where
 * none belong, kicks on any ring, messages split at random points. Whatever happens:
 * - `receive` never throws; a failure is a typed error that has already closed the session;
 * - the session leaks nothing: after `close`, every fd it was given is closed exactly once, every region is
 *   unmapped, and no call/err/backend request ever went to a closed fd;
 * - the same session then serves a new front-end from scratch (UML's probe and an echo request).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { VhostUserBackendSession } from '../../../src/transport/vhost-user/backend-session.js';
import { encodeRequest } from '../../../src/transport/vhost-user/message-writer.js';
import {
  FrontendRequest as R,
  VHOST_USER_F_PROTOCOL_FEATURES,
} from '../../../src/transport/vhost-user/protocol.js';
import { VirtioError } from '../../../src/virtio/errors.js';
import { VirtioFeature, featureBit, hasFeature } from '../../../src/virtio/features.js';
import { SplitVirtqueue, type SplitQueueLayout } from '../../../src/virtio/split/split-virtqueue.js';
import { EchoDevice, expectedEcho } from '../../fixtures/echo-device.js';
import { FakeFrontEnd, FakeHostIo, type Sent } from './fake-host.js';

const QUEUES = 2;
/** Largest request code the protocol defines (CHECK_DEVICE_STATE); a few beyond it are unknown codes. */
const MAX_REQUEST = 43;

type Op =
  | { readonly kind: 'plain'; readonly request: number; readonly needReply: boolean }
  | { readonly kind: 'features'; readonly value: bigint; readonly offered: boolean }
  | { readonly kind: 'protocol'; readonly value: bigint }
  | {
      readonly kind: 'state';
      readonly request: number;
      readonly index: number;
      readonly num: number;
      readonly needReply: boolean;
    }
  | { readonly kind: 'memTable'; readonly slots: number }
  | { readonly kind: 'vringAddr'; readonly index: number; readonly skew: number }
  | { readonly kind: 'vringFd'; readonly request: number; readonly index: number; readonly withFd: boolean }
  | {
      readonly kind: 'raw';
      readonly request: number;
      readonly payload: Uint8Array;
      readonly fds: number;
      readonly needReply: boolean;
    }
  | { readonly kind: 'kick'; readonly index: number }
  | { readonly kind: 'split'; readonly at: number };

const ringIndex = fc.oneof(
  { arbitrary: fc.integer({ min: 0, max: QUEUES - 1 }), weight: 8 },
  { arbitrary: fc.integer({ min: 0, max: 300 }), weight: 1 },
);
const op: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({
      kind: fc.constant('plain' as const),
      request: fc.constantFrom(
        R.SET_OWNER,
        R.RESET_OWNER,
        R.GET_FEATURES,
        R.GET_PROTOCOL_FEATURES,
        R.GET_QUEUE_NUM,
        R.GET_MAX_MEM_SLOTS,
        R.GET_STATUS,
        R.RESET_DEVICE,
      ),
      needReply: fc.boolean(),
    }),
    weight: 3,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant('features' as const),
      value: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      offered: fc.oneof(
        { arbitrary: fc.constant(true), weight: 4 },
        { arbitrary: fc.constant(false), weight: 1 },
      ),
    }),
    weight: 2,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant('protocol' as const),
      value: fc.bigInt({ min: 0n, max: (1n << 20n) - 1n }),
    }),
    weight: 1,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant('state' as const),
      request: fc.constantFrom(R.SET_VRING_NUM, R.SET_VRING_BASE, R.GET_VRING_BASE, R.SET_VRING_ENABLE),
      index: ringIndex,
      num: fc.oneof(
        { arbitrary: fc.constantFrom(0, 1, 64, 256), weight: 4 },
        { arbitrary: fc.nat({ max: 0xffff_ffff }), weight: 1 },
      ),
      needReply: fc.boolean(),
    }),
    weight: 4,
  },
  {
    arbitrary: fc.record({ kind: fc.constant('memTable' as const), slots: fc.integer({ min: 1, max: 8 }) }),
    weight: 2,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant('vringAddr' as const),
      index: ringIndex,
      skew: fc.oneof(
        { arbitrary: fc.constant(0), weight: 4 },
        { arbitrary: fc.integer({ min: -(1 << 20), max: 1 << 24 }), weight: 1 },
      ),
    }),
    weight: 3,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant('vringFd' as const),
      request: fc.constantFrom(R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR),
      index: ringIndex,
      withFd: fc.boolean(),
    }),
    weight: 4,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant('raw' as const),
      request: fc.integer({ min: 0, max: MAX_REQUEST + 4 }),
      payload: fc.uint8Array({ maxLength: 96 }),
      fds: fc.integer({ min: 0, max: 2 }),
      needReply: fc.boolean(),
    }),
    weight: 1,
  },
  { arbitrary: fc.record({ kind: fc.constant('kick' as const), index: ringIndex }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('split' as const), at: fc.nat() }), weight: 1 },
);

interface Rig {
  readonly io: FakeHostIo;
  readonly fe: FakeFrontEnd;
  readonly device: EchoDevice;
  readonly session: VhostUserBackendSession;
  readonly untyped: unknown[];
}

function rig(): Rig {
  const io = new FakeHostIo();
  const fe = new FakeFrontEnd(io, { queues: QUEUES });
  const device = new EchoDevice({ queueMaxSizes: Array.from({ length: QUEUES }, () => 256) });
  const untyped: unknown[] = [];
  const session = new VhostUserBackendSession(device, io, {
    onFault: (f) => {
      if (!(f instanceof VirtioError)) untyped.push(f);
    },
  });
  return { io, fe, device, session, untyped };
}

/** The bytes and fds one op sends (null: the op is not a message). */
function message(r: Rig, o: Op): Sent | null {
  const { fe, io } = r;
  switch (o.kind) {
    case 'plain':
      return fe.plain(o.request, o.needReply);
    case 'features': {
      // Mostly a plausible front-end (offered bits, VERSION_1 among them), sometimes anything.
      const offered = r.device.deviceFeatures | featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
      const version1 = featureBit(VirtioFeature.VIRTIO_F_VERSION_1);
      return fe.u64(R.SET_FEATURES, o.offered ? (o.value & offered) | version1 : o.value);
    }
    case 'protocol':
      return fe.u64(R.SET_PROTOCOL_FEATURES, o.value);
    case 'state':
      return fe.state(o.request, o.index, o.num, o.needReply);
    case 'memTable':
      return fe.memTable(o.slots);
    case 'vringAddr': {
      if (o.index >= QUEUES) {
        const sent = fe.vringAddr(0);
        // Same payload with another index: rewrite the u32 index (first payload field, after the 12-byte header).
        new DataView(sent.bytes.buffer, sent.bytes.byteOffset).setUint32(12, o.index, true);
        return sent;
      }
      const l = fe.layouts[o.index] as SplitQueueLayout;
      return fe.vringAddr(o.index, {
        desc: fe.user(l.descTable) + BigInt(o.skew),
        used: fe.user(l.usedRing) + BigInt(o.skew),
        avail: fe.user(l.availRing) + BigInt(o.skew),
      });
    }
    case 'vringFd':
      return fe.vringFd(o.request, o.index, o.withFd);
    case 'raw':
      return {
        bytes: encodeRequest(o.request, o.payload, o.needReply),
        fds: Array.from({ length: o.fds }, () => io.eventFd()),
      };
    case 'kick':
    case 'split':
      return null;
  }
}

/** UML's probe (vhost_user_init, finalize_features, find_vqs) as a list of messages, built when sent. */
function probeSteps(fe: FakeFrontEnd, features: () => bigint): (() => Sent)[] {
  const steps: (() => Sent)[] = [
    () => fe.plain(R.SET_OWNER),
    () => fe.plain(R.GET_FEATURES),
    () => fe.u64(R.SET_PROTOCOL_FEATURES, 0n),
    () => fe.u64(R.SET_FEATURES, features()),
    () => fe.memTable(),
  ];
  for (let i = 0; i < QUEUES; i++) {
    steps.push(
      () => fe.vringFd(R.SET_VRING_CALL, i),
      () => fe.state(R.SET_VRING_NUM, i, fe.queueSize),
      () => fe.state(R.SET_VRING_BASE, i, 0),
      () => fe.vringAddr(i),
    );
  }
  for (let i = 0; i < QUEUES; i++) {
    steps.push(
      () => fe.vringFd(R.SET_VRING_KICK, i),
      () => fe.state(R.SET_VRING_ENABLE, i, 1),
    );
  }
  return steps;
}

/** Everything the device offers, plus PROTOCOL_FEATURES (what UML acks). */
function offeredFeatures(r: Rig): bigint {
  return r.device.deviceFeatures | featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
}

/** UML's probe on a clean session, then one echo request on ring 0: the session serves a new front-end. */
function servesFreshFrontEnd(r: Rig): void {
  const fe = new FakeFrontEnd(r.io, { queues: QUEUES });
  const features = offeredFeatures(r);
  for (const step of probeSteps(fe, () => features)) {
    const s = step();
    const result = r.session.receive(s.bytes, s.fds);
    assert.equal(result.error, null, result.error?.message);
  }
  assert.equal(r.session.ring(0)?.live, true, 'ring 0 is live after the probe');
  const vq = new SplitVirtqueue<string>({
    index: 0,
    name: 'vq0',
    memory: fe.memory,
    size: fe.queueSize,
    addresses: fe.layouts[0] as SplitQueueLayout,
    eventIdx: hasFeature(features, VirtioFeature.VIRTIO_F_EVENT_IDX),
    indirect: false,
    allocator: fe.allocator,
    notify: () => undefined,
  });
  const input = new TextEncoder().encode('after the storm');
  const a = fe.allocator.alloc(input.length, 1);
  const b = fe.allocator.alloc(input.length, 1);
  fe.memory.write(a, input);
  vq.addBuf([{ addr: a, len: input.length }], [{ addr: b, len: input.length }], 'echo');
  vq.kick();
  assert.ok(r.session.kick(0), 'ring 0 is served');
  assert.equal(vq.getBuf()?.token, 'echo');
  const out = new Uint8Array(input.length);
  fe.memory.read(b, out);
  assert.deepEqual(out, expectedEcho(input, hasFeature(features, 0)));
}

describe('VhostUserBackendSession under arbitrary message sequences', () => {
  test('never throws, leaks no fd or mapping, and serves a new front-end afterwards', () => {
    fc.assert(
      fc.property(fc.nat({ max: 24 }), fc.array(op, { minLength: 1, maxLength: 80 }), (prefix, ops) => {
        const r = rig();
        // A valid probe cut short at a random point first, so the random part also meets live rings.
        const steps = probeSteps(r.fe, () => offeredFeatures(r));
        for (const step of steps.slice(0, prefix)) {
          const sent = step();
          assert.equal(r.session.receive(sent.bytes, sent.fds).error, null);
        }
        let splitAt = -1;
        for (const o of ops) {
          if (o.kind === 'kick') {
            r.session.kick(o.index);
            continue;
          }
          if (o.kind === 'split') {
            splitAt = o.at;
            continue;
          }
          const sent = message(r, o);
          if (sent === null) continue;
          // A split message arrives in two chunks (the fds with the first, as recvmsg delivers them).
          const cut = splitAt >= 0 && sent.bytes.length > 1 ? 1 + (splitAt % (sent.bytes.length - 1)) : 0;
          const chunks: Sent[] =
            cut > 0
              ? [
                  { bytes: sent.bytes.subarray(0, cut), fds: sent.fds },
                  { bytes: sent.bytes.subarray(cut), fds: [] },
                ]
              : [sent];
          splitAt = -1;
          for (const c of chunks) {
            const result = r.session.receive(c.bytes, c.fds);
            if (result.error !== null) {
              assert.ok(result.error instanceof VirtioError, 'typed error');
              // The session closed itself: it holds nothing now.
              assert.equal(r.io.liveMappings, 0, 'a failed session unmapped everything');
            }
          }
        }
        assert.deepEqual(r.untyped, [], 'only typed errors');
        r.session.close();
        r.io.assertClean();
        servesFreshFrontEnd(r);
        r.session.close();
        r.io.assertClean();
      }),
      { numRuns: 1500 },
    );
  });
});
