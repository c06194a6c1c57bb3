/**
 * The command line of a subcommand, split into options and positional words: `--name value` and `--name=value`
 * for options that take a value, `--name` for flags, `--` ends the options. Which options exist is the caller's
 * {@link ArgvSpec}; anything else starting with `-` is an error naming it.
 */
import { CliUsageError } from './cli-error.js';

export interface ArgvSpec {
  /** Options that take a value (`--blockdev`), repeatable; the caller decides if repeating is an error. */
  readonly values: readonly string[];
  /** Options without a value (`--help`, `--verbose`). */
  readonly flags: readonly string[];
  /**
   * `none`: positional words are errors. `rest`: the first positional word (or everything after `--`) starts
   * the positional list, and everything from there on is positional (a command and its arguments).
   */
  readonly positionals: 'none' | 'rest';
  /** For messages: `ringvm serve`. */
  readonly command: string;
}

export interface ArgvOption {
  readonly name: string;
  readonly value: string;
}

export interface ParsedArgv {
  /** Value options in command-line order. */
  readonly options: readonly ArgvOption[];
  readonly flags: ReadonlySet<string>;
  readonly positionals: readonly string[];
}

export function parseArgv(argv: readonly string[], spec: ArgvSpec): ParsedArgv {
  const options: ArgvOption[] = [];
  const flags = new Set<string>();
  let i = 0;
  for (; i < argv.length; i++) {
    const word = argv[i] as string;
    if (word === '--') {
      i++;
      break;
    }
    if (!word.startsWith('-') || word === '-') {
      if (spec.positionals === 'none') {
        throw new CliUsageError(`${spec.command}: unexpected argument '${word}'`, word);
      }
      break;
    }
    const eq = word.indexOf('=');
    const name = eq < 0 ? word : word.slice(0, eq);
    if (spec.values.includes(name)) {
      let value: string;
      if (eq >= 0) {
        value = word.slice(eq + 1);
      } else {
        const next = argv[i + 1];
        if (next === undefined) {
          throw new CliUsageError(`${spec.command}: ${name} needs a value`, name, { option: name });
        }
        value = next;
        i++;
      }
      options.push({ name, value });
    } else if (spec.flags.includes(name)) {
      if (eq >= 0) throw new CliUsageError(`${spec.command}: ${name} takes no value`, word, { option: name });
      flags.add(name);
    } else {
      throw new CliUsageError(`${spec.command}: unknown option '${name}'`, name, { option: name });
    }
  }
  const positionals = argv.slice(i);
  if (spec.positionals === 'none' && positionals.length > 0) {
    throw new CliUsageError(
      `${spec.command}: unexpected argument '${positionals.join(' ')}'`,
      positionals.join(' '),
    );
  }
  return { options, flags, positionals };
}
