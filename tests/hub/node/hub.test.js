'use strict';
// The /ws JSON protocol driven by the Node `ws` client: connect (header,
// query and connect payload), subscribe, publish + message, presence,
// join/leave, history, signal, recovery, over 2 workers. Tokens are HS256,
// signed here with node:crypto.
const { test, describe, afterEach } = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startServer, open, nextMessage, closed, sleep, withTimeout } = require('../../integration/node/helpers');

const SECRET = 'hub-test-secret-0123456789abcdef-0123456789';

function b64u(x) {
  return Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');
}
function token(sub, claims = {}) {
  const h = b64u({ alg: 'HS256', typ: 'JWT' });
  const p = b64u({ sub, exp: Math.floor(Date.now() / 1000) + 3600, ...claims });
  const s = crypto.createHmac('sha256', SECRET).update(`${h}.${p}`).digest('base64url');
  return `${h}.${p}.${s}`;
}

const CONFIG = {
  namespaces: { chat: { history_size: 100, presence: true, join_leave: true, recover: true } },
  auth: { allow_anonymous: false, keys: [{ alg: 'HS256', secret: SECRET }] },
  limits: { publish_rate: 1000, publish_burst: 1000 },
};
const TS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

class Hub {
  constructor(ws) { this.ws = ws; this.pending = []; this.nextId = 1; }
  async read(ms = 5000) {
    const m = await nextMessage(this.ws, ms);
    assert.strictEqual(m.isBinary, false);
    const o = JSON.parse(m.data.toString());
    const keys = Object.keys(o);
    assert.strictEqual(keys[0], 'type', m.data.toString());
    assert.strictEqual(keys[keys.length - 1], 'timestamp', m.data.toString());
    assert.match(o.timestamp, TS);
    return o;
  }
  async expect(pred, what, ms = 5000) {
    const i = this.pending.findIndex(pred);
    if (i >= 0) return this.pending.splice(i, 1)[0];
    const deadline = Date.now() + ms;
    for (;;) {
      const o = await this.read(Math.max(1, deadline - Date.now()));
      if (pred(o)) return o;
      this.pending.push(o);
    }
  }
  async cmd(type, channel, payload, extra = {}) {
    const id = this.nextId++;
    const msg = { type, id, ...extra };
    if (channel !== undefined) msg.channel = channel;
    if (payload !== undefined) msg.payload = payload;
    this.ws.send(JSON.stringify(msg));
    return this.expect((o) => o.id === id, `reply to ${type}`);
  }
  push(type, channel) {
    return this.expect((o) => o.type === type && o.id === undefined && o.channel === channel, `push ${type}`);
  }
}

describe('/ws hub protocol (node ws)', () => {
  const servers = [];
  const sockets = [];
  afterEach(async () => {
    try {
      for (const ws of sockets.splice(0)) ws.terminate();
      for (const s of servers) {
        if (s.exited) throw new Error(`wshub died: ${s.log.slice(-2000)}`);
        // a fresh /ws client still connects
        const c = await connect(s, token('__alive__'), 'header');
        const cl = closed(c.ws);
        c.ws.close(1000);
        assert.strictEqual((await cl).code, 1000);
        await s.checkAlive();
      }
    } finally {
      for (const s of servers.splice(0)) await s.kill();
    }
  });

  async function start() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wshub-hub-node-'));
    const cfg = path.join(dir, 'config.json');
    fs.writeFileSync(cfg, JSON.stringify(CONFIG), { mode: 0o600 });
    const s = await startServer('--workers', 2, '--config', cfg);
    servers.push(s);
    return s;
  }

  async function connect(s, tok, how) {
    let url = s.url('/ws');
    const opts = {};
    if (how === 'header') opts.headers = { Authorization: `Bearer ${tok}` };
    if (how === 'query') url += `?token=${tok}`;
    const ws = await open(url, opts);
    sockets.push(ws);
    const c = new Hub(ws);
    const r = await c.cmd('connect', undefined, how === 'payload' ? { token: tok } : undefined);
    assert.strictEqual(r.type, 'connected', JSON.stringify(r));
    c.info = r.payload;
    return c;
  }

  test('connect three ways, subscribe, publish, message, presence, join/leave', async () => {
    const s = await start();
    const a = await connect(s, token('alice', { info: { name: 'Ann' } }), 'header');
    const b = await connect(s, token('bob'), 'query');
    const c = await connect(s, token('carol'), 'payload');
    assert.deepStrictEqual([a.info.user, b.info.user, c.info.user], ['alice', 'bob', 'carol']);
    const sa = await a.cmd('subscribe', 'chat:node');
    assert.strictEqual(sa.type, 'subscribed');
    assert.strictEqual(sa.payload.offset, 0);
    for (const x of [b, c]) assert.strictEqual((await x.cmd('subscribe', 'chat:node')).type, 'subscribed');
    // Bob's and Carol's joins, in either order: each is published on its
    // own connection's worker, and joins of two clients on two workers
    // are not ordered among themselves (bob's may wait in alice's
    // worker's inbox while carol's, made there, goes out at once).
    const joins = [await a.push('join', 'chat:node'), await a.push('join', 'chat:node')];
    joins.sort((x, y) => x.payload.user.localeCompare(y.payload.user));
    assert.deepStrictEqual(joins.map((j) => j.payload), [
      { user: 'bob', client: b.info.client, info: null },
      { user: 'carol', client: c.info.client, info: null },
    ]);

    const ack = await a.cmd('publish', 'chat:node', { text: 'hello from node' }, { msg_id: 'n-1' });
    assert.deepStrictEqual([ack.type, ack.payload.offset], ['ack', 1]);
    for (const x of [a, b, c]) {
      const m = await x.push('message', 'chat:node');
      assert.deepStrictEqual([m.offset, m.epoch, m.from, m.payload], [1, sa.payload.epoch, 'alice', { text: 'hello from node' }]);
    }
    const dup = await a.cmd('publish', 'chat:node', { text: 'hello from node' }, { msg_id: 'n-1' });
    assert.deepStrictEqual([dup.type, dup.payload.offset], ['ack', 1]);

    const pr = await b.cmd('presence', 'chat:node');
    assert.strictEqual(pr.payload.count, 3);
    const users = pr.payload.clients.map((e) => [e.user, e.client, JSON.stringify(e.info)]).sort();
    assert.deepStrictEqual(users, [
      ['alice', a.info.client, '{"name":"Ann"}'], ['bob', b.info.client, 'null'], ['carol', c.info.client, 'null'],
    ].sort());

    c.ws.send(JSON.stringify({ type: 'signal', channel: 'chat:node', payload: { typing: true } }));
    for (const x of [a, b]) {
      const sg = await x.push('signal', 'chat:node');
      assert.deepStrictEqual([sg.from, sg.payload], ['carol', { typing: true }]);
    }

    // a killed (terminated) client leaves
    c.ws.terminate();
    const lv = await a.push('leave', 'chat:node');
    assert.deepStrictEqual(lv.payload, { user: 'carol', client: c.info.client, info: null });
    const pr2 = await a.cmd('presence', 'chat:node');
    assert.strictEqual(pr2.payload.count, 2);

    const h = await a.cmd('history', 'chat:node', { since: 0 });
    assert.deepStrictEqual(h.payload.messages.map((m) => m.offset), [1]);
    // the duplicate was not delivered
    await sleep(200);
    assert.ok(!b.pending.some((o) => o.type === 'message') && b.ws.inbox.every((m) => JSON.parse(m.data).type !== 'message'));
  });

  test('recovery after a reconnect: the missed messages, in order, once', async () => {
    const s = await start();
    const pub = await connect(s, token('pub'), 'header');
    await pub.cmd('subscribe', 'chat:rec');
    let sub = await connect(s, token('sub'), 'header');
    const first = await sub.cmd('subscribe', 'chat:rec');
    for (let i = 1; i <= 3; i++) await pub.cmd('publish', 'chat:rec', { i });
    let last;
    for (let i = 1; i <= 3; i++) last = await sub.push('message', 'chat:rec');
    const cl = closed(sub.ws);
    sub.ws.close(1000);
    await cl;
    for (let i = 4; i <= 13; i++) await pub.cmd('publish', 'chat:rec', { i });
    sub = await connect(s, token('sub'), 'header');
    const r = await sub.cmd('subscribe', 'chat:rec', { recover: { offset: last.offset, epoch: last.epoch } });
    assert.deepStrictEqual(r.payload, { offset: 13, epoch: first.payload.epoch, recovered: true });
    const offs = [];
    for (let i = 4; i <= 13; i++) offs.push((await sub.push('message', 'chat:rec')).offset);
    assert.deepStrictEqual(offs, [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    await pub.cmd('publish', 'chat:rec', { i: 14 });
    assert.strictEqual((await sub.push('message', 'chat:rec')).offset, 14);
    await sleep(200);
    assert.strictEqual(sub.ws.inbox.length, 0);
  });
});
