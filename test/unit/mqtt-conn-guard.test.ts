/**
 * The guard as mqtt-packet's byte list (protocols/mqtt/guard.ts `GuardedBytes`) and the CONNECT
 * packet release (protocols/mqtt/connect-packet.ts): both replace parts of aedes' per-connection
 * state, so they are checked against what they replace: bl's BufferList (the one mqtt-packet
 * itself resolves), mqtt-packet's stock parser, and a real aedes broker on a socket.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { createServer, connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { Aedes, type Client } from 'aedes';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { GuardedBytes, guardStream, DISCONNECT } from '../../protocols/mqtt/guard.js';
import { forgetConnectPacket } from '../../protocols/mqtt/connect-packet.js';

interface BufferListLike {
  length: number;
  append(b: Buffer): unknown;
  consume(n: number): unknown;
  slice(start?: number, end?: number): Buffer;
  toString(encoding?: BufferEncoding, start?: number, end?: number): string;
  readUInt8(offset?: number): number;
  readUInt16BE(offset?: number): number;
  readUInt32BE(offset?: number): number;
}

// bl as mqtt-packet resolves it (its own dependency), not as a dependency of ours.
const requireFromMqttPacket = createRequire(createRequire(import.meta.url).resolve('mqtt-packet'));
const { BufferList } = requireFromMqttPacket('bl') as { BufferList: new () => BufferListLike };

interface ParserInternals {
  _list: unknown;
  settings: unknown;
  parse(buf: Buffer): number;
  on(event: 'packet', fn: (p: Packet) => void): unknown;
  on(event: 'error', fn: (e: Error) => void): unknown;
}

/** A deterministic PRNG (mulberry32) so that a failure can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const connect = mqttPacket.generate({ cmd: 'connect', clientId: 'dev-1', username: 'dev-1', password: Buffer.from('secret-token'), keepalive: 60, protocolVersion: 4 });

/** A valid MQTT 3.1.1 session: CONNECT, then PUBLISHes of random sizes, SUBSCRIBE, PINGREQ, DISCONNECT. */
function session(rand: () => number, publishes: number): Buffer {
  const parts = [connect];
  for (let i = 0; i < publishes; i++) {
    const size = Math.floor(rand() * (rand() < 0.2 ? 20_000 : 200));
    const payload = Buffer.alloc(size);
    for (let j = 0; j < size; j++) payload[j] = Math.floor(rand() * 256);
    const qos = (i % 3) as 0 | 1 | 2;
    parts.push(mqttPacket.generate({ cmd: 'publish', topic: `devices/dev-1/t/${i}`, payload, qos, ...(qos > 0 && { messageId: i + 1 }), retain: false, dup: false }));
  }
  parts.push(mqttPacket.generate({ cmd: 'subscribe', messageId: 7, subscriptions: [{ topic: 'devices/dev-1/#', qos: 1 }] }));
  parts.push(mqttPacket.generate({ cmd: 'pingreq' }), mqttPacket.generate({ cmd: 'disconnect' }));
  return Buffer.concat(parts);
}

/** `data` cut at random points (some chunks empty, some one byte, some large). */
function chunks(rand: () => number, data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let i = 0;
  while (i < data.length) {
    const r = rand();
    const n = r < 0.1 ? 0 : r < 0.3 ? 1 : r < 0.6 ? Math.floor(rand() * 8) : Math.floor(rand() * 3000);
    out.push(data.subarray(i, Math.min(data.length, i + n)));
    i += n;
  }
  return out;
}

const outcome = (fn: () => unknown): unknown => {
  try {
    const v = fn();
    return Buffer.isBuffer(v) ? { buf: v.toString('hex') } : { v };
  } catch (err) {
    return { threw: (err as NodeJS.ErrnoException).code ?? (err as Error).name };
  }
};

describe('GuardedBytes (the parser byte list behind the guard)', () => {
  it("gives bl's results for every read, slice and consume, whatever the chunks", () => {
    for (let seed = 1; seed <= 40; seed++) {
      const rand = rng(seed);
      const stream = new PassThrough();
      const ours = new GuardedBytes(stream, Number.MAX_SAFE_INTEGER);
      const theirs = new BufferList();
      for (const c of chunks(rand, session(rand, 30))) {
        ours.append(c);
        theirs.append(c);
        for (let k = 0; k < 6; k++) {
          const len = theirs.length;
          const a = Math.floor(rand() * (len + 6)) - 3;
          const b = Math.floor(rand() * (len + 6)) - 3;
          const where = `seed ${seed}, length ${len}, a ${a}, b ${b}`;
          assert.deepEqual(outcome(() => ours.readUInt8(a)), outcome(() => theirs.readUInt8(a)), `readUInt8 ${where}`);
          assert.deepEqual(outcome(() => ours.readUInt16BE(a)), outcome(() => theirs.readUInt16BE(a)), `readUInt16BE ${where}`);
          assert.deepEqual(outcome(() => ours.readUInt32BE(a)), outcome(() => theirs.readUInt32BE(a)), `readUInt32BE ${where}`);
          assert.deepEqual(outcome(() => ours.slice(a, b)), outcome(() => theirs.slice(a, b)), `slice ${where}`);
          assert.deepEqual(outcome(() => ours.slice(a)), outcome(() => theirs.slice(a)), `slice from ${where}`);
          assert.deepEqual(outcome(() => ours.toString('utf8', a, b)), outcome(() => theirs.toString('utf8', a, b)), `toString ${where}`);
        }
        assert.deepEqual(ours.slice(), theirs.slice(), `whole, seed ${seed}`);
        if (rand() < 0.5) {
          const n = Math.floor(rand() * (theirs.length + 2));
          ours.consume(n);
          theirs.consume(n);
        }
        assert.equal(ours.length, theirs.length);
      }
      assert.equal(ours.violation, null);
      assert.equal(stream.destroyed, false);
    }
  });

  it("makes mqtt-packet's parser emit exactly the packets it emits with bl, however the bytes are split", () => {
    for (let seed = 100; seed < 130; seed++) {
      const rand = rng(seed);
      const data = session(rand, 25);
      const parts = chunks(rand, data);
      const run = (swap: boolean) => {
        const parser = mqttPacket.parser() as unknown as ParserInternals;
        const stream = new PassThrough();
        const guard = new GuardedBytes(stream, 1024 * 1024);
        if (swap) parser._list = guard;
        const packets: Packet[] = [];
        parser.on('packet', (p) => packets.push(p));
        parser.on('error', (e) => packets.push({ cmd: 'error', message: e.message } as unknown as Packet));
        for (const c of parts) parser.parse(c);
        return { packets, guard, stream };
      };
      const stock = run(false);
      const guarded = run(true);
      assert.equal(guarded.packets.length, 29, `seed ${seed}`);
      assert.deepEqual(guarded.packets, stock.packets, `seed ${seed}`);
      assert.equal(guarded.guard.lastType, DISCONNECT);
      assert.equal(guarded.guard.violation, null);
    }
  });

  it('hands the parser only the packets before a refused one, and closes the stream', () => {
    const ping = mqttPacket.generate({ cmd: 'pingreq' });
    const parser = mqttPacket.parser() as unknown as ParserInternals;
    const stream = new PassThrough();
    stream.on('error', () => undefined);
    const guard = new GuardedBytes(stream, 64);
    parser._list = guard;
    const packets: string[] = [];
    parser.on('packet', (p) => packets.push(p.cmd));
    // One chunk: CONNECT (fits), PINGREQ, then a PUBLISH header announcing 100 bytes and its body.
    parser.parse(Buffer.concat([connect, ping, Buffer.from([0x30, 100]), Buffer.alloc(100)]));
    assert.deepEqual(packets, ['connect', 'pingreq']);
    assert.equal(guard.violation, 'packet of 102 bytes exceeds the limit of 64');
    assert.equal(stream.destroyed, true);
    assert.equal(guard.length, 0, 'none of the refused bytes are kept');
    parser.parse(ping);
    assert.deepEqual(packets, ['connect', 'pingreq'], 'nothing more is parsed after the violation');
  });

  it('refuses a first packet that is not CONNECT before the parser sees it', () => {
    const parser = mqttPacket.parser() as unknown as ParserInternals;
    const stream = new PassThrough();
    const guard = new GuardedBytes(stream, 1024);
    parser._list = guard;
    const packets: string[] = [];
    parser.on('packet', (p) => packets.push(p.cmd));
    parser.parse(mqttPacket.generate({ cmd: 'pingreq' }));
    assert.deepEqual(packets, []);
    assert.equal(guard.violation, 'the first packet is not CONNECT');
    assert.equal(stream.destroyed, true);
  });
});

describe('forgetConnectPacket', () => {
  it("drops the credentials and the packet from the parser, which goes on parsing the same way", () => {
    for (const protocolVersion of [3, 4] as const) {
      const packet = mqttPacket.generate({ cmd: 'connect', protocolId: protocolVersion === 3 ? 'MQIsdp' : 'MQTT', clientId: 'dev-1', username: 'dev-1', password: Buffer.from('secret'), keepalive: 60, protocolVersion });
      const later = Buffer.concat([
        mqttPacket.generate({ cmd: 'subscribe', messageId: 3, subscriptions: [{ topic: 'devices/dev-1/#', qos: 1 }] }),
        mqttPacket.generate({ cmd: 'publish', topic: 'devices/dev-1/x', payload: Buffer.from('hi'), qos: 1, messageId: 4, retain: false, dup: false }),
        mqttPacket.generate({ cmd: 'unsubscribe', messageId: 5, unsubscriptions: ['devices/dev-1/#'] }),
      ]);
      const run = (forget: boolean) => {
        const parser = mqttPacket.parser() as unknown as ParserInternals;
        const packets: Packet[] = [];
        parser.on('packet', (p) => packets.push(p));
        parser.parse(packet);
        const connectPacket = packets[0] as mqttPacket.IConnectPacket;
        assert.equal(parser.settings, connectPacket);
        if (forget) forgetConnectPacket({ _parser: parser } as unknown as Client, connectPacket);
        parser.parse(later);
        return { parser, packets, connectPacket };
      };
      const stock = run(false);
      const lean = run(true);
      assert.deepEqual(lean.packets.slice(1), stock.packets.slice(1), `v${protocolVersion}`);
      assert.equal(lean.connectPacket.password, undefined);
      assert.equal(lean.connectPacket.username, undefined);
      assert.notEqual(lean.parser.settings, lean.connectPacket, 'the parser no longer holds the CONNECT packet');
      assert.deepEqual({ ...(lean.parser.settings as object) }, { protocolVersion, bridgeMode: undefined });
      assert.ok(Object.isFrozen(lean.parser.settings));
    }
  });
});

describe('guardStream on an aedes connection', () => {
  async function broker(maxPacketBytes: number, onClient?: (client: Client, password: Buffer | undefined) => void) {
    const aedes = await Aedes.createBroker({
      authenticate: (client, _username, password, done) => {
        onClient?.(client, password === undefined ? undefined : Buffer.from(password));
        done(null, true);
      },
    });
    const guards = new Map<Socket, ReturnType<typeof guardStream>>();
    const server = createServer((socket) => {
      aedes.handle(socket);
      guards.set(socket, guardStream(socket, maxPacketBytes));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    return {
      aedes,
      guards,
      port,
      close: async () => {
        await new Promise<void>((resolve) => aedes.close(() => resolve()));
        await new Promise<void>((resolve) => server.close(() => resolve()));
      },
    };
  }

  function raw(port: number): Promise<{ socket: Socket; received: Buffer[]; closed: Promise<void> }> {
    return new Promise((resolve) => {
      const socket = netConnect({ port, host: '127.0.0.1' }, () => resolve({ socket, received, closed }));
      const received: Buffer[] = [];
      socket.on('data', (d: Buffer) => received.push(d));
      socket.on('error', () => undefined);
      const closed = new Promise<void>((r) => socket.once('close', () => r()));
    });
  }

  it('becomes the parser byte list: no data listener, no bl stream; an oversized packet closes the connection', async () => {
    const b = await broker(1000);
    try {
      const c = await raw(b.port);
      c.socket.write(connect);
      await new Promise<void>((resolve) => b.aedes.once('clientReady', () => resolve()));
      const [socket, guard] = [...b.guards][0] as [Socket, ReturnType<typeof guardStream>];
      assert.ok(guard instanceof GuardedBytes);
      assert.equal(socket.listenerCount('data'), 0, 'no data listener');
      const client = (socket as Socket & { client: { _parser: ParserInternals } }).client;
      assert.equal(client._parser._list, guard);
      c.socket.write(Buffer.concat([Buffer.from([0x30]), Buffer.from([0xe8, 0x07])])); // PUBLISH announcing 1000 bytes
      await c.closed;
      assert.equal(guard.violation, 'packet of 1003 bytes exceeds the limit of 1000');
    } finally {
      await b.close();
    }
  });

  it('closes a connection whose first packet is not CONNECT, and aedes never handles it', async () => {
    const b = await broker(1000);
    try {
      let clients = 0;
      b.aedes.on('client', () => clients++);
      const c = await raw(b.port);
      c.socket.write(Buffer.concat([mqttPacket.generate({ cmd: 'pingreq' }), connect]));
      await c.closed;
      const [, guard] = [...b.guards][0] as [Socket, ReturnType<typeof guardStream>];
      assert.equal(guard.violation, 'the first packet is not CONNECT');
      assert.deepEqual(c.received, [], 'no PINGRESP, no CONNACK');
      assert.equal(clients, 0);
    } finally {
      await b.close();
    }
  });

  it('lets a session through unchanged, its last packet type recorded', async () => {
    const b = await broker(1000);
    try {
      const c = await raw(b.port);
      c.socket.write(connect);
      await new Promise<void>((resolve) => b.aedes.once('clientReady', () => resolve()));
      c.socket.write(mqttPacket.generate({ cmd: 'pingreq' }));
      await new Promise<void>((resolve) => {
        const check = () => (Buffer.concat(c.received).includes(Buffer.from([0xd0, 0x00])) ? resolve() : setTimeout(check, 5));
        check();
      });
      c.socket.end(mqttPacket.generate({ cmd: 'disconnect' }));
      await c.closed;
      const [, guard] = [...b.guards][0] as [Socket, ReturnType<typeof guardStream>];
      assert.equal(guard.violation, null);
      assert.equal(guard.lastType, DISCONNECT);
    } finally {
      await b.close();
    }
  });
});
