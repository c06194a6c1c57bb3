/**
 * `ringvm img`: the qemu-img of ringvm — create, inspect, check, convert, resize and map raw and qcow2 images.
 * Options, output and exit statuses follow qemu-img's where they overlap (see docs/cli.md):
 *
 * ```sh
 * ringvm img create -f qcow2 -b base.raw -F raw overlay.qcow2
 * ringvm img info --output=json overlay.qcow2
 * ringvm img convert -p -O raw overlay.qcow2 flat.raw
 * ```
 *
 * Every failure prints `ringvm img: MESSAGE` naming the file or option and exits 1, as qemu-img does (a bad
 * command line adds a `Try 'ringvm img --help'.` line); `check` has its own statuses (0, 1, 2, 3, 63).
 */
import { CliUsageError } from '../cli-error.js';
import { VirtioError } from '../../virtio/errors.js';
import { runCheck } from './img-check.js';
import { runConvert } from './img-convert.js';
import { runCreate } from './img-create.js';
import { ImgError } from './img-error.js';
import { runInfo } from './img-info.js';
import type { ImgIo } from './img-io.js';
import { runMap } from './img-map.js';
import { runResize } from './img-resize.js';

export type { ImgIo } from './img-io.js';

export const IMG_USAGE = `Usage: ringvm img COMMAND [OPTIONS] ...

Creates, inspects and converts disk images (raw, qcow2), with qemu-img's options and output.

Commands:
  create [-q] -f FMT [-b BACKING [-F BACKING_FMT]] [-o OPTIONS] FILE [SIZE]
  info [-f FMT] [--output=human|json] [--backing-chain] FILE
  check [-q] [-f FMT] [-r leaks|all] [--output=human|json] FILE
  convert [-p] [-q] [-c] [-f FMT] [-O OUTPUT_FMT] [-o OPTIONS] SOURCE DESTINATION
  resize [-q] [-f FMT] [--shrink] FILE [+|-]SIZE
  map [-f FMT] [--output=human|json] FILE

  FMT        raw or qcow2 (probed from the file when -f is not given)
  SIZE       bytes, or with a K, M, G, T, P or E suffix (powers of 1024): 65536, 64K, 20G, 1.5T
  OPTIONS    key=value,... for qcow2: cluster_size=SIZE (512 to 2M, a power of two; default 64K),
             lazy_refcounts=on|off, refcount_bits=1..64 (power of two), backing_file=PATH,
             backing_fmt=raw|qcow2, compat=1.1, size=SIZE; for raw: size=SIZE
  -b -F      the backing file of a qcow2 image and its format (SIZE defaults to the backing file's)
  -c         convert: write compressed clusters (qcow2 output)
  -p         convert: a progress bar, when stderr is a terminal
  -q         quiet: no messages on success
  -r         check: repair leaked clusters (leaks) or everything repairable (all)

Exit status: 0 on success, 1 on any error. check: 0 no problems, 1 the check could not be completed,
2 corruptions found, 3 only leaked clusters found, 63 the format has no checks (raw).
See docs/cli.md.
`;

const COMMANDS: Readonly<Record<string, (argv: readonly string[], io: ImgIo) => Promise<number>>> = {
  create: runCreate,
  info: runInfo,
  check: runCheck,
  convert: runConvert,
  resize: runResize,
  map: runMap,
};

/** Runs `ringvm img ARGV`; resolves with the exit status. */
export async function runImg(argv: readonly string[], io: ImgIo): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
      io.out(IMG_USAGE);
      return command === undefined ? 1 : 0;
    }
    const run = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
    if (run === undefined) {
      throw new CliUsageError(
        command.startsWith('-') ? `unknown option '${command}'` : `unknown command '${command}'`,
        command,
      );
    }
    if (rest.includes('--help') || rest.includes('-h')) {
      io.out(IMG_USAGE);
      return 0;
    }
    return await run(rest, io);
  } catch (e) {
    if (e instanceof CliUsageError) {
      io.err(`ringvm img: ${e.message}\nTry 'ringvm img --help'.\n`);
      return 1;
    }
    if (e instanceof ImgError || e instanceof VirtioError) {
      io.err(`ringvm img: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}
