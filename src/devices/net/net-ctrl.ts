/**
 * The control virtqueue (VIRTIO 1.2 §5.1.6.5): one command per chain, `{u8 class; u8 command}` and the
 * command's data in the device-readable part, `u8 ack` in the first device-writable byte.
 *
 * | command                                  | needs          | data                                  |
 * | ---------------------------------------- | -------------- | ------------------------------------- |
 * | RX PROMISC / ALLMULTI                    | CTRL_RX        | u8 on (0 or 1)                        |
 * | MAC TABLE_SET                            | CTRL_RX        | unicast then multicast `{le32 n; mac[n]}` |
 * | MAC ADDR_SET                             | CTRL_MAC_ADDR  | mac[6]                                |
 * | VLAN ADD / DEL                           | CTRL_VLAN      | le16 id ≤ 4095                        |
 * | ANNOUNCE ACK                             | GUEST_ANNOUNCE | none                                  |
 * | MQ VQ_PAIRS_SET                          | MQ             | le16 pairs in 1..max_virtqueue_pairs  |
 *
 * Hostile input (item 20). A command the device can answer is answered: VIRTIO_NET_ERR for a short header
 * (`NET_CTRL_HEADER_TOO_SHORT`), an unknown class or command or one whose feature was not negotiated
 * (`NET_CTRL_UNSUPPORTED`: RX_EXTRA, GUEST_OFFLOADS and RSS are not offered), data of the wrong length or out of
 * range (`NET_CTRL_BAD_DATA`); the device's state is changed only by a command answered VIRTIO_NET_OK (a MAC
 * table is parsed whole before it replaces the old one). A chain with no device-writable byte cannot be
 * answered: it is returned with used length 0 (`NET_CTRL_NO_ACK`), which Linux reads as a failed command.
 * Data longer than {@link NET_CTRL_MAX_DATA} is refused without being read.
 */
import type { DescriptorChain } from '../../virtio/split/descriptor-chain.js';
import { NetRequestError, type NetRequestErrorCode } from './net-errors.js';
import {
  MAC_ADDRESS_BYTES,
  NET_CTRL_ACK_SIZE,
  NET_CTRL_HEADER_SIZE,
  NetCtrlAnnounce,
  NetCtrlClass,
  NetCtrlMac,
  NetCtrlMq,
  NetCtrlRx,
  NetCtrlVlan,
  VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN,
  VIRTIO_NET_ERR,
  VIRTIO_NET_OK,
  VLAN_ID_MAX,
} from './net-layout.js';
import { NET_MAC_TABLE_ENTRIES, type NetRxFilter } from './net-rx-filter.js';

/**
 * Most data bytes a command may carry: a MAC table of about 5000 addresses. Anything longer would make the
 * device copy up to 4 GiB of guest memory for one command.
 */
export const NET_CTRL_MAX_DATA = 32 * 1024;
/** `le32 entries` before each MAC table. */
const MAC_TABLE_COUNT_BYTES = 4;
const U16_BYTES = 2;
const U8_BYTES = 1;

/** Which command groups were negotiated. */
export interface NetCtrlFeatures {
  readonly rx: boolean;
  readonly vlan: boolean;
  readonly macAddr: boolean;
  readonly announce: boolean;
  readonly mq: boolean;
  readonly maxPairs: number;
}

/** What commands change: the filter directly, the rest through the device. */
export interface NetCtrlTarget {
  readonly filter: NetRxFilter;
  setMac(mac: Uint8Array): void;
  setPairs(pairs: number): void;
  ackAnnounce(): void;
}

/** The outcome of one chain: the ack written (or none), and why it was refused. */
export interface NetCtrlResult {
  /** Used length: 1 when the ack was written, 0 when the chain had no room for it. */
  readonly usedLength: number;
  readonly ack: number;
  readonly error: NetRequestError | undefined;
}

/** Executes the command in `chain` against `target` and writes the ack. */
export function executeNetCtrl(
  chain: DescriptorChain,
  features: NetCtrlFeatures,
  target: NetCtrlTarget,
): NetCtrlResult {
  if (chain.writableLength < NET_CTRL_ACK_SIZE) {
    return {
      usedLength: 0,
      ack: VIRTIO_NET_ERR,
      error: new NetRequestError(
        'NET_CTRL_NO_ACK',
        `control command at head ${chain.head} has no room for the ack`,
        chain.head,
      ),
    };
  }
  const error = runCommand(chain, features, target);
  const ack = error === undefined ? VIRTIO_NET_OK : VIRTIO_NET_ERR;
  chain.writer().writeU8(ack);
  return { usedLength: NET_CTRL_ACK_SIZE, ack, error };
}

function runCommand(
  chain: DescriptorChain,
  features: NetCtrlFeatures,
  target: NetCtrlTarget,
): NetRequestError | undefined {
  if (chain.readableLength < NET_CTRL_HEADER_SIZE) {
    return new NetRequestError(
      'NET_CTRL_HEADER_TOO_SHORT',
      `control command of ${chain.readableLength} bytes has no class and command`,
      chain.readableLength,
    );
  }
  const reader = chain.reader();
  const cls = reader.readU8();
  const cmd = reader.readU8();
  const fail = (code: NetRequestErrorCode, message: string): NetRequestError =>
    new NetRequestError(code, `control class ${cls} command ${cmd}: ${message}`, {
      class: cls,
      command: cmd,
    });
  const unsupported = (why: string): NetRequestError => fail('NET_CTRL_UNSUPPORTED', why);
  if (reader.remaining > NET_CTRL_MAX_DATA) {
    return fail(
      'NET_CTRL_BAD_DATA',
      `${reader.remaining} data bytes exceed the ${NET_CTRL_MAX_DATA} accepted`,
    );
  }
  // Read once: the guest may change its buffers while the command runs.
  const data = new Uint8Array(reader.remaining);
  reader.read(data);
  const view = new DataView(data.buffer);
  const exact = (n: number): NetRequestError | undefined =>
    data.length === n ? undefined : fail('NET_CTRL_BAD_DATA', `expected ${n} data bytes, got ${data.length}`);

  switch (cls) {
    case NetCtrlClass.RX: {
      if (!features.rx) return unsupported('VIRTIO_NET_F_CTRL_RX was not negotiated');
      if (cmd !== NetCtrlRx.PROMISC && cmd !== NetCtrlRx.ALLMULTI) {
        return unsupported('not PROMISC or ALLMULTI (VIRTIO_NET_F_CTRL_RX_EXTRA is not offered)');
      }
      const bad = exact(U8_BYTES);
      if (bad !== undefined) return bad;
      const on = data[0] as number;
      if (on > 1) return fail('NET_CTRL_BAD_DATA', `on/off byte ${on} is neither 0 nor 1`);
      if (cmd === NetCtrlRx.PROMISC) target.filter.promiscuous = on === 1;
      else target.filter.allMulti = on === 1;
      return undefined;
    }
    case NetCtrlClass.MAC: {
      if (cmd === NetCtrlMac.ADDR_SET) {
        if (!features.macAddr) return unsupported('VIRTIO_NET_F_CTRL_MAC_ADDR was not negotiated');
        const bad = exact(MAC_ADDRESS_BYTES);
        if (bad !== undefined) return bad;
        if (((data[0] as number) & 1) !== 0)
          return fail('NET_CTRL_BAD_DATA', 'a multicast address as the MAC');
        target.setMac(data);
        return undefined;
      }
      if (cmd !== NetCtrlMac.TABLE_SET) return unsupported('unknown MAC command');
      if (!features.rx) return unsupported('VIRTIO_NET_F_CTRL_RX was not negotiated');
      const uni = macTable(view, 0);
      if (typeof uni === 'string') return fail('NET_CTRL_BAD_DATA', `unicast table: ${uni}`);
      const multi = macTable(view, uni.end);
      if (typeof multi === 'string') return fail('NET_CTRL_BAD_DATA', `multicast table: ${multi}`);
      if (multi.end !== data.length) {
        return fail('NET_CTRL_BAD_DATA', `${data.length - multi.end} bytes after the two MAC tables`);
      }
      const f = target.filter;
      f.unicastOverflow = uni.entries > NET_MAC_TABLE_ENTRIES;
      f.unicastCount = f.unicastOverflow ? 0 : uni.entries;
      if (!f.unicastOverflow) f.unicast.set(data.subarray(uni.start, uni.end));
      f.multicastOverflow = multi.entries > NET_MAC_TABLE_ENTRIES;
      f.multicastCount = f.multicastOverflow ? 0 : multi.entries;
      if (!f.multicastOverflow) f.multicast.set(data.subarray(multi.start, multi.end));
      return undefined;
    }
    case NetCtrlClass.VLAN: {
      if (!features.vlan) return unsupported('VIRTIO_NET_F_CTRL_VLAN was not negotiated');
      if (cmd !== NetCtrlVlan.ADD && cmd !== NetCtrlVlan.DEL) return unsupported('unknown VLAN command');
      const bad = exact(U16_BYTES);
      if (bad !== undefined) return bad;
      const id = view.getUint16(0, true);
      if (id > VLAN_ID_MAX) return fail('NET_CTRL_BAD_DATA', `VLAN id ${id} is above ${VLAN_ID_MAX}`);
      target.filter.setVlan(id, cmd === NetCtrlVlan.ADD);
      return undefined;
    }
    case NetCtrlClass.ANNOUNCE: {
      if (!features.announce) return unsupported('VIRTIO_NET_F_GUEST_ANNOUNCE was not negotiated');
      if (cmd !== NetCtrlAnnounce.ACK) return unsupported('unknown ANNOUNCE command');
      const bad = exact(0);
      if (bad !== undefined) return bad;
      target.ackAnnounce();
      return undefined;
    }
    case NetCtrlClass.MQ: {
      if (!features.mq) return unsupported('VIRTIO_NET_F_MQ was not negotiated');
      if (cmd !== NetCtrlMq.VQ_PAIRS_SET) return unsupported('not VQ_PAIRS_SET (RSS is not offered)');
      const bad = exact(U16_BYTES);
      if (bad !== undefined) return bad;
      const pairs = view.getUint16(0, true);
      if (pairs < VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN || pairs > features.maxPairs) {
        return fail('NET_CTRL_BAD_DATA', `${pairs} queue pairs is not from 1 to ${features.maxPairs}`);
      }
      target.setPairs(pairs);
      return undefined;
    }
    default:
      return unsupported('unknown class (GUEST_OFFLOADS and others are not offered)');
  }
}

/** One `{le32 entries; u8 macs[entries][6]}` at `offset`: where its addresses are, or why it is malformed. */
function macTable(view: DataView, offset: number): { entries: number; start: number; end: number } | string {
  if (view.byteLength - offset < MAC_TABLE_COUNT_BYTES) return 'the entry count is missing';
  const entries = view.getUint32(offset, true);
  const start = offset + MAC_TABLE_COUNT_BYTES;
  const bytes = entries * MAC_ADDRESS_BYTES;
  if (bytes > view.byteLength - start) {
    return `${entries} entries need ${bytes} bytes, ${view.byteLength - start} are left`;
  }
  return { entries, start, end: start + bytes };
}
