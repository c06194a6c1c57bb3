import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { parseKeyValue, parseSize, splitItems } from '../../src/cli/options.js';
import { parseArgv } from '../../src/cli/argv.js';
import { throwsUsageError } from './usage-error.js';

describe('key=value options', () => {
  test('splitItems: single commas separate, ",," is a literal comma', () => {
    assert.deepEqual(splitItems('a=1,b=2'), ['a=1', 'b=2']);
    assert.deepEqual(splitItems('filename=/x,,y,node-name=d0'), ['filename=/x,y', 'node-name=d0']);
    assert.deepEqual(splitItems('a=,,,,'), ['a=,,']);
    assert.deepEqual(splitItems('a=1,,,b=2'), ['a=1,', 'b=2']);
    assert.deepEqual(splitItems('a=1,'), ['a=1', '']);
  });

  test('parses key=value items and escaped commas', () => {
    const o = parseKeyValue('--blockdev', 'driver=file,node-name=d0,filename=/x,,y');
    assert.equal(o.string('driver'), 'file');
    assert.equal(o.string('node-name'), 'd0');
    assert.equal(o.string('filename'), '/x,y');
    o.finish();
  });

  test('a bare first word is the implied key', () => {
    const o = parseKeyValue('--chardev', 'socket,id=c0,path=/tmp/p.sock', { impliedKey: 'backend' });
    assert.equal(o.string('backend'), 'socket');
    assert.equal(o.string('path'), '/tmp/p.sock');
    assert.equal(o.string('id'), 'c0');
    o.finish();
  });

  test('bare words elsewhere, or without an implied key, are errors naming the option', () => {
    throwsUsageError(
      () => parseKeyValue('--export', 'vhost-user-blk,id=e0'),
      /--export vhost-user-blk,id=e0: expected key=value, got 'vhost-user-blk'/,
      {
        option: '--export',
      },
    );
    throwsUsageError(
      () => parseKeyValue('--chardev', 'socket,id=c0,server', { impliedKey: 'backend' }),
      /expected key=value, got 'server' \(did you mean server=on\?\)/,
    );
  });

  test('malformed items: empty argument, stray comma, bad key, duplicate key', () => {
    throwsUsageError(() => parseKeyValue('--blockdev', ''), /--blockdev: expected key=value/);
    throwsUsageError(() => parseKeyValue('--blockdev', 'driver=file,'), /empty item/);
    assert.equal(parseKeyValue('--blockdev', 'driver=file,,').string('driver'), 'file,');
    throwsUsageError(() => parseKeyValue('--blockdev', ',driver=file'), /empty item/);
    throwsUsageError(() => parseKeyValue('--blockdev', '=x'), /invalid key ''/);
    throwsUsageError(() => parseKeyValue('--blockdev', 'a b=x'), /invalid key 'a b'/);
    throwsUsageError(
      () => parseKeyValue('--blockdev', 'driver=file,driver=memory'),
      /key 'driver' given twice/,
      {
        option: '--blockdev',
        key: 'driver',
      },
    );
  });

  test('empty values are values', () => {
    const o = parseKeyValue('--export', 'serial=');
    assert.equal(o.optionalString('serial'), '');
    throwsUsageError(() => parseKeyValue('--export', 'id=').string('id'), /id: must not be empty/);
  });

  test('booleans: on/off, true/false, yes/no; fallback when absent', () => {
    const o = parseKeyValue('--x', 'a=on,b=off,c=true,d=false,e=yes,f=no,g=ON');
    assert.deepEqual(
      ['a', 'b', 'c', 'd', 'e', 'f', 'g'].map((k) => o.bool(k, false)),
      [true, false, true, false, true, false, true],
    );
    assert.equal(o.bool('missing', true), true);
    throwsUsageError(
      () => parseKeyValue('--export', 'id=e0,writable=1').bool('writable', false),
      /writable: expected on or off, got '1'/,
      {
        key: 'writable',
      },
    );
  });

  test('sizes: bytes and K/M/G/T suffixes (powers of 1024)', () => {
    assert.equal(parseSize('512'), 512);
    assert.equal(parseSize('64K'), 64 << 10);
    assert.equal(parseSize('64M'), 64 << 20);
    assert.equal(parseSize('64m'), 64 << 20);
    assert.equal(parseSize('1G'), 2 ** 30);
    assert.equal(parseSize('2GiB'), 2 * 2 ** 30);
    assert.equal(parseSize('1.5G'), 1.5 * 2 ** 30);
    assert.equal(parseSize('1T'), 2 ** 40);
    assert.equal(parseSize('0.3'), undefined);
    assert.equal(parseSize('M'), undefined);
    assert.equal(parseSize('-1'), undefined);
    assert.equal(parseSize('1X'), undefined);
    throwsUsageError(
      () => parseKeyValue('--blockdev', 'size=lots').optionalSize('size'),
      /size: expected a size in bytes/,
    );
  });

  test('integers are range-checked', () => {
    const o = parseKeyValue('--export', 'id=e0,num-queues=4');
    o.identifyBy('id');
    assert.equal(o.optionalInteger('num-queues', 1, 16), 4);
    assert.equal(o.optionalInteger('absent', 1, 16), undefined);
    throwsUsageError(
      () => parseKeyValue('--export', 'num-queues=0').optionalInteger('num-queues', 1, 65535),
      /num-queues: expected an integer from 1 to 65535, got '0'/,
    );
    throwsUsageError(
      () => parseKeyValue('--export', 'num-queues=2x').optionalInteger('num-queues', 1, 9),
      /got '2x'/,
    );
  });

  test('choice: one of a list, with a fallback', () => {
    const o = parseKeyValue('--export', 'type=vhost-user-blk');
    assert.equal(o.choice('type', ['vhost-user-blk', 'vhost-user-rng']), 'vhost-user-blk');
    assert.equal(o.choice('addr.type', ['unix'], 'unix'), 'unix');
    throwsUsageError(
      () => parseKeyValue('--export', 'type=nbd').choice('type', ['vhost-user-blk']),
      /type: 'nbd' is not one of vhost-user-blk/,
    );
    throwsUsageError(
      () => parseKeyValue('--export', 'id=e0').choice('type', ['vhost-user-blk']),
      /type: missing/,
    );
  });

  test('messages name the option by its id once identified', () => {
    const o = parseKeyValue('--export', 'type=vhost-user-blk,id=e0,bogus=1');
    o.identifyBy('id');
    o.string('type');
    o.string('id');
    throwsUsageError(
      () => {
        o.finish();
      },
      /^--export id=e0: unknown key 'bogus' \(known here: id, type\)$/,
      {
        option: '--export',
        key: 'bogus',
      },
    );
  });
});

describe('subcommand argv', () => {
  const spec = {
    command: 'ringvm test',
    values: ['--blockdev', '--mem'],
    flags: ['--help', '--rw'],
    positionals: 'rest' as const,
  };

  test('--name value, --name=value, flags, and the rest after the first word or --', () => {
    const r = parseArgv(['--blockdev', 'a=1', '--mem=1G', '--rw', 'echo', '--rw'], spec);
    assert.deepEqual(r.options, [
      { name: '--blockdev', value: 'a=1' },
      { name: '--mem', value: '1G' },
    ]);
    assert.deepEqual([...r.flags], ['--rw']);
    assert.deepEqual(r.positionals, ['echo', '--rw']);
    assert.deepEqual(parseArgv(['--', '--help'], spec).positionals, ['--help']);
  });

  test('errors name the option', () => {
    throwsUsageError(() => parseArgv(['--blockdev'], spec), /ringvm test: --blockdev needs a value/);
    throwsUsageError(() => parseArgv(['--nope'], spec), /ringvm test: unknown option '--nope'/);
    throwsUsageError(() => parseArgv(['--rw=1'], spec), /--rw takes no value/);
    throwsUsageError(() => parseArgv(['x'], { ...spec, positionals: 'none' }), /unexpected argument 'x'/);
  });
});
