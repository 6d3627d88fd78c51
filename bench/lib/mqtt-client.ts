/**
 * A lean MQTT 3.1.1 client over one net socket (TCP_NODELAY): writes are batched per event-loop
 * turn into one socket write, QoS 1 deliveries are acknowledged in the same batch, and received
 * PUBLISH packets reach the handler as offsets into the socket buffer. Used by the benchmark's load
 * generator and by `iotgate simulate`.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { DISCONNECT, encodeConnect, encodePuback, encodeSubscribe, MqttReader, PINGREQ, type ConnectOptions } from './mqtt-wire.js';

export interface LeanMqttOptions extends ConnectOptions {
  host: string;
  port: number;
  /** CONNECT → CONNACK deadline (ms). */
  connectTimeoutMs?: number;
  /** Acknowledge QoS 1 deliveries automatically (default true). */
  autoAck?: boolean;
}

export type PublishHandler = (buf: Buffer, topicStart: number, topicEnd: number, payloadStart: number, payloadEnd: number, qos: number, messageId: number) => void;

export class ConnackError extends Error {
  constructor(readonly returnCode: number) {
    super(`CONNACK return code ${returnCode}`);
    this.name = 'ConnackError';
  }
}

export class LeanMqtt {
  onPublish: PublishHandler = () => undefined;
  onPuback: (messageId: number) => void = () => undefined;
  onClose: (err: Error | null) => void = () => undefined;
  /** Resolves once the socket has closed. */
  readonly closed: Promise<void>;
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  private flushScheduled = false;
  private nextSubId = 1;
  private readonly subacks = new Map<number, (granted: number[]) => void>();
  private ping: NodeJS.Timeout | null = null;
  private ended = false;

  private constructor(
    readonly socket: Socket,
    private readonly autoAck: boolean,
  ) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  static connect(opts: LeanMqttOptions): Promise<LeanMqtt> {
    return new Promise((resolve, reject) => {
      const socket = netConnect({ host: opts.host, port: opts.port, noDelay: true });
      const client = new LeanMqtt(socket, opts.autoAck !== false);
      let settled = false;
      const timer = setTimeout(() => fail(new Error(`no CONNACK within ${opts.connectTimeoutMs ?? 10_000} ms`)), opts.connectTimeoutMs ?? 10_000);
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      };
      const reader = new MqttReader({
        connack: (rc) => {
          if (settled) return;
          if (rc !== 0) return fail(new ConnackError(rc));
          settled = true;
          clearTimeout(timer);
          const keepalive = opts.keepaliveSeconds ?? 60;
          if (keepalive > 0) client.ping = setInterval(() => client.send(PINGREQ), keepalive * 750).unref();
          resolve(client);
        },
        suback: (id, granted) => {
          const done = client.subacks.get(id);
          client.subacks.delete(id);
          done?.(granted);
        },
        publish: (buf, ts, te, ps, pe, qos, messageId) => {
          if (qos > 0 && client.autoAck) client.send(encodePuback(messageId));
          client.onPublish(buf, ts, te, ps, pe, qos, messageId);
        },
        puback: (id) => client.onPuback(id),
        pingresp: () => undefined,
        error: (message) => socket.destroy(new Error(message)),
      });
      socket.on('data', (chunk: Buffer) => reader.push(chunk));
      socket.on('error', (err) => fail(err));
      socket.on('close', () => {
        if (client.ping) clearInterval(client.ping);
        fail(new Error('connection closed before CONNACK'));
        client.onClose(client.ended ? null : new Error('connection closed'));
      });
      socket.write(encodeConnect(opts));
    });
  }

  /** Queues bytes; they go out in one write at the end of this event-loop turn. */
  send(buf: Buffer): void {
    this.queue.push(buf);
    this.queuedBytes += buf.length;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.queue.length === 0 || this.socket.destroyed) {
      this.queue = [];
      this.queuedBytes = 0;
      return;
    }
    const out = this.queue.length === 1 ? (this.queue[0] as Buffer) : Buffer.concat(this.queue, this.queuedBytes);
    this.queue = [];
    this.queuedBytes = 0;
    this.socket.write(out);
  };

  /** True while the kernel send buffer and Node's write queue are full (back-pressure). */
  get congested(): boolean {
    return this.socket.writableNeedDrain;
  }

  subscribe(filters: { topic: string; qos: 0 | 1 }[]): Promise<number[]> {
    const id = this.nextSubId++;
    return new Promise((resolve) => {
      this.subacks.set(id, resolve);
      this.send(encodeSubscribe(id, filters));
    });
  }

  /** DISCONNECT, then close. */
  end(): Promise<void> {
    if (!this.ended && !this.socket.destroyed) {
      this.ended = true;
      this.flush();
      this.socket.end(DISCONNECT);
    }
    return this.closed;
  }

  destroy(): void {
    this.ended = true;
    this.socket.destroy();
  }
}
