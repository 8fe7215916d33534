'use strict';
// /raw/<channel> fan-out over 2 workers, /healthz, and graceful shutdown,
// driven by the Node `ws` client.
const { test, describe, afterEach } = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const {
  MULT, sleep, startServer, healthz, open, nextMessage, noMessage, closed, withTimeout,
} = require('../helpers');

describe('raw channels and shutdown (node ws)', () => {
  const servers = [];
  const sockets = [];
  afterEach(async () => {
    try {
      for (const ws of sockets.splice(0)) ws.terminate();
      for (const s of servers) {
        if (!s.stopped) await s.checkAlive();
        else s.checkLog();
      }
    } finally {
      for (const s of servers.splice(0)) await s.kill();
    }
  });

  async function start(...args) {
    const s = await startServer(...args);
    servers.push(s);
    return s;
  }

  test('fan-out: every other client on the channel gets each message, the sender does not', async () => {
    const s = await start('--workers', 2);
    const n = 12;
    const clients = [];
    for (let i = 0; i < n; i++) clients.push(await open(s.url('/raw/room')));
    const bystander = await open(s.url('/raw/elsewhere'));
    sockets.push(...clients, bystander);
    await sleep(100);
    const sent = clients.map((ws, i) => {
      const msg = i % 2 ? crypto.randomBytes(50 + i) : `text from ${i} ✓`;
      ws.send(msg, { binary: typeof msg !== 'string' });
      return msg;
    });
    for (let j = 0; j < n; j++) {
      const got = [];
      for (let k = 0; k < n - 1; k++) {
        const m = await nextMessage(clients[j]);
        got.push((m.isBinary ? 'b:' : 't:') + m.data.toString('hex'));
      }
      const want = sent.filter((_, i) => i !== j)
        .map((m) => (typeof m === 'string' ? 't:' + Buffer.from(m).toString('hex') : 'b:' + m.toString('hex')));
      assert.deepStrictEqual(got.sort(), want.sort(), `client ${j}`);
    }
    for (const ws of clients) await noMessage(ws, 20);
    await noMessage(bystander, 100);
  });

  test('fan-out preserves per-sender order and sizes up to the max', async () => {
    // queue room for the whole burst: order and sizes, not slow consumers
    const s = await start('--workers', 2, '--max-message', 1048576, '--max-queue', 16 << 20);
    const pub = await open(s.url('/raw/big'));
    const subs = [];
    for (let i = 0; i < 6; i++) subs.push(await open(s.url('/raw/big')));
    sockets.push(pub, ...subs);
    await sleep(100);
    const msgs = [0, 1, 125, 126, 65535, 65536, 1048576].map((n) => crypto.randomBytes(n));
    for (const m of msgs) pub.send(m, { binary: true });
    for (const ws of subs) {
      for (let i = 0; i < msgs.length; i++) {
        const m = await nextMessage(ws);
        assert.ok(m.isBinary && Buffer.compare(m.data, msgs[i]) === 0, `message ${i}`);
      }
    }
  });

  test('/healthz answers 200 ok', async () => {
    const s = await start('--workers', 2);
    const r = await healthz(s.port);
    assert.strictEqual(r.status, 200);
    assert.strictEqual(r.body, 'ok\n');
  });

  for (const [sig, code] of [['SIGTERM', 1012], ['SIGINT', 1001]]) {
    test(`${sig}: every peer gets close ${code}, exit status 0`, async () => {
      const s = await start('--workers', 2, '--echo', '--close-timeout', 2);
      const clients = [];
      for (let i = 0; i < 4; i++) clients.push(await open(s.url('/echo')));
      for (let i = 0; i < 4; i++) clients.push(await open(s.url('/raw/shut')));
      sockets.push(...clients);
      const closes = clients.map((ws) => closed(ws));
      s.stopped = true;
      s.proc.kill(sig);
      const rs = await Promise.all(closes);
      rs.forEach((r, i) => assert.strictEqual(r.code, code, `client ${i}`));
      const ex = await withTimeout(s.exit, 5000, 'server exit');
      assert.strictEqual(ex.code, 0, `exit ${JSON.stringify(ex)}; log ${s.log.slice(-1000)}`);
    });
  }
});

// keep MULT referenced for linters
void MULT;
