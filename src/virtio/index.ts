/**
 * ringvm's virtio core: the spec (VIRTIO 1.2) in pure TypeScript, with no Node imports. Runs in Node, a worker
 * or a browser.
 */
export * from './errors.js';
export * from './guest-memory.js';
export * from './guest-allocator.js';
export * from './features.js';
export * from './status.js';
export * from './ring-index.js';
export * from './split/layout.js';
export * from './split/queue-error.js';
export * from './split/descriptor-chain.js';
export * from './split/chain-io.js';
export * from './split/split-queue.js';
export * from './split/virtqueue-error.js';
export * from './split/split-virtqueue.js';
export * from './device/virtio-device.js';
export * from './device/device-errors.js';
export * from './device/device-controller.js';
export * from './driver/virtqueue.js';
export * from './driver/config-ops.js';
export * from './driver/virtio-driver.js';
export * from './driver/virtio-bus-device.js';
export * from './driver/virtio-bus.js';
