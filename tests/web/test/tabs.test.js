'use strict';
// One connection per browser, not per tab (web/wshub-shared.js and
// web/wshub-worker.js) in real Chromium: tabs of one profile that ask for
// the same server share one /ws session through a SharedWorker. The server
// sees one handshake, one `connect`, one subscription per channel and one
// presence entry; every tab gets every message of its channels once and in
// order, across a dropped connection; a closed tab's channels are left;
// the connection stays while any tab wants it and closes when none does;
// its tokens come from a tab's getToken.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { pathToFileURL } = require('node:url');

const { MULT, BIN, T, WEB_ROOT, browserFor, startServer, waitFor, pageWithConfig } = require('./harness.js');

// The samples of /metrics, by full series name, read by the dashboard's
// own parser (web/metrics.js, unit-tested in metrics.test.js).
async function scrape(port) {
  const { parseMetrics } = await import(pathToFileURL(path.join(WEB_ROOT, 'metrics.js')).href);
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  return Object.fromEntries(parseMetrics(await res.text()));
}

async function waitMetric(port, series, want) {
  const deadline = Date.now() + T;
  let got;
  while (Date.now() < deadline) {
    got = (await scrape(port))[series];
    if (got === want) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`${series} is ${got}, expected ${want}`);
}

// A tab with a shared client on window.tab: tab.got[channel] lists the
// `n` of each message its handler saw, tab.states every state.
async function openTab(ctx, port) {
  const page = await ctx.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') page.errors.push(m.text()); });
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.evaluate(async () => {
    const { createClient, SharedWshubClient } = await import('/wshub-shared.js');
    const c = createClient(`ws://${location.host}/ws`, { share: true });
    const tab = { c, shared: c instanceof SharedWshubClient, got: {}, subscribed: {}, states: [] };
    c.addEventListener('state', (e) => tab.states.push(e.detail.state));
    tab.sub = (ch) => {
      tab.got[ch] = [];
      c.subscribe(ch, {
        onMessage: (m) => tab.got[ch].push(m.payload.n),
        onSubscribed: (info) => { tab.subscribed[ch] = info; },
      });
    };
    window.tab = tab;
    c.connect();
  });
  await waitFor(page, () => window.tab.c.state === 'connected');
  assert.equal(await page.evaluate(() => window.tab.shared), true, 'Chromium has SharedWorker');
  return page;
}

// A connection of its own (a plain WshubClient) in page, on window.other,
// subscribed to channels (the demo's namespace lets only subscribers
// publish).
async function openOther(page, channels) {
  await page.evaluate(async (channels) => {
    const { WshubClient } = await import('/wshub.js');
    const other = new WshubClient(`ws://${location.host}/ws`);
    window.other = other;
    const subscribed = channels.map((ch) => new Promise((resolve) => other.subscribe(ch, { onSubscribed: resolve })));
    other.connect();
    await Promise.all(subscribed);
  }, channels);
}

const publishOther = (page, ch, from, to) => page.evaluate(async ({ ch, from, to }) => {
  for (let n = from; n <= to; n++) await window.other.publish(ch, { n });
}, { ch, from, to });

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test('tabs of one browser share one connection', { timeout: 120000 * MULT }, async (t) => {
  assert.ok(BIN, 'WSHUB_BIN is not set');
  const server = await startServer();
  const port = server.port;
  const ctx = await browserFor(t, () => server);
  const C = (type) => `wshub_commands_total{type="${type}"}`;

  const a = await openTab(ctx, port);
  const b = await openTab(ctx, port);
  await a.evaluate(() => { window.tab.sub('chat:tabs'); window.tab.sub('chat:only-a'); });
  await b.evaluate(() => window.tab.sub('chat:tabs'));
  await waitFor(a, () => window.tab.subscribed['chat:tabs'] && window.tab.subscribed['chat:only-a']);
  await waitFor(b, () => window.tab.subscribed['chat:tabs']);

  await t.test('one handshake, one connect, one subscription per channel', async () => {
    const ida = await a.evaluate(() => window.tab.c.client);
    assert.ok(ida, 'a connection id');
    assert.equal(await b.evaluate(() => window.tab.c.client), ida, 'both tabs are on one session');
    const m = await scrape(port);
    assert.equal(m[C('connect')], 1);
    assert.equal(m[C('subscribe')], 2, 'chat:tabs once for both tabs, chat:only-a');
    assert.equal(m['wshub_http_responses_total{code="101"}'], 1);
    const p = await b.evaluate(() => window.tab.c.presence('chat:tabs'));
    assert.equal(p.count, 1, JSON.stringify(p));
    assert.equal(p.clients[0].client, ida);
  });

  await openOther(b, ['chat:tabs', 'chat:only-a']);

  await t.test('every tab sees every message once, in order', async () => {
    await publishOther(b, 'chat:tabs', 1, 5);
    const ack = await a.evaluate(() => window.tab.c.publish('chat:tabs', { n: 6 }));
    assert.equal(ack.offset, 6);
    for (const page of [a, b]) {
      await waitFor(page, () => window.tab.got['chat:tabs'].length >= 6);
      assert.deepEqual(await page.evaluate(() => window.tab.got['chat:tabs']), range(1, 6));
    }
    await publishOther(b, 'chat:only-a', 1, 2);
    await waitFor(a, () => window.tab.got['chat:only-a'].length === 2);
    assert.equal(await b.evaluate(() => window.tab.got['chat:only-a']), undefined);
  });

  await t.test('a closed tab lets go of its channels; the others keep the connection', async () => {
    await a.close();
    await waitMetric(port, C('unsubscribe'), 1); // chat:only-a, noticed through the tab's lock
    assert.equal(await b.evaluate(() => window.tab.c.state), 'connected');
    await publishOther(b, 'chat:tabs', 7, 7);
    await waitFor(b, () => window.tab.got['chat:tabs'].length === 7);
    assert.equal((await scrape(port))[C('connect')], 2, "the tabs' and the independent client's");
  });

  await t.test('so does a tab that crashes (it says nothing; its lock goes)', async () => {
    const d = await openTab(ctx, port);
    await d.evaluate(() => window.tab.sub('chat:only-d'));
    await waitFor(d, () => window.tab.subscribed['chat:only-d']);
    await waitMetric(port, C('subscribe'), 5);
    d.on('crash', () => {});
    await d.goto('chrome://crash').catch(() => {});
    await waitMetric(port, C('unsubscribe'), 2);
    await d.close();
  });

  await t.test('a dropped connection: the tab gets everything once, in order', async () => {
    await b.evaluate(() => { window.tab.states.length = 0; window.tab.c.dropConnection(); });
    await waitFor(b, () => window.tab.states.includes('disconnected'));
    await publishOther(b, 'chat:tabs', 8, 12);
    await waitFor(b, () => window.tab.c.state === 'connected' && window.tab.got['chat:tabs'].length >= 12);
    assert.deepEqual(await b.evaluate(() => window.tab.got['chat:tabs']), range(1, 12));
    const states = await b.evaluate(() => window.tab.states);
    assert.deepEqual(states.slice(0, 2), ['disconnected', 'reconnecting'], JSON.stringify(states));
    assert.equal(states[states.length - 1], 'connected');
    assert.equal((await scrape(port))[C('connect')], 3, 'one more, for the reconnect');
  });

  await t.test('a new tab joins the live session', async () => {
    const c = await openTab(ctx, port);
    assert.equal(await c.evaluate(() => window.tab.c.client), await b.evaluate(() => window.tab.c.client));
    await c.evaluate(() => window.tab.sub('chat:tabs'));
    // Already subscribed for b: c hears where the channel is now.
    await waitFor(c, () => window.tab.subscribed['chat:tabs']);
    assert.equal(await c.evaluate(() => window.tab.subscribed['chat:tabs'].offset), 12);
    await publishOther(b, 'chat:tabs', 13, 13);
    await waitFor(c, () => window.tab.got['chat:tabs'].length === 1);
    await waitFor(b, () => window.tab.got['chat:tabs'].length === 13);
    assert.deepEqual(await c.evaluate(() => window.tab.got['chat:tabs']), [13]);
    const m = await scrape(port);
    assert.equal(m[C('connect')], 3);
    // The two tabs' channels, the independent client's two, the crashed
    // tab's, the re-subscribe after the drop; none for the new tab.
    assert.equal(m[C('subscribe')], 6);

    // b lets go: c still holds the connection.
    await b.evaluate(() => window.tab.c.disconnect());
    assert.equal(await b.evaluate(() => window.tab.c.state), 'disconnected');
    await publishOther(b, 'chat:tabs', 14, 14);
    await waitFor(c, () => window.tab.got['chat:tabs'].length === 2);
    assert.equal(await c.evaluate(() => window.tab.c.state), 'connected');
    // ... and when c goes too, nobody wants it: the worker closes it (1000).
    const closed = (await scrape(port))['wshub_closes_total{code="1000"}'] || 0;
    await c.close();
    await waitMetric(port, 'wshub_closes_total{code="1000"}', closed + 1);
    assert.equal(await b.evaluate(() => window.other.state), 'connected');
  });

  assert.deepEqual(b.errors, []);
});

// Tokens for the shared connection come from a tab's getToken: asked for
// the connect, and again when the server wants a refresh (a token 31 s
// from expiry is asked to refresh within a second). The refreshed token
// lives an hour, so exactly one refresh follows, however slow the run.
test('the shared connection asks a tab for its tokens', { timeout: 60000 * MULT }, async (t) => {
  assert.ok(BIN, 'WSHUB_BIN is not set');
  const secret = 'a-secret-for-the-shared-tabs-test-0123';
  const { server, page, errors } = await pageWithConfig(t, {
    namespaces: { chat: { history_size: 10 } },
    auth: { allow_anonymous: false, keys: [{ alg: 'HS256', secret }] },
  });
  await page.goto(`http://127.0.0.1:${server.port}/`);
  const r = await page.evaluate(async ({ secret, limitMs }) => {
    const b64 = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
    const enc = (o) => b64(new TextEncoder().encode(JSON.stringify(o)));
    const key = await crypto.subtle.importKey('raw', new TextEncoder().encode(secret),
      { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    const asked = [];
    const getToken = async () => {
      asked.push(Date.now());
      const head = enc({ alg: 'HS256', typ: 'JWT' });
      const life = asked.length === 1 ? 31 : 3600;
      const body = enc({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + life });
      const sig = await crypto.subtle.sign('HMAC', key, new TextEncoder().encode(`${head}.${body}`));
      return `${head}.${body}.${b64(new Uint8Array(sig))}`;
    };
    const { createClient } = await import('/wshub-shared.js');
    const c = createClient(`ws://${location.host}/ws`, { share: true, getToken });
    c.connect();
    const deadline = Date.now() + limitMs;
    while ((c.state !== 'connected' || asked.length < 2) && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 50));
    }
    return { state: c.state, user: c.user, asked: asked.length };
  }, { secret, limitMs: T });
  assert.equal(r.state, 'connected', JSON.stringify(r));
  assert.equal(r.user, 'alice');
  assert.ok(r.asked >= 2, JSON.stringify(r)); // the connect, then the refresh
  await waitMetric(server.port, 'wshub_commands_total{type="refresh"}', 1);
  const m = await scrape(server.port);
  assert.equal(m['wshub_commands_total{type="connect"}'], 1);
  assert.equal(m['wshub_messages_out_total{type="refreshed"}'], 1);
  assert.deepEqual(errors, []);
});
