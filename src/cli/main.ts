#!/usr/bin/env node
/**
 * The `ringvm` command: `serve` (devices on vhost-user sockets), `run` (a UML or QEMU guest with ringvm's devices),
 * `img` (create, inspect, convert disk images: the qemu-img of ringvm), `--version`, `--help`. See docs/cli.md.
 */
import { realpathSync } from 'node:fs';
import { isatty } from 'node:tty';
import { pathToFileURL } from 'node:url';
import { CliUsageError } from './cli-error.js';
import { ringvmPackage } from './package-root.js';

export { CliUsageError } from './cli-error.js';

const USAGE = `ringvm — the complete virtio stack in TypeScript

Usage:
  ringvm run [OPTIONS] [--] [COMMAND...]   boot a guest (UML, or QEMU: --engine qemu) with ringvm devices;
                                           run COMMAND or a shell
  ringvm serve OPTIONS                     serve devices on vhost-user sockets until Ctrl-C / SIGTERM
  ringvm img COMMAND ...                   create, inspect, check, convert, resize, map raw and qcow2
                                           images (qemu-img's options)
  ringvm COMMAND --help                    the options of a command
  ringvm --version                         print the version
  ringvm --help                            print this help

Devices (qemu-storage-daemon syntax, for both commands):
  --blockdev driver=file,node-name=d0,filename=disk.img
  --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=/tmp/blk.sock,writable=on

Library:
  import { GuestMemory, SplitQueue, SplitVirtqueue, VirtioBus } from 'ringvm/virtio';
  import { LoopbackTransport } from 'ringvm';

Benchmarks:
  npm run bench           split-ring round trips and device pop+push rates (loopback transport)
`;

/** What main needs to know of its terminal (for `ringvm img convert -p`). */
export interface MainTerminal {
  /** stderr is a terminal. */
  readonly errIsTTY?: boolean;
  /** stderr's width. */
  readonly columns?: number;
}

/** Runs the command line; resolves with the exit status. */
export async function main(
  argv: readonly string[],
  out: (s: string) => void,
  err: (s: string) => void,
  terminal: MainTerminal = {},
): Promise<number> {
  const [first, ...rest] = argv;
  try {
    if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
      out(USAGE);
      return first === undefined ? 2 : 0;
    }
    if (first === '--version' || first === '-V') {
      if (rest.length > 0)
        throw new CliUsageError(`--version takes no arguments, got '${rest.join(' ')}'`, rest.join(' '));
      out(`ringvm ${ringvmPackage().version}\n`);
      return 0;
    }
    // Each command's modules load only when it runs: `ringvm serve` starts listening sooner without img's and
    // run's module graphs (img's alone pulls in koffi on the main thread; docs/benchmarks.md).
    if (first === 'serve') return await (await import('./serve.js')).runServe(rest, { out, err });
    if (first === 'run') return await (await import('./run.js')).runRun(rest, { out, err });
    if (first === 'img') return await (await import('./img/img.js')).runImg(rest, { out, err, ...terminal });
    throw new CliUsageError(
      first.startsWith('-') ? `unknown option '${first}'` : `unknown command '${first}'`,
      first,
    );
  } catch (e) {
    if (e instanceof CliUsageError) {
      err(`ringvm: ${e.message}\nTry 'ringvm --help'.\n`);
      return 2;
    }
    throw e;
  }
}

// Run when executed directly, including through the npm bin symlink.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  main(
    process.argv.slice(2),
    (s) => process.stdout.write(s),
    (s) => process.stderr.write(s),
    {
      errIsTTY: isatty(2),
      ...(isatty(2) && { columns: process.stderr.columns }),
    },
  ).then(
    (status) => {
      process.exitCode = status;
      // serve and run have stopped everything they started; should a stray handle keep the event loop alive,
      // do not hang on it.
      setTimeout(() => process.exit(), 2000).unref();
    },
    (e: unknown) => {
      process.stderr.write(`ringvm: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
