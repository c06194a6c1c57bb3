import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExportHandle, ExportStarter } from '../../src/cli/export-runner.js';
import { runServe } from '../../src/cli/serve.js';

let dir = '';
let img = '';

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-cli-serve-'));
  img = join(dir, 'disk.img');
  writeFileSync(img, Buffer.alloc(8 << 20));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A starter that records what it was asked and fails for socket paths containing "fail". */
function fakeStarter(): { starter: ExportStarter; started: string[]; stopped: string[] } {
  const started: string[] = [];
  const stopped: string[] = [];
  const starter: ExportStarter = (options) => {
    if (options.socketPath.includes('fail')) return Promise.reject(new Error('cannot bind'));
    started.push(options.socketPath);
    let resolveClosed!: () => void;
    const closed = new Promise<void>((r) => (resolveClosed = r));
    const handle: ExportHandle = {
      socketPath: options.socketPath,
      closed,
      stop: () => {
        stopped.push(options.socketPath);
        resolveClosed();
        return closed;
      },
    };
    return Promise.resolve(handle);
  };
  return { starter, started, stopped };
}

async function serve(
  argv: string[],
  options: { starter?: ExportStarter; signal?: AbortSignal } = {},
): Promise<{ status: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const status = await runServe(argv, {
    out: (s) => (out += s),
    err: (s) => (err += s),
    processSignals: false,
    ...options,
  });
  return { status, out, err };
}

describe('ringvm serve (in process)', () => {
  test('prints one line per export once all listen; stops them all on abort; exits 0', async () => {
    const fake = fakeStarter();
    const ac = new AbortController();
    const run = serve(
      [
        '--blockdev',
        `driver=file,node-name=d0,filename=${img}`,
        '--export',
        `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${dir}/b.sock`,
        '--export',
        `type=vhost-user-rng,id=r0,addr.path=${dir}/r.sock`,
      ],
      { starter: fake.starter, signal: ac.signal },
    );
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(fake.started, [`${dir}/b.sock`, `${dir}/r.sock`]);
    ac.abort();
    const r = await run;
    assert.equal(r.status, 0, r.err);
    assert.equal(
      r.out,
      `ringvm: vhost-user-blk 'e0' listening on ${dir}/b.sock\nringvm: vhost-user-rng 'r0' listening on ${dir}/r.sock\n`,
    );
    assert.deepEqual(fake.stopped.sort(), [`${dir}/b.sock`, `${dir}/r.sock`]);
  });

  test('one export failing to start stops the others and exits 1 naming it', async () => {
    const fake = fakeStarter();
    const r = await serve(
      [
        '--export',
        `type=vhost-user-rng,id=r0,addr.path=${dir}/ok.sock`,
        '--export',
        `type=vhost-user-rng,id=r1,addr.path=${dir}/fail.sock`,
      ],
      { starter: fake.starter },
    );
    assert.equal(r.status, 1);
    assert.equal(r.out, '');
    assert.match(r.err, /ringvm: --export id=r1: cannot start: cannot bind/);
    assert.deepEqual(fake.stopped, [`${dir}/ok.sock`]);
  });

  test('bad options exit 2 before any export starts', async () => {
    const fake = fakeStarter();
    for (const argv of [
      [],
      ['--export', `type=vhost-user-blk,id=e0,node-name=d1,addr.path=${dir}/x.sock`],
      [
        '--blockdev',
        `driver=file,node-name=d0,filename=${dir}/missing.img`,
        '--export',
        `type=vhost-user-blk,id=e0,node-name=d0,addr.path=${dir}/x.sock`,
      ],
      ['extra'],
    ]) {
      const r = await serve(argv, { starter: fake.starter });
      assert.equal(r.status, 2, argv.join(' '));
      assert.match(r.err, /^ringvm: .*\nTry 'ringvm serve --help'.\n$/);
    }
    assert.deepEqual(fake.started, []);
  });

  test('an export that stops by itself ends serve with status 1', async () => {
    let die!: () => void;
    const starter: ExportStarter = (options) => {
      const closed = new Promise<void>((r) => (die = r));
      return Promise.resolve({ socketPath: options.socketPath, closed, stop: () => closed });
    };
    const run = serve(['--export', `type=vhost-user-rng,id=r0,addr.path=${dir}/d.sock`], { starter });
    await new Promise((r) => setTimeout(r, 20));
    die();
    const r = await run;
    assert.equal(r.status, 1);
    assert.match(r.err, /--export id=r0: stopped unexpectedly/);
  });
});

// The compiled command as a child process, with the real VhostUserExport (build/ layout only: the export's worker
// is a compiled .js module).
const mainJs = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const compiled = import.meta.url.endsWith('.js') && existsSync(mainJs);

describe(
  'ringvm serve (child process)',
  { skip: compiled ? false : 'runs from build/ (npx tsc; node --test build/test/cli/)' },
  () => {
    function start(args: string[]) {
      const child = spawn(process.execPath, [mainJs, 'serve', ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const exit = new Promise<number | null>((r) =>
        child.once('close', (code) => {
          r(code);
        }),
      );
      return { child, exit, out: () => out, err: () => err };
    }

    async function waitFor(cond: () => boolean, what: string): Promise<void> {
      for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 25));
      assert.ok(cond(), `timed out waiting for ${what}`);
    }

    test('listens, accepts a connection, and on SIGTERM removes its sockets and exits 0', async () => {
      const blk = join(dir, 'e2e-blk.sock');
      const con = join(dir, 'e2e-con.sock');
      const port = join(dir, 'e2e-port.sock');
      const p = start([
        '--blockdev',
        `driver=file,node-name=d0,filename=${img}`,
        '--chardev',
        `socket,id=c0,path=${port},server=on,wait=off`,
        '--export',
        `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${blk},writable=on`,
        '--export',
        `type=vhost-user-console,id=k0,addr.path=${con},chardev=c0`,
      ]);
      await waitFor(() => p.out().split('\n').length > 2, 'two listening lines');
      assert.equal(
        p.out(),
        `ringvm: vhost-user-blk 'e0' listening on ${blk}\nringvm: vhost-user-console 'k0' listening on ${con}\n`,
      );
      assert.ok(existsSync(blk) && existsSync(con) && existsSync(port));
      await new Promise<void>((resolve, reject) => {
        const c = net.connect(blk, () => {
          c.destroy();
          resolve();
        });
        c.once('error', reject);
      });
      p.child.kill('SIGTERM');
      assert.equal(await p.exit, 0, p.err());
      assert.equal(existsSync(blk), false);
      assert.equal(existsSync(con), false);
      assert.equal(existsSync(port), false);
      assert.equal(readFileSync(img).length, 8 << 20);
    });

    test('SIGINT stops it the same way', async () => {
      const sock = join(dir, 'e2e-rng.sock');
      const p = start(['--export', `type=vhost-user-rng,id=r0,addr.path=${sock}`]);
      await waitFor(() => p.out().includes('listening'), 'listening');
      p.child.kill('SIGINT');
      assert.equal(await p.exit, 0, p.err());
      assert.equal(existsSync(sock), false);
    });

    test('a bad option exits 2 before any socket exists', async () => {
      const sock = join(dir, 'e2e-never.sock');
      const p = start([
        '--export',
        `type=vhost-user-rng,id=r0,addr.path=${sock}`,
        '--export',
        `type=vhost-user-blk,id=e0,node-name=nope,addr.path=${dir}/e2e-never2.sock`,
      ]);
      assert.equal(await p.exit, 2);
      assert.match(p.err(), /--export id=e0: node-name: 'nope' is not a --blockdev/);
      assert.equal(p.out(), '');
      assert.equal(existsSync(sock), false);
    });

    test('a missing image exits 2 naming the option', async () => {
      const p = start([
        '--blockdev',
        `driver=file,node-name=d0,filename=${dir}/absent.img`,
        '--export',
        `type=vhost-user-blk,id=e0,node-name=d0,addr.path=${dir}/e2e-absent.sock`,
      ]);
      assert.equal(await p.exit, 2);
      assert.match(p.err(), /--blockdev node-name=d0: filename: '.*absent.img' does not exist/);
    });
  },
);
