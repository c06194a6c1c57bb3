/**
 * `CliUsageError`: the command line is wrong — an unknown option, a bad value, a reference to something not
 * defined, an image that cannot be opened. The message names the option (and the key, for key=value options)
 * and says what was wrong; the command prints it and exits with status 2, before anything listens.
 */
export class CliUsageError extends Error {
  readonly code = 'CLI_USAGE';
  /** The offending text (a word of the command line, or a value). */
  readonly value: string;
  /** The option concerned (`--export`, `--blockdev`...), when there is one. */
  readonly option: string | undefined;
  /** The key concerned in a key=value option, when there is one. */
  readonly key: string | undefined;

  constructor(message: string, value: string, where: { option?: string; key?: string } = {}) {
    super(message);
    this.name = 'CliUsageError';
    this.value = value;
    this.option = where.option;
    this.key = where.key;
  }
}
