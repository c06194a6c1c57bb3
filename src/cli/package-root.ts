/** Where ringvm's own files are: the directory of its package.json, found by walking up from this module. */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface RingvmPackage {
  /** Absolute path of the package directory (the repository root in a checkout). */
  readonly root: string;
  readonly version: string;
}

let cached: RingvmPackage | undefined;

export function ringvmPackage(): RingvmPackage {
  if (cached !== undefined) return cached;
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
      cached = { root: fileURLToPath(dir).replace(/\/$/, ''), version: parsed.version };
      return cached;
    }
  }
  throw new Error('ringvm package.json not found');
}
