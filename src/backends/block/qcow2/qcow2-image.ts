/**
 * `Qcow2Image`: a qcow2 image (QEMU docs/interop/qcow2.txt, versions 2 and 3) as a {@link BlockBackend}.
 *
 * ```ts
 * await Qcow2Image.create('disk.qcow2', { size: 20 * 2 ** 30 });
 * const disk = await Qcow2Image.open('disk.qcow2', { readOnly: false });
 * const device = new BlkDevice({ backend: disk });
 * ```
 *
 * Every operation runs synchronously in the calling thread (the promise-returning methods settle at once):
 * `readvSync`/`writevSync` let the vhost-user export's worker complete a request, its metadata I/O included,
 * inside the kick that brought it. Used from a thread that must stay responsive, each call blocks it for its
 * I/O.
 *
 * Write ordering — the image on disk stays consistent if the process dies between any two writes, and (with the
 * fdatasync barriers) if the machine loses power:
 * 1. A newly allocated cluster is counted (refcount 1, in the refcount block cache) before anything points to
 *    it, and its data is written (with copy on write from the old contents / backing file for partial clusters)
 *    before its L2 entry changes — the L2 change stays in the L2 cache.
 * 2. Before an L2 table is written (flush or eviction), the refcount blocks are written and synced; before an L1
 *    entry is written, the L2 tables are written and synced. With lazy refcounts the refcount step is skipped
 *    (the dirty bit, set and synced before the first change, has the refcounts rebuilt at the next open).
 * 3. A cluster whose last reference goes away is freed only after the L2/L1 change is durable (deferred frees).
 * 4. `flush()` runs steps 2–3 and a final fdatasync: everything that completed before it is on disk.
 * 5. Header fields change by one small write each (one sector); tables that move (L1 on resize, the refcount
 *    table when it grows) are written and synced before the header points to them.
 *
 * Checks at open: the header and extensions ({@link parseHeader}), the placement of L1 and refcount tables and of
 * every L2 table and refcount block (aligned, inside the file, not overlapping other metadata). A read-write open
 * also walks every table ({@link checkImage}) and refuses an image whose refcounts are too low for its references
 * (0 on a used cluster included) or whose COPIED flags lie: a write would destroy data. An image with the dirty
 * bit (lazy refcounts, not closed cleanly) gets its refcounts rebuilt from that walk, as QEMU does. Corruption met
 * later (a misaligned cluster offset in an L2 table read) fails the request with a {@link Qcow2Error} and leaves
 * the image read-only. Nothing is repaired silently: {@link check} repairs on request.
 */
import type { BlockBackend } from '../../../devices/blk/block-backend.js';
import { HostIoError } from '../../../virtio/errors.js';
import { BlockBackendError } from '../block-backend-error.js';
import type { MapExtent } from '../map-extent.js';
import {
  canonicalPath,
  openRawBacking,
  resolveBackingPath,
  type BackingImage,
  type ImageFormat,
} from './backing-chain.js';
import { checkImage, type Qcow2CheckResult } from './check.js';
import { ClusterAllocator } from './cluster-allocator.js';
import { deflateCluster, inflateCluster } from './compressed-cluster.js';
import { createImage, type Qcow2CreateOptions } from './create.js';
import { detectFormatOfFile } from './detect-format.js';
import { hasIncompatible, parseHeader, type Qcow2Header } from './header.js';
import { ImageFile } from './image-file.js';
import { IoVector } from './io-vector.js';
import {
  ClusterKind,
  compressedEntry,
  compressedExtent,
  compressedLayout,
  entryOffset,
  l2Kind,
  type CompressedLayout,
} from './l2-entry.js';
import {
  CompatibleFeature,
  COMPRESSED_SECTOR,
  ENTRY_BYTES,
  EntryBits,
  HeaderField,
  IncompatibleFeature,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MIN_CLUSTER_BITS,
  MAX_REFCOUNT_TABLE_BYTES,
  TWO_POW_32,
} from './layout.js';
import { Qcow2Error, offsetHex } from './qcow2-error.js';
import { RefcountTable } from './refcount-table.js';
import { TableCache, type CachedTable } from './table-cache.js';

/** Default metadata cache: L2 tables (32 MiB maps 256 GiB of a 64 KiB-cluster image, as QEMU's default cap). */
export const DEFAULT_CACHE_BYTES = 32 << 20;
/** The refcount block cache gets this fraction of the cache budget. */
const REFCOUNT_CACHE_SHARE = 4;
/** The most clusters one allocating write allocates at once (bounds the size of one pwritev). */
const MAX_ALLOCATION_RUN = 2048;

export interface Qcow2OpenOptions {
  readonly readOnly: boolean;
  /** Bytes of L2 tables to keep in memory (default 32 MiB); refcount blocks get a quarter of it more. */
  readonly cacheBytes?: number;
  /**
   * false: no fdatasync at all, barriers and flush() included (qemu's cache=unsafe) — the ordering still holds
   * against a process crash, not against a power cut. For `ringvm img convert`'s new destination. Default true.
   */
  readonly durable?: boolean;
}

export interface Qcow2ChainElement {
  /** The path as resolved from the overlay's backing name. */
  readonly path: string;
  readonly format: ImageFormat;
  readonly virtualSize: number;
}

export interface Qcow2Info {
  readonly path: string;
  readonly format: 'qcow2';
  readonly virtualSize: number;
  readonly clusterSize: number;
  readonly version: 2 | 3;
  /** The backing name as stored in the header (unresolved), if any. */
  readonly backingFile: string | undefined;
  /** The backing format from the header extension, if any. */
  readonly backingFormat: string | undefined;
  readonly dirty: boolean;
  readonly lazyRefcounts: boolean;
  readonly refcountBits: number;
  readonly corrupt: boolean;
  /** Size of the image file and bytes the host allocated to it. */
  readonly fileSize: number;
  readonly actualSize: number;
  readonly nbSnapshots: number;
  /** Refcounts were rebuilt at this open (the dirty bit was set). */
  readonly refcountsRebuilt: boolean;
  /** The backing images, nearest first (each resolved against its overlay). */
  readonly backingChain: readonly Qcow2ChainElement[];
}

/** One run of the virtual disk with the same status (shared with the raw back end's map). */
export type { MapExtent } from '../map-extent.js';

/** Internal state handed to checkImage: the image's tables as they are now. */
export interface ImageInternals {
  readonly path: string;
  readonly file: ImageFile;
  readonly header: Qcow2Header;
  readonly clusterSize: number;
  readonly clusterBits: number;
  readonly l1: DataView;
  readonly l1Size: number;
  readonly l1Offset: number;
  readonly refcounts: RefcountTable;
  readonly allocator: ClusterAllocator;
  readonly compressed: CompressedLayout;
  /** The L2 table at `offset` (through the cache). */
  l2(offset: number): CachedTable;
  markL2Dirty(table: CachedTable): void;
  setL1Entry(index: number, hi: number, lo: number): void;
  /** Writes all metadata (L2, L1, refcounts) without the final data sync. */
  writeMetadata(): void;
}

export class Qcow2Image implements BlockBackend {
  readonly path: string;
  readonly readOnly: boolean;
  readonly logicalBlockSize = 512;
  readonly writeZeroesMayUnmap = true;
  readonly readvSync: (offset: number, bufs: readonly Uint8Array[]) => void;
  readonly writevSync: (offset: number, bufs: readonly Uint8Array[]) => void;

  readonly #file: ImageFile;
  #header: Qcow2Header;
  readonly #version: 2 | 3;
  readonly #clusterBits: number;
  readonly #clusterSize: number;
  readonly #l2Entries: number;
  readonly #compressed: CompressedLayout;
  #size: number;
  #l1: Uint8Array;
  #l1View: DataView;
  #l1Offset: number;
  #l1DirtyMin = Infinity;
  #l1DirtyMax = -1;
  readonly #l2Cache: TableCache;
  readonly #refcounts: RefcountTable;
  readonly #allocator: ClusterAllocator;
  readonly #backing: BackingImage | undefined;
  readonly #chain: readonly Qcow2ChainElement[];
  readonly #lazyRefcounts: boolean;
  #dirtyOnDisk: boolean;
  #refcountsRebuilt = false;
  /** A structural error met during I/O: writes are refused from then on. */
  #corruptAt: Qcow2Error | undefined;
  #closed = false;
  /** Scratch clusters for partial writes (copy on write) and decompression. */
  readonly #scratchHead: Uint8Array;
  readonly #scratchTail: Uint8Array;
  /** The last decompressed cluster (sequential reads of a compressed image inflate each cluster once). */
  #inflatedKey = -1;
  #inflated: Uint8Array | undefined;
  /** Outputs of #lookup (no allocation per cluster). */
  #kHi = 0;
  #kLo = 0;

  private constructor(
    path: string,
    file: ImageFile,
    header: Qcow2Header,
    readOnly: boolean,
    l1: Uint8Array,
    refTable: Uint8Array,
    backing: BackingImage | undefined,
    chain: readonly Qcow2ChainElement[],
    cacheBytes: number,
    fileSize: number,
  ) {
    this.path = path;
    this.#file = file;
    this.#header = header;
    this.readOnly = readOnly;
    this.#version = header.version;
    this.#clusterBits = header.clusterBits;
    this.#clusterSize = 2 ** header.clusterBits;
    this.#l2Entries = this.#clusterSize / ENTRY_BYTES;
    this.#compressed = compressedLayout(header.clusterBits);
    this.#size = header.size;
    this.#l1 = l1;
    this.#l1View = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.#l1Offset = header.l1TableOffset;
    this.#backing = backing;
    this.#chain = chain;
    this.#lazyRefcounts =
      (header.compatibleFeatures & (1n << BigInt(CompatibleFeature.lazyRefcounts))) !== 0n;
    this.#dirtyOnDisk = hasIncompatible(header, IncompatibleFeature.dirty);
    const tables = Math.max(4, Math.floor(cacheBytes / this.#clusterSize));
    this.#refcounts = new RefcountTable({
      file,
      clusterBits: header.clusterBits,
      refcountOrder: header.refcountOrder,
      tableOffset: header.refcountTableOffset,
      tableClusters: header.refcountTableClusters,
      table: refTable,
      cacheTables: Math.max(4, Math.floor(tables / REFCOUNT_CACHE_SHARE)),
      endCluster: Math.ceil(fileSize / this.#clusterSize),
      barrier: () => {
        this.#barrier();
      },
      isReserved: (c) => this.#allocator.isReserved(c),
    });
    this.#allocator = new ClusterAllocator(this.#refcounts, this.#clusterSize, path);
    this.#l2Cache = new TableCache(file, this.#clusterSize, tables, () => {
      // An L2 entry must not reach the disk before the refcount of the cluster it points to, nor before that
      // cluster's data: write the refcounts, then sync.
      if (!this.#lazyRefcounts) this.#refcounts.flush();
      this.#barrier();
    });
    this.#scratchHead = new Uint8Array(this.#clusterSize);
    this.#scratchTail = new Uint8Array(this.#clusterSize);
    this.readvSync = (offset, bufs) => {
      this.#read(offset, bufs);
    };
    this.writevSync = (offset, bufs) => {
      this.#write(offset, bufs);
    };
  }

  /** Virtual disk size in bytes. */
  get size(): number {
    return this.#size;
  }

  get clusterSize(): number {
    return this.#clusterSize;
  }

  /**
   * Opens the image at `path` and its backing chain (read-only). Rejects with a {@link Qcow2Error} (bad or
   * corrupt image, backing chain problem) or a {@link BlockBackendError} (the file cannot be opened).
   */
  static open(path: string, opts: Qcow2OpenOptions): Promise<Qcow2Image> {
    return Qcow2Image.#open(path, opts, new Set(), undefined);
  }

  /** Creates a new version 3 image (see {@link Qcow2CreateOptions}). */
  static create(path: string, opts: Qcow2CreateOptions): Promise<void> {
    return createImage(path, opts, async (backingPath, format) => {
      const b =
        format === 'raw'
          ? await openRawBacking(backingPath, path)
          : await Qcow2Image.#openAsBacking(backingPath, path, new Set());
      const size = b.size;
      await b.close();
      return size;
    });
  }

  static async #openAsBacking(path: string, overlay: string, visited: Set<string>): Promise<Qcow2Image> {
    let image: Qcow2Image;
    try {
      image = await Qcow2Image.#open(path, { readOnly: true }, visited, overlay);
    } catch (e) {
      if (e instanceof BlockBackendError) {
        throw new Qcow2Error(
          'BACKING_NOT_FOUND',
          overlay,
          `backing file ${path} cannot be opened: ${e.message}`,
          path,
          {
            cause: e,
          },
        );
      }
      throw e;
    }
    return image;
  }

  static async #open(
    path: string,
    opts: Qcow2OpenOptions,
    visited: Set<string>,
    overlay: string | undefined,
  ): Promise<Qcow2Image> {
    const real = canonicalPath(path, overlay);
    if (visited.has(real)) {
      throw new Qcow2Error(
        'BACKING_LOOP',
        overlay ?? path,
        `the backing chain loops: ${path} is already in it`,
        path,
      );
    }
    visited.add(real);
    const file = ImageFile.open(path, opts.readOnly, opts.durable !== false);
    let backing: BackingImage | undefined;
    try {
      const fileSize = file.size();
      const probe = new Uint8Array(Math.min(fileSize, HeaderField.headerLength + 4));
      file.read(probe, 0);
      // Read the whole first cluster (header, extensions, backing name) once cluster_bits is known.
      const first = new Uint8Array(Math.min(fileSize, 2 ** clusterBitsHint(probe)));
      file.read(first, 0);
      const header = parseHeader(first, path);
      const layout = checkLayout(header, fileSize, path);
      if (!opts.readOnly && hasIncompatible(header, IncompatibleFeature.corrupt)) {
        throw new Qcow2Error(
          'CORRUPT_BIT',
          path,
          'has the corrupt bit set: open it read-only, or repair it (qemu-img check -r all)',
          header.incompatibleFeatures,
        );
      }
      const l1 = new Uint8Array(header.l1Size * ENTRY_BYTES);
      file.read(l1, header.l1TableOffset);
      const refTable = new Uint8Array(header.refcountTableClusters * 2 ** header.clusterBits);
      file.read(refTable, header.refcountTableOffset);
      checkTableEntries(header, l1, refTable, layout, fileSize, path);

      let chain: Qcow2ChainElement[] = [];
      if (header.backingFile !== undefined && header.backingFile !== '') {
        const resolved = resolveBackingPath(path, header.backingFile);
        canonicalPath(resolved, path); // BACKING_NOT_FOUND before anything else
        const format = await backingFormat(header, resolved, path);
        if (format === 'raw') {
          backing = await openRawBacking(resolved, path);
          chain = [{ path: resolved, format: 'raw', virtualSize: backing.size }];
        } else {
          const image = await Qcow2Image.#openAsBacking(resolved, path, visited);
          backing = {
            path: resolved,
            format: 'qcow2',
            size: image.size,
            readSync: image.readvSync,
            close: () => image.close(),
          };
          backingImages.set(backing, image);
          chain = [{ path: resolved, format: 'qcow2', virtualSize: image.size }, ...image.#chain];
        }
      }
      const cacheBytes = opts.cacheBytes ?? DEFAULT_CACHE_BYTES;
      const image = new Qcow2Image(
        path,
        file,
        header,
        opts.readOnly,
        l1,
        refTable,
        backing,
        chain,
        cacheBytes,
        fileSize,
      );
      if (!opts.readOnly) image.#prepareForWrites();
      return image;
    } catch (e) {
      file.close();
      await backing?.close();
      throw e;
    }
  }

  /** What `qemu-img info` reports about the image. */
  info(): Qcow2Info {
    return {
      path: this.path,
      format: 'qcow2',
      virtualSize: this.#size,
      clusterSize: this.#clusterSize,
      version: this.#version,
      backingFile: this.#header.backingFile,
      backingFormat: this.#header.backingFormat,
      dirty: this.#dirtyOnDisk,
      lazyRefcounts: this.#lazyRefcounts,
      refcountBits: this.#refcounts.refcountBits,
      corrupt: hasIncompatible(this.#header, IncompatibleFeature.corrupt) || this.#corruptAt !== undefined,
      fileSize: this.#file.size(),
      actualSize: this.#file.allocatedBytes(),
      nbSnapshots: this.#header.nbSnapshots,
      refcountsRebuilt: this.#refcountsRebuilt,
      backingChain: this.#chain,
    };
  }

  readv(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return settle(() => {
      this.#read(offset, bufs);
    });
  }

  writev(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return settle(() => {
      this.#write(offset, bufs);
    });
  }

  /** Writes all metadata in order (see the module doc) and syncs: every completed write is durable. */
  flush(): Promise<void> {
    return settle(() => {
      this.#checkOpen('flush', 0, 0);
      if (this.readOnly) return;
      this.#guard(() => {
        this.#writeMetadata();
        this.#barrier();
      });
    });
  }

  /** Deallocates the whole clusters inside the range (a hint: partial clusters are left alone). */
  discard(offset: number, length: number): Promise<void> {
    return settle(() => {
      this.#checkWritable('discard', offset, length);
      this.#guard(() => {
        this.#zeroClusters(offset, length, 'discard');
      });
    });
  }

  /**
   * The range reads as zeros: whole clusters get the zero flag (version 3; their host clusters are freed),
   * partial clusters (and every cluster of a version 2 image) are written with zeros.
   */
  writeZeroes(offset: number, length: number, _unmap: boolean): Promise<void> {
    return settle(() => {
      this.#checkWritable('write zeroes', offset, length);
      this.#guard(() => {
        this.#zeroClusters(offset, length, 'zero');
      });
    });
  }

  /**
   * Stores one whole guest cluster compressed (`qemu-img convert -c`): `offset` cluster aligned, `data` one
   * cluster (or the rest of the disk for the last one). Stored uncompressed when deflate does not shrink it.
   */
  writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    return settle(() => {
      this.#checkWritable('compressed write', offset, data.length);
      const cs = this.#clusterSize;
      if (
        offset % cs !== 0 ||
        data.length > cs ||
        (data.length < cs && offset + data.length !== this.#size)
      ) {
        throw new Qcow2Error(
          'INVALID_ARGUMENT',
          this.path,
          `a compressed write must be one whole cluster at a cluster boundary (got ${data.length} bytes at ${offset})`,
          offset,
        );
      }
      this.#guard(() => {
        let cluster = data;
        if (data.length < cs) {
          cluster = new Uint8Array(cs);
          cluster.set(data);
        }
        const deflated = deflateCluster(cluster);
        if (deflated === null) {
          this.#write(offset, [data]);
          return;
        }
        this.#markDirtyBit();
        const host = this.#allocator.allocateBytes(deflated.length);
        const padded = Math.ceil(deflated.length / COMPRESSED_SECTOR) * COMPRESSED_SECTOR;
        const out = new Uint8Array(padded);
        out.set(deflated);
        this.#file.write(out, host);
        const gc = offset / cs;
        const table = this.#writableL2(gc);
        const i = gc % this.#l2Entries;
        const oldHi = table.view.getUint32(i * ENTRY_BYTES, false);
        const oldLo = table.view.getUint32(i * ENTRY_BYTES + 4, false);
        const e = compressedEntry(host, host + deflated.length, this.#compressed);
        table.view.setUint32(i * ENTRY_BYTES, e.hi, false);
        table.view.setUint32(i * ENTRY_BYTES + 4, e.lo, false);
        this.#l2Cache.markDirty(table);
        this.#freeEntry(oldHi, oldLo);
      });
    });
  }

  /** Grows the virtual disk to `newSize` bytes (a multiple of 512), moving the L1 table when it must grow. */
  resize(newSize: number): Promise<void> {
    return settle(() => {
      this.#checkWritable('resize', 0, newSize);
      if (!Number.isSafeInteger(newSize) || newSize % 512 !== 0 || newSize < this.#size) {
        throw new Qcow2Error(
          'INVALID_ARGUMENT',
          this.path,
          newSize < this.#size
            ? `shrinking (${this.#size} to ${newSize} bytes) is not supported`
            : `the new size ${newSize} must be a multiple of 512`,
          newSize,
        );
      }
      this.#guard(() => {
        this.#resize(newSize);
      });
    });
  }

  /**
   * Checks the image as `qemu-img check` does (leaks, corruptions); `repair` fixes leaks, or everything
   * refcounts and COPIED flags can fix. Metadata is written first, so the check sees what is on disk.
   */
  check(opts: { repair?: 'leaks' | 'all' } = {}): Promise<Qcow2CheckResult> {
    return settle(() => {
      this.#checkOpen('check', 0, 0);
      if (opts.repair !== undefined && this.readOnly) {
        throw new Qcow2Error('READ_ONLY', this.path, 'repair needs the image opened read-write', opts.repair);
      }
      if (!this.readOnly) this.#writeMetadata();
      const result = checkImage(this.#internals(), opts.repair);
      if (opts.repair !== undefined) {
        this.#writeMetadata();
        this.#barrier();
        this.#allocator.resetHint();
      }
      return result;
    });
  }

  /** The allocation status of the whole disk, merged like `qemu-img map --output=json`. */
  async *map(): AsyncIterable<MapExtent> {
    this.#checkOpen('map', 0, 0);
    let pending: MapExtent | undefined;
    for (let pos = 0; pos < this.#size;) {
      const parts = this.#status(pos, this.#size - pos, 0);
      for (const e of parts) {
        if (pending === undefined) pending = e;
        else if (
          pending.data === e.data &&
          pending.zero === e.zero &&
          pending.present === e.present &&
          pending.depth === e.depth &&
          pending.compressed === e.compressed &&
          (pending.offset === undefined
            ? e.offset === undefined
            : e.offset !== undefined && pending.offset + pending.length === e.offset)
        ) {
          pending = { ...pending, length: pending.length + e.length };
        } else {
          yield pending;
          pending = e;
        }
        pos += e.length;
      }
      await Promise.resolve();
    }
    if (pending !== undefined) yield pending;
  }

  /** Writes everything, clears the dirty bit after a clean shutdown (lazy refcounts) and closes the chain. */
  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      if (!this.readOnly && this.#corruptAt === undefined) {
        this.#refcounts.flush();
        this.#writeMetadata();
        this.#refcounts.flush();
        this.#barrier();
        if (this.#dirtyOnDisk && this.#lazyRefcounts) {
          this.#writeIncompatible(
            this.#header.incompatibleFeatures & ~(1n << BigInt(IncompatibleFeature.dirty)),
          );
          this.#dirtyOnDisk = false;
          this.#barrier();
        }
      }
    } finally {
      this.#closed = true;
      this.#file.close();
      await this.#backing?.close();
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Open-time preparation

  #prepareForWrites(): void {
    const h = this.#header;
    // An implementation may only write an image with auto-clear bits it does not maintain after clearing them.
    if (h.autoclearFeatures !== 0n) {
      const buf = new Uint8Array(8);
      new DataView(buf.buffer).setBigUint64(0, 0n, false);
      this.#file.write(buf, HeaderField.autoclearFeatures);
      this.#header = { ...h, autoclearFeatures: 0n };
      this.#barrier();
    }
    const dirty = hasIncompatible(h, IncompatibleFeature.dirty);
    const result = checkImage(this.#internals(), dirty ? 'all' : undefined, true);
    if (dirty) {
      if (result.corruptions > 0) throw this.#refuse(result);
      this.#writeMetadata();
      this.#barrier();
      this.#writeIncompatible(h.incompatibleFeatures & ~(1n << BigInt(IncompatibleFeature.dirty)));
      this.#dirtyOnDisk = false;
      this.#barrier();
      this.#refcountsRebuilt = true;
      this.#allocator.resetHint();
    } else if (result.corruptions > 0) {
      throw this.#refuse(result);
    }
  }

  #refuse(result: Qcow2CheckResult): Qcow2Error {
    const first = result.problems[0];
    const code = first?.code ?? 'CORRUPT';
    return new Qcow2Error(
      code,
      this.path,
      `is corrupt (${result.corruptions} error${result.corruptions === 1 ? '' : 's'}; first: ${first?.message ?? '?'}); ` +
        'it can be opened read-only, or repaired with qemu-img check -r all',
      first?.offset,
    );
  }

  #internals(): ImageInternals {
    return {
      path: this.path,
      file: this.#file,
      header: this.#header,
      clusterSize: this.#clusterSize,
      clusterBits: this.#clusterBits,
      l1: this.#l1View,
      l1Size: this.#l1.length / ENTRY_BYTES,
      l1Offset: this.#l1Offset,
      refcounts: this.#refcounts,
      allocator: this.#allocator,
      compressed: this.#compressed,
      l2: (offset) => this.#l2Cache.get(offset),
      markL2Dirty: (t) => {
        this.#l2Cache.markDirty(t);
      },
      setL1Entry: (index, hi, lo) => {
        this.#setL1(index, hi, lo);
      },
      writeMetadata: () => {
        this.#writeMetadata();
      },
    };
  }

  // ---------------------------------------------------------------------------------------------------------
  // Reads

  /** Classifies guest cluster `gc`; the raw entry is left in #kHi/#kLo. */
  #lookup(gc: number): ClusterKind {
    const l1i = Math.floor(gc / this.#l2Entries);
    if (l1i * ENTRY_BYTES >= this.#l1.length) {
      this.#kHi = this.#kLo = 0;
      return ClusterKind.unallocated;
    }
    const l2Offset = entryOffset(
      this.#l1View.getUint32(l1i * ENTRY_BYTES, false),
      this.#l1View.getUint32(l1i * ENTRY_BYTES + 4, false),
    );
    if (l2Offset === 0) {
      this.#kHi = this.#kLo = 0;
      return ClusterKind.unallocated;
    }
    const t = this.#l2Cache.get(l2Offset);
    const i = (gc - l1i * this.#l2Entries) * ENTRY_BYTES;
    const hi = t.view.getUint32(i, false);
    const lo = t.view.getUint32(i + 4, false);
    this.#kHi = hi;
    this.#kLo = lo;
    const kind = l2Kind(hi, lo, this.#version);
    if (kind === ClusterKind.normal || kind === ClusterKind.zeroAllocated) {
      const host = entryOffset(hi, lo);
      if (host % this.#clusterSize !== 0) {
        this.#markCorrupt(
          'MISALIGNED_OFFSET',
          `the L2 table at ${offsetHex(l2Offset)} maps guest offset ${offsetHex(gc * this.#clusterSize)} to the unaligned host offset ${offsetHex(host)}`,
          host,
        );
      }
      if (kind === ClusterKind.normal && host >= this.#file.end) {
        this.#markCorrupt(
          'OUT_OF_BOUNDS',
          `the L2 table at ${offsetHex(l2Offset)} maps guest offset ${offsetHex(gc * this.#clusterSize)} past the end of the file (${offsetHex(host)})`,
          host,
        );
      }
    }
    return kind;
  }

  #read(offset: number, bufs: readonly Uint8Array[]): void {
    const vec = new IoVector(bufs);
    this.#checkRange('read', offset, vec.total);
    this.#guard(() => {
      this.#readInto(offset, vec.total, vec);
    });
  }

  #readInto(offset: number, length: number, vec: IoVector): void {
    const cs = this.#clusterSize;
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const gc = Math.floor(pos / cs);
      const intra = pos - gc * cs;
      const kind = this.#lookup(gc);
      let n = Math.min(cs - intra, end - pos);
      if (kind === ClusterKind.compressed) {
        const data = this.#inflate(gc, this.#kHi, this.#kLo);
        vec.copyIn(data.subarray(intra, intra + n));
        pos += n;
        continue;
      }
      const host = kind === ClusterKind.normal ? entryOffset(this.#kHi, this.#kLo) : 0;
      // Extend over following clusters of the same kind (contiguous on the host for data).
      for (let k = 1; pos + n < end; k++) {
        const kk = this.#lookup(gc + k);
        if (
          kk !== kind ||
          (kind === ClusterKind.normal && entryOffset(this.#kHi, this.#kLo) !== host + k * cs)
        )
          break;
        n += Math.min(cs, end - pos - n);
      }
      if (kind === ClusterKind.normal) this.#file.readv(vec.take(n), host + intra);
      else if (kind === ClusterKind.unallocated) this.#readBacking(pos, n, vec);
      else vec.zero(n);
      pos += n;
    }
  }

  /** Reads [pos, pos + n) of the backing image into the next `n` bytes of `vec` (zeros past its end or without one). */
  #readBacking(pos: number, n: number, vec: IoVector): void {
    const b = this.#backing;
    if (b === undefined || pos >= b.size) {
      vec.zero(n);
      return;
    }
    const inside = Math.min(n, b.size - pos);
    b.readSync(pos, vec.take(inside));
    if (inside < n) vec.zero(n - inside);
  }

  #inflate(gc: number, hi: number, lo: number): Uint8Array {
    const ext = compressedExtent(hi, lo, this.#compressed);
    const key = ext.offset;
    if (this.#inflatedKey === key && this.#inflated !== undefined) return this.#inflated;
    const raw = new Uint8Array(ext.length);
    this.#file.read(raw, ext.offset);
    const data = inflateCluster(raw, this.#clusterSize);
    if (data === null) {
      throw new Qcow2Error(
        'BAD_COMPRESSED_DATA',
        this.path,
        `the compressed cluster at host offset ${offsetHex(ext.offset)} (guest offset ${offsetHex(gc * this.#clusterSize)}) does not inflate to one cluster`,
        ext.offset,
      );
    }
    this.#inflatedKey = key;
    this.#inflated = data;
    return data;
  }

  /** Fills `dst` with the current contents of guest cluster `gc` whose entry is (kind, hi, lo). */
  #readOldCluster(gc: number, kind: ClusterKind, hi: number, lo: number, dst: Uint8Array): void {
    const cs = this.#clusterSize;
    switch (kind) {
      case ClusterKind.normal:
        this.#file.read(dst, entryOffset(hi, lo));
        return;
      case ClusterKind.compressed:
        dst.set(this.#inflate(gc, hi, lo));
        return;
      case ClusterKind.unallocated:
        this.#readBacking(gc * cs, cs, new IoVector([dst]));
        return;
      default:
        dst.fill(0);
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Writes

  #write(offset: number, bufs: readonly Uint8Array[]): void {
    const vec = new IoVector(bufs);
    this.#checkWritable('write', offset, vec.total);
    this.#checkRange('write', offset, vec.total);
    this.#guard(() => {
      this.#writeFrom(offset, vec.total, vec);
    });
  }

  #writeFrom(offset: number, length: number, vec: IoVector): void {
    const cs = this.#clusterSize;
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const gc = Math.floor(pos / cs);
      const intra = pos - gc * cs;
      const kind = this.#lookup(gc);
      let n = Math.min(cs - intra, end - pos);
      if (kind === ClusterKind.normal && (this.#kHi & EntryBits.COPIED_HI) !== 0) {
        // In place: extend over following in-place clusters contiguous on the host.
        const host = entryOffset(this.#kHi, this.#kLo);
        for (let k = 1; pos + n < end; k++) {
          const kk = this.#lookup(gc + k);
          if (kk !== ClusterKind.normal || (this.#kHi & EntryBits.COPIED_HI) === 0) break;
          if (entryOffset(this.#kHi, this.#kLo) !== host + k * cs) break;
          n += Math.min(cs, end - pos - n);
        }
        this.#file.writev(vec.take(n), host + intra);
        pos += n;
        continue;
      }
      // Clusters that need a new host cluster: count the run.
      let count = 1;
      while (count < MAX_ALLOCATION_RUN && pos + n < end) {
        const kk = this.#lookup(gc + count);
        if (kk === ClusterKind.normal && (this.#kHi & EntryBits.COPIED_HI) !== 0) break;
        n += Math.min(cs, end - pos - n);
        count++;
      }
      this.#allocateAndWrite(gc, count, pos, n, vec);
      pos += n;
    }
  }

  /** Writes [pos, pos + n) — `count` guest clusters from `gc` — into newly allocated, contiguous host clusters. */
  #allocateAndWrite(gc: number, count: number, pos: number, n: number, vec: IoVector): void {
    const cs = this.#clusterSize;
    this.#markDirtyBit();
    // Make sure the L2 tables exist (and are ours) before allocating data, so the data run stays contiguous.
    for (let k = 0; k < count; k++) {
      if (k === 0 || (gc + k) % this.#l2Entries === 0) this.#writableL2(gc + k);
    }
    const host = this.#allocator.allocate(count);
    // Clusters past the end of the file read as zeros already: a partial cluster whose old contents are zeros
    // needs only its new bytes written there (no zero fill of the rest).
    const fresh = host >= this.#file.end;
    let skip = 0;
    const parts: Uint8Array[] = [];
    const end = pos + n;
    const oldHi: number[] = [];
    const oldLo: number[] = [];
    for (let k = 0; k < count; k++) {
      const cStart = (gc + k) * cs;
      const from = Math.max(pos, cStart);
      const to = Math.min(end, cStart + cs);
      const kind = this.#lookup(gc + k);
      oldHi.push(this.#kHi);
      oldLo.push(this.#kLo);
      if (from === cStart && to === cStart + cs) {
        parts.push(...vec.take(cs));
      } else if (fresh && this.#readsAsZeros(kind, cStart)) {
        if (k === 0) skip = from - cStart; // only the first cluster can start late, only the last end early
        parts.push(...vec.take(to - from));
      } else {
        const buf = k === 0 ? this.#scratchHead : this.#scratchTail;
        this.#readOldCluster(gc + k, kind, this.#kHi, this.#kLo, buf);
        vec.copyOut(to - from, buf, from - cStart);
        parts.push(buf);
      }
    }
    this.#file.writev(parts, host + skip);
    for (let k = 0; k < count; k++) {
      const table = this.#writableL2(gc + k);
      const i = ((gc + k) % this.#l2Entries) * ENTRY_BYTES;
      const h = host + k * cs;
      table.view.setUint32(i, (EntryBits.COPIED_HI | Math.floor(h / TWO_POW_32)) >>> 0, false);
      table.view.setUint32(i + 4, h % TWO_POW_32, false);
      this.#l2Cache.markDirty(table);
      this.#freeEntry(oldHi[k] as number, oldLo[k] as number);
    }
    this.#inflatedKey = -1;
  }

  /** Whether a cluster of this kind starting at guest offset `cStart` reads as zeros (no backing data under it). */
  #readsAsZeros(kind: ClusterKind, cStart: number): boolean {
    if (kind === ClusterKind.zero || kind === ClusterKind.zeroAllocated) return true;
    return kind === ClusterKind.unallocated && (this.#backing === undefined || cStart >= this.#backing.size);
  }

  /** Drops the host cluster(s) an old L2 entry referenced (deferred until the new entry is durable). */
  #freeEntry(hi: number, lo: number): void {
    const kind = l2Kind(hi, lo, this.#version);
    if (kind === ClusterKind.normal || kind === ClusterKind.zeroAllocated) {
      this.#allocator.free(entryOffset(hi, lo), this.#clusterSize);
    } else if (kind === ClusterKind.compressed) {
      const ext = compressedExtent(hi, lo, this.#compressed);
      this.#allocator.free(ext.sectorStart, ext.sectorBytes);
      this.#inflatedKey = -1;
    }
  }

  /** The L2 table of guest cluster `gc`, allocated (or copied, when shared with a snapshot) so it can change. */
  #writableL2(gc: number): CachedTable {
    const l1i = Math.floor(gc / this.#l2Entries);
    const hi = this.#l1View.getUint32(l1i * ENTRY_BYTES, false);
    const lo = this.#l1View.getUint32(l1i * ENTRY_BYTES + 4, false);
    const old = entryOffset(hi, lo);
    if (old !== 0 && (hi & EntryBits.COPIED_HI) !== 0) return this.#l2Cache.get(old);
    this.#markDirtyBit();
    const offset = this.#allocator.allocate(1);
    const table = this.#l2Cache.create(offset);
    if (old !== 0) {
      // Shared with a snapshot: copy it; its clusters are already counted once per table.
      const src = this.#l2Cache.get(old);
      table.bytes.set(src.bytes);
      this.#l2Cache.markDirty(table);
      this.#allocator.free(old, this.#clusterSize);
    }
    this.#setL1(l1i, (EntryBits.COPIED_HI | Math.floor(offset / TWO_POW_32)) >>> 0, offset % TWO_POW_32);
    return this.#l2Cache.get(offset);
  }

  #setL1(index: number, hi: number, lo: number): void {
    this.#l1View.setUint32(index * ENTRY_BYTES, hi, false);
    this.#l1View.setUint32(index * ENTRY_BYTES + 4, lo, false);
    if (index < this.#l1DirtyMin) this.#l1DirtyMin = index;
    if (index > this.#l1DirtyMax) this.#l1DirtyMax = index;
  }

  /** Discard (`mode` discard) or write zeroes (`mode` zero) over [offset, offset + length). */
  #zeroClusters(offset: number, length: number, mode: 'discard' | 'zero'): void {
    const cs = this.#clusterSize;
    const end = offset + length;
    const firstWhole = Math.ceil(offset / cs) * cs;
    // The disk's last cluster counts as whole when the range reaches the end of the disk.
    const lastWhole = end === this.#size ? Math.ceil(end / cs) * cs : Math.floor(end / cs) * cs;
    const zeroFlag = this.#version >= 3;
    if (mode === 'zero' && (!zeroFlag || firstWhole >= lastWhole)) {
      this.#writeZeroData(offset, end);
      return;
    }
    if (mode === 'zero') {
      if (offset < firstWhole) this.#writeZeroData(offset, Math.min(firstWhole, end));
      if (lastWhole < end) this.#writeZeroData(Math.max(lastWhole, offset), end);
    }
    if (firstWhole >= lastWhole) return;
    // With a backing file, a deallocated cluster would show the backing data: use the zero flag (v3).
    const useZeroFlag = zeroFlag && (mode === 'zero' || this.#backing !== undefined);
    for (let gc = firstWhole / cs; gc < lastWhole / cs; gc++) {
      const kind = this.#lookup(gc);
      const hi = this.#kHi;
      const lo = this.#kLo;
      if (useZeroFlag ? kind === ClusterKind.zero : kind === ClusterKind.unallocated) continue;
      if (!useZeroFlag && kind === ClusterKind.zero) continue; // already reads zeros
      if (kind === ClusterKind.unallocated && !useZeroFlag) continue;
      this.#markDirtyBit();
      const table = this.#writableL2(gc);
      const i = (gc % this.#l2Entries) * ENTRY_BYTES;
      table.view.setUint32(i, 0, false);
      table.view.setUint32(i + 4, useZeroFlag ? EntryBits.ZERO_LO : 0, false);
      this.#l2Cache.markDirty(table);
      this.#freeEntry(hi, lo);
    }
    this.#inflatedKey = -1;
  }

  #writeZeroData(from: number, to: number): void {
    const chunk = new Uint8Array(Math.min(to - from, 1 << 20));
    for (let p = from; p < to; p += chunk.length) {
      const n = Math.min(chunk.length, to - p);
      this.#writeFrom(p, n, new IoVector([chunk.subarray(0, n)]));
    }
  }

  #resize(newSize: number): void {
    const needed = Math.ceil(newSize / (this.#clusterSize * this.#l2Entries));
    const oldEntries = this.#l1.length / ENTRY_BYTES;
    const header = new Uint8Array(24); // size (24..31), crypt_method (32..35), l1_size (36..39), l1_table_offset (40..47)
    const hv = new DataView(header.buffer);
    hv.setBigUint64(0, BigInt(newSize), false);
    hv.setUint32(8, this.#header.cryptMethod, false);
    if (needed > oldEntries) {
      if (needed * ENTRY_BYTES > MAX_L1_BYTES) {
        throw new Qcow2Error(
          'INVALID_ARGUMENT',
          this.path,
          `${newSize} bytes needs an L1 table over QEMU's 32 MiB limit`,
          newSize,
        );
      }
      this.#writeMetadata();
      this.#refcounts.flush();
      const cs = this.#clusterSize;
      const clusters = Math.ceil((needed * ENTRY_BYTES) / cs);
      const offset = this.#allocator.allocate(clusters);
      const l1 = new Uint8Array(clusters * cs);
      l1.set(this.#l1);
      this.#file.write(l1, offset);
      this.#refcounts.flush();
      this.#barrier();
      hv.setUint32(12, needed, false);
      hv.setBigUint64(16, BigInt(offset), false);
      this.#file.write(header, HeaderField.size);
      this.#barrier();
      const oldOffset = this.#l1Offset;
      const oldBytes = this.#l1.length;
      this.#l1 = l1.subarray(0, needed * ENTRY_BYTES);
      this.#l1View = new DataView(l1.buffer, 0, needed * ENTRY_BYTES);
      this.#l1Offset = offset;
      if (oldBytes > 0) {
        this.#allocator.free(oldOffset, oldBytes);
        this.#allocator.applyFrees();
      }
      this.#refcounts.flush();
      this.#header = { ...this.#header, size: newSize, l1Size: needed, l1TableOffset: offset };
    } else {
      hv.setUint32(12, oldEntries, false);
      hv.setBigUint64(16, BigInt(this.#l1Offset), false);
      this.#file.write(header, HeaderField.size);
      this.#header = { ...this.#header, size: newSize };
    }
    this.#size = newSize;
    this.#barrier();
  }

  // ---------------------------------------------------------------------------------------------------------
  // Metadata write-back

  /** Writes dirty metadata in dependency order, then applies deferred frees (see the module doc). */
  #writeMetadata(): void {
    if (!this.#lazyRefcounts) this.#refcounts.flush();
    this.#l2Cache.flush(); // its beforeWrite writes refcounts and syncs
    if (this.#l1DirtyMax >= 0) {
      this.#barrier();
      const from = this.#l1DirtyMin;
      const to = this.#l1DirtyMax + 1;
      this.#file.write(
        this.#l1.subarray(from * ENTRY_BYTES, to * ENTRY_BYTES),
        this.#l1Offset + from * ENTRY_BYTES,
      );
      this.#l1DirtyMin = Infinity;
      this.#l1DirtyMax = -1;
    }
    if (this.#allocator.hasPendingFrees) {
      this.#barrier(); // the references are gone on disk before the clusters can be reused
      this.#allocator.applyFrees();
      if (!this.#lazyRefcounts) this.#refcounts.flush();
    }
    if (this.#refcounts.dirty && !this.#lazyRefcounts) this.#refcounts.flush();
  }

  /** fdatasync, when anything was written since the last one. */
  #barrier(): void {
    this.#file.syncIfWritten();
  }

  /** With lazy refcounts: sets the dirty bit (durably) before the first metadata change. */
  #markDirtyBit(): void {
    if (!this.#lazyRefcounts || this.#dirtyOnDisk) return;
    this.#writeIncompatible(this.#header.incompatibleFeatures | (1n << BigInt(IncompatibleFeature.dirty)));
    this.#dirtyOnDisk = true;
    this.#barrier();
  }

  #writeIncompatible(value: bigint): void {
    const buf = new Uint8Array(8);
    new DataView(buf.buffer).setBigUint64(0, value, false);
    this.#file.write(buf, HeaderField.incompatibleFeatures);
    this.#header = { ...this.#header, incompatibleFeatures: value };
  }

  // ---------------------------------------------------------------------------------------------------------
  // Map

  /** Status runs of [pos, pos + maxLen) as seen from chain layer `depth`. */
  #status(pos: number, maxLen: number, depth: number): MapExtent[] {
    const cs = this.#clusterSize;
    const gc = Math.floor(pos / cs);
    const intra = pos - gc * cs;
    const kind = this.#lookup(gc);
    let n = Math.min(cs - intra, maxLen);
    const host =
      kind === ClusterKind.normal || kind === ClusterKind.zeroAllocated
        ? entryOffset(this.#kHi, this.#kLo)
        : 0;
    // Whole L2 tables at a time would be faster; one L2 table's worth per call keeps the merge simple.
    const limit = Math.min(maxLen, (this.#l2Entries - (gc % this.#l2Entries)) * cs - intra);
    for (let k = 1; n < limit; k++) {
      const kk = this.#lookup(gc + k);
      if (kk !== kind) break;
      if (
        (kind === ClusterKind.normal || kind === ClusterKind.zeroAllocated) &&
        entryOffset(this.#kHi, this.#kLo) !== host + k * cs
      )
        break;
      if (kind === ClusterKind.compressed) break;
      n += Math.min(cs, limit - n);
    }
    switch (kind) {
      case ClusterKind.normal:
        return [
          { start: pos, length: n, data: true, zero: false, present: true, depth, offset: host + intra },
        ];
      case ClusterKind.zeroAllocated:
        return [
          { start: pos, length: n, data: false, zero: true, present: true, depth, offset: host + intra },
        ];
      case ClusterKind.zero:
        return [{ start: pos, length: n, data: false, zero: true, present: true, depth }];
      case ClusterKind.compressed:
        return [{ start: pos, length: n, data: true, zero: false, present: true, depth, compressed: true }];
      default:
        return this.#backingStatus(pos, n, depth);
    }
  }

  #backingStatus(pos: number, n: number, depth: number): MapExtent[] {
    const b = this.#backing;
    if (b === undefined) return [{ start: pos, length: n, data: false, zero: true, present: false, depth }];
    // Past the end of the backing file this layer answers (zeros), as qemu-img map reports it.
    if (pos >= b.size) return [{ start: pos, length: n, data: false, zero: true, present: false, depth }];
    const inside = Math.min(n, b.size - pos);
    const out: MapExtent[] = [];
    if (b.format === 'raw') {
      out.push({
        start: pos,
        length: inside,
        data: true,
        zero: false,
        present: true,
        depth: depth + 1,
        offset: pos,
      });
    } else {
      const image = backingImages.get(b);
      for (let p = pos; p < pos + inside;) {
        const parts = image === undefined ? [] : image.#status(p, pos + inside - p, depth + 1);
        if (parts.length === 0) break;
        for (const e of parts) {
          out.push(e);
          p += e.length;
        }
      }
    }
    if (inside < n)
      out.push({
        start: pos + inside,
        length: n - inside,
        data: false,
        zero: true,
        present: false,
        depth,
      });
    return out;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Guards

  #checkOpen(what: string, offset: number, length: number): void {
    if (this.#closed) {
      throw new HostIoError(`${this.path}: ${what} at ${offset}+${length} after close`, {
        path: this.path,
        offset,
        length,
      });
    }
  }

  #checkRange(what: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.#size) {
      throw new HostIoError(
        `${this.path}: ${what} at ${offset}+${length} is outside the ${this.#size}-byte disk`,
        {
          path: this.path,
          offset,
          length,
        },
      );
    }
  }

  #checkWritable(what: string, offset: number, length: number): void {
    this.#checkOpen(what, offset, length);
    if (this.readOnly) {
      throw new Qcow2Error(
        'READ_ONLY',
        this.path,
        `${what} at ${offset}+${length} refused: opened read-only`,
        offset,
      );
    }
    if (this.#corruptAt !== undefined) {
      throw new Qcow2Error(
        'CORRUPT',
        this.path,
        `${what} refused: the image is read-only since a corruption was found (${this.#corruptAt.message})`,
        this.#corruptAt.value,
      );
    }
  }

  /** Runs `fn`; a Qcow2Error (corruption found on the way) makes the image read-only from then on. */
  #guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (e instanceof Qcow2Error && e.code !== 'READ_ONLY' && e.code !== 'INVALID_ARGUMENT')
        this.#corruptAt ??= e;
      throw e;
    }
  }

  #markCorrupt(code: 'MISALIGNED_OFFSET' | 'OUT_OF_BOUNDS', message: string, offset: number): never {
    const e = new Qcow2Error(code, this.path, `${message}; the image is now read-only`, offset);
    this.#corruptAt ??= e;
    throw e;
  }
}

/** Backing qcow2 images by their BackingImage wrapper (so map can walk into them). */
const backingImages = new WeakMap<BackingImage, Qcow2Image>();

/** How much of the file holds the first cluster (parseHeader does the real checks), within the valid range. */
function clusterBitsHint(probe: Uint8Array): number {
  if (probe.length < HeaderField.clusterBits + 4) return MIN_CLUSTER_BITS;
  const bits = new DataView(probe.buffer, probe.byteOffset, probe.byteLength).getUint32(
    HeaderField.clusterBits,
    false,
  );
  return Math.min(Math.max(bits, MIN_CLUSTER_BITS), MAX_CLUSTER_BITS);
}

async function backingFormat(header: Qcow2Header, resolved: string, overlay: string): Promise<ImageFormat> {
  const named = header.backingFormat;
  if (named === undefined) return detectFormatOfFile(resolved);
  if (named === 'raw' || named === 'qcow2') return named;
  throw new Qcow2Error(
    'UNSUPPORTED_FEATURE',
    overlay,
    `backing format ${named} is not supported (raw or qcow2)`,
    named,
  );
}

interface Range {
  readonly name: string;
  readonly start: number;
  readonly end: number;
}

/** Where the header, L1 and refcount tables are, checked: aligned, inside the file, not overlapping. */
function checkLayout(h: Qcow2Header, fileSize: number, path: string): Range[] {
  const cs = 2 ** h.clusterBits;
  const l2Entries = cs / ENTRY_BYTES;
  const needed = Math.ceil(h.size / (cs * l2Entries));
  if (h.l1Size < needed) {
    throw new Qcow2Error(
      'INVALID_HEADER',
      path,
      `the L1 table (${h.l1Size} entries) is too small for the ${h.size}-byte disk (${needed} needed)`,
      h.l1Size,
    );
  }
  if (h.l1Size * ENTRY_BYTES > MAX_L1_BYTES) {
    throw new Qcow2Error(
      'INVALID_HEADER',
      path,
      `the L1 table (${h.l1Size} entries) exceeds 32 MiB`,
      h.l1Size,
    );
  }
  if (h.refcountTableClusters === 0 || h.refcountTableClusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
    throw new Qcow2Error(
      'INVALID_HEADER',
      path,
      `refcount_table_clusters ${h.refcountTableClusters} is 0 or exceeds the 8 MiB limit`,
      h.refcountTableClusters,
    );
  }
  const ranges: Range[] = [{ name: 'the header', start: 0, end: cs }];
  const table = (name: string, offset: number, bytes: number): void => {
    if (offset % cs !== 0) {
      throw new Qcow2Error(
        'MISALIGNED_OFFSET',
        path,
        `${name} offset ${offsetHex(offset)} is not cluster aligned`,
        offset,
      );
    }
    if (offset + bytes > fileSize) {
      throw new Qcow2Error(
        'OUT_OF_BOUNDS',
        path,
        `${name} at ${offsetHex(offset)} (${bytes} bytes) runs past the end of the file (${fileSize} bytes)`,
        offset,
      );
    }
    const r = { name, start: offset, end: offset + Math.ceil(bytes / cs) * cs };
    for (const o of ranges) {
      if (r.start < o.end && o.start < r.end) {
        throw new Qcow2Error(
          'METADATA_OVERLAP',
          path,
          `${name} at ${offsetHex(offset)} overlaps ${o.name}`,
          offset,
        );
      }
    }
    ranges.push(r);
  };
  if (h.l1Size > 0) table('the L1 table', h.l1TableOffset, h.l1Size * ENTRY_BYTES);
  table('the refcount table', h.refcountTableOffset, h.refcountTableClusters * cs);
  if (h.nbSnapshots > 0 && h.snapshotsOffset % cs !== 0) {
    throw new Qcow2Error(
      'MISALIGNED_OFFSET',
      path,
      `the snapshot table offset ${offsetHex(h.snapshotsOffset)} is not cluster aligned`,
      h.snapshotsOffset,
    );
  }
  return ranges;
}

/** Every L2 table and refcount block offset: aligned, reserved bits clear, inside the file, not on other metadata. */
function checkTableEntries(
  h: Qcow2Header,
  l1: Uint8Array,
  refTable: Uint8Array,
  ranges: readonly Range[],
  fileSize: number,
  path: string,
): void {
  const cs = 2 ** h.clusterBits;
  const check = (what: string, offset: number, reserved: number): void => {
    if (reserved !== 0 || offset % cs !== 0) {
      throw new Qcow2Error(
        'MISALIGNED_OFFSET',
        path,
        `${what} offset ${offsetHex(offset)} is not cluster aligned or has reserved bits set`,
        offset,
      );
    }
    if (offset + cs > fileSize) {
      throw new Qcow2Error(
        'OUT_OF_BOUNDS',
        path,
        `${what} at ${offsetHex(offset)} is past the end of the file (${fileSize} bytes)`,
        offset,
      );
    }
    for (const r of ranges) {
      if (offset < r.end && r.start < offset + cs) {
        throw new Qcow2Error(
          'METADATA_OVERLAP',
          path,
          `${what} at ${offsetHex(offset)} overlaps ${r.name}`,
          offset,
        );
      }
    }
  };
  const l1v = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
  for (let i = 0; i < l1.length / ENTRY_BYTES; i++) {
    const hi = l1v.getUint32(i * ENTRY_BYTES, false);
    const lo = l1v.getUint32(i * ENTRY_BYTES + 4, false);
    const off = entryOffset(hi, lo);
    if (off === 0 && (lo & EntryBits.L1_RESERVED_LO) === 0) continue;
    check(
      `L1 entry ${i}: the L2 table`,
      off,
      (lo & EntryBits.L1_RESERVED_LO) | (hi & EntryBits.L1_RESERVED_HI),
    );
  }
  const rv = new DataView(refTable.buffer, refTable.byteOffset, refTable.byteLength);
  for (let i = 0; i < refTable.length / ENTRY_BYTES; i++) {
    const hi = rv.getUint32(i * ENTRY_BYTES, false);
    const lo = rv.getUint32(i * ENTRY_BYTES + 4, false);
    if (hi === 0 && lo === 0) continue;
    const off = hi * TWO_POW_32 + ((lo & ~0x1ff) >>> 0);
    check(`refcount table entry ${i}: the refcount block`, off, lo & 0x1ff);
  }
}

/** Runs `fn` now and returns its outcome as a promise (a throw becomes a rejection). */
function settle<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (e) {
    return Promise.reject(e instanceof Error ? e : new Error(String(e)));
  }
}
