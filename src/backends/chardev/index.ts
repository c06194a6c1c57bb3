/** Host chardevs for console ports: unix sockets, stdio, files. */
export * from './chardev-base.js';
export * from './chardev-error.js';
export * from './unix-socket-chardev.js';
export * from './stdio-chardev.js';
export * from './file-chardev.js';
