/**
 * QEMU-style `key=value,key=value` options, as `-blockdev`, `-chardev`, `-device` and qemu-storage-daemon's
 * `--export` take them.
 *
 * ```ts
 * const o = parseKeyValue('--chardev', 'socket,id=c0,path=/tmp/a,,b.sock', { impliedKey: 'backend' });
 * o.string('backend');        // 'socket'
 * o.string('path');           // '/tmp/a,b.sock'  (QEMU writes a comma inside a value as ",,")
 * o.bool('server', false);    // false when absent
 * o.finish();                 // CliUsageError for any key nobody asked for
 * ```
 *
 * Syntax (QEMU's keyval):
 * - items are separated by one comma; `,,` is a literal comma inside the item (QEMU's only escape);
 * - every item is `key=value`; only the first may be a bare word, and only when the option has an implied key
 *   (`-chardev socket,...` means `backend=socket`; `-device virtserialport,...` means `driver=virtserialport`);
 * - keys are letters, digits, `-`, `_` and `.` (`addr.path`); a key given twice is an error; values may be
 *   empty (`serial=`).
 *
 * Typed access: `string`, `optionalString`, `bool` (on/off, true/false, yes/no), `size` (bytes, with K/M/G/T/P
 * suffixes, powers of 1024, as QEMU), `integer`, `choice`. Every error is a {@link CliUsageError} whose message
 * names the option and the key, e.g. `--export id=e0: num-queues: expected an integer from 1 to 65535, got 'x'`.
 */
import { CliUsageError } from './cli-error.js';

export interface KeyValueParseOptions {
  /** The key a bare first word stands for (`backend` for `--chardev socket,...`). */
  readonly impliedKey?: string;
}

const KEY = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
const BOOLEANS: ReadonlyMap<string, boolean> = new Map([
  ['on', true],
  ['off', false],
  ['true', true],
  ['false', false],
  ['yes', true],
  ['no', false],
]);
const SIZE = /^(\d+(?:\.\d+)?)([kmgtpe]?)(?:i?b)?$/i;
const SIZE_SHIFT: Readonly<Record<string, number>> = { '': 0, k: 10, m: 20, g: 30, t: 40, p: 50, e: 60 };

/**
 * Splits a key=value list at single commas, turning each `,,` into a literal comma. Returns the items, empty
 * ones included (the caller decides whether they are errors).
 */
export function splitItems(text: string): string[] {
  const items: string[] = [];
  let current = '';
  for (let i = 0; i < text.length; i++) {
    const ch = text[i] as string;
    if (ch !== ',') {
      current += ch;
    } else if (text[i + 1] === ',') {
      current += ',';
      i++;
    } else {
      items.push(current);
      current = '';
    }
  }
  items.push(current);
  return items;
}

/** Parses one option's argument. Throws {@link CliUsageError} naming `option` for malformed text. */
export function parseKeyValue(
  option: string,
  text: string,
  options: KeyValueParseOptions = {},
): KeyValueOptions {
  const fail = (message: string, value: string, key?: string): CliUsageError =>
    new CliUsageError(
      `${option} ${text}: ${message}`,
      value,
      key === undefined ? { option } : { option, key },
    );
  if (text === '')
    throw new CliUsageError(`${option}: expected key=value,... (empty argument)`, text, { option });
  const values = new Map<string, string>();
  splitItems(text).forEach((item, index) => {
    const eq = item.indexOf('=');
    let key: string;
    let value: string;
    if (eq < 0) {
      if (item === '') throw fail('empty item (a stray comma?)', item);
      if (index === 0 && options.impliedKey !== undefined) {
        key = options.impliedKey;
        value = item;
      } else {
        throw fail(
          `expected key=value, got '${item}'${KEY.test(item) ? ` (did you mean ${item}=on?)` : ''}`,
          item,
        );
      }
    } else {
      key = item.slice(0, eq);
      value = item.slice(eq + 1);
      if (!KEY.test(key)) throw fail(`invalid key '${key}'`, key, key);
    }
    if (values.has(key)) throw fail(`key '${key}' given twice`, key, key);
    values.set(key, value);
  });
  return new KeyValueOptions(option, text, values);
}

/** The parsed items of one option, read through typed getters that record which keys were understood. */
export class KeyValueOptions {
  /** The option name, e.g. `--export`. */
  readonly option: string;
  /** The option's argument as given. */
  readonly text: string;
  readonly #values: ReadonlyMap<string, string>;
  readonly #used = new Set<string>();
  #label: string;

  constructor(option: string, text: string, values: ReadonlyMap<string, string>) {
    this.option = option;
    this.text = text;
    this.#values = values;
    this.#label = `${option} ${text}`;
  }

  /** How messages name this option: `--export id=e0` once an id is known, else the option and its text. */
  get label(): string {
    return this.#label;
  }

  /** Names the option by one identifying key (`id`, `node-name`) in later messages, if it was given. */
  identifyBy(key: string): void {
    const value = this.#values.get(key);
    if (value !== undefined && value !== '') this.#label = `${this.option} ${key}=${value}`;
  }

  /** A {@link CliUsageError} whose message starts with this option's label (and the key, if given). */
  error(message: string, key?: string, value?: string): CliUsageError {
    const where = key === undefined ? { option: this.option } : { option: this.option, key };
    return new CliUsageError(
      `${this.#label}: ${key === undefined ? '' : `${key}: `}${message}`,
      value ?? (key === undefined ? this.text : (this.#values.get(key) ?? '')),
      where,
    );
  }

  has(key: string): boolean {
    return this.#values.has(key);
  }

  /** The keys given, in no particular order. */
  keys(): string[] {
    return [...this.#values.keys()];
  }

  /** The raw value (marks the key as understood). */
  optionalString(key: string): string | undefined {
    this.#used.add(key);
    return this.#values.get(key);
  }

  /** A required value; empty is refused unless `allowEmpty`. */
  string(key: string, { allowEmpty = false }: { allowEmpty?: boolean } = {}): string {
    const value = this.optionalString(key);
    if (value === undefined) throw this.error(`missing (required)`, key, '');
    if (value === '' && !allowEmpty) throw this.error(`must not be empty`, key);
    return value;
  }

  /** on/off, true/false, yes/no; `fallback` when absent. */
  bool(key: string, fallback: boolean): boolean {
    const value = this.optionalString(key);
    if (value === undefined) return fallback;
    const parsed = BOOLEANS.get(value.toLowerCase());
    if (parsed === undefined) throw this.error(`expected on or off, got '${value}'`, key);
    return parsed;
  }

  /** A byte count: `65536`, `64K`, `64M`, `1.5G` (powers of 1024). Undefined when absent. */
  optionalSize(key: string): number | undefined {
    const value = this.optionalString(key);
    if (value === undefined) return undefined;
    const bytes = parseSize(value);
    if (bytes === undefined) {
      throw this.error(`expected a size in bytes (e.g. 65536, 64K, 64M, 1G), got '${value}'`, key);
    }
    return bytes;
  }

  /** A decimal integer in `[min, max]`. Undefined when absent. */
  optionalInteger(key: string, min: number, max: number): number | undefined {
    const value = this.optionalString(key);
    if (value === undefined) return undefined;
    const n = /^\d+$/.test(value) ? Number(value) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw this.error(`expected an integer from ${min} to ${max}, got '${value}'`, key);
    }
    return n;
  }

  /** One of `choices`; `fallback` when absent (required when no fallback). */
  choice<T extends string>(key: string, choices: readonly T[], fallback?: T): T {
    const value = this.optionalString(key);
    if (value === undefined) {
      if (fallback !== undefined) return fallback;
      throw this.error(`missing (required; one of ${choices.join(', ')})`, key, '');
    }
    const found = choices.find((c) => c === value);
    if (found === undefined) throw this.error(`'${value}' is not one of ${choices.join(', ')}`, key);
    return found;
  }

  /** Throws for the first key no getter asked for; the message lists the keys this option understands. */
  finish(): void {
    for (const key of this.#values.keys()) {
      if (!this.#used.has(key)) {
        const known = [...this.#used].sort().join(', ');
        throw new CliUsageError(`${this.#label}: unknown key '${key}' (known here: ${known})`, key, {
          option: this.option,
          key,
        });
      }
    }
  }
}

/** Parses a QEMU size (`512`, `64K`, `64M`, `1.5G`, `2GiB`); undefined if malformed or not a whole byte count. */
export function parseSize(text: string): number | undefined {
  const m = SIZE.exec(text);
  if (m === null) return undefined;
  const shift = SIZE_SHIFT[(m[2] as string).toLowerCase()] as number;
  const bytes = Number(m[1]) * 2 ** shift;
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}
