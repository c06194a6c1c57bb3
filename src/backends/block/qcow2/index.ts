/** The qcow2 image format: see qcow2-image.ts, and docs/qcow2.md for the design. */
export { Qcow2Image, DEFAULT_CACHE_BYTES } from './qcow2-image.js';
export type { Qcow2Info, Qcow2ChainElement, MapExtent, Qcow2OpenOptions } from './qcow2-image.js';
export type { Qcow2CreateOptions } from './create.js';
export type { Qcow2CheckResult, Qcow2Problem } from './check.js';
export { Qcow2Error } from './qcow2-error.js';
export type { Qcow2ErrorCode } from './qcow2-error.js';
export type { ImageFormat } from './backing-chain.js';
export { detectImageFormat, openImage } from './open-image.js';
export type { OpenImageOptions } from './open-image.js';
