import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ConsoleDevice, type ConsoleDeviceOptions } from '../../../src/devices/console/console-device.js';
import { ConsoleError } from '../../../src/devices/console/console-errors.js';
import type { ConsolePortOptions } from '../../../src/devices/console/console-port.js';
import { LoopbackTransport } from '../../../src/transport/loopback/loopback-transport.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import type { VirtioBusDevice } from '../../../src/virtio/driver/virtio-bus-device.js';
import type { VirtioError } from '../../../src/virtio/errors.js';
import { VirtioFeature, featureBit } from '../../../src/virtio/features.js';
import { DeviceStatus } from '../../../src/virtio/status.js';
import {
  BAD_ID,
  EV,
  F_EMERG_WRITE,
  F_MULTIPORT,
  F_SIZE,
  consoleDriver,
  controlBytes,
  patternBytes,
  settle,
  waitFor,
  type ConsoleDriverInstance,
  type ConsoleDriverOptions,
  type TestConsoleDriver,
} from './console-driver.js';
import { MemoryChardev } from './memory-chardev.js';

const { DEVICE_NEEDS_RESET } = DeviceStatus;

interface Setup {
  readonly device: ConsoleDevice;
  readonly transport: LoopbackTransport;
  readonly bus: VirtioBus;
  readonly driver: TestConsoleDriver;
  readonly dev: VirtioBusDevice;
  readonly faults: VirtioError[];
  readonly errors: Error[];
  drv(): ConsoleDriverInstance;
  needsReset(): boolean;
}

async function setup(
  ports: readonly ConsolePortOptions[],
  options: { device?: Omit<ConsoleDeviceOptions, 'ports'>; driver?: ConsoleDriverOptions } = {},
): Promise<Setup> {
  const device = new ConsoleDevice({ ports, ...options.device });
  const faults: VirtioError[] = [];
  const errors: Error[] = [];
  const transport = new LoopbackTransport(device, { onFault: (f) => faults.push(f) });
  const bus = new VirtioBus({ onError: (_d, e) => errors.push(e) });
  const driver = consoleDriver(options.driver);
  await bus.registerDriver(driver);
  const dev = await bus.addDevice(transport);
  await settle();
  return {
    device,
    transport,
    bus,
    driver,
    dev,
    faults,
    errors,
    drv: () =>
      driver.instances.get(dev) ?? assert.fail(`not bound: ${errors.map((e) => e.message).join('; ')}`),
    needsReset: () => (transport.controller.status & DEVICE_NEEDS_RESET) !== 0,
  };
}

/** Three ports: the console, and two named generic ports. */
function threePorts(): { ports: ConsolePortOptions[]; chardevs: MemoryChardev[] } {
  const chardevs = [new MemoryChardev(), new MemoryChardev({ open: false }), new MemoryChardev()];
  const ports: ConsolePortOptions[] = [
    { console: true, chardev: chardevs[0]! },
    { name: 'org.fedoraproject.port.0', chardev: chardevs[1]! },
    { name: 'org.qemu.guest_agent.0', chardev: chardevs[2]! },
  ];
  return { ports, chardevs };
}

const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const decode = (b: Uint8Array): string => new TextDecoder().decode(b);

describe('ConsoleDevice: MULTIPORT port protocol', () => {
  test('enumerates ports by name, flags the console, and the guest opens the console port', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports);
    const drv = s.drv();
    assert.equal(drv.multiport, true);
    assert.equal(drv.maxPorts, 3);
    assert.equal(s.device.multiport, true);
    assert.equal(s.device.deviceReady, true);
    assert.deepEqual([...drv.ports.keys()].sort(), [0, 1, 2]);
    assert.equal(drv.port(0).name, undefined);
    assert.equal(drv.port(0).console, true);
    assert.equal(drv.port(1).name, 'org.fedoraproject.port.0');
    assert.equal(drv.port(1).console, false);
    assert.equal(drv.port(2).name, 'org.qemu.guest_agent.0');
    // Host side connected → PORT_OPEN(1) after PORT_READY; port 1's chardev is not connected.
    assert.equal(drv.port(0).hostOpen, true);
    assert.equal(drv.port(1).hostOpen, false);
    assert.equal(drv.port(2).hostOpen, true);
    for (let i = 0; i < 3; i++) assert.equal(s.device.portInfo(i)?.ready, true);
    // Linux answers CONSOLE_PORT with PORT_OPEN(1): the device tells the chardev.
    assert.equal(s.device.portInfo(0)?.guestOpen, true);
    assert.deepEqual(chardevs[0]!.guestOpenEvents, [true]);
    assert.equal(s.device.portInfo(1)?.guestOpen, false);
    assert.equal(s.needsReset(), false);
    assert.equal(s.errors.length, 0);
    const ignored = Object.values(s.device.stats.ignored).reduce((a, b) => a + b, 0);
    assert.equal(ignored, 0);
  });

  test('the control messages are exactly what the spec and Linux expect, in order', async () => {
    const { ports } = threePorts();
    const s = await setup(ports);
    const msgs = s.drv().control.map((m) => ({
      id: m.id,
      event: m.event,
      value: m.value,
      payload: decode(m.payload),
    }));
    // DEVICE_ADD for every port first (answer to DEVICE_READY), then per PORT_READY: name, console, open.
    assert.deepEqual(
      msgs.filter((m) => m.event === EV.DEVICE_ADD).map((m) => m.id),
      [0, 1, 2],
    );
    const port1 = msgs.filter((m) => m.id === 1 && m.event !== EV.DEVICE_ADD);
    assert.deepEqual(port1, [{ id: 1, event: EV.PORT_NAME, value: 1, payload: 'org.fedoraproject.port.0' }]);
    const port0 = msgs.filter((m) => m.id === 0 && m.event !== EV.DEVICE_ADD);
    assert.deepEqual(port0, [
      { id: 0, event: EV.CONSOLE_PORT, value: 1, payload: '' },
      { id: 0, event: EV.PORT_OPEN, value: 1, payload: '' },
    ]);
    assert.equal(s.device.stats.controlSent, msgs.length);
  });

  test('config space: max_nr_ports, cols/rows at 0/2 (Linux order), emerg_wr reads 0', async () => {
    const { ports } = threePorts();
    const s = await setup(ports, { device: { size: { cols: 132, rows: 43 }, maxPorts: 5 } });
    const cfg = await s.dev.readConfig(0, 12);
    const v = new DataView(cfg.buffer);
    assert.equal(v.getUint16(0, true), 132);
    assert.equal(v.getUint16(2, true), 43);
    assert.equal(v.getUint32(4, true), 5);
    assert.equal(v.getUint32(8, true), 0);
    assert.equal(s.dev.hasFeature(F_SIZE), true);
    assert.equal(s.dev.hasFeature(F_MULTIPORT), true);
    // 2 × (5 + 1) queues; the driver made them all.
    assert.equal(s.device.queueMaxSizes.length, 12);
    assert.equal(s.drv().vqs.length, 12);
    // Ports 3 and 4 exist in the config only: never announced.
    assert.deepEqual([...s.drv().ports.keys()].sort(), [0, 1, 2]);
  });

  test('host connect / disconnect → PORT_OPEN 1 / 0 to the guest', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports);
    const drv = s.drv();
    assert.equal(drv.port(1).hostOpen, false);
    chardevs[1]!.connect();
    await settle();
    assert.equal(drv.port(1).hostOpen, true);
    chardevs[1]!.disconnect();
    await settle();
    assert.equal(drv.port(1).hostOpen, false);
    const opens = drv.control.filter((m) => m.event === EV.PORT_OPEN && m.id === 1).map((m) => m.value);
    assert.deepEqual(opens, [1, 0]);
  });

  test('PORT_OPEN changes coalesce while the guest has no control buffer', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports, { driver: { controlBuffers: 6 } });
    const drv = s.drv();
    const before = drv.control.length;
    // The driver re-adds control buffers as it consumes them; remove that slack by flooding toggles at once.
    for (let i = 0; i < 1000; i++) {
      chardevs[1]!.connect();
      chardevs[1]!.disconnect();
    }
    chardevs[1]!.connect();
    await settle(20);
    assert.equal(drv.port(1).hostOpen, true);
    // Far fewer than 2001 messages: waiting ones were replaced, not queued.
    assert.ok(drv.control.length - before < 20, `${drv.control.length - before} messages`);
    assert.equal(s.needsReset(), false);
  });

  test('guest PORT_OPEN / close → the chardev sees it', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports);
    s.drv().openPort(2, true);
    await settle();
    assert.deepEqual(chardevs[2]!.guestOpenEvents, [true]);
    assert.equal(s.device.portInfo(2)?.guestOpen, true);
    s.drv().openPort(2, false);
    await settle();
    assert.deepEqual(chardevs[2]!.guestOpenEvents, [true, false]);
    assert.equal(s.device.portInfo(2)?.guestOpen, false);
  });

  test('data both ways on a named port, byte-exact', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports);
    const drv = s.drv();
    drv.openPort(2);
    await settle();
    await drv.write(2, text('{"execute":"guest-ping"}\n'));
    assert.equal(chardevs[2]!.outputText, '{"execute":"guest-ping"}\n');
    chardevs[2]!.send('{"return":{}}\n');
    await waitFor(() => drv.port(2).receivedBytes === 14, 'port 2 data');
    assert.equal(decode(drv.receivedOn(2)), '{"return":{}}\n');
    assert.equal(s.device.portInfo(2)?.stats.txBytes, 25);
    assert.equal(s.device.portInfo(2)?.stats.rxBytes, 14);
    // Nothing crossed to other ports.
    assert.equal(chardevs[0]!.written.length, 0);
    assert.equal(drv.port(0).receivedBytes, 0);
  });

  test('host data before the guest opens the port waits (chardev paused), then arrives in order', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports);
    const drv = s.drv();
    chardevs[2]!.send('early bytes');
    await settle();
    assert.equal(drv.port(2).receivedBytes, 0);
    assert.equal(s.device.portInfo(2)?.pendingBytes, 11);
    assert.equal(chardevs[2]!.paused, true);
    chardevs[2]!.send(' and more');
    await settle();
    assert.equal(chardevs[2]!.unsent, 9, 'a paused chardev holds its bytes');
    drv.openPort(2);
    await waitFor(() => drv.port(2).receivedBytes === 20, 'port 2 data');
    assert.equal(decode(drv.receivedOn(2)), 'early bytes and more');
    assert.equal(chardevs[2]!.paused, false);
  });

  test('1 MiB guest → host through a slow chardev: back-pressure, nothing lost, order kept', async () => {
    const slow = new MemoryChardev({ highWater: 16 * 1024, drainDelayMs: 1 });
    const s = await setup(
      [
        { console: true, chardev: new MemoryChardev() },
        { name: 'bulk', chardev: slow },
      ],
      {
        driver: { txChunk: 3000 },
      },
    );
    const data = patternBytes(1 << 20);
    await s.drv().write(1, data);
    assert.ok(slow.refusals > 10, `chardev pushed back ${slow.refusals} times`);
    assert.deepEqual(slow.output, data);
    assert.equal(s.device.portInfo(1)?.stats.txBytes, data.length);
    assert.equal(s.device.portInfo(1)?.stats.txDiscarded, 0);
    assert.equal(s.needsReset(), false);
  });

  test('1 MiB host → guest with few small guest buffers: chardev paused, nothing lost, order kept', async () => {
    const source = new MemoryChardev();
    const s = await setup([{ console: true, chardev: source }], {
      driver: { rxBuffers: 4, rxBufferSize: 1000 },
    });
    const data = patternBytes(1 << 20, 99);
    source.send(data, 50_000);
    await waitFor(() => s.drv().port(0).receivedBytes === data.length, '1 MiB at the guest');
    assert.deepEqual(s.drv().receivedOn(0), data);
    assert.ok(source.pauses > 10, `paused ${source.pauses} times`);
    assert.equal(source.paused, false);
    assert.equal(s.device.portInfo(0)?.pendingBytes, 0);
  });

  test('a chardev that ignores pause loses nothing either (the device keeps the bytes)', async () => {
    const rude = new MemoryChardev({ ignorePause: true });
    const s = await setup([{ console: true, chardev: rude }], {
      driver: { rxBuffers: 2, rxBufferSize: 512 },
    });
    const data = patternBytes(200_000, 7);
    rude.send(data, 4096);
    assert.equal(rude.unsent, 0);
    await waitFor(() => s.drv().port(0).receivedBytes === data.length, 'all bytes at the guest');
    assert.deepEqual(s.drv().receivedOn(0), data);
  });

  test('without EVENT_IDX (flag-based notification suppression): 256 KiB each way with back-pressure', async () => {
    const slow = new MemoryChardev({ highWater: 4096 });
    const s = await setup([{ console: true, chardev: slow }], {
      device: { transportFeatures: featureBit(VirtioFeature.VIRTIO_F_VERSION_1) },
      driver: { rxBuffers: 3, rxBufferSize: 700 },
    });
    assert.equal(s.dev.hasFeature(VirtioFeature.VIRTIO_F_EVENT_IDX), false);
    const up = patternBytes(256 * 1024, 21);
    const down = patternBytes(256 * 1024, 22);
    slow.send(down, 10_000);
    await s.drv().write(0, up);
    await waitFor(() => s.drv().port(0).receivedBytes === down.length, 'host bytes at the guest');
    assert.deepEqual(slow.output, up);
    assert.deepEqual(s.drv().receivedOn(0), down);
    assert.ok(slow.refusals > 0 && slow.pauses > 0);
  });

  test('both directions at once on two ports', async () => {
    const a = new MemoryChardev({ highWater: 8192 });
    const b = new MemoryChardev();
    const s = await setup([
      { console: true, chardev: a },
      { name: 'two', chardev: b },
    ]);
    const drv = s.drv();
    drv.openPort(1);
    await settle();
    const up0 = patternBytes(100_000, 1);
    const up1 = patternBytes(100_000, 2);
    const down0 = patternBytes(100_000, 3);
    const down1 = patternBytes(100_000, 4);
    a.send(down0, 7000);
    b.send(down1, 9000);
    await Promise.all([drv.write(0, up0), drv.write(1, up1)]);
    await waitFor(
      () => drv.port(0).receivedBytes === down0.length && drv.port(1).receivedBytes === down1.length,
      'both ports',
    );
    assert.deepEqual(a.output, up0);
    assert.deepEqual(b.output, up1);
    assert.deepEqual(drv.receivedOn(0), down0);
    assert.deepEqual(drv.receivedOn(1), down1);
  });

  test('guest output to a port whose host side is not connected is discarded and counted, not stalled', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports);
    await s.drv().write(1, patternBytes(50_000));
    assert.equal(chardevs[1]!.written.length, 0);
    assert.equal(s.device.portInfo(1)?.stats.txDiscarded, 50_000);
    chardevs[1]!.connect();
    await s.drv().write(1, text('after connect'));
    assert.equal(chardevs[1]!.outputText, 'after connect');
  });

  test('a host disconnect while blocked on back-pressure releases the guest', async () => {
    const slow = new MemoryChardev({ highWater: 1024, drainDelayMs: 60_000 });
    const s = await setup([{ console: true, chardev: slow }]);
    const done = s.drv().write(0, patternBytes(64 * 1024));
    await waitFor(() => s.device.portInfo(0)?.txBlocked === true, 'back-pressure');
    slow.disconnect();
    await done;
    const info = s.device.portInfo(0)!;
    assert.equal(info.stats.txBytes + info.stats.txDiscarded, 64 * 1024);
    assert.ok(info.stats.txDiscarded > 0);
    await slow.close();
  });

  test('RESIZE to a console port carries cols then rows; port 0 size goes to config space', async () => {
    const { ports } = threePorts();
    const s = await setup(ports, { device: { size: { cols: 80, rows: 25 } } });
    s.device.resize(120, 40);
    await settle();
    assert.deepEqual(s.drv().port(0).size, { cols: 120, rows: 40 });
    const cfg = new DataView((await s.dev.readConfig(0, 4)).buffer);
    assert.equal(cfg.getUint16(0, true), 120);
    assert.equal(cfg.getUint16(2, true), 40);
    // A non-console port gets no RESIZE.
    s.device.resize(10, 10, 1);
    await settle();
    assert.equal(s.drv().port(1).size, undefined);
  });

  test('emergency write: the low byte of emerg_wr goes to port 0, even before DRIVER_OK', async () => {
    const c0 = new MemoryChardev();
    const device = new ConsoleDevice({ ports: [{ console: true, chardev: c0 }] });
    const transport = new LoopbackTransport(device);
    await transport.writeConfig(8, Uint8Array.of(0x41, 0, 0, 0)); // unconfigured device
    const s = await setup([{ console: true, chardev: c0 }]);
    assert.equal(s.dev.hasFeature(F_EMERG_WRITE), false, 'Linux does not negotiate it');
    await s.dev.ops.writeConfig(8, Uint8Array.of(0x42));
    await s.dev.ops.writeConfig(9, Uint8Array.of(0x43)); // not the low byte: ignored
    assert.equal(c0.outputText, 'AB');
    assert.equal(device.stats.emergencyWrites, 1);
  });

  test('reset and re-probe: the whole handshake runs again', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports);
    s.drv().openPort(2);
    await settle();
    assert.equal(await s.bus.reprobe(s.dev), true);
    await settle();
    // The guest-open state was dropped at reset; the chardev heard about it.
    assert.deepEqual(chardevs[2]!.guestOpenEvents, [true, false]);
    const drv = s.drv();
    assert.equal(drv.port(1).name, 'org.fedoraproject.port.0');
    assert.equal(drv.port(0).console, true);
    await drv.write(0, text('hello again'));
    assert.equal(chardevs[0]!.outputText, 'hello again');
  });
});

describe('ConsoleDevice: hostile control messages are ignored and counted', () => {
  test('short, unknown, unexpected, out of range, bad value, duplicate, failed', async () => {
    const { ports, chardevs } = threePorts();
    const seen: string[] = [];
    const s = await setup(ports, { device: { onControlIgnored: (reason) => seen.push(reason) } });
    const drv = s.drv();
    drv.sendRaw(3, Uint8Array.of(1, 2, 3, 4)); // 4 bytes: no header
    drv.sendControl(0, 99, 1); // unknown event
    drv.sendControl(0, EV.DEVICE_ADD, 0); // only the device sends it
    drv.sendControl(0, EV.RESIZE, 0);
    drv.sendControl(1000, EV.PORT_OPEN, 1); // no such port
    drv.sendControl(BAD_ID, EV.PORT_READY, 1);
    drv.sendControl(1, EV.PORT_OPEN, 7); // bad value
    drv.sendControl(BAD_ID, EV.DEVICE_READY, 1); // duplicate
    drv.sendControl(1, EV.PORT_READY, 1); // duplicate
    drv.sendControl(2, EV.PORT_READY, 0); // the driver failed the port
    await settle(10);
    const ig = s.device.stats.ignored;
    assert.equal(ig['short-message'], 1);
    assert.equal(ig['unknown-event'], 1);
    assert.equal(ig['unexpected-event'], 2);
    assert.equal(ig['bad-port-id'], 2);
    assert.equal(ig['bad-value'], 1);
    assert.equal(ig.duplicate, 2);
    assert.equal(ig['driver-failed'], 1);
    assert.equal(seen.length, 10);
    assert.equal(s.needsReset(), false);
    // The device still works.
    drv.openPort(1);
    chardevs[1]!.connect();
    await drv.write(1, text('still fine'));
    assert.equal(chardevs[1]!.outputText, 'still fine');
  });

  test('a control message with a payload: only the header is used', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports);
    const msg = new Uint8Array(4096);
    msg.set(controlBytes(2, EV.PORT_OPEN, 1));
    s.drv().sendRaw(3, msg);
    await settle();
    assert.deepEqual(chardevs[2]!.guestOpenEvents, [true]);
  });

  test('a control message split across two descriptors at every byte is read the same', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports);
    for (let cut = 0; cut <= 8; cut++) {
      s.drv().sendSplit(3, controlBytes(2, EV.PORT_OPEN, cut % 2 === 0 ? 1 : 0), cut);
      await settle();
    }
    assert.deepEqual(chardevs[2]!.guestOpenEvents, [
      true,
      false,
      true,
      false,
      true,
      false,
      true,
      false,
      true,
    ]);
    assert.equal(s.device.stats.ignored['short-message'], 0);
  });

  test('a PORT_NAME longer than the driver buffer is truncated and counted', async () => {
    const c = new MemoryChardev();
    const name = 'x'.repeat(200);
    const s = await setup([{ name, chardev: c }], { driver: { controlBufferSize: 64 } });
    assert.equal(s.drv().port(0).name, 'x'.repeat(56));
    assert.equal(s.device.stats.controlTruncated, 1);
  });
});

describe('ConsoleDevice: guest faults → DEVICE_NEEDS_RESET', () => {
  test('a transmit buffer with device-writable descriptors', async () => {
    const { ports } = threePorts();
    const s = await setup(ports);
    s.drv().sendRaw(s.drv().txQueue(2), text('data'), 16);
    await settle();
    assert.equal(s.needsReset(), true);
    const reason = s.transport.controller.resetReason;
    assert.ok(reason instanceof ConsoleError);
    assert.equal(reason.code, 'TX_WRITABLE_BUFFER');
  });

  test('a control transmitq buffer with device-writable descriptors', async () => {
    const { ports } = threePorts();
    const s = await setup(ports);
    s.drv().sendRaw(3, controlBytes(0, EV.PORT_OPEN, 1), 8);
    await settle();
    assert.equal(s.transport.controller.resetReason?.code, 'TX_WRITABLE_BUFFER');
  });

  test('a receive buffer with device-readable descriptors (seen when host data arrives)', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports, { driver: { rxBuffers: 0 } });
    s.drv().openPort(2);
    s.drv().addBadRxBuffer(s.drv().rxQueue(2));
    await settle();
    assert.equal(s.needsReset(), false, 'nothing to deliver yet');
    chardevs[2]!.send('x');
    await settle();
    assert.equal(s.transport.controller.resetReason?.code, 'RX_READABLE_BUFFER');
  });

  test('a control receive buffer shorter than the header', async () => {
    const { ports } = threePorts();
    const s = await setup(ports, { driver: { controlBuffers: 0 } });
    s.drv().addControlBuffer(4);
    s.drv().vq(2).kick();
    await settle();
    assert.equal(s.transport.controller.resetReason?.code, 'CONTROL_BUFFER_TOO_SHORT');
  });

  test('after a fault the device is quiet until reset, then works again', async () => {
    const { ports, chardevs } = threePorts();
    const s = await setup(ports);
    s.drv().sendRaw(s.drv().txQueue(0), text('bad'), 4);
    await settle();
    assert.equal(s.needsReset(), true);
    chardevs[0]!.send('while broken');
    await settle();
    assert.equal(s.drv().port(0).receivedBytes, 0);
    assert.equal(await s.bus.reprobe(s.dev), true);
    await waitFor(() => s.drv().port(0).receivedBytes === 12, 'held bytes after reset');
    assert.equal(decode(s.drv().receivedOn(0)), 'while broken');
  });
});

describe('ConsoleDevice: without MULTIPORT', () => {
  test('a driver that does not know MULTIPORT: port 0 on queues 0/1 is the console', async () => {
    const c = new MemoryChardev();
    const s = await setup([{ console: true, chardev: c }], { driver: { featureTable: [F_SIZE] } });
    const drv = s.drv();
    assert.equal(drv.multiport, false);
    assert.equal(s.device.multiport, false);
    assert.equal(drv.vqs.length, 2);
    assert.equal(s.device.portInfo(0)?.guestOpen, true);
    assert.deepEqual(c.guestOpenEvents, [true]);
    await drv.write(0, text('Linux version 6.1\n'));
    assert.equal(c.outputText, 'Linux version 6.1\n');
    c.send('root\n');
    await waitFor(() => drv.port(0).receivedBytes === 5, 'input');
    assert.equal(decode(drv.receivedOn(0)), 'root\n');
    assert.equal(s.device.stats.controlSent, 0);
  });

  test('a device that does not offer MULTIPORT (one port), with a MULTIPORT-capable driver', async () => {
    const c = new MemoryChardev();
    const s = await setup([{ console: true, chardev: c }], { device: { multiport: false } });
    assert.equal(s.dev.hasFeature(F_MULTIPORT), false);
    assert.equal(s.device.queueMaxSizes.length, 2);
    await s.drv().write(0, patternBytes(100_000));
    assert.deepEqual(c.output, patternBytes(100_000));
  });

  test('SIZE negotiated: resize changes the config space and notifies the driver', async () => {
    const c = new MemoryChardev();
    const s = await setup([{ console: true, chardev: c }], {
      device: { size: { cols: 80, rows: 24 } },
      driver: { featureTable: [F_SIZE] },
    });
    const before = s.driver.configChanges;
    s.device.resize(100, 30);
    await settle();
    assert.equal(s.driver.configChanges, before + 1);
    const cfg = new DataView((await s.dev.readConfig(0, 4)).buffer);
    assert.equal(cfg.getUint16(0, true), 100);
    assert.equal(cfg.getUint16(2, true), 30);
  });

  test('several ports without MULTIPORT offered is a configuration error', () => {
    assert.throws(
      () =>
        new ConsoleDevice({
          multiport: false,
          ports: [{ chardev: new MemoryChardev() }, { chardev: new MemoryChardev() }],
        }),
      /need VIRTIO_CONSOLE_F_MULTIPORT/,
    );
    assert.throws(() => new ConsoleDevice({ ports: [] }), /at least one port/);
    assert.throws(
      () => new ConsoleDevice({ ports: [{ chardev: new MemoryChardev() }], maxPorts: 0 }),
      /maxPorts/,
    );
  });
});
