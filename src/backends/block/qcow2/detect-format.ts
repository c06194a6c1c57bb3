/**
 * Image format detection: a file that starts with the qcow2 magic is qcow2, anything else is raw (as QEMU
 * probes, minus the formats ringvm does not serve).
 */
import { promises as fs } from 'node:fs';
import { BlockBackendError } from '../block-backend-error.js';
import type { ImageFormat } from './backing-chain.js';
import { QCOW2_MAGIC } from './layout.js';

export async function detectFormatOfFile(path: string): Promise<ImageFormat> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(path, 'r');
  } catch (e) {
    const code = (e as { code?: unknown } | null)?.code;
    if (code === 'ENOENT' || code === 'ENOTDIR')
      throw new BlockBackendError('NOT_FOUND', path, 'no such file', { cause: e });
    throw new BlockBackendError(
      'OPEN_FAILED',
      path,
      `cannot be opened: ${e instanceof Error ? e.message : String(e)}`,
      {
        cause: e,
      },
    );
  }
  try {
    const magic = new Uint8Array(4);
    const { bytesRead } = await handle.read(magic, 0, 4, 0);
    if (bytesRead === 4 && new DataView(magic.buffer).getUint32(0, false) === QCOW2_MAGIC) return 'qcow2';
    return 'raw';
  } finally {
    await handle.close();
  }
}
