/** virtio-rng, the entropy device. */
export * from './rng-device.js';
