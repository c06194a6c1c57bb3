/**
 * `ringvm img convert [-p] [-q] [-c] [-f FMT] [-O raw|qcow2] [-o OPTIONS] SOURCE DESTINATION` — as qemu-img
 * convert: DESTINATION is created anew (replaced if it exists) with SOURCE's virtual size and contents, read
 * through SOURCE's whole backing chain.
 *
 * How it is fast:
 * - the source's map decides what is read at all: ranges that read as zeros (zero clusters, holes, unallocated
 *   everywhere in the chain) are skipped; the new destination already reads as zeros there;
 * - data is read in large chunks ({@link CHUNK_BYTES}), {@link CONCURRENCY} chunks in flight, so reading,
 *   zero detection and writing overlap on the thread pool;
 * - inside a chunk, runs of all-zero blocks ({@link ZERO_DETECT_BYTES}, or the destination's cluster size) are
 *   found with memcmp (`Buffer.equals`) and not written; the rest goes out in one write per run.
 *
 * The destination is not fdatasync'ed, not even at a qcow2 destination's metadata barriers (qemu-img convert's
 * default cache mode is `unsafe` too); run `sync` if the copy must survive a power cut.
 */
import { realpath } from 'node:fs/promises';
import { Qcow2Image, type Qcow2CreateOptions } from '../../backends/block/qcow2/index.js';
import { RawFileBackend } from '../../backends/block/raw-file.js';
import type { MapExtent } from '../../backends/block/map-extent.js';
import { CliUsageError } from '../cli-error.js';
import { parseImgArgv } from './img-argv.js';
import { createRaw, parseCreateOptions, qcow2Options } from './img-create.js';
import { ImgError } from './img-error.js';
import { formatOption, openImgImage, type OpenedImage } from './img-image.js';
import type { ImgIo } from './img-io.js';
import { ProgressBar } from './progress-bar.js';

const COMMAND = 'convert';

/** Bytes read per request: large sequential I/O; a multiple of every cluster size (2 MiB at most). */
export const CHUNK_BYTES = 4 << 20;
/** Chunks in flight at once (reads and writes overlap on libuv's thread pool of four). */
export const CONCURRENCY = 4;
/** The smallest run of zeros not written to a raw destination (qemu-img convert's default `-S 4k`). */
export const ZERO_DETECT_BYTES = 4096;

/** Where converted data goes. */
interface ConvertTarget {
  /** Zero runs shorter than this are written (a qcow2 destination allocates whole clusters anyway). */
  readonly granularity: number;
  write(offset: number, data: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

/** The ranges of `extents` that hold data (everything else reads as zeros), cut into chunks. */
function* dataChunks(extents: readonly MapExtent[]): Generator<{ start: number; length: number }> {
  for (const e of extents) {
    if (!e.data || e.zero) continue;
    // Chunks aligned to CHUNK_BYTES in the guest's address space, so cluster boundaries stay aligned.
    let pos = e.start;
    const end = e.start + e.length;
    while (pos < end) {
      const next = Math.min(end, (Math.floor(pos / CHUNK_BYTES) + 1) * CHUNK_BYTES);
      yield { start: pos, length: next - pos };
      pos = next;
    }
  }
}

/**
 * Calls `write` for every run of `data` (at guest offset `start`) that is not all zeros at `granularity`;
 * `zero` is an all-zero buffer of at least `granularity` bytes.
 */
export async function writeNonZeroRuns(
  data: Buffer,
  start: number,
  granularity: number,
  zero: Buffer,
  write: (offset: number, bytes: Buffer) => Promise<void>,
): Promise<void> {
  let runStart = -1;
  // Blocks are aligned to the granularity in guest offsets (a chunk may start mid-block).
  let pos = 0;
  while (pos < data.length) {
    const blockEnd = Math.min(data.length, granularity - ((start + pos) % granularity) + pos);
    // compare with ranges: memcmp without a view object per block (a data block differs at its first bytes).
    const isZero = zero.compare(data, pos, blockEnd, 0, blockEnd - pos) === 0;
    if (!isZero && runStart < 0) runStart = pos;
    if (isZero && runStart >= 0) {
      await write(start + runStart, data.subarray(runStart, pos));
      runStart = -1;
    }
    pos = blockEnd;
  }
  if (runStart >= 0) await write(start + runStart, data.subarray(runStart));
}

/**
 * A new qcow2 image; with `compress` every non-zero cluster is written compressed (as qemu-img convert -c; the
 * back end stores a cluster that does not shrink plainly).
 */
async function qcow2Target(
  path: string,
  size: number,
  options: Qcow2CreateOptions,
  compress: boolean,
): Promise<ConvertTarget> {
  await Qcow2Image.create(path, { ...options, size });
  // Not durable, as qemu-img convert's default cache=unsafe: a destination cut short is worthless anyway.
  const image = await Qcow2Image.open(path, { readOnly: false, durable: false });
  const cluster = image.clusterSize;
  return {
    granularity: cluster,
    write: async (offset, data) => {
      if (!compress) {
        await image.writev(offset, [data]);
        return;
      }
      // Runs start and end on cluster boundaries (the granularity); the disk's last cluster may be partial.
      for (let pos = 0; pos < data.length; pos += cluster) {
        await image.writeCompressed(offset + pos, data.subarray(pos, pos + cluster));
      }
    },
    close: () => image.close(),
  };
}

async function rawTarget(path: string, size: number): Promise<ConvertTarget> {
  await createRaw(path, size);
  const backend = await RawFileBackend.open(path, { readOnly: false });
  return {
    granularity: ZERO_DETECT_BYTES,
    write: (offset, data) => backend.writev(offset, [data]),
    close: () => backend.close(),
  };
}

/** Copies the data of `source` to `target`; `onProgress(done)` after each chunk. */
async function copy(
  source: OpenedImage,
  target: ConvertTarget,
  onProgress: (doneBytes: number) => void,
): Promise<void> {
  const extents: MapExtent[] = [];
  for await (const e of source.backend.map()) extents.push(e);
  const total = source.backend.size;
  // Zero ranges count as done from the start.
  let done = total - extents.reduce((n, e) => n + (e.data && !e.zero ? e.length : 0), 0);
  onProgress(done);
  const chunks = dataChunks(extents);
  const zero = Buffer.alloc(Math.max(target.granularity, CHUNK_BYTES));
  const worker = async (): Promise<void> => {
    const buffer = Buffer.allocUnsafe(CHUNK_BYTES);
    for (let next = chunks.next(); next.done !== true; next = chunks.next()) {
      const { start, length } = next.value;
      const data = buffer.subarray(0, length);
      await source.backend.readv(start, [data]);
      await writeNonZeroRuns(data, start, target.granularity, zero, (offset, bytes) =>
        target.write(offset, bytes),
      );
      done += length;
      onProgress(done);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
}

export async function runConvert(argv: readonly string[], io: ImgIo): Promise<number> {
  const args = parseImgArgv(argv, {
    command: COMMAND,
    shortValues: ['f', 'O', 'o'],
    shortFlags: ['p', 'q', 'c', 'U'],
    longValues: [],
    longFlags: ['force-share'],
    repeat: ['o'],
  });
  const [sourcePath, targetPath, ...extra] = args.positionals;
  if (sourcePath === undefined || targetPath === undefined) {
    throw new CliUsageError(`${COMMAND}: expecting SOURCE and DESTINATION`, args.positionals.join(' '));
  }
  if (extra.length > 0) {
    throw new CliUsageError(
      `${COMMAND}: unexpected argument '${extra.join(' ')}' (one SOURCE only)`,
      extra[0] ?? '',
    );
  }
  const targetFormat = formatOption(args.value('O'), '-O') ?? 'raw';
  const createOptions = parseCreateOptions(args.values('o'), targetFormat, COMMAND);
  for (const key of ['size', 'backing_file', 'backing_fmt']) {
    if (createOptions.has(key)) {
      throw new CliUsageError(
        `${COMMAND}: -o ${key}: not for convert (the destination gets the source's size and whole contents)`,
        key,
        { option: '-o', key },
      );
    }
  }
  const layout = targetFormat === 'qcow2' ? qcow2Options(createOptions, COMMAND) : {};
  if (args.flag('c') && targetFormat === 'raw') {
    throw new CliUsageError(`${COMMAND}: -c: compression is not supported for file format 'raw'`, '-c', {
      option: '-c',
    });
  }
  const source = await openImgImage(sourcePath, {
    format: formatOption(args.value('f'), '-f'),
    readOnly: true,
  });
  try {
    const same = await realpath(targetPath).then(
      async (t) => t === (await realpath(sourcePath)),
      () => false,
    );
    if (same) {
      throw new ImgError('NOT_POSSIBLE', `'${targetPath}' is the source image itself`, targetPath);
    }
    const target =
      targetFormat === 'qcow2'
        ? await qcow2Target(targetPath, source.backend.size, layout, args.flag('c'))
        : await rawTarget(targetPath, source.backend.size);
    const bar = new ProgressBar(
      { write: io.err, isTTY: io.errIsTTY === true, columns: io.columns },
      { enabled: args.flag('p') && !args.flag('q') },
    );
    try {
      await copy(source, target, (done) => {
        bar.update(done, source.backend.size);
      });
      bar.finish(source.backend.size);
    } finally {
      await target.close();
    }
  } finally {
    await source.backend.close();
  }
  return 0;
}
