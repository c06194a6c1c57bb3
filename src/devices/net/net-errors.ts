/**
 * What a virtio-net device refuses from its driver (hostile-input note, item 20). None of these is thrown: a
 * refused transmit frame is dropped (its chain returned with used length 0), a refused control command is
 * answered VIRTIO_NET_ERR; each is counted in the device's stats under its code and handed to the device's
 * `onRequestError` hook. None puts the device in DEVICE_NEEDS_RESET: one bad frame must not take the link down.
 */
import { GuestFault } from '../../virtio/errors.js';

export type NetRequestErrorCode =
  // ---- transmit (virtio_net_hdr and frame) ----
  /** The readable part is shorter than the 12-byte virtio_net_hdr. */
  | 'NET_TX_HEADER_TOO_SHORT'
  /** The frame after the header is shorter than an Ethernet header. */
  | 'NET_TX_FRAME_TOO_SHORT'
  /** Longer than MTU + Ethernet header + VLAN tag (no GSO), or than a 64 KiB GSO frame. */
  | 'NET_TX_FRAME_TOO_LONG'
  /** flags has bits other than NEEDS_CSUM (DATA_VALID and RSC_INFO are receive-only, §5.1.6.2.1 MUST NOT). */
  | 'NET_TX_BAD_FLAGS'
  /** NEEDS_CSUM without VIRTIO_NET_F_CSUM negotiated. */
  | 'NET_TX_CSUM_NOT_NEGOTIATED'
  /** csum_start + csum_offset + 2 lies past the frame. */
  | 'NET_TX_CSUM_OUT_OF_RANGE'
  /** gso_type other than NONE without the matching HOST_TSO4 / HOST_TSO6 (or ECN without HOST_ECN). */
  | 'NET_TX_GSO_NOT_NEGOTIATED'
  /** gso_type not one of NONE, TCPV4, TCPV6 (with or without ECN). */
  | 'NET_TX_GSO_BAD_TYPE'
  /** A GSO frame without NEEDS_CSUM (§5.1.6.2.1: the driver MUST set it). */
  | 'NET_TX_GSO_WITHOUT_CSUM'
  /** A GSO frame with gso_size 0, or hdr_len past the frame. */
  | 'NET_TX_GSO_BAD_SIZE'
  /** The back end refused the frame (too long for it, link gone, host I/O error). */
  | 'NET_TX_BACKEND'
  // ---- control queue ----
  /** No device-writable byte for the ack: the command is dropped, its chain returned with used length 0. */
  | 'NET_CTRL_NO_ACK'
  /** The readable part is shorter than `{u8 class; u8 command}`. */
  | 'NET_CTRL_HEADER_TOO_SHORT'
  /** A class or command the device does not know, or whose feature was not negotiated. */
  | 'NET_CTRL_UNSUPPORTED'
  /** The command's data has the wrong length or a value out of range. */
  | 'NET_CTRL_BAD_DATA';

/** A refused frame or control command; `value` says what was wrong (a length, a flag byte, a class/command). */
export class NetRequestError extends GuestFault<NetRequestErrorCode> {}
