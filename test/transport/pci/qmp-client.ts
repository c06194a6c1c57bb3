/**
 * A tiny QMP client for tests: QEMU listens (`-qmp unix:PATH,server=on,wait=off`), the client connects (retrying
 * while the socket does not exist yet), reads the greeting, sends qmp_capabilities, then one command at a time
 * (`execute` → the `return` value, or a rejection with QEMU's `error`). Events are kept in `events`.
 */
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

interface Pending {
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
}

export class QmpClient {
  readonly events: { event: string; data?: unknown }[] = [];
  readonly #socket: Socket;
  #buffer = '';
  #greeted: (() => void) | undefined;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.#buffer += chunk;
      let nl;
      while ((nl = this.#buffer.indexOf('\n')) >= 0) {
        const line = this.#buffer.slice(0, nl).trim();
        this.#buffer = this.#buffer.slice(nl + 1);
        if (line !== '') this.#message(JSON.parse(line) as Record<string, unknown>);
      }
    });
    const fail = (): void => {
      for (const p of this.#pending.values()) p.reject(new Error('QMP connection closed'));
      this.#pending.clear();
    };
    socket.on('close', fail);
    socket.on('error', fail);
  }

  /** Connects to QEMU's QMP socket at `path` and negotiates capabilities. */
  static async connect(path: string, timeoutMs = 20_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path, () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
        const client = new QmpClient(socket);
        await new Promise<void>((resolve) => {
          client.#greeted = resolve;
        });
        await client.execute('qmp_capabilities');
        return client;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await sleep(50);
      }
    }
  }

  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#socket.write(
        `${JSON.stringify({ execute: command, id, ...(args === undefined ? {} : { arguments: args }) })}\n`,
      );
    });
  }

  close(): void {
    this.#socket.destroy();
  }

  #message(msg: Record<string, unknown>): void {
    if ('QMP' in msg) {
      this.#greeted?.();
      this.#greeted = undefined;
      return;
    }
    if ('event' in msg) {
      this.events.push({ event: String(msg.event), data: msg.data });
      return;
    }
    const id = typeof msg.id === 'number' ? msg.id : -1;
    const p = this.#pending.get(id);
    if (p === undefined) return;
    this.#pending.delete(id);
    if ('error' in msg) p.reject(new Error(`QMP error: ${JSON.stringify(msg.error)}`));
    else p.resolve(msg.return);
  }
}

/** Polls `check` until it returns true (or throws its last assertion after `timeoutMs`). */
export async function eventually(
  check: () => Promise<boolean>,
  timeoutMs = 20_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}
