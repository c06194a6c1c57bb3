import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parseImgArgv, type ImgArgvSpec } from '../../../src/cli/img/img-argv.js';
import { CliUsageError } from '../../../src/cli/cli-error.js';

const SPEC: ImgArgvSpec = {
  command: 'convert',
  shortValues: ['f', 'O', 'o'],
  shortFlags: ['c', 'p', 'q'],
  longValues: ['output'],
  longFlags: ['backing-chain'],
  repeat: ['o'],
};

describe('ringvm img argv (getopt_long style)', () => {
  test('short values attached or separate, flag clusters, long options both ways, mixed positionals', () => {
    const a = parseImgArgv(
      ['-cp', '-fraw', 'src', '-O', 'qcow2', '--output=json', 'dst', '--backing-chain'],
      SPEC,
    );
    assert.deepEqual(a.positionals, ['src', 'dst']);
    assert.equal(a.value('f'), 'raw');
    assert.equal(a.value('O'), 'qcow2');
    assert.equal(a.value('output'), 'json');
    assert.ok(a.flag('c') && a.flag('p') && a.flag('backing-chain') && !a.flag('q'));
    const b = parseImgArgv(['-cpOraw', '--output', 'human', 'x'], SPEC);
    assert.equal(b.value('O'), 'raw');
    assert.equal(b.value('output'), 'human');
  });

  test('-o collects; other values keep the last; -- ends options', () => {
    const a = parseImgArgv(
      ['-o', 'a=1', '-f', 'raw', '-ob=2', '-f', 'qcow2', '--', '-weird', '--output=x'],
      SPEC,
    );
    assert.deepEqual(a.values('o'), ['a=1', 'b=2']);
    assert.equal(a.value('f'), 'qcow2');
    assert.deepEqual(a.positionals, ['-weird', '--output=x']);
  });

  test('unknown options, missing values and values on flags are usage errors naming the option', () => {
    for (const [argv, pattern] of [
      [['-x'], /unknown option '-x'/],
      [['-cz'], /unknown option '-z'/],
      [['--nope'], /unknown option '--nope'/],
      [['-f'], /option '-f' needs a value/],
      [['--output'], /option '--output' needs a value/],
      [['--backing-chain=yes'], /option '--backing-chain' takes no value/],
    ] as const) {
      assert.throws(
        () => parseImgArgv(argv, SPEC),
        (e: unknown) =>
          e instanceof CliUsageError && pattern.test(e.message) && e.message.startsWith('convert: '),
      );
    }
  });

  test('property: any words without a leading dash are positionals, in order', () => {
    fc.assert(
      fc.property(fc.array(fc.stringMatching(/^[a-z0-9./][a-z0-9./-]*$/)), (words) => {
        assert.deepEqual(parseImgArgv(words, SPEC).positionals, words);
      }),
    );
  });
});
