/**
 * Guest shell snippets for two guests on one segment with static addresses (no DHCP server on it): bring eth0
 * up, wait for the peer, ping it, and move a file over TCP with busybox nc so that neither guest ends before the
 * other has what it needs.
 */

/** Guest shell: `cmd` until it succeeds, once a second for a minute; then exit `status`. */
export function retry(cmd: string, status: number): string {
  return `{ i=0; until ${cmd}; do i=$((i+1)); [ $i -lt 60 ] || exit ${status}; sleep 1; done; }`;
}

/** eth0 up with `address`/24, then wait (up to a minute, exit 9) until `peer` answers, then three pings. */
export function upAndReach(address: string, peer: string): string {
  return [
    'ip link set eth0 up',
    `ip addr add ${address}/24 dev eth0`,
    retry(`ping -c 1 -W 1 ${peer} >/dev/null 2>&1`, 9),
    `ping -c 3 -W 5 ${peer}`,
  ].join(' && ');
}

/** The TCP port a file goes to, and the one on which the receiver says it has it. */
export const FILE_PORT = 5000;
export const DONE_PORT = 5001;

/**
 * Guest shell: accept one connection on `port` and write what arrives to `sink` (a shell pipeline tail such as
 * `| md5sum > FILE`), ending when the peer closes. nc's stdin is a FIFO this shell holds open on fd `fd`: with
 * stdin at /dev/null nc would half-close at once, and busybox's nc on the sending side stops sending when it sees
 * that, so the data could be cut short.
 */
function listenOnce(port: number, sink: string, fd: number): string {
  const hold = `/tmp/hold-${port}`;
  return `mkfifo ${hold} && { nc -l -p ${port} < ${hold} ${sink} & } && exec ${fd}> ${hold} && wait $! && exec ${fd}>&-`;
}

/**
 * The receiver's half (after {@link upAndReach}): takes one file on {@link FILE_PORT}, prints `md5 SUM`, then
 * tells `sender` it may end (the sender's nc returns once the file is in its socket buffer, not at the peer).
 */
export function receiveFile(sender: string): string {
  return [
    listenOnce(FILE_PORT, '| md5sum > /tmp/received.md5', 3),
    'echo "md5 $(cat /tmp/received.md5)"',
    retry(`echo done | nc ${sender} ${DONE_PORT}`, 8),
  ].join(' && ');
}

/** The sender's half: sends `file` to `receiver` (retrying until it listens), then waits for its `done`. */
export function sendFile(receiver: string, file: string): string {
  return `${retry(`nc ${receiver} ${FILE_PORT} < ${file}`, 8)} && ${listenOnce(DONE_PORT, '', 4)}`;
}
