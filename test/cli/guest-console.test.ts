import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestConsoleFilter } from '../../src/cli/guest-console.js';

function run(
  chunks: string[],
  options: { holdBoot?: boolean; verbose?: boolean; crlf?: boolean } = {},
): { out: string; f: GuestConsoleFilter } {
  let out = '';
  const f = new GuestConsoleFilter({
    out: (s) => (out += s),
    holdBoot: options.holdBoot ?? true,
    verbose: options.verbose ?? false,
    crlf: options.crlf ?? false,
  });
  for (const c of chunks) f.push(c);
  f.end();
  return { out, f };
}

const SESSION = 'boot 1\nboot 2\nRINGVM-START\nhello\nworld\nRINGVM-EXIT 7\nreboot: System halted\n';

describe('guest console filter', () => {
  test('command output only; status from the marker; boot kept aside', () => {
    const { out, f } = run([SESSION]);
    assert.equal(out, 'hello\nworld\n');
    assert.equal(f.status, 7);
    assert.equal(f.started, true);
    assert.equal(f.bootLog, 'boot 1\nboot 2\n');
  });

  test('the same whatever the chunking (split at every byte)', () => {
    for (let i = 0; i <= SESSION.length; i++) {
      const { out, f } = run([SESSION.slice(0, i), SESSION.slice(i)]);
      assert.equal(out, 'hello\nworld\n', `split at ${i}`);
      assert.equal(f.status, 7);
    }
    const { out } = run(SESSION.split('')); // ASCII: one chunk per byte
    assert.equal(out, 'hello\nworld\n');
  });

  test('output without a final newline, then the marker on the same line', () => {
    const { out, f } = run(['RINGVM-START\r\n', 'no newline', 'RINGVM-EXIT 0\r\n']);
    assert.equal(out, 'no newline');
    assert.equal(f.status, 0);
  });

  test('partial lines pass through at once (a prompt), except what may become a marker', () => {
    let out = '';
    const f = new GuestConsoleFilter({
      out: (s) => (out += s),
      holdBoot: false,
      verbose: false,
      crlf: false,
    });
    f.push('RINGVM-START\n/ # ');
    assert.equal(out, '/ # ');
    f.push('echo RING');
    assert.equal(out, '/ # echo ');
    f.push('VM rocks\n');
    assert.equal(out, '/ # echo RINGVM rocks\n');
    f.push('RINGVM-EXIT 1');
    assert.equal(out, '/ # echo RINGVM rocks\n');
    f.push('3\n');
    assert.equal(f.status, 13);
  });

  test('interactive: boot shown, \\n becomes \\r\\n for a raw terminal', () => {
    const { out, f } = run(['boot\nRINGVM-START\n', 'a\nb\r\n', 'RINGVM-EXIT 0\n'], {
      holdBoot: false,
      crlf: true,
    });
    assert.equal(out, 'boot\r\na\r\nb\r\n');
    assert.equal(f.status, 0);
  });

  test('verbose: everything, markers included', () => {
    const { out } = run([SESSION], { verbose: true, holdBoot: false });
    assert.equal(out, SESSION);
  });

  test('a guest that never starts: no status, everything in the boot log', () => {
    const { out, f } = run(['Kernel panic - not syncing\n', 'partial']);
    assert.equal(out, '');
    assert.equal(f.status, undefined);
    assert.equal(f.bootLog, 'Kernel panic - not syncing\npartial');
  });
});
