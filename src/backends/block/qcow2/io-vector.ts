/**
 * `IoVector`: a sequential cursor over the buffers of one request (views into guest memory). The image walks a
 * request cluster by cluster, in order, and takes the next `n` bytes as views (zero copy) to hand to
 * preadv/pwritev, or copies them in or out of a cluster buffer when a cluster is only partly covered.
 */
export class IoVector {
  readonly total: number;
  readonly #bufs: readonly Uint8Array[];
  #index = 0;
  #skip = 0;

  constructor(bufs: readonly Uint8Array[]) {
    this.#bufs = bufs;
    let n = 0;
    for (const b of bufs) n += b.length;
    this.total = n;
  }

  /** The next `n` bytes as views (consumed). */
  take(n: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    let left = n;
    const bufs = this.#bufs;
    while (left > 0 && this.#index < bufs.length) {
      const b = bufs[this.#index] as Uint8Array;
      const room = b.length - this.#skip;
      if (room === 0) {
        this.#index++;
        this.#skip = 0;
        continue;
      }
      const k = Math.min(room, left);
      out.push(b.subarray(this.#skip, this.#skip + k));
      left -= k;
      this.#skip += k;
      if (this.#skip === b.length) {
        this.#index++;
        this.#skip = 0;
      }
    }
    return out;
  }

  /** Copies the next `n` bytes into `dst` at `at` (consumed). */
  copyOut(n: number, dst: Uint8Array, at: number): void {
    let p = at;
    for (const v of this.take(n)) {
      dst.set(v, p);
      p += v.length;
    }
  }

  /** Fills the next `src.length` bytes from `src` (consumed). */
  copyIn(src: Uint8Array): void {
    let p = 0;
    for (const v of this.take(src.length)) {
      v.set(src.subarray(p, p + v.length));
      p += v.length;
    }
  }

  /** Zeros the next `n` bytes (consumed). */
  zero(n: number): void {
    for (const v of this.take(n)) v.fill(0);
  }
}

export function fillViews(views: readonly Uint8Array[], value: number): void {
  for (const v of views) v.fill(value);
}
