// PasstNetBackend against the real passt (Debian package), started inside a network namespace this test creates
// (a veth uplink 10.213.0.2/24, default route via .1) next to a TCP server on that namespace's loopback. The
// passt port sits on a NetSwitch; a TypeScript endpoint on the switch plays the guest from hand-built frames:
// DHCP DISCOVER → OFFER, REQUEST → ACK with passt's address plan, then a TCP connection to the gateway address,
// which passt maps to the host's loopback: the server's greeting arrives, and what the guest sends is echoed.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { PasstNetBackend } from '../../../src/backends/net/passt-backend.js';
import { NetSwitch } from '../../../src/backends/net/net-switch.js';
import { StreamBackendError } from '../../../src/backends/net/stream-backend-error.js';
import type { EndpointSwitchPort } from '../../../src/backends/net/switch-ports.js';
import { ensureQemu } from '../../transport/pci/qtest-harness.js';
import { mac, until } from './net-backend-harness.js';
import {
  DHCP_ACK,
  DHCP_DISCOVER,
  DHCP_OFFER,
  DHCP_REQUEST,
  ETHERTYPE_IPV4,
  IPPROTO_TCP,
  TCP_ACK,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  bytesToIp,
  dhcpRequest,
  ethernet,
  ipToBytes,
  ipv4,
  parseDhcpReply,
  parseIpv4,
  parseTcp,
  tcp,
  type DhcpReply,
} from './packets.js';

const NS = `ringvm-passt-${process.pid}`;
const HOST_ADDR = '10.213.0.2';
const GATEWAY = '10.213.0.1';
const SERVER_PORT = 8080;
const GUEST_MAC = mac(0x42);

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
}

/** Echo server on the namespace's loopback: greets, then echoes every chunk. */
const SERVER_SOURCE = `
const net = require('node:net');
net.createServer((s) => { s.write('hello from the host\\n'); s.on('data', (d) => s.write(d)); s.on('error', () => {}); })
  .listen(${SERVER_PORT}, '127.0.0.1', () => console.log('listening'));
`;

describe('PasstNetBackend (real passt in a test network namespace)', { timeout: 3 * 60_000 }, () => {
  let server: ChildProcess | undefined;
  let passt: PasstNetBackend | undefined;
  const sw = new NetSwitch();
  let guest: EndpointSwitchPort | undefined;
  const inbox: Buffer[] = [];

  before(async () => {
    await ensureQemu(); // install-packages: passt
    ip('netns', 'add', NS);
    ip('-n', NS, 'link', 'set', 'lo', 'up');
    // A veth pair with both ends in the namespace: an uplink with carrier (no dummy module on every kernel).
    ip('-n', NS, 'link', 'add', 'uplink0', 'type', 'veth', 'peer', 'name', 'uplink1');
    ip('-n', NS, 'link', 'set', 'uplink1', 'up');
    ip('-n', NS, 'addr', 'add', `${HOST_ADDR}/24`, 'dev', 'uplink0');
    ip('-n', NS, 'link', 'set', 'uplink0', 'up');
    ip('-n', NS, 'route', 'add', 'default', 'via', GATEWAY);
    server = spawn('ip', ['netns', 'exec', NS, process.execPath, '-e', SERVER_SOURCE], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((resolve, reject) => {
      server!.stdout!.once('data', () => {
        resolve();
      });
      server!.once('exit', (code) => {
        reject(new Error(`echo server exited with ${code}`));
      });
    });
    passt = await PasstNetBackend.open({ netns: NS, args: ['--ipv4-only'] });
    sw.addBackend(passt, { name: 'passt' });
    guest = sw.addEndpoint({ name: 'guest' });
    guest.onFrame((f) => inbox.push(Buffer.from(f)));
  });

  after(async () => {
    await sw.close();
    if (passt?.child !== undefined)
      assert.notEqual(passt.child.exitCode ?? passt.child.signalCode, null, 'passt exited');
    server?.kill('SIGKILL');
    spawnSync('ip', ['netns', 'del', NS]);
  });

  async function dhcp(
    type: number,
    xid: number,
    requested?: { ip: string; server: string },
  ): Promise<DhcpReply> {
    inbox.length = 0;
    guest!.send(dhcpRequest(GUEST_MAC, xid, type, requested));
    let reply: DhcpReply | undefined;
    await until(() => {
      reply = inbox.map(parseDhcpReply).find((r) => r?.xid === xid);
      return reply !== undefined;
    }, `DHCP reply to message type ${type}`);
    return reply!;
  }

  let lease: { ip: string; router: string; gatewayMac: Buffer } | undefined;

  it('DHCP: DISCOVER gets an OFFER, REQUEST an ACK, with the namespace uplink address plan', async () => {
    assert.equal(passt!.linkUp, true);
    const offer = await dhcp(DHCP_DISCOVER, 0x1234_5678);
    assert.equal(offer.type, DHCP_OFFER);
    assert.equal(offer.yiaddr, HOST_ADDR);
    const serverId = bytesToIp(offer.options.get(54)!);
    const ack = await dhcp(DHCP_REQUEST, 0x1234_5679, { ip: offer.yiaddr, server: serverId });
    assert.equal(ack.type, DHCP_ACK);
    assert.equal(ack.yiaddr, HOST_ADDR);
    assert.equal(bytesToIp(ack.options.get(3)!), GATEWAY);
    assert.equal(bytesToIp(ack.options.get(1)!), '255.255.255.0');
    lease = { ip: ack.yiaddr, router: bytesToIp(ack.options.get(3)!), gatewayMac: ack.serverMac };
  });

  it('TCP to the gateway reaches the server on the host loopback: greeting in, echo back', async () => {
    const me = ipToBytes(lease!.ip);
    const gw = ipToBytes(lease!.router);
    const send = (seg: Parameters<typeof tcp>[2]): void => {
      guest!.send(
        ethernet(lease!.gatewayMac, GUEST_MAC, ETHERTYPE_IPV4, ipv4(me, gw, IPPROTO_TCP, tcp(me, gw, seg))),
      );
    };
    const segments = (): ReturnType<typeof parseTcp>[] =>
      inbox.flatMap((f) => {
        const p = parseIpv4(f);
        return p?.proto === IPPROTO_TCP && p.src === lease!.router ? [parseTcp(p.payload)] : [];
      });
    inbox.length = 0;
    const sport = 40_000 + (process.pid % 20_000);
    let seq = 1_000;
    send({ sport, dport: SERVER_PORT, seq, ack: 0, flags: TCP_SYN });
    await until(
      () => segments().some((s) => (s.flags & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK)),
      'SYN-ACK',
    );
    const synAck = segments().find((s) => (s.flags & TCP_SYN) !== 0)!;
    assert.equal(synAck.ack, seq + 1);
    seq++;
    let ack = (synAck.seq + 1) >>> 0;
    send({ sport, dport: SERVER_PORT, seq, ack, flags: TCP_ACK });
    const received = (): string =>
      Buffer.concat(
        segments()
          .filter((s) => s.payload.length > 0)
          .map((s) => s.payload),
      ).toString();
    await until(() => received().includes('hello from the host\n'), 'the greeting');
    ack = (synAck.seq + 1 + Buffer.byteLength(received())) >>> 0;
    const line = Buffer.from('ping through passt\n');
    send({ sport, dport: SERVER_PORT, seq, ack, flags: TCP_ACK | TCP_PSH, payload: line });
    await until(() => received() === `hello from the host\nping through passt\n`, 'the echo');
    seq += line.length;
    ack = (synAck.seq + 1 + Buffer.byteLength(received())) >>> 0;
    send({ sport, dport: SERVER_PORT, seq, ack, flags: TCP_RST | TCP_ACK });
    const port = sw.ports.find((p) => p.name === 'passt')!;
    assert.equal(port.stats.txDropped, 0);
    assert.ok(passt!.stats.framesReceived >= 4);
  });

  it('a passt that cannot start is a typed error carrying its message', async () => {
    await assert.rejects(
      PasstNetBackend.open({ args: ['--no-such-option'] }),
      (e: unknown) =>
        e instanceof StreamBackendError &&
        e.code === 'PASST_FAILED' &&
        /unrecognized|invalid|option/i.test(e.message),
    );
  });
});
