/**
 * MQTT test helpers shared by the MQTT integration tests: devices registered over REST with
 * openssl CSRs, mqtt.js clients that never retry (with an inbox attached before CONNECT, so no
 * message can slip past), CONNACK / TLS refusal assertions and a bare TLS 1.2 handshake.
 */
import assert from 'node:assert/strict';
import { connect as tlsConnect } from 'node:tls';
import { connect as mqttConnect, connectAsync, type IClientOptions, type IConnackPacket, type IPublishPacket, type MqttClient } from 'mqtt';
import { opensslCsr } from './csr.js';
import type { TestGateway, Teardown } from './gateway.js';
import { withDeadline } from './pki.js';

export { withDeadline };

export interface Device {
  id: string;
  token: string;
  keyPem: string;
  certPem: string;
  caPem: string;
}

/**
 * `POST /v1/register` with a key and CSR made by openssl (RSA 2048 or EC P-256), optionally with a
 * device type (`type` is left out of the request when not given: the gateway's default, generic).
 */
export async function registerDevice(gw: TestGateway, id: string, kind: 'rsa' | 'ec' = 'ec', type?: string): Promise<Device> {
  const { keyPem, csrPem } = opensslCsr(id, kind);
  const res = await fetch(`${gw.url}/v1/register`, {
    method: 'POST',
    headers: { authorization: `Bearer ${await gw.token('provision')}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id, csr: csrPem, ...(type !== undefined && { type }) }),
  });
  const body = (await res.json()) as { token: string; certificate: string; caCertificate: string };
  assert.equal(res.status, 201, JSON.stringify(body));
  return { id, token: body.token, keyPem, certPem: body.certificate, caPem: body.caCertificate };
}

export const tcpUrl = (gw: TestGateway): string => `mqtt://127.0.0.1:${gw.ports.mqtt}`;
export const tlsUrl = (gw: TestGateway): string => `mqtts://127.0.0.1:${gw.ports.mqtts}`;
export const wsUrl = (gw: TestGateway): string => `ws://127.0.0.1:${gw.ports.http}/mqtt`;

const BASE: IClientOptions = { reconnectPeriod: 0, connectTimeout: 4000, protocolVersion: 4 };

/** Token login options of a device on TCP or WebSocket. */
export function deviceLogin(device: Pick<Device, 'id' | 'token'>): IClientOptions {
  return { clientId: device.id, username: device.id, password: device.token };
}

/** mTLS options of a device (the server certificate names localhost). */
export function mtlsOptions(device: Pick<Device, 'keyPem' | 'certPem' | 'caPem'>, clientId: string): IClientOptions {
  return { key: device.keyPem, cert: device.certPem, ca: device.caPem, rejectUnauthorized: true, servername: 'localhost', clientId };
}

/** Connects (no retries) with mqtt.js' connectAsync and ends the client when the test ends. */
export async function connect(t: Teardown, url: string, opts: IClientOptions): Promise<MqttClient> {
  const client = await connectAsync(url, { ...BASE, ...opts }, false);
  t.after(() => void client.end(true));
  return client;
}

export interface Message {
  topic: string;
  payload: Buffer;
  text: string;
  packet: IPublishPacket;
}

/** Every PUBLISH a client received, in order, with a waiter like the log capture's. */
export class Inbox {
  readonly messages: Message[] = [];
  private readonly waiters = new Set<{ match: (m: Message) => boolean; resolve: (m: Message) => void }>();

  constructor(client: MqttClient) {
    client.on('message', (topic, payload, packet) => {
      const m = { topic, payload, text: payload.toString('utf8'), packet };
      this.messages.push(m);
      for (const w of this.waiters) {
        if (w.match(m)) {
          this.waiters.delete(w);
          w.resolve(m);
        }
      }
    });
  }

  /** Messages received so far that match. */
  all(match: (m: Message) => boolean = () => true): Message[] {
    return this.messages.filter(match);
  }

  /** The first message (already received or future) that matches, within `ms`. */
  waitFor(match: (m: Message) => boolean, what: string, ms = 5000): Promise<Message> {
    const found = this.messages.find(match);
    if (found) return Promise.resolve(found);
    let waiter: { match: (m: Message) => boolean; resolve: (m: Message) => void } | undefined;
    const arrived = new Promise<Message>((resolve) => this.waiters.add((waiter = { match, resolve })));
    return withDeadline(arrived, ms, what).finally(() => waiter && this.waiters.delete(waiter));
  }
}

export const onTopic = (topic: string) => (m: Message) => m.topic === topic;

export interface Session {
  client: MqttClient;
  inbox: Inbox;
  connack: IConnackPacket;
}

/**
 * Connects without retries like connectAsync(url, opts, false), but with an Inbox attached before
 * the CONNECT goes out (messages a persistent session gets right after CONNACK are kept). Rejects
 * with the CONNACK error (err.code = return code) or the transport error; ends the client when the
 * test ends.
 */
export function openSession(t: Teardown, url: string, opts: IClientOptions): Promise<Session> {
  const client = mqttConnect(url, { ...BASE, ...opts });
  const inbox = new Inbox(client);
  t.after(() => void client.end(true));
  return new Promise((resolve, reject) => {
    const fail = (err: Error) => {
      client.end(true);
      reject(err);
    };
    client.once('connect', (connack) => {
      client.off('error', fail);
      resolve({ client, inbox, connack });
    });
    client.once('error', fail);
    client.once('close', () => fail(new Error('connection closed before CONNACK')));
  });
}

/** The granted QoS of each filter (128 = refused), whether or not mqtt.js treats it as an error. */
export function subscribeGranted(client: MqttClient, filters: string[], qos: 0 | 1 | 2 = 1): Promise<number[]> {
  return new Promise((resolve, reject) => {
    client.subscribe(filters, { qos }, (err, _granted, packet) => {
      if (packet) resolve((packet.granted as unknown[]).map((g) => (typeof g === 'number' ? g : (g as { qos: number }).qos)));
      else reject(err ?? new Error('no SUBACK'));
    });
  });
}

/** Asserts the CONNECT is refused with one of `codes` (default CONNACK 4 or 5). */
export async function assertRefused(url: string, opts: IClientOptions, what: string, codes: number[] = [4, 5]): Promise<void> {
  await assert.rejects(
    connectAsync(url, { ...BASE, ...opts }, false),
    (err: Error & { code?: unknown }) => {
      assert.ok(codes.includes(err.code as number), `${what}: expected CONNACK ${codes.join(' or ')}, got ${String(err.code)} (${err.message})`);
      return true;
    },
    what,
  );
}

/** Asserts the TLS handshake or the CONNECT fails (no CONNACK 0). */
export async function assertTlsRefused(url: string, opts: IClientOptions, what: string): Promise<void> {
  await assert.rejects(connectAsync(url, { ...BASE, ...opts }, false), Error, what);
}

/**
 * A bare TLS 1.2 handshake (no MQTT): with TLS 1.2 the server checks the client certificate
 * (chain, validity, CRL) before the client's handshake completes, so a refusal shows up here as
 * the alert the server sent. Resolves 'ok' or the error message.
 */
export function tls12Handshake(port: number, device: Pick<Device, 'keyPem' | 'certPem' | 'caPem'>): Promise<'ok' | string> {
  return new Promise((resolve) => {
    const socket = tlsConnect({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      key: device.keyPem,
      cert: device.certPem,
      ca: device.caPem,
      rejectUnauthorized: true,
      maxVersion: 'TLSv1.2',
    });
    socket.once('secureConnect', () => {
      socket.destroy();
      resolve('ok');
    });
    socket.once('error', (err) => resolve(err.message));
  });
}

/** Resolves when the client's connection closes (attach before causing the close). */
export function closeEvent(client: MqttClient): Promise<void> {
  return new Promise((resolve) => client.once('close', () => resolve()));
}
