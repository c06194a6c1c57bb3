/**
 * `ringvm img check [-q] [-f FMT] [-r leaks|all] [--output=human|json] FILE` — qemu-img check's report and exit
 * statuses: 0 no problems, 1 the check could not be completed, 2 corruptions, 3 leaked clusters only, 63 the
 * format has no checks (raw).
 */
import { CliUsageError } from '../cli-error.js';
import { parseImgArgv } from './img-argv.js';
import { formatOption, openImgImage } from './img-image.js';
import type { ImgIo } from './img-io.js';
import { jsonText, onlyFile, outputOption } from './img-info.js';
import type { Qcow2CheckResult } from '../../backends/block/qcow2/index.js';

const COMMAND = 'check';

/** qemu-img check's exit statuses. */
export const CheckStatus = {
  CLEAN: 0,
  NOT_COMPLETED: 1,
  CORRUPT: 2,
  LEAKS: 3,
  NOT_SUPPORTED: 63,
} as const;

export async function runCheck(argv: readonly string[], io: ImgIo): Promise<number> {
  const args = parseImgArgv(argv, {
    command: COMMAND,
    shortValues: ['f', 'r'],
    shortFlags: ['q', 'U'],
    longValues: ['output'],
    longFlags: ['force-share'],
  });
  const file = onlyFile(args.positionals, COMMAND);
  const repair = args.value('r');
  if (repair !== undefined && repair !== 'leaks' && repair !== 'all') {
    throw new CliUsageError(`${COMMAND}: -r: '${repair}' is not one of leaks, all`, repair, { option: '-r' });
  }
  const output = outputOption(args.value('output'), COMMAND);
  const quiet = args.flag('q');
  const image = await openImgImage(file, {
    format: formatOption(args.value('f'), '-f'),
    readOnly: repair === undefined,
  });
  try {
    if (image.format === 'raw') {
      io.err(`ringvm img: This image format does not support checks\n`);
      return CheckStatus.NOT_SUPPORTED;
    }
    const result = await image.backend.check(repair === undefined ? {} : { repair });
    if (output === 'json') io.out(jsonText(checkJson(file, result)));
    else if (!quiet) io.out(humanCheck(result, io));
    if (result.checkErrors > 0) return CheckStatus.NOT_COMPLETED;
    if (result.corruptions > 0) return CheckStatus.CORRUPT;
    if (result.leaks > 0) return CheckStatus.LEAKS;
    return CheckStatus.CLEAN;
  } finally {
    await image.backend.close();
  }
}

/** qemu-img check --output=json: counts that are 0 are left out, as qemu-img does. */
export function checkJson(file: string, r: Qcow2CheckResult): Record<string, string | number> {
  const json: Record<string, string | number> = {
    filename: file,
    format: 'qcow2',
    'check-errors': r.checkErrors,
  };
  const optional: [string, number][] = [
    ['corruptions', r.corruptions],
    ['leaks', r.leaks],
    ['corruptions-fixed', r.corruptionsFixed],
    ['leaks-fixed', r.leaksFixed],
    ['image-end-offset', r.imageEndOffset],
    ['total-clusters', r.totalClusters],
    ['allocated-clusters', r.allocatedClusters],
    ['fragmented-clusters', r.fragmentedClusters],
    ['compressed-clusters', r.compressedClusters],
  ];
  for (const [key, value] of optional) if (value !== 0) json[key] = value;
  return json;
}

/**
 * qemu-img check's report, in the back end's words: each problem on stderr, then the summary (repairs, counts,
 * allocation, image end offset) on stdout.
 */
function humanCheck(r: Qcow2CheckResult, io: ImgIo): string {
  const listed = r.problems.length;
  for (const line of r.messages.slice(0, listed)) io.err(`${line}\n`);
  return r.messages
    .slice(listed)
    .map((line) => `${line}\n`)
    .join('');
}
