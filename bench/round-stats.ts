/**
 * What every benchmark prints about its rounds: the median and range of the per-round ratios between two
 * contenders, so a reader sees how much one run's best-round figure can be trusted.
 */

export function median(values: readonly number[]): number {
  const v = [...values].sort((x, y) => x - y);
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

/** "median [min–max]" of per-round ratios, two decimals. */
export function ratioSpread(perRound: readonly number[]): string {
  return `${median(perRound).toFixed(2)} [${Math.min(...perRound).toFixed(2)}–${Math.max(...perRound).toFixed(2)}]`;
}
