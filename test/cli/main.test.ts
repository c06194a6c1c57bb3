import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { main } from '../../src/cli/main.js';

function run(args: string[]): { status: number; out: string; err: string } {
  let out = '';
  let err = '';
  const status = main(
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

  test('--version prints the package version', () => {
    const r = run(['--version']);
    assert.equal(r.status, 0);
    assert.equal(r.out, `ringvm ${pkg.version}\n`);
  });

  test('--help prints usage and exits 0; no arguments prints usage and exits 2', () => {
    const help = run(['--help']);
    assert.equal(help.status, 0);
    assert.match(help.out, /Usage:/);
    assert.equal(run([]).status, 2);
  });

  test('unknown commands and options name the offending word', () => {
    const r = run(['frobnicate']);
    assert.equal(r.status, 2);
    assert.match(r.err, /unknown command 'frobnicate'/);
    assert.match(run(['--bogus']).err, /unknown option '--bogus'/);
    assert.match(run(['--version', 'x']).err, /takes no arguments/);
  });

  test('the built bin runs as a process', () => {
    const bin = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
    const r = spawnSync(process.execPath, [bin, '--version'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `ringvm ${pkg.version}\n`);
  });
});
