'use strict';
// permessage-deflate (RFC 7692) with the Node `ws` client: negotiation
// answers for several perMessageDeflate option sets, compressed echoes of
// text and binary of many sizes, fragmented compressed messages, /raw
// fan-out between compressed and uncompressed clients, and a server
// without --deflate ignoring the offer. Helpers (server start/stop by pid,
// alive check at the end) come from the integration suite.
const { test, describe, afterEach } = require('node:test');
const assert = require('node:assert');
const crypto = require('node:crypto');
const path = require('node:path');
const {
  MULT, sleep, startServer, nextMessage, noMessage, closed, withTimeout, WebSocket,
} = require(path.join(__dirname, '..', '..', 'integration', 'node', 'helpers'));

const MAX = 1048576;
const SIZES = [0, 1, 63, 64, 65, 125, 126, 1000, 4096, 65535, 65536, 300000, MAX];

// Like helpers.open, but records the server's Sec-WebSocket-Extensions.
function openWs(url, perMessageDeflate) {
  const ws = new WebSocket(url, { perMessageDeflate, maxPayload: 0 });
  ws.inbox = [];
  ws.waiters = [];
  ws.extHeader = undefined;
  ws.on('upgrade', (res) => { ws.extHeader = res.headers['sec-websocket-extensions']; });
  ws.on('message', (data, isBinary) => {
    const m = { data, isBinary };
    if (ws.waiters.length) ws.waiters.shift()(m); else ws.inbox.push(m);
  });
  ws.closeInfo = new Promise((resolve) => {
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
  });
  ws.on('error', (e) => { ws.lastError = e; });
  return withTimeout(new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  }), 5000, `open ${url}`);
}

// Exactly n bytes of valid UTF-8 with multibyte characters, as a string.
function textOf(n, seed = 0) {
  const alphabet = 'Grüße ÄÖÜ ß — ελληνικά; русский; 日本語、漢字。한국어 🙂🚀 ∑√∞ € abc xyz 0123 ';
  let s = '';
  let bytes = 0;
  let i = seed;
  while (true) {
    const ch = [...alphabet][i % [...alphabet].length];
    const b = Buffer.byteLength(ch);
    if (bytes + b > n) break;
    s += ch;
    bytes += b;
    i += 7;
  }
  return s + '.'.repeat(n - bytes);
}

function binaryOf(n) {
  const h = Math.floor(n / 2);
  return Buffer.concat([Buffer.alloc(h, 'abcdefgh'), crypto.randomBytes(n - h)]);
}

function parseExt(h) {
  // 'permessage-deflate; a; b=1' -> { name, params: {a: true, b: '1'} }
  assert.ok(h, 'no Sec-WebSocket-Extensions in the 101');
  assert.ok(!h.includes(','), `more than one extension: ${h}`);
  const [name, ...ps] = h.split(';').map((x) => x.trim());
  const params = {};
  for (const p of ps) {
    const [k, v] = p.split('=').map((x) => x.trim());
    assert.ok(!(k in params), `duplicate ${k} in ${h}`);
    params[k] = v === undefined ? true : v;
  }
  return { name, params };
}

const OPTION_SETS = [
  // [name, ws perMessageDeflate options, expected answer params]
  ['defaults, threshold 0', { threshold: 0 },
    { server_no_context_takeover: true, client_max_window_bits: '10' }],
  ['client_no_context_takeover', { threshold: 0, clientNoContextTakeover: true },
    { server_no_context_takeover: true, client_no_context_takeover: true, client_max_window_bits: '10' }],
  ['server_no_context_takeover + server window 9', { threshold: 0, serverNoContextTakeover: true, serverMaxWindowBits: 9 },
    { server_no_context_takeover: true, server_max_window_bits: '9', client_max_window_bits: '10' }],
  ['client window 9', { threshold: 0, clientMaxWindowBits: 9 },
    { server_no_context_takeover: true, client_max_window_bits: '9' }],
  ['server window 8, client 15', { threshold: 0, serverMaxWindowBits: 8, clientMaxWindowBits: 15 },
    { server_no_context_takeover: true, server_max_window_bits: '8', client_max_window_bits: '10' }],
  ['ws default threshold (1024)', true,
    { server_no_context_takeover: true, client_max_window_bits: '10' }],
];

describe('permessage-deflate (node ws)', () => {
  const servers = [];
  const sockets = [];
  afterEach(async () => {
    try {
      for (const ws of sockets.splice(0)) ws.terminate();
      for (const s of servers) await s.checkAlive();
    } finally {
      for (const s of servers.splice(0)) await s.kill();
    }
  });

  async function start(...args) {
    const s = await startServer(...args);
    servers.push(s);
    return s;
  }

  for (const [name, opts, want] of OPTION_SETS) {
    test(`compressed echo of text and binary, all sizes: ${name}`, async () => {
      const s = await start('--echo', '--deflate', '--max-message', MAX);
      const ws = await openWs(s.url('/echo'), opts);
      sockets.push(ws);
      const ext = parseExt(ws.extHeader);
      assert.strictEqual(ext.name, 'permessage-deflate');
      assert.deepStrictEqual(ext.params, want, ws.extHeader);
      assert.strictEqual(ws.extensions, 'permessage-deflate');
      for (const n of SIZES) {
        const t = textOf(n, n);
        ws.send(t);
        let m = await nextMessage(ws, 10000, `echo of text of ${n} bytes`);
        assert.ok(!m.isBinary && m.data.toString() === t, `text of ${n} bytes`);
        const b = binaryOf(n);
        ws.send(b);
        m = await nextMessage(ws, 10000, `echo of binary of ${n} bytes`);
        assert.ok(m.isBinary && Buffer.compare(m.data, b) === 0, `binary of ${n} bytes`);
      }
      // a stream of similar messages in flight at once
      const msgs = [];
      for (let i = 0; i < 200; i++) msgs.push(JSON.stringify({ i, name: `user ${i}`, tags: ['a', 'b', i % 7], pad: textOf(i * 10, i) }));
      for (const m of msgs) ws.send(m);
      for (let i = 0; i < msgs.length; i++) {
        const m = await nextMessage(ws, 10000, `echo of stream message ${i}`);
        assert.strictEqual(m.data.toString(), msgs[i], `stream message ${i}`);
      }
      const c = closed(ws);
      ws.close(1000);
      assert.strictEqual((await c).code, 1000);
    });
  }

  test('fragmented compressed messages (ws compresses each fragment, RSV1 on the first)', async () => {
    const s = await start('--echo', '--deflate', '--max-message', MAX, '--max-fragments', 10000);
    const ws = await openWs(s.url('/echo'), { threshold: 0 });
    sockets.push(ws);
    assert.strictEqual(ws.extensions, 'permessage-deflate');
    for (const sizes of [[1, 1, 1], [100, 0, 5000, 7], [65536, 65536, 65536, 65536], Array(300).fill(3)]) {
      const parts = sizes.map((n, i) => textOf(n, i));
      parts.forEach((p, i) => ws.send(p, { fin: i === parts.length - 1, compress: true }));
      let m = await nextMessage(ws);
      assert.ok(!m.isBinary);
      assert.strictEqual(m.data.toString(), parts.join(''));
      const bparts = sizes.map((n) => binaryOf(n));
      bparts.forEach((p, i) => ws.send(p, { binary: true, fin: i === bparts.length - 1, compress: true }));
      m = await nextMessage(ws);
      assert.ok(m.isBinary && Buffer.compare(m.data, Buffer.concat(bparts)) === 0);
    }
    // uncompressed messages on the compressed connection still echo
    ws.send(textOf(5000), { compress: false });
    assert.strictEqual((await nextMessage(ws)).data.toString(), textOf(5000));
  });

  test('/raw fan-out between compressed and uncompressed clients', async () => {
    const s = await start('--workers', 2, '--deflate', '--max-message', MAX, '--max-queue', 32 << 20);
    const optsList = [{ threshold: 0 }, false, { threshold: 0, serverMaxWindowBits: 9, clientMaxWindowBits: 9 },
      { clientNoContextTakeover: true }, false, { serverMaxWindowBits: 12 }];
    const clients = [];
    for (let i = 0; i < 12; i++) {
      const o = optsList[i % optsList.length];
      const ws = await openWs(s.url('/raw/node-mix'), o);
      clients.push(ws);
      sockets.push(ws);
      assert.strictEqual(ws.extensions, o ? 'permessage-deflate' : '', `client ${i}`);
    }
    await sleep(150);
    const sent = clients.map((ws, i) => {
      const m = i % 2 ? binaryOf(1 + 17000 * i) : textOf(3 + 9000 * i, i);
      ws.send(m, { binary: typeof m !== 'string' });
      return m;
    });
    const key = (m) => (typeof m === 'string' ? 't:' + Buffer.from(m).toString('base64') : 'b:' + m.toString('base64'));
    for (let j = 0; j < clients.length; j++) {
      const got = [];
      for (let k = 0; k < clients.length - 1; k++) {
        let m;
        try {
          m = await nextMessage(clients[j]);
        } catch (e) {
          throw new Error(`client ${j} (${JSON.stringify(optsList[j % optsList.length])}) got only ${k} of ` +
            `${clients.length - 1} messages: ${got.map((g) => g.slice(0, 12)).join(' ')}; ` +
            `closed: ${JSON.stringify(clients[j].readyState)} ${clients[j].lastError || ''}: ${e.message}`);
        }
        got.push(m.isBinary ? 'b:' + m.data.toString('base64') : 't:' + m.data.toString('base64'));
      }
      const want = sent.filter((_, i) => i !== j).map(key);
      assert.deepStrictEqual(got.sort(), want.sort(), `client ${j}`);
    }
    for (const ws of clients) await noMessage(ws, 20);
  });

  test('a server without --deflate ignores the offer', async () => {
    const s = await start('--echo');
    const ws = await openWs(s.url('/echo'), { threshold: 0 });
    sockets.push(ws);
    assert.strictEqual(ws.extHeader, undefined);
    assert.strictEqual(ws.extensions, '');
    const t = textOf(60000);
    ws.send(t);
    assert.strictEqual((await nextMessage(ws)).data.toString(), t);
  });
});

void MULT;
