/**
 * `npm run bench`: every benchmark harness, results printed as a table. Figures are rates on this machine;
 * targets come from the issues and are printed beside them. This is not a test: it never fails on a slow run.
 */
import { runBlkUmlBench } from './blk-uml.js';
import { printSwitchBench, runSwitchBench } from './net-switch.js';
import { runQcow2Bench } from './qcow2.js';
import { runNetUmlBench } from './net-uml.js';
import { RING_SCENARIOS, runRingBench } from './rings.js';
import { runVhostBlkBench } from './vhost-blk.js';

const ROUND_TRIP_TARGET = 2e6;
const POP_PUSH_TARGET = 5e6;

function mega(n: number): string {
  return `${(n / 1e6).toFixed(2)} M/s`;
}

async function switchBench(quick: boolean): Promise<void> {
  const frames = quick ? 200_000 : 2_000_000;
  const rounds = quick ? 1 : 3;
  printSwitchBench(await runSwitchBench({ frames, rounds }), frames, rounds);
}

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  if (process.argv.includes('--vhost-only')) {
    await runVhostBlkBench({ quick });
    return;
  }
  if (process.argv.includes('--switch-only')) {
    await switchBench(quick);
    return;
  }
  if (process.argv.includes('--net-only')) {
    await runNetUmlBench();
    return;
  }
  if (process.argv.includes('--qcow2-only')) {
    await runQcow2Bench({ quick });
    return;
  }
  if (process.argv.includes('--blk-only')) {
    await runBlkUmlBench();
    return;
  }
  const chains = quick ? 200_000 : 2_000_000;
  const repetitions = quick ? 1 : 3;
  console.log(`ringvm benchmarks — node ${process.version}, ${new Date().toISOString()}`);
  console.log(
    `\nSplit ring over the loopback transport (queue size 256, ${chains} chains, best of ${repetitions})`,
  );
  const results = await runRingBench({ chains, repetitions });
  const width = Math.max(...RING_SCENARIOS.map((s) => s.name.length));
  console.log(
    `${'scenario'.padEnd(width)}  ${'round trips'.padStart(12)}  ${'pop+push'.padStart(12)}  ${'irq/chain'.padStart(9)}`,
  );
  for (const r of results) {
    console.log(
      `${r.scenario.name.padEnd(width)}  ${mega(r.roundTripsPerSec).padStart(12)}  ${mega(r.popPushPerSec).padStart(12)}  ${r.interruptsPerChain.toFixed(4).padStart(9)}`,
    );
  }
  const oneDesc = results.filter((r) => r.scenario.descriptors === 1);
  const worstRoundTrip = Math.min(...oneDesc.map((r) => r.roundTripsPerSec));
  const worstPopPush = Math.min(...oneDesc.map((r) => r.popPushPerSec));
  console.log(
    `\n1-descriptor targets: round trips ${mega(worstRoundTrip)} vs ${mega(ROUND_TRIP_TARGET)} → ${(worstRoundTrip / ROUND_TRIP_TARGET).toFixed(2)}×; ` +
      `pop+push ${mega(worstPopPush)} vs ${mega(POP_PUSH_TARGET)} → ${(worstPopPush / POP_PUSH_TARGET).toFixed(2)}×`,
  );
  if (!process.argv.includes('--rings-only')) {
    await runBlkUmlBench();
    await runVhostBlkBench({ quick });
    await runQcow2Bench({ quick });
    await switchBench(quick);
    await runNetUmlBench();
  }
}

await main();
