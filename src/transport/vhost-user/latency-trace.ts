import type { SysHostIo } from './sys-host-io.js';

/**
 * `RINGVM_LATENCY_TRACE=1`: the worker times its side of every kick (process.hrtime) and logs percentiles when the
 * front end disconnects: `gap` (call eventfd written → next kick callback: the guest's time plus the wake-up),
 * `read` (callback → kick eventfd read), `kick` (the device's pass over the ring, I/O and any call write made inside
 * it included), `toSignal` (kick callback → call write started), `write` (the call eventfd write), `total`
 * (callback → call written). Off by default: it costs a few hrtime calls per request.
 */
export class LatencyTrace {
  static readonly enabled = process.env.RINGVM_LATENCY_TRACE === '1';
  readonly #samples = {
    gap: [] as number[],
    read: [] as number[],
    kick: [] as number[],
    toSignal: [] as number[],
    write: [] as number[],
    total: [] as number[],
  };
  #kicks = 0;
  #calls = 0;
  #wake = 0;
  #lastCall = 0;

  static now(): number {
    return Number(process.hrtime.bigint());
  }

  wake(): void {
    this.#wake = LatencyTrace.now();
    this.#kicks++;
    if (this.#lastCall !== 0) this.#samples.gap.push(this.#wake - this.#lastCall);
  }

  read(): void {
    this.#samples.read.push(LatencyTrace.now() - this.#wake);
  }

  kicked(start: number): void {
    this.#samples.kick.push(LatencyTrace.now() - start);
  }

  /** Wraps the call-eventfd write of `hostIo`. */
  wrap(hostIo: SysHostIo): void {
    const signal = hostIo.signalCall.bind(hostIo);
    hostIo.signalCall = (ring, fd) => {
      const start = LatencyTrace.now();
      this.#calls++;
      if (this.#wake !== 0) this.#samples.toSignal.push(start - this.#wake);
      signal(ring, fd);
      const end = LatencyTrace.now();
      this.#samples.write.push(end - start);
      if (this.#wake !== 0) this.#samples.total.push(end - this.#wake);
      this.#lastCall = end;
      this.#wake = 0;
    };
  }

  /** The report lines; the samples are cleared. */
  report(): string[] {
    const lines = [`latency trace: ${this.#kicks} kicks, ${this.#calls} calls (µs)`];
    for (const [name, samples] of Object.entries(this.#samples)) {
      const v = samples.sort((a, b) => a - b);
      const at = (p: number) =>
        ((v[Math.min(v.length - 1, Math.floor(p * v.length))] ?? 0) / 1000).toFixed(1);
      const mean = v.length === 0 ? 0 : v.reduce((a, b) => a + b, 0) / v.length / 1000;
      lines.push(
        `  ${name.padEnd(8)} n=${v.length} mean=${mean.toFixed(1)} p50=${at(0.5)} p90=${at(0.9)} p99=${at(0.99)}`,
      );
      samples.length = 0;
    }
    this.#kicks = 0;
    this.#calls = 0;
    this.#lastCall = 0;
    return lines;
  }
}
