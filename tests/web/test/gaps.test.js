'use strict';
// Unit tests of web/wshub.js's handling of a gap in a channel's offsets
// (docs/protocol.md, Delivery guarantees): the client's own logic, fed
// message pushes in the order a server could send them, with `history`
// answered from a fixed store. The same logic against a real server whose
// allocations fail is oom.test.js.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { pathToFileURL } = require('node:url');

const webRoot = process.env.WSH_WEB_ROOT || path.join(__dirname, '..', '..', '..', 'web');
const load = () => import(pathToFileURL(path.join(webRoot, 'wshub.js')).href);
const tick = () => new Promise((r) => setTimeout(r, 20));

// A client with one subscription whose handler records what it is given,
// and a history that answers from `kept` (offsets it still holds), or
// fails with `code`.
async function setup(kept, code = 0) {
  const { WshubClient } = await load();
  const c = new WshubClient('ws://127.0.0.1:1/ws', { WebSocket: class {} });
  const got = [];
  const sub = c.subscribe('chat:a', {
    onMessage: (m) => got.push(m.offset),
    onError: (e) => got.push(`error ${e.code}`),
  });
  c.history = async (channel, { since }) => {
    await tick();
    if (code) throw Object.assign(new Error('refused'), { code });
    return { epoch: 'e', messages: kept.filter((o) => o > since).map((o) => ({ offset: o, payload: o })) };
  };
  const push = (o) => c.onMessage(sub, { type: 'message', channel: 'chat:a', epoch: 'e', offset: o, payload: o });
  return { got, push };
}

test('a gap is fetched from history before what follows is handed on', async () => {
  const { got, push } = await setup([1, 2, 3, 4, 5]);
  push(1);
  push(4); // 2 and 3 missing
  push(5); // arrives while they are fetched
  await tick(); await tick();
  assert.deepEqual(got, [1, 2, 3, 4, 5]);
});

test('a second gap among the held messages is fetched in turn', async () => {
  const kept = [1, 2, 3];
  const { got, push } = await setup(kept);
  push(1);
  push(3); // 2 missing
  push(5); // 4 missing too, and history does not have it yet
  kept.push(4, 5);
  await tick(); await tick(); await tick();
  assert.deepEqual(got, [1, 2, 3, 4, 5]);
});

test('a gap history no longer holds stays, and the messages go on', async () => {
  const { got, push } = await setup([1, 5, 6]); // 2-4 left the window
  push(1);
  push(5);
  push(6);
  await tick(); await tick();
  assert.deepEqual(got, [1, 5, 6]);
  push(7);
  assert.deepEqual(got, [1, 5, 6, 7]);
});

test('in a channel without history the gap is reported and later messages still arrive', async () => {
  const { got, push } = await setup([], 4004);
  push(1);
  push(3);
  push(4);
  await tick(); await tick();
  assert.deepEqual(got, [1, 'error 4004', 3, 4]);
  push(6);
  push(7);
  await tick(); await tick();
  assert.deepEqual(got, [1, 'error 4004', 3, 4, 'error 4004', 6, 7]);
});

// Subscribes the server refuses for want of memory (5000, 5001) are
// retried with backoff, 10 times; each new connection starts the count
// again, so a subscription given up on is tried anew after a reconnect.
test('a subscribe refused on one connection is retried in full on the next', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { WshubClient } = await load();
  const c = new WshubClient('ws://127.0.0.1:1/ws', { WebSocket: class {} });
  const seen = [];
  c.subscribe('chat:a', {
    onSubscribed: () => seen.push('subscribed'),
    onError: (e) => seen.push(`error ${e.code}`),
  });
  let refuse = Infinity;
  c.request = async (cmd) => {
    if (cmd.type !== 'subscribe') return { payload: {} };
    if (refuse-- > 0) throw Object.assign(new Error('out of memory'), { code: 5000 });
    return { payload: { offset: 0, epoch: 'e', recovered: false } };
  };
  const settle = async () => {
    for (let i = 0; i < 12; i++) {
      for (let j = 0; j < 10; j++) await Promise.resolve();
      t.mock.timers.tick(20000);
    }
    for (let j = 0; j < 10; j++) await Promise.resolve();
  };
  await c.onConnected({ payload: { client: 'c1', user: 'u' } });
  await settle();
  assert.deepEqual(seen, ['error 5000']); // 1 + 10 tries, then given up
  refuse = 3;
  await c.onConnected({ payload: { client: 'c2', user: 'u' } }); // a reconnect
  await settle();
  assert.deepEqual(seen, ['error 5000', 'subscribed']);
});
