import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { formatHumanSize, parseImgSize } from '../../../src/cli/img/img-size.js';
import { render, ProgressBar } from '../../../src/cli/img/progress-bar.js';
import { CliUsageError } from '../../../src/cli/cli-error.js';

describe('ringvm img sizes', () => {
  test('plain bytes and K/M/G/T/P/E suffixes (powers of 1024), fractions with a suffix', () => {
    assert.equal(parseImgSize('65536', 'SIZE', 'create'), 65536);
    assert.equal(parseImgSize('64K', 'SIZE', 'create'), 65536);
    assert.equal(parseImgSize('64k', 'SIZE', 'create'), 65536);
    assert.equal(parseImgSize('20G', 'SIZE', 'create'), 20 * 2 ** 30);
    assert.equal(parseImgSize('1.5T', 'SIZE', 'create'), 1.5 * 2 ** 40);
    assert.equal(parseImgSize('2M', 'SIZE', 'create'), 2 << 20);
    for (const bad of ['', 'x', '1Q', '-1', '1.5', '0x10']) {
      assert.throws(
        () => parseImgSize(bad, 'SIZE', 'create'),
        (e: unknown) => e instanceof CliUsageError && e.message.includes(`invalid size '${bad}'`),
        bad,
      );
    }
  });

  test('human sizes as qemu-img prints them (three significant digits, switch at 1000)', () => {
    const cases: [number, string][] = [
      [0, '0 B'],
      [512, '512 B'],
      [1000, '0.977 KiB'],
      [4096, '4 KiB'],
      [331776, '324 KiB'],
      [10485760, '10 MiB'],
      [1610612736, '1.5 GiB'],
      [20 * 2 ** 30, '20 GiB'],
      [1073741824 * 999, '999 GiB'],
      [1073741824 * 1000, '0.977 TiB'],
    ];
    for (const [bytes, text] of cases) assert.equal(formatHumanSize(bytes), text, String(bytes));
  });
});

describe('convert -p progress bar', () => {
  test('renders a bar and a percentage that fit the terminal', () => {
    assert.equal(render(0, 100, 40), `[${'.'.repeat(29)}]    0.0%`);
    assert.equal(render(50, 100, 40), `[${'#'.repeat(14)}${'.'.repeat(15)}]   50.0%`);
    assert.equal(render(100, 100, 40), `[${'#'.repeat(29)}]  100.0%`);
    assert.ok(render(1, 3, 200).length <= 200);
    assert.equal(render(0, 0, 80).endsWith('100.0%'), true, 'an empty image is done');
  });

  test('draws only on a terminal, at most every 100 ms, and ends the line', () => {
    let clock = 0;
    let written = '';
    const tty = new ProgressBar(
      { write: (s) => (written += s), isTTY: true, columns: 40 },
      { now: () => clock },
    );
    tty.update(10, 100);
    tty.update(20, 100); // too soon
    clock = 150;
    tty.update(30, 100);
    tty.finish(100);
    const frames = written.split('\r').filter((f) => f !== '');
    assert.equal(frames.length, 3);
    assert.match(frames[0]!, /10\.0%$/);
    assert.match(frames[1]!, /30\.0%$/);
    assert.match(frames[2]!, /100\.0%\n$/);
    let piped = '';
    const pipe = new ProgressBar({ write: (s) => (piped += s), isTTY: false });
    pipe.update(1, 2, true);
    pipe.finish(2);
    assert.equal(piped, '', 'no control characters into a pipe or a log');
  });
});
