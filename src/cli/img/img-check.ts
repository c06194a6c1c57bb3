/**
 * `ringvm img check [-q] [-f FMT] [-r leaks|all] [--output=human|json] FILE` — qemu-img check's report and exit
 * statuses: 0 no problems, 1 the check could not be completed, 2 corruptions, 3 leaked clusters only, 63 the
 * format has no checks (raw).
 */
import { CliUsageError } from '../cli-error.js';
import { parseImgArgv } from './img-argv.js';
import { formatOption, openImgImage } from './img-image.js';
import type { ImgIo } from './img-io.js';
import { onlyFile, outputOption } from './img-info.js';

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
  outputOption(args.value('output'), COMMAND);
  const repair = args.value('r');
  if (repair !== undefined && repair !== 'leaks' && repair !== 'all') {
    throw new CliUsageError(`${COMMAND}: -r: '${repair}' is not one of leaks, all`, repair, { option: '-r' });
  }
  const image = await openImgImage(file, {
    format: formatOption(args.value('f'), '-f'),
    readOnly: repair === undefined,
  });
  try {
    io.err(`ringvm img: This image format does not support checks\n`);
    return CheckStatus.NOT_SUPPORTED;
  } finally {
    await image.backend.close();
  }
}
