'use strict';
// The browser client (web/wshub.js) in real Chromium against a wshub whose
// allocator fails one allocation in 40 (tests/hub/failmalloc.c, preloaded)
// while a backend publishes through the HTTP API. The server then refuses
// requests, closes the connection with 1011, leaves out a delivery it
// could not frame (docs/server.md, "When memory runs out"); the client
// reconnects, recovers from history, fetches the gaps it sees in the
// offsets and retries what it was refused. What the page's handler gets
// must be every message the API acknowledged, once each, in offset order,
// as published.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { MULT, CONFIG, T, Server, browserFor, sleep } = require('./harness.js');

const SHIM = process.env.WSH_FAILMALLOC;
const API_KEY = 'oom-test-api-key-0123456789';

async function publish(port, payload) {
  const r = await fetch(`http://127.0.0.1:${port}/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
    body: JSON.stringify({ channel: 'chat:oom', payload }),
    signal: AbortSignal.timeout(10000 * MULT),
  });
  const body = await r.text();
  return { status: r.status, offset: r.status === 200 ? JSON.parse(body).offsets[0] : null, body };
}

test('through failing allocations the browser client gets every acknowledged message once, in order',
  { skip: !SHIM && 'WSH_FAILMALLOC (the shim) is not built', timeout: 120000 * MULT }, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wshub-web-oom-'));
    const flag = path.join(dir, 'fail');
    const cfg = JSON.parse(fs.readFileSync(CONFIG, 'utf8'));
    cfg.api_key = API_KEY;
    cfg.namespaces.chat.history_size = 1000;
    const cfgPath = path.join(dir, 'config.json');
    fs.writeFileSync(cfgPath, JSON.stringify(cfg));
    const server = await new Server('127.0.0.1:0', cfgPath, [], {
      LD_PRELOAD: SHIM, WSH_FAILMALLOC_FLAG: flag, WSH_FAILMALLOC_ONE_IN: '40',
    }).ready();
    const ctx = await browserFor(t, () => server, [dir]);
    const page = await ctx.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`http://127.0.0.1:${server.port}/`);
    await page.evaluate(async (limitMs) => {
      const { WshubClient } = await import('/wshub.js');
      const c = new WshubClient(`ws://${location.host}/ws`);
      window.got = [];
      window.states = [];
      c.addEventListener('state', (e) => window.states.push(e.detail.code ? `${e.detail.state}:${e.detail.code}` : e.detail.state));
      const subscribed = new Promise((resolve) => {
        c.subscribe('chat:oom', {
          onMessage: (m) => window.got.push({ offset: m.offset, payload: m.payload }),
          onSubscribed: resolve,
        });
      });
      c.connect();
      await Promise.race([subscribed, new Promise((_, reject) => setTimeout(() => reject(new Error('not subscribed')), limitMs))]);
      window.client = c;
    }, T);

    const acked = new Map();
    const outcomes = {};
    fs.writeFileSync(flag, '');
    try {
      const until = Date.now() + 6000;
      for (let n = 0; n < 300 && Date.now() < until; n++) {
        let r;
        try {
          r = await publish(server.port, { n, pad: 'x'.repeat((n * 397) % 3000) });
        } catch (e) {
          r = { status: 'dropped' };
        }
        outcomes[r.status] = (outcomes[r.status] || 0) + 1;
        if (r.status === 200) acked.set(r.offset, { n, pad: 'x'.repeat((n * 397) % 3000) });
        await sleep(10);
      }
    } finally {
      fs.rmSync(flag, { force: true });
    }
    await sleep(100); // the shim looks at its flag every 20 ms
    // The spell's end is not sharp (the shim's look at its flag is made by
    // whichever thread allocates, and may be stored late): the first
    // request after it may still meet a failure. A server that did not
    // come back fails all three. (Seen once in CI: a dropped connection.)
    let last;
    for (let i = 0; ; i++) {
      try {
        last = await publish(server.port, { n: 'last' });
      } catch (e) {
        last = { status: 'dropped', body: String(e.cause || e) };
      }
      if (last.status === 200 || i === 2) break;
      await sleep(200);
    }
    assert.equal(last.status, 200, last.body);
    acked.set(last.offset, { n: 'last' });
    // Answers to the server's fault only, and some of them: the failures happened.
    assert.ok(Object.keys(outcomes).every((k) => ['200', '500', '503', 'dropped'].includes(k)), JSON.stringify(outcomes));
    assert.ok(outcomes[200] > 0 && Object.keys(outcomes).length > 1, JSON.stringify(outcomes));

    await page.waitForFunction((off) => window.got.some((m) => m.offset === off), last.offset, { timeout: 4 * T });
    const { got, states } = await page.evaluate(() => ({ got: window.got, states: window.states }));
    const offsets = got.map((m) => m.offset);
    for (let i = 1; i < offsets.length; i++) {
      assert.ok(offsets[i] > offsets[i - 1], `out of order or twice at ${i}: ${offsets.slice(Math.max(0, i - 3), i + 2)}`);
    }
    const byOffset = new Map(got.map((m) => [m.offset, m.payload]));
    for (const [off, payload] of acked) {
      assert.ok(byOffset.has(off), `acknowledged offset ${off} never reached the page; states ${states}`);
      const seen = byOffset.get(off);
      assert.ok(seen.n === payload.n && seen.pad === payload.pad,
        `offset ${off}: got n=${seen.n} pad ${seen.pad?.length}, published n=${payload.n} pad ${payload.pad?.length}`);
    }
    console.log(`published: ${JSON.stringify(outcomes)}; page states: ${states.join(' ')}`);
    await page.evaluate(() => window.client.disconnect());
    assert.deepEqual(errors, []);
    const r = await server.stop();
    assert.equal(r.code, 0, server.log.slice(-2000));
  });
