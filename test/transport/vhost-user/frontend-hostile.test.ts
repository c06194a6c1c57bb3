/**
 * ringvm's vhost-user front end against hostile back ends over a real unix socket: a back end that answers the
 * first GET_FEATURES with garbage, with a reply to another request, with a payload of the wrong size, without the
 * REPLY flag, that hangs up, or that never answers. Each time `connect` rejects with a typed
 * VhostUserFrontendError whose code and message name the problem, and the front end leaves no fd behind (its
 * socket and the guest-memory memfd are closed).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend } from '../../../src/transport/vhost-user/frontend.js';
import { VhostUserFrontendError } from '../../../src/transport/vhost-user/frontend-errors.js';
import { VhostUserMessageParser } from '../../../src/transport/vhost-user/message-parser.js';
import {
  encodeMessage,
  encodeReply,
  encodeReplyU64,
} from '../../../src/transport/vhost-user/message-writer.js';
import { FrontendRequest as R, VHOST_USER_VERSION } from '../../../src/transport/vhost-user/protocol.js';
import { openFds } from '../../fixtures/open-fds.js';

const VIRTIO_ID_BLOCK = 2;

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), `ringvm-fe-hostile-${process.pid}-`));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** What the hostile back end does with the front end's GET_FEATURES. */
type Answer = (socket: net.Socket) => void;

/** A back end that lets SET_OWNER pass and answers GET_FEATURES with `answer`; resolves when listening. */
async function hostileBackEnd(
  name: string,
  answer: Answer,
): Promise<{ path: string; close(): Promise<void> }> {
  const path = join(dir, `${name}.sock`);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined); // the front end drops the connection on purpose
    const parser = new VhostUserMessageParser();
    socket.on('data', (chunk: Buffer) => {
      parser.push(chunk, []);
      for (let m = parser.next(); m !== null; m = parser.next()) {
        if (m.request === R.GET_FEATURES) answer(socket);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    path,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => {
          resolve();
        });
      }),
  };
}

const CASES: {
  readonly name: string;
  readonly answer: Answer;
  readonly code: string;
  readonly message: RegExp;
  readonly replyTimeoutMs?: number;
}[] = [
  {
    name: 'garbage',
    answer: (s) => s.write(Buffer.from('this is not a vhost-user reply at all.....')),
    code: 'BAD_REPLY',
    message: /vhost-user:.*garbage\.sock/,
  },
  {
    name: 'another request',
    answer: (s) => s.write(encodeReplyU64(R.GET_PROTOCOL_FEATURES, 0n)),
    code: 'BAD_REPLY',
    message: /GET_PROTOCOL_FEATURES reply to GET_FEATURES/,
  },
  {
    name: 'short payload',
    answer: (s) => s.write(encodeReply(R.GET_FEATURES, new Uint8Array(4))),
    code: 'BAD_REPLY',
    message: /GET_FEATURES reply of 4 bytes \(8 expected\)/,
  },
  {
    name: 'no REPLY flag',
    answer: (s) => s.write(encodeMessage(R.GET_FEATURES, VHOST_USER_VERSION, new Uint8Array(8))),
    code: 'BAD_REPLY',
    message: /REPLY/,
  },
  {
    name: 'hang up',
    answer: (s) => s.destroy(),
    code: 'DISCONNECTED',
    message: /hung up/,
  },
  {
    name: 'silent',
    answer: () => undefined,
    code: 'REPLY_TIMEOUT',
    message: /no reply to GET_FEATURES within 300 ms/,
    replyTimeoutMs: 300,
  },
];

describe('VhostUserFrontend against hostile back ends', () => {
  before(async () => {
    // Loads the FFI and whatever fds it keeps for good, so that the counts below see only the front end's.
    await assert.rejects(VhostUserFrontend.connect(join(dir, 'nobody.sock'), { deviceId: VIRTIO_ID_BLOCK }));
  });

  for (const c of CASES) {
    it(`${c.name}: connect rejects with ${c.code}, nothing left open`, async () => {
      const before = new Set(openFds());
      const backEnd = await hostileBackEnd(c.name.replace(/ /g, '-'), c.answer);
      try {
        await assert.rejects(
          VhostUserFrontend.connect(backEnd.path, {
            deviceId: VIRTIO_ID_BLOCK,
            memorySize: 1 << 20,
            ...(c.replyTimeoutMs !== undefined && { replyTimeoutMs: c.replyTimeoutMs }),
          }),
          (e: unknown) => {
            assert.ok(e instanceof VhostUserFrontendError, String(e));
            assert.equal(e.code, c.code, e.message);
            assert.match(e.message, c.message);
            return true;
          },
        );
      } finally {
        await backEnd.close();
      }
      // The back end's own sockets (in this process too) are gone now: every fd the front end opened is closed.
      assert.deepEqual(
        openFds().filter((fd) => !before.has(fd)),
        [],
        'the socket and the memfd are closed',
      );
    });
  }

  it('a reply timeout that is not a positive whole number is refused before connecting', async () => {
    for (const replyTimeoutMs of [0, -5, 1.5, Number.NaN]) {
      await assert.rejects(
        VhostUserFrontend.connect(join(dir, 'nobody.sock'), { deviceId: VIRTIO_ID_BLOCK, replyTimeoutMs }),
        (e: unknown) => e instanceof VhostUserFrontendError && e.code === 'INVALID_STATE',
      );
    }
  });
});
