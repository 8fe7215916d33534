'use strict';
// Unit tests of web/wshub.js's reconnect policy (pure functions), imported
// as the ES module the browser loads.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { pathToFileURL } = require('node:url');

const webRoot = process.env.WSH_WEB_ROOT || path.join(__dirname, '..', '..', '..', 'web');
const load = () => import(pathToFileURL(path.join(webRoot, 'wshub.js')).href);

test('full jitter: uniform in [0, min(cap, base * 2^attempt))', async () => {
  const { backoffDelay, BACKOFF_BASE_MS, BACKOFF_CAP_MS } = await load();
  assert.equal(BACKOFF_BASE_MS, 500);
  assert.equal(BACKOFF_CAP_MS, 10000);
  const almostOne = () => 0.999999;
  assert.equal(backoffDelay(0, { random: () => 0 }), 0);
  assert.equal(backoffDelay(0, { random: almostOne }), 499);
  assert.equal(backoffDelay(1, { random: almostOne }), 999);
  assert.equal(backoffDelay(2, { random: almostOne }), 1999);
  assert.equal(backoffDelay(4, { random: almostOne }), 7999);
  // capped at 10 s from attempt 5 on, however large the attempt
  for (const a of [5, 6, 20, 1000, Infinity]) assert.equal(backoffDelay(a, { random: almostOne }), 9999);
  assert.equal(backoffDelay(3, { random: () => 0.5 }), 2000);
  // negative attempts behave as the first one
  assert.equal(backoffDelay(-3, { random: almostOne }), 499);
});

test('jitter with Math.random stays in range and is spread out', async () => {
  const { backoffDelay } = await load();
  for (let attempt = 0; attempt < 10; attempt++) {
    const ceiling = Math.min(10000, 500 * 2 ** attempt);
    const seen = new Set();
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt);
      assert.ok(Number.isInteger(d) && d >= 0 && d < ceiling, `attempt ${attempt}: ${d}`);
      seen.add(Math.floor((d / ceiling) * 4));
    }
    assert.equal(seen.size, 4, `attempt ${attempt}: delays cover all quarters of the range`);
  }
});

test('retry_after_ms from the server is added to our jitter', async () => {
  const { reconnectDelay } = await load();
  assert.equal(reconnectDelay(0, 2350, { random: () => 0 }), 2350);
  assert.equal(reconnectDelay(2, 2350, { random: () => 0.5 }), 2350 + 1000);
  assert.equal(reconnectDelay(2, 0, { random: () => 0.5 }), 1000);
  for (const bad of [undefined, null, -5, NaN, 'x']) {
    assert.equal(reconnectDelay(1, bad, { random: () => 0.5 }), 500);
  }
});

test('close codes 4500-4999 are terminal, everything else may reconnect', async () => {
  const { mayReconnect } = await load();
  for (const c of [1000, 1001, 1006, 1011, 1012, 1013, 4000, 4100, 4101, 4102, 4103, 4499]) {
    assert.equal(mayReconnect(c), true, String(c));
  }
  for (const c of [4500, 4501, 4999]) assert.equal(mayReconnect(c), false, String(c));
});

test('createClient shares a connection only where SharedWorker exists', async () => {
  const { WshubClient } = await load();
  const { createClient, SharedWshubClient, WORKER_URL } = await import(pathToFileURL(path.join(webRoot, 'wshub-shared.js')).href);
  assert.match(WORKER_URL, /\/wshub-worker\.js$/);
  // Node has no SharedWorker: a plain client, share or not.
  assert.equal(typeof globalThis.SharedWorker, 'undefined');
  for (const opts of [undefined, {}, { share: true }, { share: false }]) {
    const c = createClient('ws://127.0.0.1:1/ws', opts);
    assert.ok(c instanceof WshubClient && !(c instanceof SharedWshubClient));
  }
  // The options meant for WshubClient reach it.
  const c = createClient('ws://127.0.0.1:1/ws', { share: true, token: 'abc' });
  assert.equal(c.token, 'abc');
  assert.equal(c.url, 'ws://127.0.0.1:1/ws');
});
