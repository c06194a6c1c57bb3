/**
 * `checkImage`: the consistency check of `qemu-img check`, on an open image. It walks every structure that
 * references host clusters — header, L1 table, L2 tables and the data and compressed clusters they map, the
 * snapshot table and the snapshots' tables, the refcount table and blocks, the bitmaps directory and tables —
 * counts the references to each cluster and compares them with the refcounts:
 *
 * - refcount lower than the references (0 on a used cluster included): a corruption (a write could reuse it);
 * - refcount higher: a leak (wasted space, no harm);
 * - a COPIED flag that disagrees with "refcount is exactly one": a corruption (in-place writes would be wrong);
 * - references that are misaligned or past the end of the file: corruptions nothing can repair.
 *
 * Repair (`leaks`: lower leaked refcounts; `all`: also raise low refcounts, rebuild missing refcount blocks, fix
 * COPIED flags) happens only when asked for, and after the whole walk, from a list of fixes — so the clusters
 * the repair itself allocates for new refcount blocks are never mistaken for leaks.
 */
import {
  ENTRY_BYTES,
  EntryBits,
  HeaderExtensionType,
  SNAPSHOT_FIXED_BYTES,
  SnapshotField,
  TWO_POW_32,
} from './layout.js';
import { ClusterKind, compressedExtent, entryOffset, l2Kind } from './l2-entry.js';
import type { ImageInternals } from './qcow2-image.js';
import { offsetHex, type Qcow2ErrorCode } from './qcow2-error.js';

export interface Qcow2Problem {
  readonly kind: 'corruption' | 'leak';
  readonly code: Qcow2ErrorCode;
  readonly message: string;
  /** The file offset the problem is about. */
  readonly offset: number | undefined;
}

export interface Qcow2CheckResult {
  /** Corruptions left after any repair (errors that may lose data if the image is written). */
  readonly corruptions: number;
  /** Leaked clusters left after any repair. */
  readonly leaks: number;
  readonly corruptionsFixed: number;
  readonly leaksFixed: number;
  /** Errors that stopped the check from completing (I/O errors): 0 when the check ran through. */
  readonly checkErrors: number;
  /** Guest clusters with data (normal, compressed or preallocated zero) and the disk's size in clusters. */
  readonly allocatedClusters: number;
  readonly totalClusters: number;
  readonly fragmentedClusters: number;
  readonly compressedClusters: number;
  /** One past the last cluster in use, in bytes. */
  readonly imageEndOffset: number;
  /** Every problem found (before repair), in the order found. */
  readonly problems: readonly Qcow2Problem[];
  /** Human-readable lines in the style of qemu-img check: one per problem, then the summary. */
  readonly messages: readonly string[];
}

/** Problems listed individually; past this only the counts grow (a badly broken image has millions). */
const MAX_LISTED_PROBLEMS = 10000;

interface Fix {
  readonly cluster: number;
  readonly value: number;
  readonly leak: boolean;
}

export function checkImage(
  img: ImageInternals,
  repair: 'leaks' | 'all' | undefined,
  _quick = false,
): Qcow2CheckResult {
  const cs = img.clusterSize;
  const h = img.header;
  const rc = img.refcounts;
  const fileSize = img.file.size();
  const fileClusters = Math.ceil(fileSize / cs);
  const refs = new Uint32Array(fileClusters);
  const problems: Qcow2Problem[] = [];
  let corruptions = 0;
  let leaks = 0;
  const problem = (
    kind: 'corruption' | 'leak',
    code: Qcow2ErrorCode,
    message: string,
    offset: number | undefined,
  ): void => {
    if (kind === 'corruption') corruptions++;
    else leaks++;
    if (problems.length < MAX_LISTED_PROBLEMS) problems.push({ kind, code, message, offset });
  };
  /** Counts one reference to each cluster overlapping [offset, offset + length). */
  const count = (offset: number, length: number, what: string): void => {
    if (length <= 0) return;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    for (let c = first; c <= last; c++) {
      if (c >= fileClusters) {
        problem(
          'corruption',
          'OUT_OF_BOUNDS',
          `ERROR ${what} at ${offsetHex(c * cs)} is past the end of the file`,
          c * cs,
        );
        return;
      }
      refs[c] = (refs[c] as number) + 1;
    }
  };
  const readTable = (offset: number, bytes: number): DataView => {
    const buf = new Uint8Array(bytes);
    img.file.read(buf, offset);
    return new DataView(buf.buffer);
  };

  let allocated = 0;
  let fragmented = 0;
  let compressed = 0;
  let previousHost = -1;
  /** Active L2 entries with a host cluster, for the COPIED check: [l2 offset, index, hi, lo]. */
  const copiedL2: number[] = [];
  /** Active L1 entries: [index, hi, lo]. */
  const copiedL1: number[] = [];

  const walkL1 = (l1: DataView, entries: number, active: boolean): void => {
    for (let i = 0; i < entries; i++) {
      const hi = l1.getUint32(i * ENTRY_BYTES, false);
      const lo = l1.getUint32(i * ENTRY_BYTES + 4, false);
      const l2Offset = entryOffset(hi, lo);
      if (l2Offset === 0) continue;
      if (l2Offset % cs !== 0) {
        problem(
          'corruption',
          'MISALIGNED_OFFSET',
          `ERROR L2 table offset ${offsetHex(l2Offset)} unaligned (L1 index ${i})`,
          l2Offset,
        );
        continue;
      }
      count(l2Offset, cs, 'L2 table');
      if (l2Offset + cs > fileSize) continue;
      if (active) copiedL1.push(i, hi, lo);
      // Straight from the file: the image wrote its metadata before the check, and the walk must not churn the cache.
      const l2Copy = readTable(l2Offset, cs);
      for (let j = 0; j < cs / ENTRY_BYTES; j++) {
        const ehi = l2Copy.getUint32(j * ENTRY_BYTES, false);
        const elo = l2Copy.getUint32(j * ENTRY_BYTES + 4, false);
        const kind = l2Kind(ehi, elo, h.version);
        if (kind === ClusterKind.compressed) {
          const ext = compressedExtent(ehi, elo, img.compressed);
          count(ext.sectorStart, ext.sectorBytes, 'compressed cluster');
          if (active) {
            allocated++;
            compressed++;
            if ((ehi & EntryBits.COPIED_HI) !== 0) {
              problem(
                'corruption',
                'REFCOUNT_MISMATCH',
                `ERROR compressed cluster at ${offsetHex(ext.offset)} has the COPIED flag`,
                ext.offset,
              );
            }
          }
          previousHost = -1;
        } else if (kind === ClusterKind.normal || kind === ClusterKind.zeroAllocated) {
          const host = entryOffset(ehi, elo);
          if (host % cs !== 0) {
            problem(
              'corruption',
              'MISALIGNED_OFFSET',
              `ERROR cluster offset ${offsetHex(host)} unaligned (L2 table ${offsetHex(l2Offset)}, index ${j})`,
              host,
            );
            continue;
          }
          count(host, cs, 'data cluster');
          if (active) {
            allocated++;
            if (previousHost >= 0 && host !== previousHost + cs) fragmented++;
            previousHost = host;
            copiedL2.push(l2Offset, j, ehi, elo);
          }
        }
      }
    }
  };

  // Header, active L1 and everything it maps.
  count(0, cs, 'header');
  count(img.l1Offset, img.l1Size * ENTRY_BYTES, 'L1 table');
  walkL1(img.l1, img.l1Size, true);

  // Snapshots: their table, their L1 tables and what those map.
  if (h.nbSnapshots > 0) {
    let at = h.snapshotsOffset;
    for (let s = 0; s < h.nbSnapshots; s++) {
      const fixed = readTable(at, SNAPSHOT_FIXED_BYTES);
      const l1Offset = Number(fixed.getBigUint64(SnapshotField.l1TableOffset, false));
      const l1Size = fixed.getUint32(SnapshotField.l1Size, false);
      const idLen = fixed.getUint16(SnapshotField.idStrSize, false);
      const nameLen = fixed.getUint16(SnapshotField.nameSize, false);
      const extra = fixed.getUint32(SnapshotField.extraDataSize, false);
      const entry = Math.ceil((SNAPSHOT_FIXED_BYTES + extra + idLen + nameLen) / 8) * 8;
      if (l1Offset % cs !== 0 || l1Offset + l1Size * ENTRY_BYTES > fileSize) {
        problem(
          'corruption',
          'OUT_OF_BOUNDS',
          `ERROR snapshot ${s}: L1 table at ${offsetHex(l1Offset)} is misplaced`,
          l1Offset,
        );
      } else {
        count(l1Offset, l1Size * ENTRY_BYTES, 'snapshot L1 table');
        walkL1(readTable(l1Offset, l1Size * ENTRY_BYTES), l1Size, false);
      }
      at += entry;
    }
    count(h.snapshotsOffset, at - h.snapshotsOffset, 'snapshot table');
  }

  // Refcount table and blocks.
  count(rc.tableOffset, rc.tableClusters * cs, 'refcount table');
  for (let t = 0; t < rc.tableEntries; t++) {
    const off = rc.blockOffset(t);
    if (off === 0) continue;
    count(off, cs, 'refcount block');
  }

  // Bitmaps extension: directory, bitmap tables and their data clusters.
  const bitmaps = h.extensions.find((e) => e.type === HeaderExtensionType.bitmaps);
  if (bitmaps !== undefined && bitmaps.data.length >= 24) {
    const bv = new DataView(bitmaps.data.buffer, bitmaps.data.byteOffset, bitmaps.data.byteLength);
    const nb = bv.getUint32(0, false);
    const dirSize = Number(bv.getBigUint64(8, false));
    const dirOffset = Number(bv.getBigUint64(16, false));
    if (dirOffset + dirSize <= fileSize) {
      count(dirOffset, dirSize, 'bitmap directory');
      const dir = readTable(dirOffset, dirSize);
      let at = 0;
      for (let b = 0; b < nb && at + 24 <= dirSize; b++) {
        const tOffset = Number(dir.getBigUint64(at, false));
        const tSize = dir.getUint32(at + 8, false);
        const nameSize = dir.getUint16(at + 18, false);
        const extra = dir.getUint32(at + 20, false);
        if (tOffset !== 0 && tOffset + tSize * ENTRY_BYTES <= fileSize) {
          count(tOffset, tSize * ENTRY_BYTES, 'bitmap table');
          const table = readTable(tOffset, tSize * ENTRY_BYTES);
          for (let k = 0; k < tSize; k++) {
            const off = entryOffset(table.getUint32(k * 8, false), table.getUint32(k * 8 + 4, false));
            if (off !== 0) count(off, cs, 'bitmap data');
          }
        }
        at += Math.ceil((24 + extra + nameSize) / 8) * 8;
      }
    } else {
      problem(
        'corruption',
        'OUT_OF_BOUNDS',
        `ERROR bitmap directory at ${offsetHex(dirOffset)} is past the end of the file`,
        dirOffset,
      );
    }
  }

  // Compare references with refcounts.
  const fixes: Fix[] = [];
  let highest = 0;
  const covered = rc.tableEntries * rc.entriesPerBlock;
  const limit = Math.max(fileClusters, Math.min(covered, rc.endCluster));
  for (let c = 0; c < limit; c++) {
    const expected = c < fileClusters ? (refs[c] as number) : 0;
    const actual = c < covered ? rc.get(c) : 0;
    if (expected > 0 || actual > 0) highest = c;
    if (actual === expected) continue;
    if (actual < expected) {
      problem(
        'corruption',
        'REFCOUNT_MISMATCH',
        `ERROR cluster ${c} refcount=${actual} reference=${expected}`,
        c * cs,
      );
      fixes.push({ cluster: c, value: expected, leak: false });
    } else {
      problem(
        'leak',
        'REFCOUNT_MISMATCH',
        `Leaked cluster ${c} refcount=${actual} reference=${expected}`,
        c * cs,
      );
      fixes.push({ cluster: c, value: expected, leak: true });
    }
  }

  // COPIED flags, judged against the refcounts as they will be (after any repair of refcounts).
  const fixed = new Map<number, number>();
  for (const f of fixes)
    if (repair === 'all' || (repair === 'leaks' && f.leak)) fixed.set(f.cluster, f.value);
  const refcountAfter = (c: number): number => fixed.get(c) ?? (c < covered ? rc.get(c) : 0);
  const copiedFixes: { l2: number; index: number; hi: number; lo: number }[] = [];
  const l1Fixes: { index: number; hi: number; lo: number }[] = [];
  for (let k = 0; k < copiedL2.length; k += 4) {
    const l2 = copiedL2[k] as number;
    const j = copiedL2[k + 1] as number;
    const hi = copiedL2[k + 2] as number;
    const lo = copiedL2[k + 3] as number;
    const host = entryOffset(hi, lo);
    const r = refcountAfter(host / cs);
    const flag = (hi & EntryBits.COPIED_HI) !== 0;
    if (flag !== (r === 1)) {
      problem(
        'corruption',
        'REFCOUNT_MISMATCH',
        `ERROR OFLAG_COPIED data cluster: l2_entry=${(hi * TWO_POW_32 + (lo >>> 0)).toString(16)} refcount=${r}`,
        host,
      );
      copiedFixes.push({
        l2,
        index: j,
        hi: r === 1 ? (hi | EntryBits.COPIED_HI) >>> 0 : hi & ~EntryBits.COPIED_HI,
        lo,
      });
    }
  }
  for (let k = 0; k < copiedL1.length; k += 3) {
    const index = copiedL1[k] as number;
    const hi = copiedL1[k + 1] as number;
    const lo = copiedL1[k + 2] as number;
    const off = entryOffset(hi, lo);
    const r = refcountAfter(off / cs);
    const flag = (hi & EntryBits.COPIED_HI) !== 0;
    if (flag !== (r === 1)) {
      problem(
        'corruption',
        'REFCOUNT_MISMATCH',
        `ERROR OFLAG_COPIED L2 cluster: l1_index=${index} l1_entry=${off.toString(16)} refcount=${r}`,
        off,
      );
      l1Fixes.push({ index, hi: r === 1 ? (hi | EntryBits.COPIED_HI) >>> 0 : hi & ~EntryBits.COPIED_HI, lo });
    }
  }

  let corruptionsFixed = 0;
  let leaksFixed = 0;
  if (repair !== undefined) {
    const mustKeep = (c: number): boolean => c < fileClusters && (refs[c] as number) > 0;
    img.allocator.guard = mustKeep;
    try {
      for (const f of fixes) {
        if (f.leak || repair === 'all') {
          rc.set(f.cluster, f.value);
          if (f.leak) leaksFixed++;
          else corruptionsFixed++;
        }
      }
      if (repair === 'all') {
        for (const f of copiedFixes) {
          const t = img.l2(f.l2);
          t.view.setUint32(f.index * ENTRY_BYTES, f.hi, false);
          t.view.setUint32(f.index * ENTRY_BYTES + 4, f.lo, false);
          img.markL2Dirty(t);
          corruptionsFixed++;
        }
        for (const f of l1Fixes) {
          img.setL1Entry(f.index, f.hi, f.lo);
          corruptionsFixed++;
        }
      }
      img.writeMetadata();
      rc.flush();
    } finally {
      img.allocator.guard = undefined;
    }
  }

  const leftCorruptions = corruptions - corruptionsFixed;
  const leftLeaks = leaks - leaksFixed;
  const totalClusters = Math.ceil(h.size / cs);
  const imageEndOffset = (highest + 1) * cs;
  const messages: string[] = problems.map((p) => p.message);
  if (corruptionsFixed > 0 || leaksFixed > 0) {
    messages.push(
      `The following inconsistencies were found and repaired:`,
      '',
      `    ${leaksFixed} leaked clusters`,
      `    ${corruptionsFixed} corruptions`,
      '',
    );
  }
  if (leftCorruptions === 0 && leftLeaks === 0) messages.push('No errors were found on the image.');
  if (leftCorruptions > 0) {
    messages.push(
      `${leftCorruptions} errors were found on the image.`,
      'Data may be corrupted, or further writes to the image may corrupt it.',
    );
  }
  if (leftLeaks > 0) {
    messages.push(
      `${leftLeaks} leaked clusters were found on the image.`,
      'This means waste of disk space, but no harm to data.',
    );
  }
  const pct = (n: number): string => (totalClusters === 0 ? '0.00' : ((100 * n) / totalClusters).toFixed(2));
  const pctOf = (n: number): string => (allocated === 0 ? '0.00' : ((100 * n) / allocated).toFixed(2));
  messages.push(
    `${allocated}/${totalClusters} = ${pct(allocated)}% allocated, ${pctOf(fragmented)}% fragmented, ${pctOf(compressed)}% compressed clusters`,
    `Image end offset: ${imageEndOffset}`,
  );
  return {
    corruptions: leftCorruptions,
    leaks: leftLeaks,
    corruptionsFixed,
    leaksFixed,
    checkErrors: 0,
    allocatedClusters: allocated,
    totalClusters,
    fragmentedClusters: fragmented,
    compressedClusters: compressed,
    imageEndOffset,
    problems,
    messages,
  };
}
