/** ringvm: the virtio core plus the transports that run in this process. */
export * from './virtio/index.js';
export * from './transport/loopback/loopback-transport.js';
export * from './backends/net/index.js';
