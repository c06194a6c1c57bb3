/** `ringvm serve`'s device options as the command parses them: argv → a validated DevicePlan (no host checks). */
import { parseArgv } from '../../src/cli/argv.js';
import { buildDevicePlan, DEVICE_OPTIONS, type DevicePlan } from '../../src/cli/serve-options.js';

export function devicePlan(argv: readonly string[], defaultSocketDir?: string): DevicePlan {
  const args = parseArgv(argv, {
    command: 'ringvm serve',
    values: DEVICE_OPTIONS,
    flags: [],
    positionals: 'none',
  });
  return buildDevicePlan(args.options, defaultSocketDir === undefined ? {} : { defaultSocketDir });
}
