import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { CliUsageError } from '../../src/cli/cli-error.js';
import { checkRunPlan, parseRunArgv, qemuCommandLine, umlCommandLine } from '../../src/cli/run.js';
import { commandLine } from '../guest/guest-harness.js';
import { compiled, mainJs, ringvm } from './ringvm-process.js';

let dir = '';

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-cli-run-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('ringvm run: options', () => {
  test('devices get private sockets; the kernel command line follows run-uml', () => {
    const plan = parseRunArgv(
      [
        '--blockdev',
        'driver=memory,node-name=d0,size=16M',
        '--export',
        'type=vhost-user-blk,id=e0,node-name=d0,writable=on',
        '--export',
        'type=vhost-user-rng,id=r0',
        '--mem',
        '512M',
        '--append',
        'ringvm.modules=virtio_blk',
        '--',
        'echo',
        'hi',
      ],
      '/tmp/s',
    );
    assert.notEqual(plan, 'help');
    if (plan === 'help') return;
    assert.equal(plan.guest.command, 'echo hi');
    assert.deepEqual(umlCommandLine(plan, '/root', '/tmp/u'), [
      'mem=512M',
      'root=/dev/root',
      'rootfstype=hostfs',
      'rootflags=/root',
      'ro',
      'init=/init',
      'con=null',
      'con0=fd:0,fd:1',
      'uml_dir=/tmp/u',
      'quiet',
      'virtio_uml.device=/tmp/s/e0.sock:2',
      'virtio_uml.device=/tmp/s/r0.sock:4',
      'ringvm.modules=virtio_blk',
      `ringvm.cmd=${Buffer.from('echo hi').toString('base64')}`,
    ]);
    const interactive = parseRunArgv(['--rw', '--verbose'], '/tmp/s');
    assert.ok(interactive !== 'help');
    assert.equal(interactive.guest.command, undefined);
    assert.deepEqual(umlCommandLine(interactive, '/r', '/u').slice(4), [
      'rw',
      'init=/init',
      'con=null',
      'con0=fd:0,fd:1',
      'uml_dir=/u',
    ]);
  });

  test('--engine qemu: one vhost-user-*-pci device per export, memfd memory, the command in ringvm.cmd', () => {
    const plan = parseRunArgv(
      [
        '--engine',
        'qemu',
        '--blockdev',
        'driver=memory,node-name=d0,size=16M',
        '--export',
        'type=vhost-user-blk,id=e0,node-name=d0,writable=on,num-queues=4',
        '--export',
        'type=vhost-user-rng,id=r0,addr.path=/tmp/a,,b:c.sock',
        '--mem',
        '3G',
        '--share',
        '/srv/x,y',
        '--append',
        'ringvm.testid=t1',
        '--',
        'echo',
        'hi',
      ],
      '/tmp/s',
    );
    assert.ok(plan !== 'help');
    assert.equal(plan.guest.engine, 'qemu');
    assert.deepEqual(qemuCommandLine(plan, '/k/vmlinux', '/k/initrd'), [
      '-nodefaults',
      '-no-user-config',
      '-accel',
      'tcg',
      '-machine',
      'pc,memory-backend=mem',
      '-m',
      '3072M',
      '-object',
      'memory-backend-memfd,id=mem,size=3072M,share=on',
      '-display',
      'none',
      '-no-reboot',
      '-kernel',
      '/k/vmlinux',
      '-initrd',
      '/k/initrd',
      '-chardev',
      'socket,id=e0,path=/tmp/s/e0.sock',
      '-device',
      'vhost-user-blk-pci,num-queues=4,chardev=e0,id=e0',
      '-chardev',
      'socket,id=r0,path=/tmp/a,,b:c.sock',
      '-device',
      'vhost-user-rng-pci,chardev=r0,id=r0',
      '-fsdev',
      'local,id=share,path=/srv/x,,y,security_model=none',
      '-device',
      'virtio-9p-pci,fsdev=share,mount_tag=ringvm-share',
      '-serial',
      'stdio',
      '-append',
      `console=ttyS0 reboot=k panic=-1 quiet ringvm.share=ringvm-share ringvm.testid=t1 ringvm.cmd=${Buffer.from('echo hi').toString('base64')}`,
    ]);
    const interactive = parseRunArgv(
      [
        '--engine=qemu',
        '--verbose',
        '--blockdev',
        'driver=memory,node-name=d0,size=16M',
        '--export',
        'type=vhost-user-blk,id=e0,node-name=d0',
      ],
      '/tmp/s',
    );
    assert.ok(interactive !== 'help');
    const args = qemuCommandLine(interactive, '/k', '/i');
    assert.ok(args.includes('vhost-user-blk-pci,num-queues=1,chardev=e0,id=e0'), 'one queue by default');
    assert.deepEqual(args.slice(-4), ['-serial', 'mon:stdio', '-append', 'console=ttyS0 reboot=k panic=-1']);
  });

  const bad: [string[], RegExp][] = [
    [['--engine', 'kvm'], /^--engine 'kvm': expected uml or qemu/],
    [['--engine', 'qemu', '--engine', 'uml'], /^--engine given twice/],
    [['--engine', 'qemu', '--root', '/r'], /^--root is for --engine uml only/],
    [['--engine', 'qemu', '--rw'], /^--rw is for --engine uml only/],
    [['--initrd', '/i'], /^--initrd is for --engine qemu only \(this is --engine uml\)/],
    [
      [
        '--engine',
        'qemu',
        '--chardev',
        'file,id=log,path=/tmp/log',
        '--export',
        'type=vhost-user-console,id=con7,chardev=log',
      ],
      /^--export id=con7: a vhost-user-console cannot be attached to the QEMU guest .*--engine uml/,
    ],
    [['--mem', 'lots'], /^--mem 'lots': expected a size/],
    [['--mem', '1M'], /^--mem '1M'/],
    [['--mem', '1P'], /^--mem '1P': more than this host's \d+ MiB of memory/],
    [['--kernel', 'a', '--kernel', 'b'], /^--kernel given twice/],
    [['--append', 'a b'], /^--append 'a b': one kernel parameter/],
    [['--bogus'], /^ringvm run: unknown option '--bogus'/],
    [
      ['--export', 'type=vhost-user-rng,id=r0,addr.path=/tmp/a:b.sock'],
      /^--export id=r0: addr.path: .* cannot be passed to UML/,
    ],
    [
      ['--export', 'type=vhost-user-blk,id=e0,node-name=x'],
      /^--export id=e0: node-name: 'x' is not a --blockdev/,
    ],
  ];
  for (const [argv, message] of bad) {
    test(`refused: ${argv.join(' ')}`, () => {
      assert.throws(
        () => parseRunArgv(argv, '/tmp/s'),
        (e: unknown) => e instanceof CliUsageError && message.test(e.message),
      );
    });
  }

  test('host checks: kernel, root, share', async () => {
    const check = async (argv: string[], message: RegExp): Promise<void> => {
      const plan = parseRunArgv(argv, dir);
      assert.ok(plan !== 'help');
      await assert.rejects(
        checkRunPlan(plan),
        (e: unknown) => e instanceof CliUsageError && message.test(e.message),
      );
    };
    await check(
      ['--kernel', join(dir, 'no-kernel')],
      /^--kernel '.*no-kernel': not an executable file \(does not exist\)/,
    );
    await check(['--root', dir], /^--root '.*': not a directory with an executable \/init/);
    await check(['--share', join(dir, 'nope')], /^--share '.*nope': not a directory/);
    const file = join(dir, 'not-executable');
    writeFileSync(file, 'x');
    await check(['--kernel', file], /^--kernel '.*not-executable': not an executable file/);
    await check(
      ['--engine', 'qemu', '--kernel', dir],
      /^--kernel '.*': not a readable file \(not a regular file\)/,
    );
    await check(
      ['--engine', 'qemu', '--initrd', join(dir, 'no-initrd')],
      /^--initrd '.*no-initrd': not a readable file \(does not exist\)/,
    );
    const qemuKernel = parseRunArgv(['--engine', 'qemu', '--kernel', file, '--initrd', file], dir);
    assert.ok(qemuKernel !== 'help');
    await checkRunPlan(qemuKernel); // QEMU reads the kernel: it need not be executable
  });
});

// Boots the real UML guest (compiled layout: the export workers are compiled modules).

describe(
  'ringvm run: the UML guest',
  { skip: compiled ? false : 'runs from build/', timeout: 120_000 },
  () => {
    test('a raw image, writable: the guest writes, the host reads it; the status comes back', async () => {
      const img = join(dir, 'disk.img');
      writeFileSync(img, Buffer.alloc(16 << 20));
      const r = await ringvm([
        'run',
        '--blockdev',
        `driver=file,node-name=d0,filename=${img}`,
        '--export',
        'type=vhost-user-blk,id=e0,node-name=d0,writable=on,serial=ringvm-test',
        '--',
        'cat /sys/block/vda/size; printf ringvm-was-here | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; exit 7',
      ]);
      assert.equal(r.status, 7, r.err);
      assert.equal(r.out, `${(16 << 20) / 512}\n`);
      assert.equal(
        readFileSync(img)
          .subarray(4096, 4096 + 15)
          .toString(),
        'ringvm-was-here',
      );
    });

    test('a read-only image (writable off by default): writes fail in the guest, the image is unchanged', async () => {
      const img = join(dir, 'ro.img');
      writeFileSync(img, Buffer.alloc(4 << 20, 0x5a));
      const r = await ringvm([
        'run',
        '--blockdev',
        `driver=file,node-name=d0,filename=${img}`,
        '--export',
        'type=vhost-user-blk,id=e0,node-name=d0',
        '--',
        'cat /sys/block/vda/ro; dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync 2>/dev/null && echo wrote || echo refused',
      ]);
      assert.equal(r.status, 0, r.err);
      assert.equal(r.out, '1\nrefused\n');
      assert.ok(readFileSync(img).every((b) => b === 0x5a));
    });

    test('a console: hvc0 and a named port write to file chardevs', async () => {
      const hvc = join(dir, 'hvc0.log');
      const port = join(dir, 'port.log');
      const r = await ringvm([
        'run',
        '--chardev',
        `file,id=log,path=${hvc}`,
        '--chardev',
        `file,id=p1,path=${port}`,
        '--export',
        'type=vhost-user-console,id=c0,chardev=log',
        '--device',
        'virtserialport,export=c0,chardev=p1,name=org.example.port',
        '--',
        'echo to-hvc > /dev/hvc0; echo to-port > /dev/virtio-ports/org.example.port',
      ]);
      assert.equal(r.status, 0, r.err);
      assert.equal(readFileSync(hvc, 'utf8'), 'to-hvc\r\n'); // hvc0 is a tty: onlcr
      assert.equal(readFileSync(port, 'utf8'), 'to-port\n');
    });

    test('SIGINT during a long command: the guest is killed outright (no UML SIGTERM panic), status 130, nothing left', async () => {
      // linux.uml's own SIGTERM handler panics with a virtio-net device attached ("bad: scheduling from the idle
      // thread!"); --verbose shows what the guest prints while it goes.
      const guest = await runningGuest(
        ['--verbose', '--netdev', 'hubport,id=n0,hubid=0', '--export', 'type=vhost-user-net,id=e0,netdev=n0'],
        'ip link set eth0 up && echo ringvm-guest-up; sleep 600',
      );
      // The panic needs an idle guest (the handler then runs on the idle thread): let it settle into its sleep.
      await new Promise((resolve) => setTimeout(resolve, 2000));
      guest.child.kill('SIGINT');
      const status = await guest.exited;
      assert.equal(status, 130, guest.err());
      assert.doesNotMatch(guest.out() + guest.err(), /Kernel panic|scheduling from the idle thread/);
      assert.deepEqual(
        processesWith('linux.uml', `uml_dir=${guest.umlDir}`),
        [],
        'no process of the guest is left',
      );
    });

    test('killed outright (SIGKILL): the guest and its temporary directory go too (the watchdog)', async () => {
      const guest = await runningGuest(
        [
          '--blockdev',
          'driver=memory,node-name=d0,size=16M',
          '--export',
          'type=vhost-user-blk,id=e0,node-name=d0',
        ],
        'echo ringvm-guest-up; sleep 600',
      );
      const { umlDir } = guest;
      assert.ok(processesWith('linux.uml', `uml_dir=${umlDir}`).length > 0);
      process.kill(guest.child.pid as number, 'SIGKILL');
      await guest.exited;
      const deadline = Date.now() + 30_000;
      while (
        (processesWith('linux.uml', `uml_dir=${umlDir}`).length > 0 || existsSync(dirname(umlDir))) &&
        Date.now() < deadline
      ) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const left = processesWith('linux.uml', `uml_dir=${umlDir}`);
      for (const p of left) process.kill(Number(p), 'SIGKILL');
      assert.deepEqual(left, [], 'no process of the guest is left');
      assert.ok(!existsSync(dirname(umlDir)), `${dirname(umlDir)} was removed`);
    });
  },
);

/** A `ringvm run ARGS -- COMMAND` whose COMMAND has printed `ringvm-guest-up`, and its guest's uml_dir. */
async function runningGuest(
  args: string[],
  command: string,
): Promise<{
  child: ChildProcess;
  exited: Promise<number | null>;
  umlDir: string;
  out(): string;
  err(): string;
}> {
  const child = spawn(process.execPath, [mainJs, 'run', ...args, '--', command], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ringvm-guest-up')) resolve();
    });
    child.once('close', () => {
      reject(new Error(`ringvm run ended before the guest command ran:\n${out}\n${err}`));
    });
  });
  const umlDir = umlDirOfChild(child.pid as number);
  assert.ok(umlDir !== undefined, 'linux.uml runs as a child of ringvm, with a uml_dir');
  return { child, exited, umlDir, out: () => out, err: () => err };
}

/** The uml_dir of the linux.uml process whose parent is `ppid`, if there is one. */
function umlDirOfChild(ppid: number): string | undefined {
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    } catch {
      continue; // gone
    }
    const argv = commandLine(Number(pid));
    // Field 4 (after "pid (comm) state") is the parent's pid; comm may hold spaces, so split after the ')'.
    const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (parent !== ppid || !(argv[0] ?? '').endsWith('linux.uml')) continue;
    const arg = argv.find((a) => a.startsWith('uml_dir='));
    if (arg !== undefined) return arg.slice('uml_dir='.length);
  }
  return undefined;
}

/** The processes whose command line holds `tag` and that run `program` (not the ringvm command that names it). */
function processesWith(program: string, tag: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const argv = commandLine(Number(pid));
    if ((argv[0] ?? '').endsWith(program) && argv.some((a) => a.includes(tag))) found.push(pid);
  }
  return found;
}

describe(
  'ringvm run --engine qemu: the QEMU TCG guest over PCI',
  { skip: compiled ? false : 'runs from build/', timeout: 20 * 60_000 },
  () => {
    // Every guest gets this on its kernel command line (part of QEMU's own command line).
    const tag = `ringvm.testid=cli-run-${process.pid}`;
    const qemu = (args: string[]) => ringvm(['run', '--engine', 'qemu', '--append', tag, ...args]);

    after(() => {
      for (const pid of processesWith('qemu-system-x86_64', tag)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // already gone
        }
      }
    });

    test('a raw image, writable, two queues: the guest writes, the host reads it; status 7 comes back', async () => {
      const img = join(dir, 'qemu-disk.img');
      writeFileSync(img, Buffer.alloc(16 << 20));
      // The first run may build the guest (scripts/guest/build-qemu): minutes on a fresh machine.
      const r = await qemu([
        '--blockdev',
        `driver=file,node-name=d0,filename=${img}`,
        '--export',
        'type=vhost-user-blk,id=e0,node-name=d0,writable=on,num-queues=2,serial=ringvm-qemu',
        '--',
        [
          'cat /sys/block/vda/size',
          'echo "$(cat /sys/block/vda/serial)"',
          // VIRTIO_BLK_F_MQ (bit 12) negotiated: num-queues=2 reached the device (the one vCPU uses one queue)
          'cut -c13 /sys/block/vda/device/features',
          'printf ringvm-pci-was-here | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null',
          'exit 7',
        ].join('; '),
      ]);
      assert.equal(r.status, 7, r.err);
      assert.equal(r.out, `${(16 << 20) / 512}\nringvm-qemu\n1\n`);
      assert.equal(
        readFileSync(img)
          .subarray(4096, 4096 + 19)
          .toString(),
        'ringvm-pci-was-here',
      );
      assert.deepEqual(processesWith('qemu-system-x86_64', tag), [], 'QEMU has ended');
    });

    test('an rng export: /dev/hwrng reads random bytes through virtio_rng', async () => {
      const r = await qemu([
        '--export',
        'type=vhost-user-rng,id=r0',
        '--',
        [
          'cat /sys/class/misc/hw_random/rng_current',
          'dd if=/dev/hwrng bs=4096 count=4 2>/dev/null > /tmp/r',
          'wc -c < /tmp/r',
          'od -An -tx1 /tmp/r | tr -s " " "\\n" | grep -v "^$" | sort -u | wc -l',
        ].join(' && '),
      ]);
      assert.equal(r.status, 0, r.err);
      const [current, bytes, values] = r.out.trim().split('\n');
      assert.match(current ?? '', /^virtio_rng/);
      assert.equal(Number(bytes), 16384, 'all bytes arrived');
      assert.ok(Number(values) > 250, `random bytes take (almost) every value: ${values}`);
    });

    test('a console export is refused before anything starts, naming the export', async () => {
      const log = join(dir, 'never.log');
      const r = await qemu([
        '--chardev',
        `file,id=log,path=${log}`,
        '--export',
        'type=vhost-user-console,id=con0,chardev=log',
        '--',
        'true',
      ]);
      assert.equal(r.status, 2);
      assert.match(r.err, /--export id=con0: a vhost-user-console cannot be attached to the QEMU guest/);
      assert.match(r.err, /--engine uml/);
      assert.equal(r.out, '');
      assert.equal(existsSync(log), false, 'the chardev was never opened');
    });

    test('SIGINT during a long command: QEMU, then the exports, are stopped; status 130; no QEMU left', async () => {
      const sock = join(dir, 'sigint-rng.sock');
      const child = spawn(
        process.execPath,
        [
          mainJs,
          'run',
          '--engine',
          'qemu',
          '--append',
          tag,
          '--export',
          `type=vhost-user-rng,id=r0,addr.path=${sock}`,
          '--',
          'echo started; sleep 600; echo not-interrupted',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '';
      let err = '';
      let running: string[] = [];
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const closed = new Promise<number | null>((resolve) => child.once('close', resolve));
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out === 'started\n' && running.length === 0) {
          running = processesWith('qemu-system-x86_64', tag);
          child.kill('SIGINT');
        }
      });
      const status = await closed;
      assert.equal(status, 130, err);
      assert.equal(out, 'started\n');
      assert.equal(running.length, 1, 'QEMU was running when SIGINT came');
      assert.deepEqual(processesWith('qemu-system-x86_64', tag), [], 'no QEMU left');
      assert.equal(existsSync(sock), false, 'the export stopped and removed its socket');
    });
  },
);
