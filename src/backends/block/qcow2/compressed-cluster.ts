/**
 * Compressed clusters (§ Cluster mapping, "Compressed Clusters Descriptor"): one guest cluster stored as a raw
 * deflate stream (no zlib header) starting at an arbitrary byte offset, spanning a whole number of 512-byte
 * sectors. QEMU compresses with a 4 KiB window and inflates with that same window size, so ringvm deflates with
 * windowBits 12 too (a larger window would be unreadable to QEMU). Decompression stops after one cluster: the
 * bytes after the stream (the tail of the last sector, maybe the start of another compressed cluster) are
 * ignored.
 */
import { constants, deflateRawSync, inflateRawSync } from 'node:zlib';
import { DEFLATE_WINDOW_BITS } from './layout.js';

/**
 * Inflates `data` into exactly `clusterSize` bytes, or returns null when the stream is invalid or does not
 * produce a whole cluster (the caller reports the corruption with the cluster's offset).
 */
export function inflateCluster(data: Uint8Array, clusterSize: number): Uint8Array | null {
  let out: Uint8Array;
  try {
    out = inflateRawSync(data, { finishFlush: constants.Z_SYNC_FLUSH, maxOutputLength: clusterSize });
  } catch {
    return null; // a RangeError (more than a cluster) or a zlib error: both are bad data
  }
  return out.length === clusterSize ? out : null;
}

/** Deflates one cluster; null when the result is not smaller than the cluster (QEMU's rule: store it uncompressed). */
export function deflateCluster(cluster: Uint8Array): Uint8Array | null {
  const out = deflateRawSync(cluster, {
    windowBits: DEFLATE_WINDOW_BITS,
    level: constants.Z_DEFAULT_COMPRESSION,
  });
  return out.length >= cluster.length ? null : out;
}
