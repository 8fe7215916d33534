'use strict';
// Echo endpoint driven by the Node `ws` client.
const { test, describe, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const {
  startServer, open, nextMessage, noMessage, closed, withTimeout,
} = require('../helpers');

const MAX = 1048576;
const SIZES = [0, 1, 125, 126, 127, 128, 65535, 65536, 65537, MAX - 1, MAX];

function textOf(n) {
  const unit = 'wshub-µ-'; // 9 bytes in UTF-8
  let s = unit.repeat(Math.ceil(n / 9) + 1);
  let b = Buffer.from(s).subarray(0, n);
  // cut at a character boundary, pad with ASCII
  s = b.toString('utf8').replace(/\uFFFD$/, '');
  while (Buffer.byteLength(s) < n) s += 'x';
  while (Buffer.byteLength(s) > n) s = s.slice(0, -1);
  while (Buffer.byteLength(s) < n) s += 'x';
  return s;
}

describe('echo (node ws)', () => {
  let server;
  const extra = [];
  beforeEach(async () => {
    server = await startServer('--echo', '--max-message', MAX, '--max-fragments', 64);
  });
  afterEach(async () => {
    try {
      for (const ws of extra.splice(0)) ws.terminate();
      await server.checkAlive();
    } finally {
      await server.kill();
    }
  });

  for (const size of SIZES) {
    test(`text echo ${size} bytes`, async () => {
      const ws = await open(server.url('/echo'));
      extra.push(ws);
      const msg = textOf(size);
      assert.strictEqual(Buffer.byteLength(msg), size);
      ws.send(msg);
      const m = await nextMessage(ws);
      assert.strictEqual(m.isBinary, false, 'text must come back as text');
      assert.strictEqual(m.data.toString('utf8'), msg);
      const c = closed(ws);
      ws.close(1000);
      assert.strictEqual((await c).code, 1000);
    });
    test(`binary echo ${size} bytes`, async () => {
      const ws = await open(server.url('/echo'));
      extra.push(ws);
      const msg = crypto.randomBytes(size);
      ws.send(msg, { binary: true });
      const m = await nextMessage(ws);
      assert.strictEqual(m.isBinary, true, 'binary must come back as binary');
      assert.ok(Buffer.compare(m.data, msg) === 0, `echo of ${size} bytes differs`);
      const c = closed(ws);
      ws.close(1000);
      assert.strictEqual((await c).code, 1000);
    });
  }

  test('over-size message (max+1) closes with 1009', async () => {
    const ws = await open(server.url('/echo'));
    extra.push(ws);
    ws.send(crypto.randomBytes(MAX + 1));
    const r = await closed(ws);
    assert.strictEqual(r.code, 1009);
  });

  test('over-size fragmented message closes with 1009', async () => {
    const ws = await open(server.url('/echo'));
    extra.push(ws);
    const chunk = Buffer.alloc(MAX / 16, 7);
    for (let i = 0; i < 16; i++) ws.send(chunk, { binary: true, fin: false });
    ws.send(Buffer.from([1]), { binary: true, fin: true });
    const r = await closed(ws);
    assert.strictEqual(r.code, 1009);
  });

  test('fragmented text and binary messages are reassembled', async () => {
    const ws = await open(server.url('/echo'));
    extra.push(ws);
    ws.send('frag', { fin: false });
    ws.send('men', { fin: false });
    ws.send('ted €', { fin: true });
    let m = await nextMessage(ws);
    assert.strictEqual(m.isBinary, false);
    assert.strictEqual(m.data.toString(), 'fragmented €');
    const parts = [crypto.randomBytes(10), Buffer.alloc(0), crypto.randomBytes(70000)];
    parts.forEach((p, i) => ws.send(p, { binary: true, fin: i === parts.length - 1 }));
    m = await nextMessage(ws);
    assert.strictEqual(m.isBinary, true);
    assert.ok(Buffer.compare(m.data, Buffer.concat(parts)) === 0);
    // a text message cut inside a multi-byte character
    const euro = Buffer.from('a€b');
    ws.send(euro.subarray(0, 2), { binary: false, fin: false });
    ws.send(euro.subarray(2), { binary: false, fin: true });
    m = await nextMessage(ws);
    assert.strictEqual(m.data.toString(), 'a€b');
  });

  test('more fragments than --max-fragments closes with 1008', async () => {
    const ws = await open(server.url('/echo'));
    extra.push(ws);
    for (let i = 0; i < 64; i++) ws.send('x', { fin: i === 63 });
    const m = await nextMessage(ws);
    assert.strictEqual(m.data.toString(), 'x'.repeat(64));
    for (let i = 0; i < 65; i++) ws.send('y', { fin: i === 64 });
    const r = await closed(ws);
    assert.strictEqual(r.code, 1008);
  });

  test('ping gets a pong with the same payload', async () => {
    const ws = await open(server.url('/echo'));
    extra.push(ws);
    for (const p of [Buffer.alloc(0), Buffer.from('hello'), crypto.randomBytes(125)]) {
      const pong = withTimeout(new Promise((r) => ws.once('pong', r)), 5000, 'pong');
      ws.ping(p);
      const got = await pong;
      assert.ok(Buffer.compare(got, p) === 0, 'pong payload differs');
    }
    const pongs = [];
    const all = withTimeout(new Promise((resolve) => {
      ws.on('pong', (d) => { pongs.push(d.toString()); if (pongs.length === 10) resolve(); });
    }), 5000, '10 pongs');
    for (let i = 0; i < 10; i++) ws.ping(`p${i}`);
    await all;
    assert.deepStrictEqual(pongs, Array.from({ length: 10 }, (_, i) => `p${i}`));
    ws.send('after pings');
    assert.strictEqual((await nextMessage(ws)).data.toString(), 'after pings');
    await noMessage(ws, 50);
  });

  for (const code of [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
    3000, 3999, 4000, 4999]) {
    test(`close code ${code} is echoed`, async () => {
      const ws = await open(server.url('/echo'));
      extra.push(ws);
      ws.send('before');
      await nextMessage(ws);
      const c = closed(ws);
      ws.close(code, 'bye');
      const r = await c;
      assert.strictEqual(r.code, code);
    });
  }

  test('close without a code is answered with an empty close or 1000', async () => {
    const ws = await open(server.url('/echo'));
    extra.push(ws);
    const c = closed(ws);
    ws.close();
    const r = await c;
    assert.ok(r.code === 1005 || r.code === 1000, `got ${r.code}`);
  });
});
