/**
 * `NetBackend`: the host side of a virtio-net device's link, as the device sees it — one Ethernet port that
 * takes frames the guest transmits and hands over frames for the guest to receive. Devices depend on this small
 * interface, never on a concrete back end: tap, stream socket (QEMU `-netdev stream` framing), passt and the
 * in-process switch live in src/backends/net; tests may use an in-memory one.
 *
 * Contract:
 * - A frame is an Ethernet frame. When `vnetHdr` is true every frame, both ways, is preceded by a 12-byte
 *   `virtio_net_hdr` v1 (`NET_HDR_SIZE` in net-layout.ts: tap with IFF_VNET_HDR, so checksum and GSO offloads pass through
 *   untouched); otherwise frames are bare and the device must not offer offloads it cannot honour itself.
 * - Everything is synchronous and runs in the thread that owns the device (a vhost-user export's worker): the
 *   back end watches its own fds on that thread's event loop and calls the `NetBackendEvents` it was started with.
 * - `transmit(bufs)` sends one frame whose bytes are the concatenation of `bufs`, which alias guest memory (zero
 *   copy): the back end copies what it must keep before returning. `false` means back-pressure: nothing was
 *   taken; the device keeps the chain and retries after `events.writable()`. A frame the back end refuses for good
 *   (too long, link gone) throws {@link NetBackendError}; the device drops and counts it.
 * - `receive(bufs)` moves the next pending frame into `bufs` (scatter, zero copy where the host allows: readv on
 *   a tap fd straight into guest memory) and returns its length in bytes, or 0 when nothing is pending. A frame
 *   longer than `bufs` is consumed whole and returns -1 (the device drops and counts it).
 * - `pendingLength()` gives the length of the next pending frame when the back end knows it without consuming it
 *   (stream framing, a queued frame), -1 when it cannot tell (tap), 0 when nothing is pending. A device with
 *   VIRTIO_NET_F_MRG_RXBUF uses it to pop only as many receive buffers as the frame needs.
 * - `events.readable()` is called when frames become pending after `receive` or `pendingLength` returned 0
 *   (edge: the device then drains until one of them says nothing is pending). The device may `pauseReceive()` while the guest has no receive buffers, and
 *   `resumeReceive()` once it has.
 * - `setOffloads` (tap only) tells the host which offloads the guest accepts on receive (TUNSETOFFLOAD).
 * - `setEnabled(false)` (optional): the device does not use this back end for now — it serves a queue pair
 *   beyond the driver's VQ_PAIRS_SET — so a multiqueue tap detaches the queue (TUNSETQUEUE) and the host steers
 *   no flows to it; `setEnabled(true)` attaches it again. Back ends start enabled; repeating the current state
 *   does nothing (the device repeats it on every activation).
 * - `close()` releases the host resources; no call may follow.
 */
import { VirtioError } from '../../virtio/errors.js';

export interface NetBackendEvents {
  /** Frames are pending for `receive` (edge-triggered: after `receive` or `pendingLength` returned 0). */
  readable(): void;
  /** `transmit` may succeed again after it returned false. */
  writable(): void;
  /** The host side of the link went up or down (a stream peer connected or hung up). */
  linkChange?(up: boolean): void;
}

/** Receive offloads the guest accepted (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN, GUEST_UFO). */
export interface NetOffloads {
  readonly csum: boolean;
  readonly tso4: boolean;
  readonly tso6: boolean;
  readonly ecn: boolean;
  readonly ufo: boolean;
}

export interface NetBackend {
  /** Frames carry a 12-byte virtio_net_hdr v1 prefix in both directions. */
  readonly vnetHdr: boolean;
  /** The host side's link is up (a stream back end without a peer is down). */
  readonly linkUp: boolean;
  start(events: NetBackendEvents): void;
  transmit(bufs: readonly Uint8Array[]): boolean;
  receive(bufs: readonly Uint8Array[]): number;
  pendingLength(): number;
  pauseReceive(): void;
  resumeReceive(): void;
  setOffloads?(offloads: NetOffloads): void;
  setEnabled?(enabled: boolean): void;
  close(): Promise<void>;
}

export type NetBackendErrorCode = 'FRAME_TOO_LONG' | 'LINK_DOWN' | 'HOST_IO';

/** A frame the back end cannot take or give; the device drops it, counts it, and carries on. */
export class NetBackendError extends VirtioError<NetBackendErrorCode> {}
