/**
 * `SwitchMacTable`: the forwarding database of a learning L2 switch — source MAC address → the port it was last
 * seen on, forgotten after `ageingMs` without traffic from it (IEEE 802.1D's ageing time, 300 s by default), and
 * capped at `maxEntries` so a guest that sprays random source addresses cannot grow it without bound (the oldest
 * entry goes first).
 */

/** 802.1D's recommended ageing time. */
export const MAC_AGEING_DEFAULT_MS = 300_000;
/** Addresses remembered at most. */
export const MAC_TABLE_DEFAULT_ENTRIES = 4096;
/** Bytes of a MAC address. */
export const MAC_BYTES = 6;

/** A 48-bit MAC address at `offset` in `frame` as a number (exact: below 2^53). */
export function macKey(frame: Uint8Array, offset: number): number {
  return (
    ((frame[offset] as number) * 0x100_0000 +
      (((frame[offset + 1] as number) << 16) |
        ((frame[offset + 2] as number) << 8) |
        (frame[offset + 3] as number))) *
      0x1_0000 +
    (((frame[offset + 4] as number) << 8) | (frame[offset + 5] as number))
  );
}

/** "52:54:00:12:34:56" of a key. */
export function formatMac(key: number): string {
  const parts: string[] = [];
  for (let i = MAC_BYTES - 1; i >= 0; i--)
    parts.push(((Math.floor(key / 2 ** (8 * i)) & 0xff) >>> 0).toString(16).padStart(2, '0'));
  return parts.join(':');
}

export interface MacEntry<P> {
  port: P;
  lastSeen: number;
}

export class SwitchMacTable<P> {
  readonly ageingMs: number;
  readonly maxEntries: number;
  /** Insertion order = least recently (re)learned first. */
  readonly #entries = new Map<number, MacEntry<P>>();

  constructor(ageingMs: number = MAC_AGEING_DEFAULT_MS, maxEntries: number = MAC_TABLE_DEFAULT_ENTRIES) {
    this.ageingMs = ageingMs;
    this.maxEntries = maxEntries;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Records that `key` was seen on `port` at `now`. */
  learn(key: number, port: P, now: number): void {
    const entry = this.#entries.get(key);
    if (entry !== undefined) {
      if (entry.port === port) {
        entry.lastSeen = now;
        return;
      }
      // Moved to another port: relearn at the young end.
      this.#entries.delete(key);
    } else if (this.#entries.size >= this.maxEntries) {
      const oldest = this.#entries.keys().next();
      if (oldest.done !== true) this.#entries.delete(oldest.value);
    }
    this.#entries.set(key, { port, lastSeen: now });
  }

  /** The port `key` lives on, or undefined when unknown or aged out. */
  lookup(key: number, now: number): P | undefined {
    const entry = this.#entries.get(key);
    if (entry === undefined) return undefined;
    if (now - entry.lastSeen > this.ageingMs) {
      this.#entries.delete(key);
      return undefined;
    }
    return entry.port;
  }

  /** Forgets every address on `port` (it left the switch). */
  forgetPort(port: P): void {
    for (const [key, entry] of this.#entries) if (entry.port === port) this.#entries.delete(key);
  }

  entries(): IterableIterator<[number, MacEntry<P>]> {
    return this.#entries.entries();
  }
}
