/**
 * The qcow2 header and its extensions (§ Header, § Header extensions, § Feature name table): parsed from the
 * first cluster, checked field by field, and built for a new image. Unknown extensions are kept as bytes; ringvm
 * never rewrites the extension area of an existing image (it updates header fields in place), so they survive.
 */
import {
  CRYPT_NONE,
  EXTENSION_ALIGN,
  EXTENSION_HEADER_BYTES,
  FEATURE_NAME_BYTES,
  FEATURE_NAME_ENTRY_BYTES,
  FeatureType,
  HEADER_LENGTH_ALIGN,
  HEADER_V2_LENGTH,
  HEADER_V3_MIN_LENGTH,
  HEADER_V3_WRITTEN_LENGTH,
  HeaderExtensionType,
  HeaderField,
  IncompatibleFeature,
  KNOWN_INCOMPATIBLE_MASK,
  MAX_BACKING_FILE_NAME,
  MAX_CLUSTER_BITS,
  MAX_REFCOUNT_ORDER,
  MIN_CLUSTER_BITS,
  QCOW2_MAGIC,
  V2_REFCOUNT_ORDER,
} from './layout.js';
import { Qcow2Error } from './qcow2-error.js';

export interface HeaderExtension {
  readonly type: number;
  /** The extension's data (a copy), without padding. */
  readonly data: Uint8Array;
}

export interface FeatureName {
  readonly type: number;
  readonly bit: number;
  readonly name: string;
}

export interface Qcow2Header {
  readonly version: 2 | 3;
  readonly backingFileOffset: number;
  readonly backingFileSize: number;
  readonly clusterBits: number;
  readonly size: number;
  readonly cryptMethod: number;
  readonly l1Size: number;
  readonly l1TableOffset: number;
  readonly refcountTableOffset: number;
  readonly refcountTableClusters: number;
  readonly nbSnapshots: number;
  readonly snapshotsOffset: number;
  readonly incompatibleFeatures: bigint;
  readonly compatibleFeatures: bigint;
  readonly autoclearFeatures: bigint;
  readonly refcountOrder: number;
  readonly headerLength: number;
  readonly compressionType: number;
  readonly extensions: readonly HeaderExtension[];
  readonly backingFile: string | undefined;
  readonly backingFormat: string | undefined;
  readonly featureNames: readonly FeatureName[];
}

const utf8 = new TextDecoder('utf-8', { fatal: false });
const encoder = new TextEncoder();

function u64(view: DataView, at: number, path: string, field: string): number {
  const v = view.getBigUint64(at, false);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Qcow2Error('INVALID_HEADER', path, `header field ${field} is out of range: ${v}`, v);
  }
  return Number(v);
}

/**
 * Parses and checks the header in `first` (at least the first cluster of the image, or the whole file if it is
 * shorter). Throws a {@link Qcow2Error} naming the field that is wrong.
 */
export function parseHeader(first: Uint8Array, path: string): Qcow2Header {
  const view = new DataView(first.buffer, first.byteOffset, first.byteLength);
  if (first.length < HEADER_V2_LENGTH || view.getUint32(HeaderField.magic, false) !== QCOW2_MAGIC) {
    throw new Qcow2Error('NOT_QCOW2', path, 'is not a qcow2 image (no QFI\\xfb magic)', path);
  }
  const version = view.getUint32(HeaderField.version, false);
  if (version !== 2 && version !== 3) {
    throw new Qcow2Error(
      'UNSUPPORTED_VERSION',
      path,
      `qcow2 version ${version} is not supported (2 or 3)`,
      version,
    );
  }
  const clusterBits = view.getUint32(HeaderField.clusterBits, false);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new Qcow2Error(
      'INVALID_HEADER',
      path,
      `cluster_bits ${clusterBits} is outside ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS} (512 B to 2 MiB clusters)`,
      clusterBits,
    );
  }
  const clusterSize = 2 ** clusterBits;
  let headerLength = HEADER_V2_LENGTH;
  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = V2_REFCOUNT_ORDER;
  let compressionType = 0;
  if (version === 3) {
    if (first.length < HEADER_V3_MIN_LENGTH) {
      throw new Qcow2Error('INVALID_HEADER', path, 'the version 3 header is truncated', first.length);
    }
    headerLength = view.getUint32(HeaderField.headerLength, false);
    if (
      headerLength < HEADER_V3_MIN_LENGTH ||
      headerLength % HEADER_LENGTH_ALIGN !== 0 ||
      headerLength > clusterSize
    ) {
      throw new Qcow2Error(
        'INVALID_HEADER',
        path,
        `header_length ${headerLength} must be a multiple of 8 between 104 and the cluster size`,
        headerLength,
      );
    }
    if (headerLength > first.length) {
      throw new Qcow2Error(
        'OUT_OF_BOUNDS',
        path,
        `the header (${headerLength} bytes) runs past the end of the file`,
        0,
      );
    }
    incompatibleFeatures = view.getBigUint64(HeaderField.incompatibleFeatures, false);
    compatibleFeatures = view.getBigUint64(HeaderField.compatibleFeatures, false);
    autoclearFeatures = view.getBigUint64(HeaderField.autoclearFeatures, false);
    refcountOrder = view.getUint32(HeaderField.refcountOrder, false);
    if (headerLength > HeaderField.compressionType) compressionType = first[HeaderField.compressionType] ?? 0;
  }
  if (refcountOrder > MAX_REFCOUNT_ORDER) {
    throw new Qcow2Error('INVALID_HEADER', path, `refcount_order ${refcountOrder} exceeds 6`, refcountOrder);
  }

  const extensions: HeaderExtension[] = [];
  let backingFormat: string | undefined;
  const featureNames: FeatureName[] = [];
  const limit = Math.min(first.length, clusterSize);
  for (let at = headerLength; ;) {
    if (at + EXTENSION_HEADER_BYTES > limit) {
      throw new Qcow2Error(
        'INVALID_HEADER',
        path,
        `header extension at ${at} runs past the first cluster`,
        at,
      );
    }
    const type = view.getUint32(at, false);
    const length = view.getUint32(at + 4, false);
    if (type === HeaderExtensionType.end) break;
    const dataAt = at + EXTENSION_HEADER_BYTES;
    if (dataAt + length > limit) {
      throw new Qcow2Error(
        'INVALID_HEADER',
        path,
        `header extension 0x${type.toString(16)} (${length} bytes at ${dataAt}) runs past the first cluster`,
        type,
      );
    }
    const data = first.slice(dataAt, dataAt + length);
    extensions.push({ type, data });
    if (type === HeaderExtensionType.backingFormat) backingFormat = utf8.decode(data);
    else if (type === HeaderExtensionType.featureNameTable) {
      for (let e = 0; e + FEATURE_NAME_ENTRY_BYTES <= length; e += FEATURE_NAME_ENTRY_BYTES) {
        const nameBytes = data.subarray(e + 2, e + 2 + FEATURE_NAME_BYTES);
        const nul = nameBytes.indexOf(0);
        featureNames.push({
          type: data[e] ?? 0,
          bit: data[e + 1] ?? 0,
          name: utf8.decode(nul < 0 ? nameBytes : nameBytes.subarray(0, nul)),
        });
      }
    }
    at = dataAt + Math.ceil(length / EXTENSION_ALIGN) * EXTENSION_ALIGN;
  }

  const unknown = incompatibleFeatures & ~KNOWN_INCOMPATIBLE_MASK;
  if (unknown !== 0n) {
    const names: string[] = [];
    for (let bit = 0; bit < 64; bit++) {
      if ((unknown & (1n << BigInt(bit))) === 0n) continue;
      const named = featureNames.find((f) => f.type === FeatureType.incompatible && f.bit === bit);
      names.push(named === undefined ? `bit ${bit}` : `bit ${bit} (${named.name})`);
    }
    throw new Qcow2Error(
      'UNSUPPORTED_FEATURE',
      path,
      `uses incompatible features ringvm does not support: ${names.join(', ')}`,
      unknown,
    );
  }
  if (compressionType !== 0) {
    throw new Qcow2Error(
      'UNSUPPORTED_FEATURE',
      path,
      `compression type ${compressionType} (only zlib)`,
      compressionType,
    );
  }
  const cryptMethod = view.getUint32(HeaderField.cryptMethod, false);
  if (cryptMethod !== CRYPT_NONE) {
    throw new Qcow2Error(
      'UNSUPPORTED_FEATURE',
      path,
      `is encrypted (crypt_method ${cryptMethod})`,
      cryptMethod,
    );
  }

  const backingFileOffset = u64(view, HeaderField.backingFileOffset, path, 'backing_file_offset');
  const backingFileSize = view.getUint32(HeaderField.backingFileSize, false);
  let backingFile: string | undefined;
  if (backingFileOffset !== 0) {
    if (backingFileSize > MAX_BACKING_FILE_NAME) {
      throw new Qcow2Error(
        'INVALID_HEADER',
        path,
        `backing file name is ${backingFileSize} bytes (at most ${MAX_BACKING_FILE_NAME})`,
        backingFileSize,
      );
    }
    if (backingFileOffset + backingFileSize > limit) {
      throw new Qcow2Error(
        'OUT_OF_BOUNDS',
        path,
        `backing file name at ${backingFileOffset} (${backingFileSize} bytes) runs past the first cluster`,
        backingFileOffset,
      );
    }
    backingFile = utf8.decode(first.subarray(backingFileOffset, backingFileOffset + backingFileSize));
  }

  return {
    version,
    backingFileOffset,
    backingFileSize,
    clusterBits,
    size: u64(view, HeaderField.size, path, 'size'),
    cryptMethod,
    l1Size: view.getUint32(HeaderField.l1Size, false),
    l1TableOffset: u64(view, HeaderField.l1TableOffset, path, 'l1_table_offset'),
    refcountTableOffset: u64(view, HeaderField.refcountTableOffset, path, 'refcount_table_offset'),
    refcountTableClusters: view.getUint32(HeaderField.refcountTableClusters, false),
    nbSnapshots: view.getUint32(HeaderField.nbSnapshots, false),
    snapshotsOffset: u64(view, HeaderField.snapshotsOffset, path, 'snapshots_offset'),
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    compressionType,
    extensions,
    backingFile,
    backingFormat,
    featureNames,
  };
}

/** Whether incompatible feature `bit` is set. */
export function hasIncompatible(header: Qcow2Header, bit: number): boolean {
  return (header.incompatibleFeatures & (1n << BigInt(bit))) !== 0n;
}

/** The feature names ringvm writes into a new image (so tools that do not know a bit can name it). */
const WRITTEN_FEATURE_NAMES: readonly FeatureName[] = [
  { type: FeatureType.incompatible, bit: IncompatibleFeature.dirty, name: 'dirty bit' },
  { type: FeatureType.incompatible, bit: IncompatibleFeature.corrupt, name: 'corrupt bit' },
  { type: FeatureType.compatible, bit: 0, name: 'lazy refcounts' },
];

export interface NewHeader {
  readonly clusterBits: number;
  readonly size: number;
  readonly l1Size: number;
  readonly l1TableOffset: number;
  readonly refcountTableOffset: number;
  readonly refcountTableClusters: number;
  readonly compatibleFeatures: bigint;
  readonly refcountOrder: number;
  readonly backingFile?: string | undefined;
  readonly backingFormat?: string | undefined;
}

/**
 * The first cluster of a new version 3 image: header, extensions (backing format, feature name table, end) and
 * the backing file name after them. Throws when it does not fit in one cluster.
 */
export function buildHeaderCluster(h: NewHeader, path: string): Uint8Array {
  const clusterSize = 2 ** h.clusterBits;
  const out = new Uint8Array(clusterSize);
  const view = new DataView(out.buffer);
  view.setUint32(HeaderField.magic, QCOW2_MAGIC, false);
  view.setUint32(HeaderField.version, 3, false);
  view.setUint32(HeaderField.clusterBits, h.clusterBits, false);
  view.setBigUint64(HeaderField.size, BigInt(h.size), false);
  view.setUint32(HeaderField.l1Size, h.l1Size, false);
  view.setBigUint64(HeaderField.l1TableOffset, BigInt(h.l1TableOffset), false);
  view.setBigUint64(HeaderField.refcountTableOffset, BigInt(h.refcountTableOffset), false);
  view.setUint32(HeaderField.refcountTableClusters, h.refcountTableClusters, false);
  view.setBigUint64(HeaderField.compatibleFeatures, h.compatibleFeatures, false);
  view.setUint32(HeaderField.refcountOrder, h.refcountOrder, false);
  view.setUint32(HeaderField.headerLength, HEADER_V3_WRITTEN_LENGTH, false);

  let at = HEADER_V3_WRITTEN_LENGTH;
  const fits = (n: number): void => {
    if (at + n > clusterSize) {
      throw new Qcow2Error(
        'INVALID_ARGUMENT',
        path,
        `the header and backing file name do not fit in one ${clusterSize}-byte cluster`,
        clusterSize,
      );
    }
  };
  const extension = (type: number, data: Uint8Array): void => {
    const padded = Math.ceil(data.length / EXTENSION_ALIGN) * EXTENSION_ALIGN;
    fits(EXTENSION_HEADER_BYTES + padded);
    view.setUint32(at, type, false);
    view.setUint32(at + 4, data.length, false);
    out.set(data, at + EXTENSION_HEADER_BYTES);
    at += EXTENSION_HEADER_BYTES + padded;
  };
  if (h.backingFormat !== undefined)
    extension(HeaderExtensionType.backingFormat, encoder.encode(h.backingFormat));
  const table = new Uint8Array(WRITTEN_FEATURE_NAMES.length * FEATURE_NAME_ENTRY_BYTES);
  WRITTEN_FEATURE_NAMES.forEach((f, i) => {
    table[i * FEATURE_NAME_ENTRY_BYTES] = f.type;
    table[i * FEATURE_NAME_ENTRY_BYTES + 1] = f.bit;
    table.set(encoder.encode(f.name).subarray(0, FEATURE_NAME_BYTES), i * FEATURE_NAME_ENTRY_BYTES + 2);
  });
  // Only offer the feature name table when it fits next to the backing name (a 512-byte cluster is tight).
  const name = h.backingFile === undefined ? undefined : encoder.encode(h.backingFile);
  const nameBytes = name?.length ?? 0;
  if (at + EXTENSION_HEADER_BYTES + table.length + EXTENSION_HEADER_BYTES + nameBytes <= clusterSize) {
    extension(HeaderExtensionType.featureNameTable, table);
  }
  fits(EXTENSION_HEADER_BYTES);
  at += EXTENSION_HEADER_BYTES; // the end-of-extensions marker (zeros)
  if (name !== undefined) {
    if (name.length > MAX_BACKING_FILE_NAME) {
      throw new Qcow2Error(
        'INVALID_ARGUMENT',
        path,
        `backing file name is ${name.length} bytes (at most ${MAX_BACKING_FILE_NAME})`,
        h.backingFile,
      );
    }
    fits(name.length);
    out.set(name, at);
    view.setBigUint64(HeaderField.backingFileOffset, BigInt(at), false);
    view.setUint32(HeaderField.backingFileSize, name.length, false);
  }
  return out;
}
