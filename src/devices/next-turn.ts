/**
 * `nextTurn`: runs a callback on a later turn of the event loop, after the I/O callbacks already due — how a
 * device that stopped a pass at its budget picks the work up again without starving kicks and other queues.
 * `setImmediate` where the host has one (Node and its worker threads), a zero-delay timer elsewhere (browsers).
 */
export function nextTurn(fn: () => void): void {
  if (typeof setImmediate === 'function') setImmediate(fn);
  else setTimeout(fn, 0);
}
