/**
 * Creating a version 3 qcow2 image (what `qemu-img create -f qcow2` writes): the header cluster (with the
 * backing format and feature name table extensions and the backing file name), the refcount table, the refcount
 * blocks that count every metadata cluster, and an all-zero L1 table sized for the virtual disk. The L1 table is
 * left sparse (the file is extended with ftruncate), and the data is synced before the call returns.
 */
import { detectFormatOfFile } from './detect-format.js';
import { buildHeaderCluster } from './header.js';
import { ImageFile } from './image-file.js';
import { resolveBackingPath, type ImageFormat } from './backing-chain.js';
import {
  CompatibleFeature,
  DEFAULT_CLUSTER_SIZE,
  DEFAULT_REFCOUNT_BITS,
  ENTRY_BYTES,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MAX_REFCOUNT_ORDER,
  MIN_CLUSTER_BITS,
  TWO_POW_32,
} from './layout.js';
import { Qcow2Error } from './qcow2-error.js';

export interface Qcow2CreateOptions {
  /** Virtual size in bytes, a multiple of 512; defaults to the backing file's size when there is one. */
  readonly size?: number | undefined;
  /** A power of two from 512 B to 2 MiB; default 64 KiB. */
  readonly clusterSize?: number | undefined;
  /** Stored as given; a relative name is relative to the new image's directory (checked to exist). */
  readonly backingFile?: string | undefined;
  /** Probed from the backing file when omitted. */
  readonly backingFormat?: ImageFormat | undefined;
  /** Set the lazy refcounts compatible feature. */
  readonly lazyRefcounts?: boolean | undefined;
  /** Refcount width: 1, 2, 4, 8, 16 (default), 32 or 64 bits. */
  readonly refcountBits?: number | undefined;
}

/** Opens a backing image of the given format and returns its virtual size (then closes it). */
export type BackingSizeProbe = (path: string, format: ImageFormat) => Promise<number>;

export async function createImage(
  path: string,
  opts: Qcow2CreateOptions,
  probeBacking: BackingSizeProbe,
): Promise<void> {
  const clusterSize = opts.clusterSize ?? DEFAULT_CLUSTER_SIZE;
  const clusterBits = Math.log2(clusterSize);
  if (!Number.isInteger(clusterBits) || clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new Qcow2Error(
      'INVALID_ARGUMENT',
      path,
      `cluster size ${clusterSize} must be a power of two between 512 and 2097152 bytes`,
      clusterSize,
    );
  }
  const refcountBits = opts.refcountBits ?? DEFAULT_REFCOUNT_BITS;
  const refcountOrder = Math.log2(refcountBits);
  if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > MAX_REFCOUNT_ORDER) {
    throw new Qcow2Error(
      'INVALID_ARGUMENT',
      path,
      `refcount bits ${refcountBits} must be a power of two from 1 to 64`,
      refcountBits,
    );
  }
  let size = opts.size;
  let backingFormat = opts.backingFormat;
  if (opts.backingFile !== undefined) {
    if (opts.backingFile === '')
      throw new Qcow2Error('INVALID_ARGUMENT', path, 'the backing file name is empty', '');
    const resolved = resolveBackingPath(path, opts.backingFile);
    backingFormat ??= await detectFormatOfFile(resolved).catch((e: unknown) => {
      throw new Qcow2Error('BACKING_NOT_FOUND', path, `backing file ${resolved} cannot be opened`, resolved, {
        cause: e,
      });
    });
    const backingSize = await probeBacking(resolved, backingFormat);
    size ??= backingSize;
  }
  if (size === undefined) throw new Qcow2Error('INVALID_ARGUMENT', path, 'the image size is missing', size);
  if (!Number.isSafeInteger(size) || size < 0 || size % 512 !== 0) {
    throw new Qcow2Error(
      'INVALID_ARGUMENT',
      path,
      `the image size ${size} must be a multiple of 512 bytes`,
      size,
    );
  }
  const l2Entries = clusterSize / ENTRY_BYTES;
  const l1Size = Math.ceil(size / (clusterSize * l2Entries));
  if (l1Size * ENTRY_BYTES > MAX_L1_BYTES) {
    throw new Qcow2Error(
      'INVALID_ARGUMENT',
      path,
      `${size} bytes with ${clusterSize}-byte clusters needs an L1 table over QEMU's 32 MiB limit`,
      size,
    );
  }
  const l1Clusters = Math.ceil((l1Size * ENTRY_BYTES) / clusterSize);
  const perBlock = (clusterSize * 8) / refcountBits;
  // header + refcount table + refcount blocks + L1, every one counted by the blocks.
  let blocks = 1;
  let tableClusters = 1;
  for (;;) {
    const total = 1 + tableClusters + blocks + l1Clusters;
    const b = Math.ceil(total / perBlock);
    const t = Math.ceil((b * ENTRY_BYTES) / clusterSize);
    if (b === blocks && t === tableClusters) break;
    blocks = b;
    tableClusters = t;
  }
  const tableOffset = clusterSize;
  const blocksOffset = tableOffset + tableClusters * clusterSize;
  const l1Offset = blocksOffset + blocks * clusterSize;
  const total = 1 + tableClusters + blocks + l1Clusters;

  const header = buildHeaderCluster(
    {
      clusterBits,
      size,
      l1Size,
      l1TableOffset: l1Offset,
      refcountTableOffset: tableOffset,
      refcountTableClusters: tableClusters,
      compatibleFeatures: opts.lazyRefcounts === true ? 1n << BigInt(CompatibleFeature.lazyRefcounts) : 0n,
      refcountOrder,
      backingFile: opts.backingFile,
      backingFormat: opts.backingFile === undefined ? undefined : backingFormat,
    },
    path,
  );
  const table = new Uint8Array(tableClusters * clusterSize);
  const tv = new DataView(table.buffer);
  for (let b = 0; b < blocks; b++) {
    const off = blocksOffset + b * clusterSize;
    tv.setUint32(b * ENTRY_BYTES, Math.floor(off / TWO_POW_32), false);
    tv.setUint32(b * ENTRY_BYTES + 4, off % TWO_POW_32, false);
  }
  const refBlocks = new Uint8Array(blocks * clusterSize);
  for (let c = 0; c < total; c++) setRefcountOne(refBlocks, c, refcountOrder);

  const file = ImageFile.create(path);
  try {
    file.write(header, 0);
    file.write(table, tableOffset);
    file.write(refBlocks, blocksOffset);
    file.truncate(l1Offset + l1Clusters * clusterSize);
    file.datasync();
  } finally {
    file.close();
  }
}

/** Sets entry `index` of consecutive refcount blocks to 1 (any width: the entries are packed big endian). */
function setRefcountOne(blocks: Uint8Array, index: number, order: number): void {
  const bits = 2 ** order;
  if (bits >= 8) {
    const bytes = bits / 8;
    blocks[index * bytes + bytes - 1] = 1; // big endian: the least significant byte is last
    return;
  }
  const bit = index * bits;
  blocks[bit >> 3] = (blocks[bit >> 3] as number) | (1 << (bit & 7));
}
