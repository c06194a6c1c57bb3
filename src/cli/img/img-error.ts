/**
 * `ImgError`: an `ringvm img` operation failed on a well-formed command line — the image is missing, is not in
 * the format asked for, cannot be written, or the operation is not possible on it. The message names the file
 * (or the option) and says what was wrong; `value` is the offending path or value. The command prints it and
 * exits 1, as qemu-img does. (A malformed command line is a {@link CliUsageError}, also exit 1 under `img`.)
 */
export type ImgErrorCode =
  /** The file does not exist or cannot be opened. */
  | 'OPEN_FAILED'
  /** The file exists and is readable but is not an image of the expected format, or the format is refused. */
  | 'BAD_FORMAT'
  /** The operation is valid but not possible on this image (shrinking without --shrink, a size too small...). */
  | 'NOT_POSSIBLE'
  /** A read or write failed while the operation ran. */
  | 'IO_FAILED';

export class ImgError extends Error {
  readonly code: ImgErrorCode;
  readonly value: string;

  constructor(code: ImgErrorCode, message: string, value: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ImgError';
    this.code = code;
    this.value = value;
  }
}

/** The host error's short description: `does not exist`, `permission denied`, or its message. */
export function describeHostError(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return 'No such file or directory';
  if (code === 'ENOTDIR') return 'a part of the path is not a directory';
  if (code === 'EACCES' || code === 'EPERM') return 'Permission denied';
  if (code === 'EROFS') return 'Read-only file system';
  if (code === 'EISDIR') return 'Is a directory';
  return e instanceof Error ? e.message : String(e);
}
