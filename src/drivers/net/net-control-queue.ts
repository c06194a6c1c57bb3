/**
 * The virtio-net control virtqueue, driver side (VIRTIO 1.2 §5.1.6.5; Linux virtnet_send_command): a command is
 * `struct virtio_net_ctrl { u8 class; u8 command; }` and its data in one device-readable buffer, followed by a
 * one-byte device-writable `ack` (VIRTIO_NET_OK or VIRTIO_NET_ERR). Commands go one at a time, in call order (Linux
 * holds the rtnl lock and spins; here each waits for the previous one's used buffer), and resolve when the device
 * has acked VIRTIO_NET_OK; anything else rejects with COMMAND_FAILED naming the class and command.
 */
import {
  NET_CTRL_ACK_SIZE,
  NET_CTRL_HEADER_SIZE,
  NetCtrlClass,
  VIRTIO_NET_OK,
} from '../../devices/net/net-layout.js';
import type { VirtioBusDevice } from '../../virtio/driver/virtio-bus-device.js';
import type { Virtqueue } from '../../virtio/driver/virtqueue.js';
import { NetDriverError } from './net-driver-error.js';

/** The ack byte before the device writes it: neither OK nor ERR, so "no ack" is told apart from either. */
const ACK_UNWRITTEN = 0xff;
/** Largest command data this driver sends: a MAC table of 2 × (4 + 64 × 6) bytes is far below it. */
export const NET_CTRL_MAX_DATA = 4096;

const CLASS_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(NetCtrlClass).map(([name, value]) => [value, name]),
);

interface ControlRequest {
  readonly addr: number;
  readonly dataLength: number;
  readonly cls: number;
  readonly command: number;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

export class NetControlQueue {
  /** Commands acked VIRTIO_NET_OK, and refused. */
  readonly stats = { ok: 0, failed: 0 };
  readonly #dev: VirtioBusDevice;
  readonly #vq: Virtqueue<ControlRequest>;
  readonly #broken: (cause: unknown) => NetDriverError;
  #tail: Promise<void> = Promise.resolve();
  #inFlight: ControlRequest | undefined;
  #failed: NetDriverError | undefined;

  constructor(dev: VirtioBusDevice, vq: Virtqueue, broken: (cause: unknown) => NetDriverError) {
    this.#dev = dev;
    this.#vq = vq as Virtqueue<ControlRequest>;
    this.#broken = broken;
  }

  get queue(): Virtqueue {
    return this.#vq;
  }

  /** Sends `class`/`command` with `data`; resolves on VIRTIO_NET_OK. */
  send(cls: number, command: number, data: Uint8Array): Promise<void> {
    if (data.length > NET_CTRL_MAX_DATA) {
      throw new NetDriverError(
        'INVALID_ARGUMENT',
        `control command data of ${data.length} bytes exceeds ${NET_CTRL_MAX_DATA}`,
        data.length,
      );
    }
    const run = this.#tail.then(() => this.#issue(cls, command, data));
    this.#tail = run.catch(() => undefined);
    return run;
  }

  /** @internal The queue's interrupt. */
  _done(): void {
    const vq = this.#vq;
    try {
      let used;
      while ((used = vq.getBuf()) !== null) {
        const req = used.token;
        if (req !== this.#inFlight) continue;
        this.#inFlight = undefined;
        this.#complete(req, used.len);
      }
    } catch (e) {
      this._fail(this.#broken(e));
    }
  }

  /** @internal Fails the command in flight and every later one (removal, broken queue). */
  _fail(error: NetDriverError): void {
    this.#failed ??= error;
    const req = this.#inFlight;
    this.#inFlight = undefined;
    req?.reject(error);
  }

  #issue(cls: number, command: number, data: Uint8Array): Promise<void> {
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    const ops = this.#dev.ops;
    const outLength = NET_CTRL_HEADER_SIZE + data.length;
    const addr = ops.allocator.alloc(outLength + NET_CTRL_ACK_SIZE, 8);
    ops.memory.write(addr, Uint8Array.of(cls, command));
    ops.memory.write(addr + NET_CTRL_HEADER_SIZE, data);
    ops.memory.write(addr + outLength, Uint8Array.of(ACK_UNWRITTEN));
    return new Promise<void>((resolve, reject) => {
      const done = (error?: Error): void => {
        ops.allocator.free(addr);
        if (error === undefined) resolve();
        else reject(error);
      };
      const req: ControlRequest = {
        addr,
        dataLength: data.length,
        cls,
        command,
        resolve: () => {
          done();
        },
        reject: done,
      };
      try {
        this.#vq.addBuf(
          [{ addr, len: outLength }],
          [{ addr: addr + outLength, len: NET_CTRL_ACK_SIZE }],
          req,
        );
      } catch (e) {
        done(this.#broken(e));
        return;
      }
      this.#inFlight = req;
      this.#vq.kick();
    });
  }

  #complete(req: ControlRequest, usedLength: number): void {
    const ack = this.#dev.ops.memory.readU8(req.addr + NET_CTRL_HEADER_SIZE + req.dataLength);
    if (usedLength >= NET_CTRL_ACK_SIZE && ack === VIRTIO_NET_OK) {
      this.stats.ok++;
      req.resolve();
      return;
    }
    this.stats.failed++;
    const name = `${CLASS_NAMES[req.cls] ?? req.cls}/${req.command}`;
    req.reject(
      new NetDriverError(
        'COMMAND_FAILED',
        `${this.#dev.name}: control command ${name} ${
          usedLength < NET_CTRL_ACK_SIZE ? 'got no ack' : `was refused (ack ${ack})`
        }`,
        { class: req.cls, command: req.command, ack },
      ),
    );
  }
}
