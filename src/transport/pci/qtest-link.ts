/**
 * # qtest link
 *
 * A client for QEMU's qtest protocol (QEMU tests/qtest, `-qtest unix:PATH`): ringvm listens on a unix socket,
 * starts `qemu-system-x86_64 -machine pc -qtest unix:PATH ...`, and QEMU connects to it. Every port and memory
 * access of the machine is a line sent by this process, so ringvm is the guest's only driver.
 * - **Firmware**: this QEMU build has no qtest accelerator (`-accel qtest` is refused), so a TCG vCPU exists and
 *   would run SeaBIOS, which reprograms PCI config space (BARs, conf1 address) and drives virtio-blk to boot
 *   from it, racing with ringvm during the first ~100 ms. The link therefore boots a 64 KiB firmware of HLT
 *   opcodes: the vCPU halts at the reset vector with interrupts off and never touches the machine.
 *
 * - **Protocol**: one command per line (`outl 0xcf8 0x80001000`, `readl 0xe0000000`, `b64read ADDR SIZE`...);
 *   each gets exactly one response line, in order, starting with `OK`, `FAIL` or `ERR`. Commands are pipelined:
 *   they are written at once and their responses matched first-in first-out, so a sequence enqueued in one
 *   tick (e.g. the 0xCF8 write and the 0xCFC read of a config access) reaches QEMU back to back. Lines starting
 *   with `IRQ` are asynchronous (after `irq_intercept_in`) and go to {@link QtestLink.onIrq}.
 * - **Guest RAM**: {@link QtestLink.start} creates a file in /dev/shm, maps it here (src/sys mapShared) and gives
 *   it to QEMU as `-object memory-backend-file,...,share=on -machine memory-backend=mem`, so guest RAM is the same
 *   pages in both processes: {@link QtestLink.memory} is a {@link GuestMemory} with one region at guest address 0,
 *   where the PC machine's RAM starts. The size is limited to {@link QTEST_MAX_MEM_SIZE} (512 MiB): far below the
 *   PC's 3.5 GiB PCI hole, so RAM is one contiguous guest-physical range from 0 and never split around 4 GiB.
 *   The range 640 KiB–1 MiB is shadowed by ROM/VGA windows for accesses through the guest's address space, so
 *   {@link QtestLink.allocator} hands out memory from {@link QTEST_ALLOC_BASE} (1 MiB) upward only.
 * - **Shutdown**: {@link QtestLink.close} runs the close hooks (transports stop their pollers), closes the
 *   socket, sends SIGTERM to QEMU's process group, SIGKILL after a grace period, then unmaps and removes the
 *   memory file. QEMU runs in its own process group and carries a tag (`-name ringvm-qtest-<pid>-<n>`) on its
 *   command line; a process `exit` handler SIGKILLs every QEMU still running, so none outlives a failed test.
 *
 * ```ts
 * const link = await QtestLink.start({
 *   devices: ['virtio-blk-pci,drive=d0,disable-legacy=on'],
 *   args: ['-drive', 'if=none,id=d0,file=disk.img,format=raw'],
 *   memSize: 64 << 20,
 * });
 * await link.outl(0xcf8, 0x80001000);
 * const id = await link.inl(0xcfc); // 0x10421af4
 * await link.close();
 * ```
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mapShared, type MappedMemory } from '../../sys/mmap.js';
import { GuestAllocator } from '../../virtio/guest-allocator.js';
import { GuestMemory } from '../../virtio/guest-memory.js';

/** Largest guest RAM {@link QtestLink.start} accepts (see the module comment: one contiguous range from 0). */
export const QTEST_MAX_MEM_SIZE = 512 << 20;
/** Lowest guest address {@link QtestLink.allocator} hands out: above the legacy 640 KiB–1 MiB windows. */
export const QTEST_ALLOC_BASE = 1 << 20;
/** The halting firmware: 64 KiB (the PC machine wants a multiple of 64 KiB) of x86 HLT opcodes. */
const HALT_FIRMWARE_SIZE = 64 << 10;
const X86_HLT = 0xf4;
/** Default limit for one command's response. */
export const QTEST_DEFAULT_COMMAND_TIMEOUT_MS = 10_000;
/** Default limit for QEMU to start and connect. */
export const QTEST_DEFAULT_START_TIMEOUT_MS = 20_000;
/** Grace period between SIGTERM and SIGKILL on close. */
export const QTEST_KILL_GRACE_MS = 2_000;

export type QtestErrorCode =
  /** QEMU answered FAIL or ERR. */
  | 'COMMAND_FAILED'
  /** A response did not parse as the command's result. */
  | 'BAD_RESPONSE'
  /** No response within the command timeout (the link is closed afterwards: responses can no longer be matched). */
  | 'TIMEOUT'
  /** The link is closed or QEMU exited. */
  | 'CLOSED'
  /** QEMU could not be started or did not connect. */
  | 'START_FAILED'
  /** A bad argument (address, size, value). */
  | 'INVALID_ARGUMENT';

/** A qtest failure, with the command that was sent and the response (or QEMU's last stderr lines). */
export class QtestError extends Error {
  readonly code: QtestErrorCode;
  readonly command: string | undefined;
  readonly response: string | undefined;

  constructor(
    code: QtestErrorCode,
    message: string,
    command?: string,
    response?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'QtestError';
    this.code = code;
    this.command = command;
    this.response = response;
  }
}

export interface QtestStartOptions {
  /** `-device` values, one per device (e.g. `virtio-blk-pci,drive=d0,disable-legacy=on`). */
  readonly devices: readonly string[];
  /** Bytes of guest RAM, a multiple of 1 MiB up to {@link QTEST_MAX_MEM_SIZE}. */
  readonly memSize: number;
  /** More QEMU arguments (e.g. `-drive ...`, `-chardev ...`). */
  readonly args?: readonly string[];
  /** The QEMU binary (default `qemu-system-x86_64`). */
  readonly qemu?: string;
  /**
   * A command QEMU is started under, e.g. `['ip', 'netns', 'exec', 'ns0']` to run it in a network namespace (the
   * wrapper must exec QEMU, so QEMU keeps the spawned process's pid and process group).
   */
  readonly wrapper?: readonly string[];
  /** Machine type (default `pc`: its RAM starts at 0 and ports 0xCF8/0xCFC reach PCI config space). */
  readonly machine?: string;
  readonly startTimeoutMs?: number;
  readonly commandTimeoutMs?: number;
}

interface Pending {
  readonly command: string;
  readonly resolve: (rest: string) => void;
  readonly reject: (error: QtestError) => void;
  readonly sentAt: number;
}

/** Every link not yet closed, for the exit handler. */
const live = new Set<QtestLink>();
let exitHandlerInstalled = false;
let nextLinkNumber = 0;

function installExitHandler(): void {
  if (exitHandlerInstalled) return;
  exitHandlerInstalled = true;
  process.on('exit', () => {
    for (const link of live) link._killNow();
  });
}

function hexArg(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}

function checkAddress(addr: number, what = 'address'): void {
  if (!Number.isSafeInteger(addr) || addr < 0) {
    throw new QtestError('INVALID_ARGUMENT', `${what} ${addr} is not a non-negative safe integer`);
  }
}

function checkValue(value: number, bits: 8 | 16 | 32): void {
  if (!Number.isInteger(value) || value < 0 || value > 2 ** bits - 1) {
    throw new QtestError('INVALID_ARGUMENT', `value ${value} does not fit in ${bits} bits`);
  }
}

export class QtestLink {
  /** Guest RAM, one region at guest address 0 (shared with QEMU). */
  readonly memory: GuestMemory;
  /** Allocates driver memory (rings, buffers, MSI-X slots) from {@link QTEST_ALLOC_BASE} upward. */
  readonly allocator: GuestAllocator;
  readonly memSize: number;
  /** The /dev/shm file backing guest RAM (removed on close). */
  readonly memPath: string;
  /** On QEMU's command line (`-name`), to find it if it is ever left behind. */
  readonly tag: string;
  readonly commandTimeoutMs: number;

  readonly #child: ChildProcess;
  readonly #socket: Socket;
  readonly #mapping: MappedMemory;
  readonly #dir: string;
  readonly #pending: Pending[] = [];
  readonly #closeHooks: (() => void)[] = [];
  #buffer = '';
  #closed: QtestError | undefined;
  #irqHandler: ((line: string) => void) | undefined;
  #stderr: string;
  #exited: Promise<void>;
  #timer: NodeJS.Timeout | undefined;

  private constructor(init: {
    child: ChildProcess;
    socket: Socket;
    mapping: MappedMemory;
    memPath: string;
    dir: string;
    tag: string;
    memSize: number;
    stderr: () => string;
    exited: Promise<void>;
    commandTimeoutMs: number;
  }) {
    this.#child = init.child;
    this.#socket = init.socket;
    this.#mapping = init.mapping;
    this.memPath = init.memPath;
    this.#dir = init.dir;
    this.tag = init.tag;
    this.memSize = init.memSize;
    this.commandTimeoutMs = init.commandTimeoutMs;
    this.#stderr = '';
    const stderr = init.stderr;
    this.#exited = init.exited;
    this.memory = new GuestMemory([{ guestAddr: 0, bytes: init.mapping.bytes }]);
    this.allocator = new GuestAllocator(this.memory, { base: QTEST_ALLOC_BASE });
    this.#socket.setEncoding('latin1');
    this.#socket.on('data', (chunk: string) => {
      this.#onData(chunk);
    });
    this.#socket.on('error', () => undefined); // reported through 'close'
    this.#socket.on('close', () => {
      this.#stderr = stderr();
      this.#fail(
        new QtestError(
          'CLOSED',
          `QEMU closed the qtest connection${this.#stderrTail()}`,
          undefined,
          undefined,
        ),
      );
    });
    void this.#exited.then(() => {
      this.#stderr = stderr();
      this.#fail(new QtestError('CLOSED', `QEMU exited${this.#stderrTail()}`));
    });
  }

  /**
   * Starts QEMU with `devices` and `memSize` bytes of shared guest RAM and waits for its qtest connection.
   * Rejects with a START_FAILED {@link QtestError} carrying QEMU's stderr when it exits or does not connect.
   */
  static async start(options: QtestStartOptions): Promise<QtestLink> {
    const memSize = options.memSize;
    if (!Number.isSafeInteger(memSize) || memSize <= 0 || memSize % (1 << 20) !== 0) {
      throw new QtestError('INVALID_ARGUMENT', `memSize ${memSize} is not a positive multiple of 1 MiB`);
    }
    if (memSize > QTEST_MAX_MEM_SIZE || memSize <= QTEST_ALLOC_BASE) {
      throw new QtestError(
        'INVALID_ARGUMENT',
        `memSize ${memSize} must be above 1 MiB and at most ${QTEST_MAX_MEM_SIZE} (one contiguous RAM range from 0)`,
      );
    }
    installExitHandler();
    const n = nextLinkNumber++;
    const tag = `ringvm-qtest-${process.pid}-${n}`;
    const dir = mkdtempSync(join(tmpdir(), 'ringvm-qtest-'));
    const socketPath = join(dir, 'qtest.sock');
    const memPath = `/dev/shm/${tag}-${Date.now()}`;
    let mapping: MappedMemory | undefined;
    let server: Server | undefined;
    let child: ChildProcess | undefined;
    try {
      const fd = openSync(memPath, 'w+', 0o600);
      try {
        ftruncateSync(fd, memSize);
        mapping = mapShared(fd, memSize, 0);
      } finally {
        closeSync(fd);
      }
      const listening = createServer();
      server = listening;
      await new Promise<void>((resolve, reject) => {
        listening.once('error', reject);
        listening.listen(socketPath, () => {
          listening.off('error', reject);
          resolve();
        });
      });
      // This QEMU has no qtest accelerator: a TCG vCPU runs, and would run SeaBIOS, which enumerates and
      // programs PCI (BARs, virtio-blk boot) behind our back. A firmware of HLT instructions stops it at the
      // reset vector (interrupts are off after reset), so ringvm stays the machine's only driver.
      const firmware = join(dir, 'halt.bin');
      writeFileSync(firmware, new Uint8Array(HALT_FIRMWARE_SIZE).fill(X86_HLT));
      const mb = memSize >> 20;
      const args = [
        '-bios',
        firmware,
        '-name',
        tag,
        '-machine',
        `${options.machine ?? 'pc'},memory-backend=ringvm-mem`,
        '-qtest',
        `unix:${socketPath}`,
        '-display',
        'none',
        '-nodefaults',
        '-m',
        `${mb}M`,
        '-object',
        `memory-backend-file,id=ringvm-mem,size=${mb}M,mem-path=${memPath},share=on`,
        ...options.devices.flatMap((d) => ['-device', d]),
        ...(options.args ?? []),
      ];
      const [command, ...commandArgs] = [
        ...(options.wrapper ?? []),
        options.qemu ?? 'qemu-system-x86_64',
        ...args,
      ];
      const spawned = spawn(command as string, commandArgs, {
        detached: true,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      child = spawned;
      let stderr = '';
      spawned.stderr.setEncoding('utf8').on('data', (d: string) => {
        stderr = (stderr + d).slice(-8192);
      });
      const exited = new Promise<void>((resolve) => {
        spawned.once('exit', () => {
          resolve();
        });
        spawned.once('error', () => {
          resolve();
        });
      });
      const timeoutMs = options.startTimeoutMs ?? QTEST_DEFAULT_START_TIMEOUT_MS;
      const socket = await new Promise<Socket>((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(
            new QtestError('START_FAILED', `QEMU did not connect within ${timeoutMs} ms: ${stderr.trim()}`),
          );
        }, timeoutMs);
        listening.once('connection', (s) => {
          clearTimeout(timer);
          resolve(s);
        });
        spawned.once('error', (e) => {
          clearTimeout(timer);
          reject(
            new QtestError('START_FAILED', `cannot run QEMU: ${e.message}`, undefined, undefined, {
              cause: e,
            }),
          );
        });
        void exited.then(() => {
          clearTimeout(timer);
          // Let the last stderr chunk arrive before reporting it.
          setTimeout(() => {
            reject(
              new QtestError(
                'START_FAILED',
                `QEMU exited (${spawned.exitCode ?? spawned.signalCode}) before connecting: ${stderr.trim()}`,
                args.join(' '),
              ),
            );
          }, 50);
        });
      });
      listening.close();
      const link = new QtestLink({
        child: spawned,
        socket,
        mapping,
        memPath,
        dir,
        tag,
        memSize,
        stderr: () => stderr,
        exited,
        commandTimeoutMs: options.commandTimeoutMs ?? QTEST_DEFAULT_COMMAND_TIMEOUT_MS,
      });
      live.add(link);
      // QEMU connects the qtest socket before it creates the devices, and answers only from its main loop:
      // the first answer says the machine exists (a bad -device makes it exit instead).
      try {
        await link.readb(0);
      } catch (e) {
        await link.close();
        await new Promise((r) => setTimeout(r, 20)); // the last stderr chunk
        throw new QtestError(
          'START_FAILED',
          `QEMU did not start the machine (${spawned.exitCode ?? spawned.signalCode}): ${stderr.trim()}`,
          args.join(' '),
          undefined,
          { cause: e },
        );
      }
      return link;
    } catch (e) {
      server?.close();
      if (child !== undefined) killGroup(child);
      if (mapping?.isMapped === true) mapping.unmap();
      rmSync(memPath, { force: true });
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
  }

  /** QEMU's pid (its process group id as well). */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  get isClosed(): boolean {
    return this.#closed !== undefined;
  }

  /** Receives every asynchronous `IRQ ...` line (e.g. `IRQ raise 11` after `irq_intercept_in ioapic`). */
  onIrq(handler: ((line: string) => void) | undefined): void {
    this.#irqHandler = handler;
  }

  /** Runs `hook` at the start of {@link close} (before guest RAM is unmapped): stop timers that touch it. */
  addCloseHook(hook: () => void): void {
    this.#closeHooks.push(hook);
  }

  /**
   * Sends one command line; resolves to the text after `OK` (trimmed), rejects with a {@link QtestError} on
   * FAIL/ERR, timeout or close.
   */
  command(line: string): Promise<string> {
    if (this.#closed !== undefined) {
      return Promise.reject(
        new QtestError('CLOSED', `${this.#closed.message} (command: ${line})`, line, this.#closed.response),
      );
    }
    if (line.includes('\n')) {
      return Promise.reject(new QtestError('INVALID_ARGUMENT', 'a qtest command is one line', line));
    }
    return new Promise<string>((resolve, reject) => {
      this.#pending.push({ command: line, resolve, reject, sentAt: Date.now() });
      this.#socket.write(`${line}\n`, 'latin1');
      this.#armTimer();
    });
  }

  // ---- port I/O ----

  async inb(port: number): Promise<number> {
    return this.#number(`inb ${hexArg(checkPort(port))}`);
  }
  async inw(port: number): Promise<number> {
    return this.#number(`inw ${hexArg(checkPort(port))}`);
  }
  async inl(port: number): Promise<number> {
    return this.#number(`inl ${hexArg(checkPort(port))}`);
  }
  async outb(port: number, value: number): Promise<void> {
    checkValue(value, 8);
    await this.#ok(`outb ${hexArg(checkPort(port))} ${hexArg(value)}`);
  }
  async outw(port: number, value: number): Promise<void> {
    checkValue(value, 16);
    await this.#ok(`outw ${hexArg(checkPort(port))} ${hexArg(value)}`);
  }
  async outl(port: number, value: number): Promise<void> {
    checkValue(value, 32);
    await this.#ok(`outl ${hexArg(checkPort(port))} ${hexArg(value)}`);
  }

  // ---- memory (RAM and MMIO, through the machine's address space) ----

  async readb(addr: number): Promise<number> {
    checkAddress(addr);
    return this.#number(`readb ${hexArg(addr)}`);
  }
  async readw(addr: number): Promise<number> {
    checkAddress(addr);
    return this.#number(`readw ${hexArg(addr)}`);
  }
  async readl(addr: number): Promise<number> {
    checkAddress(addr);
    return this.#number(`readl ${hexArg(addr)}`);
  }
  async readq(addr: number): Promise<bigint> {
    checkAddress(addr);
    const command = `readq ${hexArg(addr)}`;
    const rest = await this.command(command);
    return parseBig(rest, command);
  }
  async writeb(addr: number, value: number): Promise<void> {
    checkAddress(addr);
    checkValue(value, 8);
    await this.#ok(`writeb ${hexArg(addr)} ${hexArg(value)}`);
  }
  async writew(addr: number, value: number): Promise<void> {
    checkAddress(addr);
    checkValue(value, 16);
    await this.#ok(`writew ${hexArg(addr)} ${hexArg(value)}`);
  }
  async writel(addr: number, value: number): Promise<void> {
    checkAddress(addr);
    checkValue(value, 32);
    await this.#ok(`writel ${hexArg(addr)} ${hexArg(value)}`);
  }
  async writeq(addr: number, value: bigint): Promise<void> {
    checkAddress(addr);
    if (value < 0n || value > 0xffff_ffff_ffff_ffffn) {
      throw new QtestError('INVALID_ARGUMENT', `value ${value} does not fit in 64 bits`);
    }
    await this.#ok(`writeq ${hexArg(addr)} ${hexArg(value)}`);
  }

  /** `length` bytes at `addr` through QEMU (`b64read`): for MMIO, or to check what QEMU sees of RAM. */
  async memread(addr: number, length: number): Promise<Uint8Array> {
    checkAddress(addr);
    checkAddress(length, 'length');
    if (length === 0) return new Uint8Array(0);
    const command = `b64read ${hexArg(addr)} ${hexArg(length)}`;
    const rest = await this.command(command);
    const bytes = Buffer.from(rest, 'base64');
    if (bytes.length !== length) {
      throw new QtestError('BAD_RESPONSE', `${command}: ${bytes.length} bytes returned`, command, rest);
    }
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
  }

  /** Writes `data` at `addr` through QEMU (`b64write`). */
  async memwrite(addr: number, data: Uint8Array): Promise<void> {
    checkAddress(addr);
    if (data.length === 0) return;
    const b64 = Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('base64');
    await this.#ok(`b64write ${hexArg(addr)} ${hexArg(data.length)} ${b64}`);
  }

  /**
   * Stops QEMU and releases everything: close hooks, socket, SIGTERM (SIGKILL after {@link QTEST_KILL_GRACE_MS}),
   * then guest RAM is unmapped and its file removed. Views of {@link memory} must not be touched afterwards.
   */
  async close(): Promise<void> {
    if (!live.has(this)) return;
    live.delete(this);
    for (const hook of this.#closeHooks.splice(0)) {
      try {
        hook();
      } catch {
        // a hook's failure must not keep QEMU alive
      }
    }
    this.#fail(new QtestError('CLOSED', 'the qtest link was closed'));
    this.#socket.destroy();
    const child = this.#child;
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      signalGroup(child, 'SIGTERM');
      const killed = await Promise.race([
        this.#exited.then(() => false),
        new Promise<boolean>((resolve) =>
          setTimeout(() => {
            resolve(true);
          }, QTEST_KILL_GRACE_MS),
        ),
      ]);
      if (killed) {
        killGroup(child);
        await this.#exited;
      }
    }
    this.#release();
  }

  /** @internal Synchronous last resort (process exit): SIGKILL QEMU, remove the files. */
  _killNow(): void {
    killGroup(this.#child);
    try {
      unlinkSync(this.memPath);
    } catch {
      // already gone
    }
    rmSync(this.#dir, { recursive: true, force: true });
  }

  #release(): void {
    if (this.#mapping.isMapped) this.#mapping.unmap();
    rmSync(this.memPath, { force: true });
    rmSync(this.#dir, { recursive: true, force: true });
  }

  async #ok(command: string): Promise<void> {
    await this.command(command);
  }

  async #number(command: string): Promise<number> {
    const rest = await this.command(command);
    const value = parseBig(rest, command);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new QtestError('BAD_RESPONSE', `${command}: ${rest} is too large`, command, rest);
    }
    return Number(value);
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, nl).trimEnd();
      this.#buffer = this.#buffer.slice(nl + 1);
      this.#onLine(line);
    }
  }

  #onLine(line: string): void {
    if (line.startsWith('IRQ')) {
      this.#irqHandler?.(line);
      return;
    }
    const pending = this.#pending.shift();
    if (pending === undefined) return; // nothing asked: ignore (QEMU prints nothing unsolicited but IRQ)
    if (this.#pending.length === 0) this.#disarmTimer();
    if (line === 'OK' || line.startsWith('OK ')) {
      pending.resolve(line.slice(2).trim());
    } else {
      pending.reject(
        new QtestError('COMMAND_FAILED', `qtest: ${pending.command} → ${line}`, pending.command, line),
      );
    }
  }

  #armTimer(): void {
    if (this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#checkTimeout();
    }, this.commandTimeoutMs);
    this.#timer.unref();
  }

  #disarmTimer(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #checkTimeout(): void {
    const oldest = this.#pending[0];
    if (oldest === undefined) return;
    const age = Date.now() - oldest.sentAt;
    if (age < this.commandTimeoutMs) {
      this.#armTimer();
      return;
    }
    // A lost response makes every later match wrong: fail everything and stop QEMU.
    this.#fail(
      new QtestError(
        'TIMEOUT',
        `qtest: no response to ${oldest.command} within ${this.commandTimeoutMs} ms`,
        oldest.command,
      ),
    );
    void this.close();
  }

  #fail(error: QtestError): void {
    this.#closed ??= error;
    this.#disarmTimer();
    for (const p of this.#pending.splice(0)) {
      p.reject(
        new QtestError(error.code, `${error.message} (command: ${p.command})`, p.command, error.response),
      );
    }
  }

  #stderrTail(): string {
    const text = this.#stderr.trim();
    return text === '' ? '' : `: ${text.slice(-2000)}`;
  }
}

function checkPort(port: number): number {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) {
    throw new QtestError('INVALID_ARGUMENT', `port ${port} is not 0..0xffff`);
  }
  return port;
}

function parseBig(rest: string, command: string): bigint {
  if (!/^0x[0-9a-fA-F]+$/.test(rest)) {
    throw new QtestError('BAD_RESPONSE', `${command}: expected a hex number, got "${rest}"`, command, rest);
  }
  return BigInt(rest);
}

function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

function killGroup(child: ChildProcess): void {
  signalGroup(child, 'SIGKILL');
}
