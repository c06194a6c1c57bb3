/**
 * virtio-net binary layouts (VIRTIO 1.2 §5.1), declared once for the device (src/devices/net) and the driver
 * (src/drivers/net): feature bits, `struct virtio_net_config`, `struct virtio_net_hdr` (v1, 12 bytes) and the
 * control-queue classes and commands.
 */

export const VIRTIO_ID_NET = 1;

/** Device feature bits (§5.1.3). */
export const NetFeature = {
  VIRTIO_NET_F_CSUM: 0,
  VIRTIO_NET_F_GUEST_CSUM: 1,
  VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: 2,
  VIRTIO_NET_F_MTU: 3,
  VIRTIO_NET_F_MAC: 5,
  VIRTIO_NET_F_GUEST_TSO4: 7,
  VIRTIO_NET_F_GUEST_TSO6: 8,
  VIRTIO_NET_F_GUEST_ECN: 9,
  VIRTIO_NET_F_GUEST_UFO: 10,
  VIRTIO_NET_F_HOST_TSO4: 11,
  VIRTIO_NET_F_HOST_TSO6: 12,
  VIRTIO_NET_F_HOST_ECN: 13,
  VIRTIO_NET_F_HOST_UFO: 14,
  VIRTIO_NET_F_MRG_RXBUF: 15,
  VIRTIO_NET_F_STATUS: 16,
  VIRTIO_NET_F_CTRL_VQ: 17,
  VIRTIO_NET_F_CTRL_RX: 18,
  VIRTIO_NET_F_CTRL_VLAN: 19,
  VIRTIO_NET_F_CTRL_RX_EXTRA: 20,
  VIRTIO_NET_F_GUEST_ANNOUNCE: 21,
  VIRTIO_NET_F_MQ: 22,
  VIRTIO_NET_F_CTRL_MAC_ADDR: 23,
  VIRTIO_NET_F_HOST_USO: 56,
  VIRTIO_NET_F_SPEED_DUPLEX: 63,
} as const;

/** `struct virtio_net_config` offsets (§5.1.4). */
export const NET_CONFIG_MAC = 0;
export const NET_CONFIG_STATUS = 6;
export const NET_CONFIG_MAX_VIRTQUEUE_PAIRS = 8;
export const NET_CONFIG_MTU = 10;
export const NET_CONFIG_SPEED = 12;
export const NET_CONFIG_DUPLEX = 16;
/** Bytes of the configuration up to and including `duplex` (RSS fields are not offered). */
export const NET_CONFIG_SIZE = 17;
export const MAC_ADDRESS_BYTES = 6;

/** `status` bits. */
export const VIRTIO_NET_S_LINK_UP = 1;
export const VIRTIO_NET_S_ANNOUNCE = 2;

/** `max_virtqueue_pairs` bounds (§5.1.4: 1 ..= 0x8000). */
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000;

/** `struct virtio_net_hdr` (v1: VERSION_1 always carries num_buffers): 12 bytes. */
export const NET_HDR_SIZE = 12;
export const NetHdr = {
  FLAGS: 0,
  GSO_TYPE: 1,
  HDR_LEN: 2,
  GSO_SIZE: 4,
  CSUM_START: 6,
  CSUM_OFFSET: 8,
  NUM_BUFFERS: 10,
} as const;
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_F_RSC_INFO = 4;
export const NetGsoType = { NONE: 0, TCPV4: 1, UDP: 3, TCPV6: 4, UDP_L4: 5, ECN: 0x80 } as const;

/** Ethernet header + VLAN tag + 1500-byte payload (Linux GOOD_PACKET_LEN). */
export const NET_GOOD_PACKET_LEN = 14 + 4 + 1500;
/** An Ethernet header: destination MAC, source MAC, EtherType. */
export const ETH_HEADER_SIZE = 14;
/** Largest frame (without the virtio header) either side moves: a 64 KiB GSO super-frame plus its headers. */
export const NET_MAX_FRAME = 65535;

/** Control virtqueue (§5.1.6.5): `struct virtio_net_ctrl { u8 class; u8 command; }`, data, then `u8 ack`. */
export const NET_CTRL_HEADER_SIZE = 2;
export const NET_CTRL_ACK_SIZE = 1;
export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;

export const NetCtrlClass = {
  RX: 0,
  MAC: 1,
  VLAN: 2,
  ANNOUNCE: 3,
  MQ: 4,
  GUEST_OFFLOADS: 5,
} as const;

/** VIRTIO_NET_CTRL_RX commands: data is one u8 (0 off, 1 on). */
export const NetCtrlRx = {
  PROMISC: 0,
  ALLMULTI: 1,
  ALLUNI: 2,
  NOMULTI: 3,
  NOUNI: 4,
  NOBCAST: 5,
} as const;

/** VIRTIO_NET_CTRL_MAC commands. TABLE_SET: two `{le32 entries; u8 macs[entries][6]}` (unicast, multicast). */
export const NetCtrlMac = { TABLE_SET: 0, ADDR_SET: 1 } as const;

/** VIRTIO_NET_CTRL_VLAN commands: data is a le16 VLAN id (0..4095). */
export const NetCtrlVlan = { ADD: 0, DEL: 1 } as const;
export const VLAN_ID_MAX = 4095;

/** VIRTIO_NET_CTRL_ANNOUNCE: the driver acknowledges VIRTIO_NET_S_ANNOUNCE. */
export const NetCtrlAnnounce = { ACK: 0 } as const;

/** VIRTIO_NET_CTRL_MQ: VQ_PAIRS_SET takes a le16 `virtqueue_pairs`. */
export const NetCtrlMq = { VQ_PAIRS_SET: 0 } as const;

/** VIRTIO_NET_CTRL_GUEST_OFFLOADS: SET takes a le64 of GUEST_* feature bits. */
export const NetCtrlGuestOffloads = { SET: 0 } as const;
