/**
 * `TableCache`: a bounded LRU cache of one-cluster metadata tables (L2 tables, refcount blocks), keyed by their
 * host offset. Tables are changed in memory and marked dirty; dirty tables are written back in batches
 * ({@link TableCache.flush}: sorted by offset, adjacent ones in one pwritev) or one by one when evicted.
 *
 * Write ordering between caches is expressed as QEMU's qcow2 cache does it, by a dependency: before any table
 * of this cache is written, `beforeWrite` runs (the L2 cache's makes the refcount blocks durable first, so an L2
 * entry never reaches the disk before the refcount of the cluster it points to).
 */
import type { ImageFile } from './image-file.js';

export interface CachedTable {
  readonly offset: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  dirty: boolean;
}

export class TableCache {
  readonly capacity: number;
  readonly #file: ImageFile;
  readonly #tableSize: number;
  readonly #beforeWrite: () => void;
  /** Insertion order is recency order: the first entry is the least recently used. */
  readonly #tables = new Map<number, CachedTable>();
  #last: CachedTable | undefined;
  #dirtyCount = 0;

  constructor(file: ImageFile, tableSize: number, capacity: number, beforeWrite: () => void) {
    this.#file = file;
    this.#tableSize = tableSize;
    this.capacity = Math.max(2, capacity);
    this.#beforeWrite = beforeWrite;
  }

  /** Number of dirty tables. */
  get dirtyCount(): number {
    return this.#dirtyCount;
  }

  /** The table at `offset`, read from the file on a miss. */
  get(offset: number): CachedTable {
    const last = this.#last;
    if (last !== undefined && last.offset === offset) return last;
    let t = this.#tables.get(offset);
    if (t !== undefined) {
      this.#tables.delete(offset);
      this.#tables.set(offset, t);
    } else {
      t = this.#insert(offset);
      this.#file.read(t.bytes, offset);
    }
    this.#last = t;
    return t;
  }

  /** Whether the table at `offset` is cached (no I/O, no recency change). */
  has(offset: number): boolean {
    return this.#tables.has(offset);
  }

  /** A new table at `offset` filled with zeros (a freshly allocated cluster), dirty, without reading it. */
  create(offset: number): CachedTable {
    const old = this.#tables.get(offset);
    if (old !== undefined) {
      old.bytes.fill(0);
      this.markDirty(old);
      return old;
    }
    const t = this.#insert(offset);
    t.bytes.fill(0);
    this.markDirty(t);
    this.#last = t;
    return t;
  }

  /** Puts already-written bytes into the cache as a clean table (after a direct write of a new table). */
  adopt(offset: number, bytes: Uint8Array): void {
    const t = this.#tables.get(offset) ?? this.#insert(offset);
    t.bytes.set(bytes);
    if (t.dirty) {
      t.dirty = false;
      this.#dirtyCount--;
    }
  }

  markDirty(t: CachedTable): void {
    if (!t.dirty) {
      t.dirty = true;
      this.#dirtyCount++;
    }
  }

  /** Writes every dirty table (after `beforeWrite`); true when anything was written. */
  flush(): boolean {
    if (this.#dirtyCount === 0) return false;
    this.#beforeWrite();
    const dirty = [...this.#tables.values()].filter((t) => t.dirty).sort((a, b) => a.offset - b.offset);
    let i = 0;
    while (i < dirty.length) {
      const first = dirty[i] as CachedTable;
      const run: Uint8Array[] = [first.bytes];
      let j = i + 1;
      while (
        j < dirty.length &&
        (dirty[j] as CachedTable).offset === first.offset + (j - i) * this.#tableSize
      ) {
        run.push((dirty[j] as CachedTable).bytes);
        j++;
      }
      this.#file.writev(run, first.offset);
      for (let k = i; k < j; k++) (dirty[k] as CachedTable).dirty = false;
      i = j;
    }
    this.#dirtyCount = 0;
    return true;
  }

  /** Forgets every table (dirty ones are lost: call flush first). */
  clear(): void {
    this.#tables.clear();
    this.#last = undefined;
    this.#dirtyCount = 0;
  }

  #insert(offset: number): CachedTable {
    let bytes: Uint8Array | undefined;
    if (this.#tables.size >= this.capacity) {
      const [victimOffset, victim] = this.#tables.entries().next().value as [number, CachedTable];
      if (victim.dirty) {
        this.#beforeWrite();
        this.#file.write(victim.bytes, victim.offset);
        victim.dirty = false;
        this.#dirtyCount--;
      }
      this.#tables.delete(victimOffset);
      if (this.#last === victim) this.#last = undefined;
      bytes = victim.bytes;
    }
    bytes ??= new Uint8Array(this.#tableSize);
    const t: CachedTable = {
      offset,
      bytes,
      view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      dirty: false,
    };
    this.#tables.set(offset, t);
    return t;
  }
}
