'use strict';
// The demo chat page (web/index.html + chat.js + wshub.js) in real
// Chromium (Debian's /usr/bin/chromium, driven by playwright-core): two
// pages join one room; typing indicator, message, read receipt, escaping of
// user text, recovery after a dropped connection (nothing lost, nothing
// twice), the offline publish buffer, and the connection badge when the
// server stops and comes back. Also the admission wait, deflate echoes, and
// the live dashboard (web/dashboard.html) following the server's figures.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const {
  MULT, BIN, CONFIG, OUT, T, Server, browserFor, startServer, waitFor, pageWithConfig,
} = require('./harness.js');

const text = (page, sel) => page.locator(sel).innerText();

async function openChat(ctx, port, name, room) {
  const page = await ctx.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  // Chromium logs each refused WebSocket connection (server stopped) as an
  // error: expected here.
  page.on('console', (m) => {
    if (m.type() === 'error' && !/^WebSocket connection to .* failed/.test(m.text())) page.errors.push(m.text());
  });
  await page.goto(`http://127.0.0.1:${port}/`);
  // record every connection state the badge goes through
  await page.evaluate(() => {
    window.states = [];
    window.wshubChat.client.addEventListener('state', (e) => window.states.push(e.detail.state));
  });
  await page.fill('#name', name);
  await page.fill('#room', room);
  await page.click('#join button');
  await waitFor(page, () => document.getElementById('badge').dataset.state === 'connected');
  assert.equal(await page.isVisible('#join'), false, 'the join form is hidden after joining');
  assert.equal(await page.isVisible('#send'), true);
  return page;
}

// Offsets of the stored messages shown, in page order.
const shownOffsets = (page) => page.$$eval('#messages li[data-offset]', (lis) => lis.map((li) => Number(li.dataset.offset)));
const bubbles = (page) => page.$$eval('#messages li .bubble', (bs) => bs.map((b) => b.textContent));

// A server on the demo's configuration with some limits changed, and a
// page of it in a fresh Chromium whose errors are collected.
async function pageWithLimits(t, limits) {
  const cfg = JSON.parse(fs.readFileSync(CONFIG, 'utf8'));
  cfg.limits = { ...cfg.limits, ...limits };
  return pageWithConfig(t, cfg);
}

test('two people chat in real Chromium', { timeout: 150000 * MULT }, async (t) => {
  assert.ok(BIN, 'WSHUB_BIN is not set');
  let server = await startServer();
  const port = server.port;
  const ctx = await browserFor(t, () => server); // the server restarts below

  const a = await openChat(ctx, port, 'Alice', 'testroom');
  const b = await openChat(ctx, port, 'Bob', 'testroom');

  await t.test('presence lists both names', async () => {
    await waitFor(a, () => /Bob/.test(document.getElementById('presence').textContent));
    await waitFor(b, () => /Alice/.test(document.getElementById('presence').textContent));
    assert.match(await text(a, '#presence'), /Alice \(you\)/);
    assert.equal(await text(a, '#count'), '(2)');
  });

  await t.test('typing indicator, message, read receipt', async () => {
    await a.click('#text');
    await a.keyboard.type('Hello Bob', { delay: 20 });
    await waitFor(b, () => document.getElementById('typing').textContent === 'Alice is typing…');
    await b.screenshot({ path: path.join(OUT, 'chat-bob-typing.png') });
    await a.keyboard.press('Enter');
    await waitFor(b, () => [...document.querySelectorAll('#messages .bubble')].some((e) => e.textContent === 'Hello Bob'));
    // the indicator goes away with the message
    await waitFor(b, () => document.getElementById('typing').textContent === '');
    // Alice's own copy is stored (has an offset), not pending
    await waitFor(a, () => document.querySelector('#messages li.mine[data-offset]') !== null);
    assert.match(await text(b, '#messages li:last-child .meta'), /^Alice · /);
    // Bob's page is visible, so it marks the message read; Alice sees it
    await waitFor(a, () => {
      const li = document.querySelector('#messages li[data-offset]:last-child');
      return li && li.querySelector('.seen')?.textContent === 'seen by Bob';
    });
    // the receipt is not shown for the reader himself
    assert.equal(await b.locator('#messages .seen').count(), 0);
  });

  await t.test('the reply and its receipt go the other way', async () => {
    await b.fill('#text', 'Hi Alice');
    await b.press('#text', 'Enter');
    await waitFor(a, () => document.querySelector('#messages li:last-child .bubble')?.textContent === 'Hi Alice');
    await waitFor(b, () => document.querySelector('#messages li:last-child .seen')?.textContent === 'seen by Alice');
    // the earlier receipt moved down: only one "seen by Bob" on Alice's page
    await waitFor(a, () => document.querySelectorAll('#messages .seen').length === 1);
  });

  await t.test('user text is escaped', async () => {
    const evil = '<img src=x onerror="window.pwned=1"><b>bold</b>';
    await a.fill('#text', evil);
    await a.press('#text', 'Enter');
    await waitFor(b, (s) => [...document.querySelectorAll('#messages .bubble')].some((e) => e.textContent === s), evil);
    assert.equal(await b.locator('#messages img, #messages b').count(), 0);
    assert.equal(await b.evaluate(() => window.pwned), undefined);
  });

  await a.screenshot({ path: path.join(OUT, 'chat-alice.png') });
  await b.screenshot({ path: path.join(OUT, 'chat-bob.png') });

  await t.test('recovery after a dropped connection: nothing lost, nothing twice', async () => {
    // Bob's next reconnect waits ~0.5 s (random() near 1), long enough
    // for Alice to publish while he is away.
    await b.evaluate(() => { Math.random = () => 0.99; window.states.length = 0; });
    await b.evaluate(() => window.wshubChat.client.dropConnection());
    await waitFor(b, () => document.getElementById('badge').dataset.state !== 'connected');
    // Bob writes while offline: the publish waits in the buffer
    await b.fill('#text', 'written offline');
    await b.press('#text', 'Enter');
    assert.equal(await b.evaluate(() => document.querySelector('#messages li.pending .bubble')?.textContent), 'written offline');
    const sent = await a.evaluate(async () => {
      const { client, channel } = window.wshubChat;
      const acks = [];
      for (let i = 1; i <= 5; i++) acks.push(await client.publish(channel, { name: 'Alice', text: `while away ${i}` }));
      return acks.map((x) => x.offset);
    });
    await waitFor(b, () => document.getElementById('badge').dataset.state === 'connected');
    const states = await b.evaluate(() => window.states);
    assert.deepEqual(states.slice(0, 2), ['disconnected', 'reconnecting'], JSON.stringify(states));
    assert.ok(states.includes('connected'));
    for (const page of [a, b]) {
      await waitFor(page, () => [...document.querySelectorAll('#messages .bubble')].filter((e) => e.textContent === 'written offline').length === 1
        && document.querySelector('#messages li.pending') === null);
    }
    await waitFor(b, (last) => Number(document.querySelector('#messages li[data-offset]:last-child')?.dataset.offset) >= last, sent[4]);
    for (const page of [a, b]) {
      const offs = await shownOffsets(page);
      assert.deepEqual(offs, [...new Set(offs)].sort((x, y) => x - y), 'unique and in order');
      assert.deepEqual(offs, Array.from({ length: offs.length }, (_, i) => i + 1), 'no gaps');
      const texts = await bubbles(page);
      for (let i = 1; i <= 5; i++) assert.equal(texts.filter((s) => s === `while away ${i}`).length, 1);
    }
    assert.deepEqual(await shownOffsets(a), await shownOffsets(b));
    assert.equal(await b.evaluate(() => window.wshubChat.client.pendingPublishes), 0);
  });

  await t.test('a message stored twice under one mid is shown once', async () => {
    // What a sender's retry after the de-duplication window leaves in
    // history: two offsets, one message (chat.js keys stored messages by
    // mid as well as by offset).
    const offs = await a.evaluate(async () => {
      const { client, channel } = window.wshubChat;
      const p = { name: 'Alice', text: 'said twice', mid: 'test-dup-1' };
      const acks = [await client.publish(channel, p), await client.publish(channel, p)];
      acks.push(await client.publish(channel, { name: 'Alice', text: 'after the twice' }));
      return acks.map((x) => x.offset);
    });
    assert.equal(new Set(offs).size, 3, `both copies were stored: ${offs}`);
    for (const page of [a, b]) {
      await waitFor(page, () => [...document.querySelectorAll('#messages .bubble')].some((e) => e.textContent === 'after the twice'));
      const texts = await bubbles(page);
      assert.equal(texts.filter((s) => s === 'said twice').length, 1, JSON.stringify(texts));
    }
  });

  await t.test('a 45xx close is terminal: no reconnect', async () => {
    // A bad token gets error 2001 and close 4500 (anonymous access does not
    // rescue a connection that presented invalid credentials).
    const r = await a.evaluate(async () => {
      const { WshubClient } = await import('/wshub.js');
      const c = new WshubClient(`ws://${location.host}/ws`, { token: 'e30.e30.bad' });
      const states = [];
      const closes = [];
      c.addEventListener('state', (e) => { states.push(e.detail.state); if (e.detail.code) closes.push(e.detail.code); });
      c.connect();
      await new Promise((res) => setTimeout(res, 1500));
      return { states, closes, state: c.state };
    });
    assert.equal(r.state, 'closed', JSON.stringify(r));
    assert.deepEqual(r.states, ['connecting', 'disconnected', 'closed']);
    assert.equal(r.closes[0], 4500);
  });

  await t.test('badge shows the server going away and coming back', async () => {
    await server.stop('SIGTERM');
    for (const page of [a, b]) {
      await waitFor(page, () => ['disconnected', 'reconnecting'].includes(document.getElementById('badge').dataset.state));
    }
    assert.match(await text(a, '#badge'), /^(disconnected|reconnecting)/);
    await a.screenshot({ path: path.join(OUT, 'chat-alice-reconnecting.png') });
    // same port again; history is gone (memory broker): a new epoch
    server = await startServer(`127.0.0.1:${port}`);
    for (const page of [a, b]) {
      await page.waitForFunction(() => document.getElementById('badge').dataset.state === 'connected', null, { timeout: 30000 * MULT });
    }
    await waitFor(a, () => document.querySelectorAll('#messages li[data-offset]').length === 0);
    await waitFor(a, () => /Bob/.test(document.getElementById('presence').textContent));
    await a.fill('#text', 'after restart');
    await a.press('#text', 'Enter');
    await waitFor(b, () => document.querySelector('#messages li:last-child .bubble')?.textContent === 'after restart');
    assert.deepEqual(await shownOffsets(b), [1]);
  });

  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
});

// Over the server-wide admission rate (limits.admission_rate) a browser
// cannot read a refused upgrade's 503 or Retry-After, so /ws lets it
// through to hear `disconnect` with retry_after_ms and close 1013. The
// client waits that long (plus its jitter) and then gets in.
test('over the admission rate the browser client waits as told, then connects', { timeout: 60000 * MULT }, async (t) => {
  assert.ok(BIN, 'WSHUB_BIN is not set');
  const { server, page, errors } = await pageWithLimits(t, { admission_rate: 1, admission_burst: 1, max_connections_per_ip: 0 });
  await page.goto(`http://127.0.0.1:${server.port}/`); // plain HTTP: not counted
  const r = await page.evaluate(async (limitMs) => {
    const { WshubClient } = await import('/wshub.js');
    const until = (c, state) => new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${state}; now ${c.state}`)), limitMs);
      const check = () => { if (c.state === state) { clearTimeout(timer); resolve(); } };
      c.addEventListener('state', check);
      check();
    });
    const first = new WshubClient(`ws://${location.host}/ws`);
    first.connect();
    await until(first, 'connected'); // the burst of one
    const second = new WshubClient(`ws://${location.host}/ws`);
    const seen = [];
    second.addEventListener('state', (e) => seen.push({ state: e.detail.state, code: e.detail.code, delay: e.detail.delay }));
    const t0 = performance.now();
    second.connect();
    await until(second, 'connected');
    const ms = performance.now() - t0;
    const states = seen.slice();
    first.disconnect();
    second.disconnect();
    return { seen: states, ms };
  }, T);
  const refused = r.seen.find((x) => x.state === 'disconnected');
  assert.ok(refused && refused.code === 1013, JSON.stringify(r));
  const wait = r.seen.find((x) => x.state === 'reconnecting');
  // One token a second: told about 1000 ms, plus the client's jitter.
  assert.ok(wait && wait.delay >= 1000, JSON.stringify(r));
  assert.ok(r.ms >= 1000, JSON.stringify(r));
  assert.equal(r.seen[r.seen.length - 1].state, 'connected');
  assert.deepEqual(errors, []);
});

test('60 publishes at once, past the rate, go out paced: all acked, never closed', { timeout: 60000 * MULT }, async (t) => {
  // 20 a second, a burst of 10: sent all at once, 50 would be refused and
  // the server would close the client (4103) long before the end.
  const { server, page, errors } = await pageWithLimits(t, { publish_rate: 20, publish_burst: 10 });
  await page.goto(`http://127.0.0.1:${server.port}/`);
  const r = await page.evaluate(async (limitMs) => {
    const { WshubClient } = await import('/wshub.js');
    const c = new WshubClient(`ws://${location.host}/ws`);
    const states = [];
    c.addEventListener('state', (e) => states.push(e.detail.code ? `${e.detail.state}:${e.detail.code}` : e.detail.state));
    c.connect();
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`not connected: ${c.state}`)), limitMs);
      c.addEventListener('state', () => { if (c.state === 'connected') { clearTimeout(timer); resolve(); } });
    });
    c.subscribe('chat:pace', () => {});
    const t0 = performance.now();
    const acks = await Promise.all(Array.from({ length: 60 }, (_, i) => c.publish('chat:pace', { i })));
    const ms = performance.now() - t0;
    const left = c.pendingPublishes;
    const seen = states.slice(); // before our own disconnect
    c.disconnect();
    return { offsets: acks.map((a) => a.offset), states: seen, ms, left };
  }, T);
  // Each stored once. (One refused while those sent behind it were taken,
  // as a token came back meanwhile, is stored after them: the order holds
  // except around a refusal.)
  assert.deepEqual([...r.offsets].sort((a, b) => a - b), Array.from({ length: 60 }, (_, i) => i + 1), JSON.stringify(r));
  assert.equal(r.left, 0);
  assert.ok(!r.states.some((s) => s.startsWith('disconnected')), JSON.stringify(r.states));
  assert.ok(r.ms >= 2000, `60 publishes at 20 a second after a burst of 10 took ${r.ms} ms`);
  assert.ok(!/ev=rate_abuse/.test(server.log), server.log.slice(-2000));
  assert.deepEqual(errors, []);
});

// Chromium's own inflater against what wshub compresses: small messages
// get deflate streams sized to them (windows from 9 bits), larger ones
// reuse the worker's full-size stream after a reset, one after another.
test('permessage-deflate with Chromium: every size echoes intact', { timeout: 60000 * MULT }, async (t) => {
  assert.ok(BIN, 'WSHUB_BIN is not set');
  const server = await new Server('127.0.0.1:0', CONFIG, ['--deflate', '--echo', '--workers', '1']).ready();
  const ctx = await browserFor(t, () => server);
  const page = await ctx.newPage();
  await page.goto(`http://127.0.0.1:${server.port}/`);
  const r = await page.evaluate(async (limitMs) => {
    const words = ['{"channel":', '"chat"', ',"data":', 'hello ', 'world ', 'wshub ', '1234567890', '}\n', 'ü€ '];
    let seed = 7;
    const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed; };
    const make = (n) => {
      let out = '';
      while (out.length < n) out += (rnd() % 4 === 0) ? String.fromCharCode(33 + rnd() % 90) : words[rnd() % words.length];
      return out.slice(0, n);
    };
    const sizes = [64, 100, 249, 250, 263, 511, 600, 1000, 1500, 1700, 2048, 5000, 16384, 16385, 40000, 60000, 300, 20000];
    const ws = new WebSocket(`ws://${location.host}/echo`);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error('connect failed'));
      setTimeout(() => reject(new Error('connect timeout')), limitMs);
    });
    const sent = sizes.map(make);
    const got = [];
    const done = new Promise((resolve, reject) => {
      ws.onmessage = (e) => { got.push(e.data); if (got.length === sent.length) resolve(); };
      ws.onclose = (e) => reject(new Error(`closed ${e.code} after ${got.length}`));
      setTimeout(() => reject(new Error(`timeout after ${got.length}`)), limitMs);
    });
    for (const m of sent) ws.send(m);
    await done;
    ws.onclose = null;
    ws.close(1000);
    return { extensions: ws.extensions, same: sent.map((m, i) => m === got[i]) };
  }, T);
  assert.match(r.extensions, /^permessage-deflate/, 'deflate was agreed');
  assert.deepEqual(r.same, r.same.map(() => true));
});

test('the dashboard shows live figures from /metrics', { timeout: 60000 * MULT }, async (t) => {
  // The demo's configuration with an API key, to revoke a user below.
  const cfgDir = fs.mkdtempSync(path.join(os.tmpdir(), 'wshub-web-dash-'));
  const cfgPath = path.join(cfgDir, 'config.json');
  const apiKey = 'dashboard-test-key-0123456789';
  fs.writeFileSync(cfgPath, JSON.stringify({ ...JSON.parse(fs.readFileSync(CONFIG, 'utf8')), api_key: apiKey }));
  const server = await new Server('127.0.0.1:0', cfgPath, ['--echo', '--workers', '2']).ready();
  const ctx = await browserFor(t, () => server, [cfgDir]);
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  await page.goto(`http://127.0.0.1:${server.port}/dashboard`);
  assert.equal(await page.title(), 'wshub dashboard');
  await waitFor(page, () => document.getElementById('badge').dataset.state === 'connected');
  const tile = (id) => page.$eval(`#tile-${id}`, (el) => Number(el.dataset.value || 'NaN'));

  // Three WebSocket clients of the page itself, each echoing 40 messages,
  // then one of them closes with 1000: every figure must show it.
  await page.evaluate(async (limitMs) => {
    window.sockets = [];
    for (let i = 0; i < 3; i++) {
      const ws = new WebSocket(`ws://${location.host}/echo`);
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        setTimeout(() => reject(new Error('connect timeout')), limitMs);
      });
      window.sockets.push(ws);
    }
    await Promise.all(window.sockets.map((ws) => new Promise((resolve) => {
      let n = 0;
      ws.onmessage = () => { if (++n === 40) resolve(); };
      for (let i = 0; i < 40; i++) ws.send(`message ${i}`);
    })));
  }, T);
  await waitFor(page, () => Number(document.getElementById('tile-connections').dataset.value) >= 3);
  await waitFor(page, () => Number(document.getElementById('tile-msgs-in').dataset.value) > 0);
  await waitFor(page, () => Number(document.getElementById('tile-upgrades').dataset.value) > 0);
  assert.ok((await tile('rss')) > 1e6, 'resident memory is shown');
  await waitFor(page, () => Number(document.getElementById('tile-frames-out').dataset.value) > 0);
  // The busiest worker's share of time at work, as a percentage.
  await waitFor(page, () => Number(document.getElementById('tile-busiest-worker').dataset.value) > 0);
  assert.ok((await tile('busiest-worker')) <= 100, 'a worker is at most 100 % busy');
  // The workers table: one row each, their connections summing to the
  // tile's (the page's three sockets among them), each busy share 0-100.
  await waitFor(page, () => {
    const rows = [...document.querySelectorAll('#workers tbody tr')];
    const conns = rows.reduce((a, tr) => a + Number(tr.dataset.connections), 0);
    return rows.length === 2 && conns >= 3 && rows.every((tr) => tr.dataset.busy !== '') &&
      conns === Number(document.getElementById('tile-connections').dataset.value);
  });
  const rows = await page.$$eval('#workers tbody tr', (trs) => trs.map((tr) => [tr.dataset.worker, Number(tr.dataset.busy)]));
  assert.deepEqual(rows.map(([id]) => id), ['0', '1']);
  assert.ok(rows.every(([, b]) => b >= 0 && b <= 100), JSON.stringify(rows));
  await page.evaluate(() => window.sockets[0].close(1000));
  await waitFor(page, () => [...document.querySelectorAll('#closes th')].some((th) => th.textContent === '1000'));
  await waitFor(page, () => [...document.querySelectorAll('#statuses th')].some((th) => th.textContent === '101'));
  // A user revoked through the HTTP API shows in the revocations tile.
  assert.equal(await tile('revocations'), 0);
  const r = await fetch(`http://127.0.0.1:${server.port}/api/disconnect`, {
    method: 'POST', headers: { 'X-API-Key': apiKey }, body: JSON.stringify({ user: 'mallory', revoke_s: 600 }),
  });
  assert.equal(r.status, 200);
  await waitFor(page, () => Number(document.getElementById('tile-revocations').dataset.value) === 1);
  assert.deepEqual(await page.$$eval('#problems th', (ths) => ths.map((th) => th.textContent)), ['none']);
  assert.match(await text(page, '#uptime'), /^up 0d 0h \d+m$/);
  await page.screenshot({ path: path.join(OUT, 'dashboard.png'), fullPage: true });
  assert.deepEqual(errors, []);
});
