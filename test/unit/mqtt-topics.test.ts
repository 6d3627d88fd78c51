/**
 * The MQTT edge's topic rules (protocols/mqtt/topics.ts, contract §4) as pure functions: the
 * `devices/{id}/` subtree, gateway-owned read-only topics, service scopes and topic syntax.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEVICES_PREFIX,
  deviceRelative,
  devicePublishVerdict,
  deviceSubscribeVerdict,
  errorsTopic,
  isGatewayOwned,
  servicePublishVerdict,
  serviceSubscribeVerdict,
  statusTopic,
  topicProblem,
  type Verdict,
} from '../../protocols/mqtt/topics.js';

const ok = (v: Verdict, what: string) => assert.deepEqual(v, { ok: true }, what);
const refused = (v: Verdict, what: string, reason?: RegExp) => {
  assert.equal(v.ok, false, `${what} should be refused`);
  if (!v.ok) {
    assert.equal(typeof v.reason, 'string');
    assert.ok(v.reason.length > 0, `${what}: a refusal says why`);
    if (reason) assert.match(v.reason, reason, what);
  }
};

const scopes = (...s: string[]): ReadonlySet<string> => new Set(s);

describe('deviceRelative', () => {
  it('returns the part below devices/{id}/', () => {
    assert.equal(DEVICES_PREFIX, 'devices/');
    assert.equal(deviceRelative('devices/dev-1/telemetry', 'dev-1'), 'telemetry');
    assert.equal(deviceRelative('devices/dev-1/shadow/name/x/update', 'dev-1'), 'shadow/name/x/update');
    assert.equal(deviceRelative('devices/dev-1/#', 'dev-1'), '#');
    assert.equal(deviceRelative('devices/dev-1//', 'dev-1'), '/');
  });

  it('is null outside the subtree, for the subtree root itself, and for ids that merely share a prefix', () => {
    assert.equal(deviceRelative('devices/dev-1', 'dev-1'), null);
    assert.equal(deviceRelative('devices/dev-1/', 'dev-1'), null);
    assert.equal(deviceRelative('devices/A', 'A'), null);
    assert.equal(deviceRelative('devices/AB/telemetry', 'A'), null, 'devices/A vs devices/AB/...');
    assert.equal(deviceRelative('devices/A/telemetry', 'AB'), null);
    assert.equal(deviceRelative('devices/dev-10/telemetry', 'dev-1'), null);
    assert.equal(deviceRelative('devices/dev-1.x/telemetry', 'dev-1'), null);
    assert.equal(deviceRelative('xdevices/dev-1/telemetry', 'dev-1'), null);
    assert.equal(deviceRelative('/devices/dev-1/telemetry', 'dev-1'), null);
    assert.equal(deviceRelative('Devices/dev-1/telemetry', 'dev-1'), null, 'topics are case sensitive');
    assert.equal(deviceRelative('devices/DEV-1/telemetry', 'dev-1'), null);
    assert.equal(deviceRelative('devices/+/telemetry', 'dev-1'), null);
    assert.equal(deviceRelative('devices/#', 'dev-1'), null);
  });
});

describe('isGatewayOwned', () => {
  it('covers status, errors, commands/{id} and every shadow response (classic and named)', () => {
    for (const rel of [
      'status',
      'errors',
      'commands/c-1',
      'commands/+',
      'shadow/get/accepted',
      'shadow/get/rejected',
      'shadow/update/accepted',
      'shadow/update/rejected',
      'shadow/update/delta',
      'shadow/update/documents',
      'shadow/delete/accepted',
      'shadow/delete/rejected',
      'shadow/name/cfg/get/accepted',
      'shadow/name/cfg/update/delta',
      'shadow/name/cfg/update/documents',
      'shadow/name/cfg/delete/rejected',
    ]) {
      assert.equal(isGatewayOwned(rel), true, rel);
    }
  });

  it('leaves device-published topics alone', () => {
    for (const rel of [
      'telemetry',
      'commands/c-1/response',
      'commands',
      'shadow/get',
      'shadow/update',
      'shadow/delete',
      'shadow/name/cfg/update',
      'shadow/name/cfg/get',
      'shadow/update/accepted/x',
      'shadow/name/a/b/update/accepted',
      'shadow/name//update/accepted',
      'status/x',
      'errors/x',
      'xstatus',
      'inbox',
    ]) {
      assert.equal(isGatewayOwned(rel), false, rel);
    }
  });
});

describe('devicePublishVerdict', () => {
  it('allows topics below the own subtree', () => {
    ok(devicePublishVerdict('dev-1', 'devices/dev-1/telemetry'), 'telemetry');
    ok(devicePublishVerdict('dev-1', 'devices/dev-1/commands/c-1/response'), 'command response');
    ok(devicePublishVerdict('dev-1', 'devices/dev-1/shadow/update'), 'shadow update');
    ok(devicePublishVerdict('dev-1', 'devices/dev-1/shadow/name/cfg/get'), 'named shadow get');
    ok(devicePublishVerdict('dev-1', 'devices/dev-1/a/b/c'), 'any deeper topic');
  });

  it('refuses other devices, the subtree root, and prefix look-alikes', () => {
    refused(devicePublishVerdict('dev-1', 'devices/dev-2/telemetry'), 'another device', /devices\/dev-1\//);
    refused(devicePublishVerdict('A', 'devices/AB/telemetry'), 'devices/AB/... for device A');
    refused(devicePublishVerdict('AB', 'devices/A/telemetry'), 'devices/A/... for device AB');
    refused(devicePublishVerdict('dev-1', 'devices/dev-1'), 'the subtree root');
    refused(devicePublishVerdict('dev-1', 'devices/dev-1/'), 'the subtree root with a slash');
    refused(devicePublishVerdict('dev-1', 'telemetry'), 'a topic outside devices/');
    refused(devicePublishVerdict('dev-1', '$SYS/broker/clients'), '$SYS');
    refused(devicePublishVerdict('dev-1', '$iotgate/dropped'), 'internal topic');
  });

  it('refuses gateway-owned topics as read-only, including named shadow responses', () => {
    for (const rel of ['status', 'errors', 'commands/c-1', 'shadow/update/accepted', 'shadow/update/delta', 'shadow/name/cfg/get/rejected', 'shadow/name/cfg/update/documents']) {
      refused(devicePublishVerdict('dev-1', `devices/dev-1/${rel}`), rel, /read-only/);
    }
  });
});

describe('deviceSubscribeVerdict', () => {
  it('allows the own subtree, wildcards included', () => {
    for (const f of ['devices/dev-1/#', 'devices/dev-1/+', 'devices/dev-1/commands/+', 'devices/dev-1/status', 'devices/dev-1/errors', 'devices/dev-1/shadow/name/+/update/delta']) {
      ok(deviceSubscribeVerdict('dev-1', f), f);
    }
  });

  it('refuses wildcards that reach other devices, $SYS, $share and prefix look-alikes', () => {
    for (const f of ['#', '+/#', '+', 'devices/#', 'devices/+', 'devices/+/telemetry', 'devices/+/#', 'devices/dev-1', 'devices/dev-1/', 'devices/dev-2/#', 'devices/dev-10/#', '+/dev-1/#']) {
      refused(deviceSubscribeVerdict('dev-1', f), f);
    }
    refused(deviceSubscribeVerdict('A', 'devices/AB/#'), 'devices/AB/# for A');
    refused(deviceSubscribeVerdict('AB', 'devices/A/#'), 'devices/A/# for AB');
    for (const f of ['$SYS/#', '$SYS/+/new/clients', '$share/g/devices/dev-1/#', '$iotgate/dropped']) {
      refused(deviceSubscribeVerdict('dev-1', f), f, /\$/);
    }
  });
});

describe('serviceSubscribeVerdict', () => {
  it('admin may subscribe to anything, $SYS included', () => {
    for (const f of ['#', '$SYS/#', 'devices/+/commands/+', 'anything/else']) ok(serviceSubscribeVerdict(scopes('admin'), f), f);
    ok(serviceSubscribeVerdict(scopes('devices:read', 'admin'), '#'), 'admin among others');
  });

  it('telemetry:read gives devices/{+|id}/{telemetry|status|errors} only', () => {
    const s = scopes('telemetry:read');
    for (const f of ['devices/+/telemetry', 'devices/+/status', 'devices/+/errors', 'devices/dev-1/telemetry', 'devices/dev-1.a:b_c-d/status']) ok(serviceSubscribeVerdict(s, f), f);
    for (const f of [
      '#',
      '$SYS/#',
      'devices/#',
      'devices/+/#',
      'devices/+/+',
      'devices/+/commands/+',
      'devices/+/shadow/update',
      'devices/+/telemetry/#',
      'devices/+/telemetry/x',
      'devices/#/telemetry',
      'devices/bad id/telemetry',
      'devices//telemetry',
      'devices/+/inbox',
      'Devices/+/telemetry',
    ]) {
      refused(serviceSubscribeVerdict(s, f), f, /telemetry:read/);
    }
  });

  it('other scopes may not subscribe', () => {
    refused(serviceSubscribeVerdict(scopes(), 'devices/+/telemetry'), 'no scope', /scope/);
    refused(serviceSubscribeVerdict(scopes('devices:read', 'commands:send'), 'devices/+/telemetry'), 'unrelated scopes', /scope/);
  });
});

describe('servicePublishVerdict', () => {
  it('admin publishes anywhere but $SYS', () => {
    ok(servicePublishVerdict(scopes('admin'), 'devices/dev-1/commands/c-1'), 'a command');
    ok(servicePublishVerdict(scopes('admin'), 'devices/dev-1/inbox'), 'device inbox');
    refused(servicePublishVerdict(scopes('admin'), '$SYS/x/heartbeat'), '$SYS', /\$SYS/);
    refused(servicePublishVerdict(scopes('admin'), '$SYS'), '$SYS root');
  });

  it('non-admin services may not publish', () => {
    refused(servicePublishVerdict(scopes('telemetry:read'), 'devices/dev-1/telemetry'), 'telemetry:read', /admin/);
    refused(servicePublishVerdict(scopes(), 'x'), 'no scope', /admin/);
  });
});

describe('errorsTopic / statusTopic', () => {
  it('name the device topics', () => {
    assert.equal(errorsTopic('dev-1'), 'devices/dev-1/errors');
    assert.equal(statusTopic('dev-1'), 'devices/dev-1/status');
    assert.equal(isGatewayOwned(deviceRelative(errorsTopic('x'), 'x') ?? ''), true);
    assert.equal(isGatewayOwned(deviceRelative(statusTopic('x'), 'x') ?? ''), true);
  });
});

describe('topicProblem', () => {
  it('accepts ordinary topics and filters', () => {
    for (const t of ['a', 'devices/dev-1/telemetry', 'devices/+/status', '#', '/', 'ünïcødé/😀', '$SYS/x']) assert.equal(topicProblem(t, 32), null, t);
  });

  it('refuses the empty topic', () => {
    assert.equal(topicProblem('', 32), 'empty topic');
  });

  it('refuses a null character anywhere [MQTT-4.7.3-2]', () => {
    for (const t of ['\u0000', 'a\u0000b', 'devices/dev-1/x\u0000', '\u0000devices']) assert.match(topicProblem(t, 32) ?? '', /null character/, JSON.stringify(t));
  });

  it('refuses invalid UTF-8 as decoded by mqtt-packet (U+FFFD) [MQTT-1.5.3-1]', () => {
    const decoded = Buffer.from([0x64, 0x2f, 0xc3, 0x28]).toString('utf8'); // "d/" + a broken 2-byte sequence
    assert.ok(decoded.includes('\uFFFD'));
    assert.match(topicProblem(decoded, 32) ?? '', /UTF-8/);
    assert.match(topicProblem(Buffer.from([0xed, 0xa0, 0x80]).toString('utf8'), 32) ?? '', /UTF-8/, 'a UTF-16 surrogate encoded in UTF-8');
    assert.match(topicProblem(Buffer.from([0xff]).toString('utf8'), 32) ?? '', /UTF-8/);
  });

  it('bounds the length at 1024 characters', () => {
    assert.equal(topicProblem('a'.repeat(1024), 32), null);
    assert.match(topicProblem('a'.repeat(1025), 32) ?? '', /longer than 1024/);
  });

  it('bounds the depth at maxLevels, counting levels as slashes + 1', () => {
    assert.equal(topicProblem('a/b/c', 3), null);
    assert.equal(topicProblem('a/b/c/d', 3), 'topic has more than 3 levels');
    assert.equal(topicProblem('//', 3), null, 'three empty levels');
    assert.match(topicProblem('///', 3) ?? '', /more than 3 levels/);
    const deep = `devices/dev-1/${'a/'.repeat(120)}x`;
    assert.match(topicProblem(deep, 100) ?? '', /more than 100 levels/);
    assert.equal(topicProblem('x/'.repeat(31) + 'x', 32), null, '32 levels pass a limit of 32');
    assert.match(topicProblem('x/'.repeat(32) + 'x', 32) ?? '', /more than 32/);
  });

  it('checks length before content, so a huge topic is not scanned', () => {
    assert.match(topicProblem(`\u0000${'a'.repeat(2000)}`, 32) ?? '', /longer than 1024/);
  });
});
