import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { main } from '../../src/cli/main.js';

async function run(args: string[]): Promise<{ status: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const status = await main(
    args,
    (s) => (out += s),
    (s) => (err += s),
  );
  return { status, out, err };
}

describe('ringvm command', () => {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };

  test('--version prints the package version', async () => {
    const r = await run(['--version']);
    assert.equal(r.status, 0);
    assert.equal(r.out, `ringvm ${pkg.version}\n`);
  });

  test('--help prints usage and exits 0; no arguments prints usage and exits 2', async () => {
    const help = await run(['--help']);
    assert.equal(help.status, 0);
    assert.match(help.out, /Usage:/);
    assert.match(help.out, /ringvm serve/);
    assert.match(help.out, /ringvm run/);
    assert.equal((await run([])).status, 2);
  });

  test('serve --help and run --help print their own usage', async () => {
    const serve = await run(['serve', '--help']);
    assert.equal(serve.status, 0);
    assert.match(serve.out, /^Usage: ringvm serve/);
    assert.match(serve.out, /--blockdev driver=file/);
    const runHelp = await run(['run', '--help']);
    assert.equal(runHelp.status, 0);
    assert.match(runHelp.out, /^Usage: ringvm run/);
  });

  test('unknown commands and options name the offending word', async () => {
    const r = await run(['frobnicate']);
    assert.equal(r.status, 2);
    assert.match(r.err, /unknown command 'frobnicate'/);
    assert.match((await run(['--bogus'])).err, /unknown option '--bogus'/);
    assert.match((await run(['--version', 'x'])).err, /takes no arguments/);
    const serve = await run(['serve', '--bogus']);
    assert.equal(serve.status, 2);
    assert.match(serve.err, /ringvm serve: unknown option '--bogus'/);
    assert.match(serve.err, /Try 'ringvm serve --help'/);
  });

  test('the built bin runs as a process', () => {
    const bin = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
    const r = spawnSync(process.execPath, [bin, '--version'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `ringvm ${pkg.version}\n`);
  });
});
