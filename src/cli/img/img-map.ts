/**
 * `ringvm img map [-f FMT] [--output=human|json] FILE` — how the virtual disk is stored, as qemu-img map prints it:
 * JSON lists every range (`start`, `length`, `depth`, `present`, `zero`, `data`, `offset`); the human form lists
 * the ranges stored as data (offset in the file, and which file of the backing chain).
 */
import type { MapExtent } from '../../backends/block/map-extent.js';
import { parseImgArgv } from './img-argv.js';
import { ImgError } from './img-error.js';
import { formatOption, openImgImage } from './img-image.js';
import type { ImgIo } from './img-io.js';
import { onlyFile, outputOption } from './img-info.js';

const COMMAND = 'map';

/** Merges `next` into `last` when qemu-img would print them as one range. */
function mergeable(last: MapExtent, next: MapExtent): boolean {
  return (
    last.start + last.length === next.start &&
    last.depth === next.depth &&
    last.data === next.data &&
    last.zero === next.zero &&
    last.present === next.present &&
    (last.offset === undefined) === (next.offset === undefined) &&
    (last.offset === undefined || last.offset + last.length === next.offset)
  );
}

/** The extents of `source`, adjacent ones merged. */
export async function* mergedExtents(
  source: Iterable<MapExtent> | AsyncIterable<MapExtent>,
): AsyncGenerator<MapExtent> {
  let last: MapExtent | undefined;
  for await (const e of source) {
    if (e.length === 0) continue;
    if (last !== undefined && mergeable(last, e)) {
      last = { ...last, length: last.length + e.length };
      continue;
    }
    if (last !== undefined) yield last;
    last = e;
  }
  if (last !== undefined) yield last;
}

/** One JSON line, in qemu-img's field order and spacing. */
export function jsonExtent(e: MapExtent): string {
  return (
    `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, ` +
    `"zero": ${e.zero}, "data": ${e.data}${e.offset === undefined ? '' : `, "offset": ${e.offset}`}}`
  );
}

/** `0` or `0x…`, as printf's `%#x` writes a number. */
function hex(n: number): string {
  return n === 0 ? '0' : `0x${n.toString(16)}`;
}

export async function runMap(argv: readonly string[], io: ImgIo): Promise<number> {
  const args = parseImgArgv(argv, {
    command: COMMAND,
    shortValues: ['f'],
    shortFlags: ['U'],
    longValues: ['output'],
    longFlags: ['force-share'],
  });
  const file = onlyFile(args.positionals, COMMAND);
  const output = outputOption(args.value('output'), COMMAND);
  const image = await openImgImage(file, { format: formatOption(args.value('f'), '-f'), readOnly: true });
  const chain = [
    file,
    ...(image.format === 'qcow2' ? image.backend.info().backingChain.map((c) => c.path) : []),
  ];
  try {
    if (output === 'json') {
      const lines: string[] = [];
      for await (const e of mergedExtents(image.backend.map())) lines.push(jsonExtent(e));
      io.out(`[${lines.join(',\n')}]\n`);
      return 0;
    }
    let text = `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`;
    for await (const e of mergedExtents(image.backend.map())) {
      if (!e.data) continue;
      if (e.offset === undefined) {
        io.out(text); // what qemu-img prints before it stops
        throw new ImgError(
          'NOT_POSSIBLE',
          `'${file}': File contains compressed clusters (at ${e.start}): use --output=json`,
          file,
        );
      }
      text += `${hex(e.start).padEnd(16)}${hex(e.length).padEnd(16)}${hex(e.offset).padEnd(16)}${chain[e.depth] ?? file}\n`;
    }
    io.out(text);
    return 0;
  } finally {
    await image.backend.close();
  }
}
