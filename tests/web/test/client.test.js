'use strict';
// The browser client (web/wshub.js) in real Chromium against a real wshub,
// where its subscriptions meet what the unit tests (gaps.test.js) script:
// a namespace with recovery off across a reconnect, and a subscription
// left before its subscribe was answered. What the page's handlers get is
// checked against what the server's HTTP API published.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');

const { MULT, CONFIG, pageWithConfig, waitFor } = require('./harness.js');

const API_KEY = 'client-test-api-key-0123456789';

async function publish(port, channel, payload) {
  const r = await fetch(`http://127.0.0.1:${port}/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
    body: JSON.stringify({ channel, payload }),
    signal: AbortSignal.timeout(10000 * MULT),
  });
  const body = await r.text();
  assert.equal(r.status, 200, body);
  return JSON.parse(body).offsets[0];
}

// The demo's configuration, an API key, and `feed`, a namespace that
// keeps history but does not recover.
async function start(t) {
  const cfg = JSON.parse(fs.readFileSync(CONFIG, 'utf8'));
  cfg.api_key = API_KEY;
  cfg.namespaces.feed = { history_size: 10, recover: false, publish: 'server' };
  const { server, page, errors } = await pageWithConfig(t, cfg);
  await page.goto(`http://127.0.0.1:${server.port}/`);
  await page.evaluate(async () => {
    const { WshubClient } = await import('/wshub.js');
    window.c = new WshubClient(`ws://${location.host}/ws`);
    window.log = [];
    window.track = (channel) => window.c.subscribe(channel, {
      onMessage: (m) => window.log.push(`${channel} message ${m.payload.n}`),
      onSubscribed: (s) => window.log.push(`${channel} subscribed recovered=${s.recovered} resubscribe=${s.resubscribe}`),
      onError: (e) => window.log.push(`${channel} error ${e.code}`),
    });
    const connected = new Promise((resolve) => window.c.addEventListener('state', (e) => {
      if (e.detail.state === 'connected') resolve();
    }));
    window.c.connect();
    await connected;
  });
  return { server, page, errors };
}

const logged = (page, line) => waitFor(page, (l) => window.log.includes(l), line);

test('a namespace with recovery off goes on after a reconnect', { timeout: 60000 * MULT }, async (t) => {
  const { server, page, errors } = await start(t);
  await page.evaluate(() => { window.track('feed:prices'); window.track('chat:room'); });
  await logged(page, 'feed:prices subscribed recovered=false resubscribe=false');
  await logged(page, 'chat:room subscribed recovered=false resubscribe=false');
  await publish(server.port, 'feed:prices', { n: 1 });
  await publish(server.port, 'chat:room', { n: 1 });
  await logged(page, 'feed:prices message 1');
  await logged(page, 'chat:room message 1');

  await page.evaluate(() => window.c.dropConnection());
  // chat recovers; feed, refused recovery (4004), subscribes afresh and says so.
  await logged(page, 'chat:room subscribed recovered=true resubscribe=true');
  await logged(page, 'feed:prices subscribed recovered=false resubscribe=true');
  await publish(server.port, 'feed:prices', { n: 2 });
  await logged(page, 'feed:prices message 2');
  const log = await page.evaluate(() => window.log);
  assert.ok(!log.some((l) => / error /.test(l)), log.join('\n'));
  assert.deepEqual(errors, []);
});

test('a subscription left before its subscribe was answered is left on the server too', { timeout: 60000 * MULT }, async (t) => {
  const { server, page, errors } = await start(t);
  // subscribe, unsubscribe and subscribe again in one go: the second
  // subscribe reaches the server before the first one's answer is back.
  await page.evaluate(() => {
    window.track('chat:quick');
    window.c.unsubscribe('chat:quick');
    window.track('chat:quick');
  });
  await logged(page, 'chat:quick subscribed recovered=false resubscribe=false');
  await publish(server.port, 'chat:quick', { n: 1 });
  await logged(page, 'chat:quick message 1');
  // And left for good: the server stops sending (checked through a second
  // channel published after it, which the page does get).
  await page.evaluate(() => { window.c.unsubscribe('chat:quick'); window.track('chat:after'); });
  await logged(page, 'chat:after subscribed recovered=false resubscribe=false');
  await publish(server.port, 'chat:quick', { n: 2 });
  await publish(server.port, 'chat:after', { n: 1 });
  await logged(page, 'chat:after message 1');
  const log = await page.evaluate(() => window.log);
  assert.deepEqual(log.filter((l) => l.startsWith('chat:quick')), [
    'chat:quick subscribed recovered=false resubscribe=false',
    'chat:quick message 1',
  ]);
  assert.deepEqual(errors, []);
});
