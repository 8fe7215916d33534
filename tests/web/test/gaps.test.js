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
    onGap: (g) => got.push(`gap ${g.from}-${g.to}`),
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

test('a gap history no longer holds is told to onGap, and the messages go on', async () => {
  const { got, push } = await setup([1, 5, 6]); // 2-4 left the window
  push(1);
  push(5);
  push(6);
  await tick(); await tick();
  assert.deepEqual(got, [1, 'gap 2-4', 5, 6]);
  push(7);
  assert.deepEqual(got, [1, 'gap 2-4', 5, 6, 7]);
});

test('history that lost the start of a gap fills the rest and tells onGap the lost part', async () => {
  const { got, push } = await setup([1, 4, 5, 6]); // 2 and 3 left the window
  push(1);
  push(6); // 2-5 missing
  await tick(); await tick();
  assert.deepEqual(got, [1, 'gap 2-3', 4, 5, 6]);
});

test('in a channel without history the gap is reported and later messages still arrive', async () => {
  const { got, push } = await setup([], 4004);
  push(1);
  push(3);
  push(4);
  await tick(); await tick();
  assert.deepEqual(got, [1, 'error 4004', 'gap 2-2', 3, 4]);
  push(6);
  push(7);
  await tick(); await tick();
  assert.deepEqual(got, [1, 'error 4004', 'gap 2-2', 3, 4, 'error 4004', 'gap 5-5', 6, 7]);
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

// A client whose request() answers from `answer(cmd)` (a reply payload, or
// a thrown {code}), recording the commands sent.
async function scripted(answer, opts = {}) {
  const { WshubClient } = await load();
  const c = new WshubClient('ws://127.0.0.1:1/ws', { WebSocket: class {}, ...opts });
  const sent = [];
  c.request = async (cmd) => {
    sent.push(cmd.payload?.recover ? `${cmd.type}+recover` : cmd.type);
    await tick();
    const r = answer(cmd);
    if (r instanceof Error) throw r;
    return { payload: r };
  };
  return { c, sent };
}
const refused = (code) => Object.assign(new Error(`refused ${code}`), { code });

test('a namespace with recovery off is subscribed again without recover after a reconnect', async () => {
  const { c, sent } = await scripted((cmd) => (cmd.type === 'subscribe' && cmd.payload?.recover
    ? refused(4004) : { offset: 7, epoch: 'e', recovered: false }));
  const seen = [];
  const sub = c.subscribe('feed:a', { onSubscribed: (s) => seen.push(s), onError: (e) => seen.push(e.code) });
  await c.onConnected({ payload: { client: 'c1', user: 'u' } });
  sub.deliver({ channel: 'feed:a', epoch: 'e', offset: 8 });
  c.lost(); // the connection drops
  await c.onConnected({ payload: { client: 'c2', user: 'u' } });
  await tick(); await tick();
  assert.deepEqual(sent, ['subscribe', 'subscribe+recover', 'subscribe']);
  assert.deepEqual(seen, [
    { offset: 7, epoch: 'e', recovered: false, resubscribe: false },
    { offset: 7, epoch: 'e', recovered: false, resubscribe: true },
  ]);
  assert.equal(sub.active, true);
  c.lost(); // and again: it remembers, no recover sent
  await c.onConnected({ payload: { client: 'c3', user: 'u' } });
  assert.deepEqual(sent.slice(3), ['subscribe']);
});

test('unsubscribing while the subscribe is unanswered unsubscribes on the server too', async () => {
  const { c, sent } = await scripted(() => ({ offset: 0, epoch: 'e', recovered: false }));
  c.state = 'connected';
  const seen = [];
  c.subscribe('chat:a', { onSubscribed: () => seen.push('first') });
  const gone = c.unsubscribe('chat:a'); // before the answer
  c.subscribe('chat:a', { onSubscribed: () => seen.push('second') });
  await gone;
  await tick(); await tick();
  assert.deepEqual(sent, ['subscribe', 'unsubscribe', 'subscribe']);
  assert.deepEqual(seen, ['second']);
});

test('already subscribed (4002) is undone and subscribed again, which gives the position', async () => {
  let n = 0;
  const { c, sent } = await scripted((cmd) => (cmd.type === 'subscribe' && n++ === 0
    ? refused(4002) : { offset: 3, epoch: 'e', recovered: false }));
  c.state = 'connected';
  const seen = [];
  const sub = c.subscribe('chat:a', { onSubscribed: (s) => seen.push(s.offset) });
  await tick(); await tick(); await tick(); await tick();
  assert.deepEqual(sent, ['subscribe', 'unsubscribe', 'subscribe']);
  assert.deepEqual(seen, [3]);
  assert.equal(sub.offset, 3);
});

test('the offline buffer is bounded: past maxOutbox a publish is refused at once', async () => {
  const { WshubClient, MAX_OUTBOX } = await load();
  assert.equal(MAX_OUTBOX, 1000);
  const c = new WshubClient('ws://127.0.0.1:1/ws', { WebSocket: class {}, maxOutbox: 3 });
  const waiting = [1, 2, 3].map((i) => c.publish('chat:a', { i }));
  await assert.rejects(c.publish('chat:a', { i: 4 }), (e) => e.code === 3003 && /offline buffer full/.test(e.message));
  assert.equal(c.pendingPublishes, 3);
  // A terminal close refuses what waits, with its code.
  c.wanted = true;
  c.ws = {};
  c.onClose(c.ws, 4501, 'kicked');
  for (const p of waiting) await assert.rejects(p, (e) => e.code === 4501);
  assert.equal(c.pendingPublishes, 0);
  assert.equal(c.state, 'closed');
});

test('an expired token and no getToken: closed, not reconnecting with it for good', async () => {
  const { WshubClient } = await load();
  const c = new WshubClient('ws://127.0.0.1:1/ws', { WebSocket: class {}, token: 'old' });
  c.wanted = true;
  c.ws = {};
  c.onClose(c.ws, 4100, 'token expired');
  assert.equal(c.state, 'closed');
  assert.equal(c.reconnectTimer, null);
  const d = new WshubClient('ws://127.0.0.1:1/ws', { WebSocket: class {}, getToken: async () => 'new' });
  d.wanted = true;
  d.ws = {};
  d.onClose(d.ws, 4100, 'token expired');
  assert.equal(d.state, 'reconnecting'); // it can fetch a fresh one
  d.disconnect();
});

test('the backoff resets only after a connection that lasted, and close() lets go of the page', async (t) => {
  const { WshubClient, STABLE_MS } = await load();
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  const added = [];
  const removed = [];
  const saved = { add: globalThis.addEventListener, remove: globalThis.removeEventListener };
  globalThis.addEventListener = (type, fn) => added.push([type, fn]);
  globalThis.removeEventListener = (type, fn) => removed.push([type, fn]);
  t.after(() => { globalThis.addEventListener = saved.add; globalThis.removeEventListener = saved.remove; });
  const c = new WshubClient('ws://127.0.0.1:1/ws', { WebSocket: class {} });
  c.request = async () => ({ payload: {} });
  const attempts = [];
  c.addEventListener('state', (e) => { if (e.detail.state === 'reconnecting') attempts.push(e.detail.attempt); });
  c.wanted = true;
  // Accepted and closed at once, three times (a server refusing after the
  // upgrade): the backoff keeps growing.
  for (let i = 0; i < 3; i++) {
    c.ws = {};
    await c.onConnected({ payload: { client: 'c', user: 'u' } });
    c.onClose(c.ws, 1013, 'try again later');
  }
  assert.deepEqual(attempts, [1, 2, 3]);
  // A connection that lasted resets it.
  c.ws = {};
  await c.onConnected({ payload: { client: 'c', user: 'u' } });
  t.mock.timers.tick(STABLE_MS);
  c.onClose(c.ws, 1012, 'restart');
  assert.deepEqual(attempts, [1, 2, 3, 1]);
  const waiting = c.publish('chat:a', {});
  c.close();
  await assert.rejects(waiting, (e) => e.code === 0);
  assert.equal(c.state, 'disconnected');
  assert.equal(c.reconnectTimer, null);
  assert.deepEqual(removed, added.filter(([type]) => type === 'online'));
  assert.equal(removed.length, 1);
});

test('a long gap is fetched a page at a time', async () => {
  const { WshubClient, HISTORY_PAGE } = await load();
  const c = new WshubClient('ws://127.0.0.1:1/ws', { WebSocket: class {} });
  const got = [];
  const sub = c.subscribe('chat:a', { onMessage: (m) => got.push(m.offset), onGap: (g) => got.push(`gap ${g.from}-${g.to}`) });
  const asked = [];
  c.history = async (channel, { since, limit }) => {
    asked.push([since, limit]);
    await tick();
    const kept = Array.from({ length: 30 }, (_, i) => i + 1).filter((o) => o > since).slice(0, limit);
    return { epoch: 'e', messages: kept.map((o) => ({ offset: o, payload: o })) };
  };
  const push = (o) => c.onMessage(sub, { type: 'message', channel: 'chat:a', epoch: 'e', offset: o, payload: o });
  push(1);
  push(31); // 2-30 missing
  for (let i = 0; i < 8; i++) await tick();
  assert.equal(HISTORY_PAGE, 10);
  assert.deepEqual(asked, [[1, 10], [11, 10], [21, 10]]); // the third page is short: the end
  assert.deepEqual(got, Array.from({ length: 31 }, (_, i) => i + 1));
});
