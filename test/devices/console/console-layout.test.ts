import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CONSOLE_CONTROL_RX_QUEUE,
  CONSOLE_CONTROL_TX_QUEUE,
  ConsoleControlEvent,
  ConsoleFeature,
  consoleQueueCount,
  consoleQueueRole,
  consoleRxQueue,
  consoleTxQueue,
  decodeControlMessage,
  encodeControlMessage,
  encodeResizePayload,
} from '../../../src/devices/console/console-layout.js';
import { HostBacklog } from '../../../src/devices/console/console-port.js';

describe('console layout', () => {
  test('queue numbering (§5.3.2): port 0 on 0/1, control on 2/3, port N on 2+2N / 3+2N', () => {
    assert.equal(consoleRxQueue(0), 0);
    assert.equal(consoleTxQueue(0), 1);
    assert.equal(CONSOLE_CONTROL_RX_QUEUE, 2);
    assert.equal(CONSOLE_CONTROL_TX_QUEUE, 3);
    assert.equal(consoleRxQueue(1), 4);
    assert.equal(consoleTxQueue(1), 5);
    assert.equal(consoleRxQueue(30), 62);
    assert.equal(consoleTxQueue(30), 63);
    // Linux: nr_queues = (max_nr_ports + 1) * 2 with MULTIPORT, 2 without.
    assert.equal(consoleQueueCount(31, true), 64);
    assert.equal(consoleQueueCount(31, false), 2);
    for (let port = 0; port < 40; port++) {
      assert.deepEqual(consoleQueueRole(consoleRxQueue(port)), { kind: 'rx', port });
      assert.deepEqual(consoleQueueRole(consoleTxQueue(port)), { kind: 'tx', port });
    }
    assert.deepEqual(consoleQueueRole(2), { kind: 'control-rx' });
    assert.deepEqual(consoleQueueRole(3), { kind: 'control-tx' });
    assert.equal(consoleQueueRole(-1), undefined);
  });

  test('feature bits and events have the spec numbers', () => {
    assert.deepEqual(ConsoleFeature, {
      VIRTIO_CONSOLE_F_SIZE: 0,
      VIRTIO_CONSOLE_F_MULTIPORT: 1,
      VIRTIO_CONSOLE_F_EMERG_WRITE: 2,
    });
    assert.deepEqual(Object.values(ConsoleControlEvent), [0, 1, 2, 3, 4, 5, 6, 7]);
  });

  test('control message bytes: le32 id, le16 event, le16 value, payload', () => {
    const bytes = encodeControlMessage(0x01020304, 7, 1, Uint8Array.of(0x61, 0x62));
    assert.deepEqual([...bytes], [4, 3, 2, 1, 7, 0, 1, 0, 0x61, 0x62]);
    assert.deepEqual(decodeControlMessage(bytes), {
      id: 0x01020304,
      event: 7,
      value: 1,
      payload: Uint8Array.of(0x61, 0x62),
    });
    assert.equal(decodeControlMessage(bytes.subarray(0, 7)), undefined);
    assert.deepEqual([...encodeResizePayload(0x0102, 0x0304)], [2, 1, 4, 3]);
  });

  test('HostBacklog: partial drains keep order', () => {
    const b = new HostBacklog();
    b.push(Uint8Array.of(1, 2, 3));
    b.push(new Uint8Array(0));
    b.push(Uint8Array.of(4, 5));
    const got: number[] = [];
    const take = (max: number) => (bytes: Uint8Array) => {
      const n = Math.min(max - got.length, bytes.length);
      got.push(...bytes.subarray(0, n));
      return n;
    };
    assert.equal(b.drainInto(take(2)), 2);
    assert.equal(b.length, 3);
    assert.equal(b.drainInto(take(4)), 2);
    assert.equal(b.drainInto(take(10)), 1);
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
    assert.equal(b.length, 0);
  });
});
