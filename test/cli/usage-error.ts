/**
 * The check every refused command line gets: a CliUsageError (code CLI_USAGE) whose message matches and which
 * names the option (and key) given — for assert.throws and assert.rejects alike.
 */
import assert from 'node:assert/strict';
import { CliUsageError } from '../../src/cli/cli-error.js';

export interface UsageWhere {
  readonly option?: string | undefined;
  readonly key?: string | undefined;
}

/** A validation function for assert.throws / assert.rejects: true, or an AssertionError saying what differs. */
export function isUsageError(e: unknown, message: RegExp, where: UsageWhere = {}): true {
  assert.ok(e instanceof CliUsageError, `expected CliUsageError, got ${String(e)}`);
  assert.equal(e.code, 'CLI_USAGE');
  assert.match(e.message, message);
  if (where.option !== undefined) assert.equal(e.option, where.option);
  if (where.key !== undefined) assert.equal(e.key, where.key);
  return true;
}

/** Asserts that `fn` throws such a usage error. */
export function throwsUsageError(fn: () => unknown, message: RegExp, where: UsageWhere = {}): void {
  assert.throws(fn, (e: unknown) => isUsageError(e, message, where));
}
