/**
 * The command line of an `ringvm img` subcommand, read the way qemu-img reads its own (GNU getopt_long):
 *
 * - short options: `-f qcow2`, `-fqcow2`, clusters of flags `-cp`, the last one of a cluster may take a value
 *   (`-cpOqcow2`);
 * - long options: `--output=json`, `--output json`, flags `--backing-chain`;
 * - options and positional words may be mixed (`info disk.qcow2 --output=json`); `--` ends the options;
 * - a value option given twice keeps the last value, except the ones declared `repeat` (`-o`), which collect.
 *
 * ```ts
 * const a = parseImgArgv(['-f', 'qcow2', 'disk.qcow2', '--output=json'], INFO_SPEC);
 * a.value('f');          // 'qcow2'
 * a.value('output');     // 'json'
 * a.positionals;         // ['disk.qcow2']
 * ```
 *
 * Every mistake is a {@link CliUsageError} naming the option.
 */
import { CliUsageError } from '../cli-error.js';

export interface ImgArgvSpec {
  /** For messages: `ringvm img create`. */
  readonly command: string;
  /** Single-letter options that take a value (`f`, `O`, `o`...). */
  readonly shortValues: readonly string[];
  /** Single-letter flags (`c`, `p`, `q`). */
  readonly shortFlags: readonly string[];
  /** Long options that take a value (`output`). */
  readonly longValues: readonly string[];
  /** Long flags (`backing-chain`, `help`). */
  readonly longFlags: readonly string[];
  /** Value options whose repetitions collect instead of replacing (`o`). */
  readonly repeat?: readonly string[];
}

export class ImgArgs {
  readonly positionals: readonly string[];
  readonly #values: ReadonlyMap<string, readonly string[]>;
  readonly #flags: ReadonlySet<string>;

  constructor(
    values: ReadonlyMap<string, readonly string[]>,
    flags: ReadonlySet<string>,
    positionals: string[],
  ) {
    this.#values = values;
    this.#flags = flags;
    this.positionals = positionals;
  }

  /** The last value of an option, or undefined. */
  value(name: string): string | undefined {
    const all = this.#values.get(name);
    return all === undefined ? undefined : all[all.length - 1];
  }

  /** Every value of a repeatable option, in command-line order. */
  values(name: string): readonly string[] {
    return this.#values.get(name) ?? [];
  }

  flag(name: string): boolean {
    return this.#flags.has(name);
  }
}

/** How an option is written in messages: `-f`, `--output`. */
export function optionName(name: string): string {
  return name.length === 1 ? `-${name}` : `--${name}`;
}

export function parseImgArgv(argv: readonly string[], spec: ImgArgvSpec): ImgArgs {
  const values = new Map<string, string[]>();
  const flags = new Set<string>();
  const positionals: string[] = [];
  const setValue = (name: string, value: string): void => {
    const repeat = spec.repeat?.includes(name) === true;
    const list = values.get(name);
    if (list !== undefined && repeat) list.push(value);
    else values.set(name, [value]);
  };
  const usage = (message: string, value: string, option?: string): CliUsageError =>
    new CliUsageError(`${spec.command}: ${message}`, value, option === undefined ? {} : { option });

  for (let i = 0; i < argv.length; i++) {
    const word = argv[i] as string;
    if (word === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (word.startsWith('--')) {
      const eq = word.indexOf('=');
      const name = eq < 0 ? word.slice(2) : word.slice(2, eq);
      if (spec.longValues.includes(name)) {
        if (eq >= 0) {
          setValue(name, word.slice(eq + 1));
        } else {
          const next = argv[i + 1];
          if (next === undefined) throw usage(`option '--${name}' needs a value`, word, word);
          setValue(name, next);
          i++;
        }
      } else if (spec.longFlags.includes(name)) {
        if (eq >= 0) throw usage(`option '--${name}' takes no value`, word, `--${name}`);
        flags.add(name);
      } else {
        throw usage(`unknown option '--${name}'`, word, `--${name}`);
      }
      continue;
    }
    if (word.startsWith('-') && word !== '-') {
      for (let j = 1; j < word.length; j++) {
        const letter = word[j] as string;
        if (spec.shortFlags.includes(letter)) {
          flags.add(letter);
        } else if (spec.shortValues.includes(letter)) {
          let value = word.slice(j + 1);
          if (value === '') {
            const next = argv[i + 1];
            if (next === undefined) throw usage(`option '-${letter}' needs a value`, word, `-${letter}`);
            value = next;
            i++;
          }
          setValue(letter, value);
          break;
        } else {
          throw usage(`unknown option '-${letter}'`, word, `-${letter}`);
        }
      }
      continue;
    }
    positionals.push(word);
  }
  return new ImgArgs(values, flags, positionals);
}
