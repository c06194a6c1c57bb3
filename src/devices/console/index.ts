/** virtio-console (with MULTIPORT) and the chardev interface its ports use. */
export * from './chardev.js';
export * from './console-layout.js';
export * from './console-errors.js';
export * from './console-port.js';
export * from './console-device.js';
