#!/usr/bin/env node
/**
 * The `ringvm` command. This stage knows `--version` and `--help`; `serve`, `run`, `img` and `qmp` arrive with
 * the device-side, qcow2 and monitor work.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const USAGE = `ringvm — the complete virtio stack in TypeScript

Usage:
  ringvm --version        print the version
  ringvm --help           print this help

Library:
  import { GuestMemory, SplitQueue, SplitVirtqueue, VirtioBus } from 'ringvm/virtio';
  import { LoopbackTransport } from 'ringvm';

Benchmarks:
  npm run bench           split-ring round trips and device pop+push rates (loopback transport)
`;

export class CliUsageError extends Error {
  readonly code = 'CLI_USAGE';
  constructor(
    message: string,
    readonly value: string,
  ) {
    super(message);
    this.name = 'CliUsageError';
  }
}

/** The version in ringvm's package.json, found by walking up from this module (src/ or build/src/). */
function packageVersion(): string {
  for (let dir = new URL('.', import.meta.url); dir.pathname !== '/'; dir = new URL('..', dir)) {
    let text: string;
    try {
      text = readFileSync(new URL('package.json', dir), 'utf8');
    } catch {
      continue;
    }
    const parsed: unknown = JSON.parse(text);
    if (
      typeof parsed === 'object' &&
      parsed !== null &&
      'name' in parsed &&
      parsed.name === 'ringvm' &&
      'version' in parsed &&
      typeof parsed.version === 'string'
    ) {
      return parsed.version;
    }
  }
  throw new Error('ringvm package.json not found');
}

/** Runs the command line; returns the exit status. */
export function main(argv: readonly string[], out: (s: string) => void, err: (s: string) => void): number {
  const [first, ...rest] = argv;
  try {
    if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
      out(USAGE);
      return first === undefined ? 2 : 0;
    }
    if (first === '--version' || first === '-V') {
      if (rest.length > 0)
        throw new CliUsageError(`--version takes no arguments, got '${rest.join(' ')}'`, rest.join(' '));
      out(`ringvm ${packageVersion()}\n`);
      return 0;
    }
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
  process.exitCode = main(
    process.argv.slice(2),
    (s) => process.stdout.write(s),
    (s) => process.stderr.write(s),
  );
}
