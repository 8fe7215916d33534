// The SharedWorker behind wshub-shared.js: one /ws connection for every tab
// of this origin that asked for the same server URL (the worker's name is
// that URL, so each URL gets a worker of its own).
//
// It holds one WshubClient, so reconnects with backoff, recovery on
// re-subscribe, de-duplication and the offline publish buffer work exactly
// as they do for a single tab, once for all of them. Each channel is
// subscribed on the server once, however many tabs want it, and is left
// when the last of them lets go. A tab that closes without saying so is
// noticed through a Web Lock it holds for its lifetime (the lock is
// released when the tab goes away), so its channels do not stay.
//
// Protocol (plain objects over each tab's MessagePort), tab -> worker:
//   {op:'hello', tab, url, token, getToken, lock}  first, once
//   {op:'connect'} {op:'disconnect'} {op:'bye'}
//   {op:'subscribe', channel} {op:'unsubscribe', channel}
//   {op:'call', rid, method, args}              publish, presence, history,
//                                               read, signal, dropConnection
//   {op:'token', rid, token} | {op:'token', rid, error}
// worker -> tab:
//   {op:'state', detail}                        as WshubClient's 'state'
//   {op:'event', channel, name, arg}            a subscription handler call
//   {op:'error', error:{code, message}}
//   {op:'result', rid, value} | {op:'result', rid, error:{code, message}}
//   {op:'token?', rid}                          asks for a fresh token

import { WshubClient } from './wshub.js';

const HANDLERS = ['onMessage', 'onJoin', 'onLeave', 'onSignal', 'onRead', 'onSubscribed', 'onError', 'onGap'];
const CALLS = new Set(['publish', 'presence', 'history', 'read', 'signal', 'dropConnection']);
const TOKEN_TIMEOUT_MS = 10000;

const tabs = new Map(); // tab id -> {port, wants, subs: Set<channel>, getToken}
const channels = new Map(); // channel -> {sub, tabs: Set<tab id>}
const tokenAsks = new Map(); // rid -> {resolve, reject, timer, tab}
let client = null;
let staticToken = null;
let nextRid = 1;

const plainError = (e) => ({ code: e?.code ?? 0, message: e?.message ?? String(e) });

function post(tab, msg) {
  try {
    tab.port.postMessage(msg);
  } catch (e) {
    /* the tab is going away; its lock tells us soon */
  }
}

function wanting() {
  return [...tabs.values()].filter((t) => t.wants);
}

// A fresh token from a tab that can make one (its getToken), the first
// that answers; the static token of the first tab otherwise.
async function askToken() {
  const askers = [...tabs.entries()].filter(([, t]) => t.getToken);
  for (const [id, tab] of askers) {
    const rid = nextRid++;
    try {
      return await new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          tokenAsks.delete(rid);
          reject(new Error('no token from the tab in time'));
        }, TOKEN_TIMEOUT_MS);
        tokenAsks.set(rid, { resolve, reject, timer, tab: id });
        post(tab, { op: 'token?', rid });
      });
    } catch (e) {
      if (askers[askers.length - 1][0] === id) throw e;
    }
  }
  return staticToken;
}

// The connection asks the tabs for tokens only while one of them can make
// them; otherwise it uses the token the first tab gave.
function tokenSource() {
  const any = [...tabs.values()].some((t) => t.getToken);
  client.getToken = any ? askToken : null;
  client.token = client.token ?? staticToken;
}

function ensureClient(url) {
  if (client) return client;
  client = new WshubClient(url, { token: staticToken });
  client.addEventListener('state', (e) => {
    for (const t of wanting()) post(t, { op: 'state', detail: e.detail });
  });
  client.addEventListener('error', (e) => {
    for (const t of wanting()) post(t, { op: 'error', error: plainError(e.detail) });
  });
  return client;
}

// The server-side subscription of a channel, shared: each handler call
// goes to every tab that subscribed to it and still wants the connection.
function openChannel(channel) {
  const entry = { sub: null, tabs: new Set() };
  const handlers = {};
  for (const name of HANDLERS) {
    handlers[name] = (arg) => {
      for (const id of entry.tabs) {
        const t = tabs.get(id);
        if (t && t.wants) post(t, { op: 'event', channel, name, arg });
      }
    };
  }
  channels.set(channel, entry);
  entry.sub = client.subscribe(channel, handlers);
  return entry;
}

function subscribe(id, tab, channel) {
  if (tab.subs.has(channel)) return;
  tab.subs.add(channel);
  const entry = channels.get(channel) || openChannel(channel);
  const joined = entry.tabs.size > 0;
  entry.tabs.add(id);
  // Already subscribed for another tab: this one starts from where the
  // channel is now, as a fresh subscription would.
  if (joined && entry.sub.active) {
    post(tab, {
      op: 'event', channel, name: 'onSubscribed',
      arg: { offset: entry.sub.offset, epoch: entry.sub.epoch, recovered: false, resubscribe: false },
    });
  }
}

function unsubscribe(id, tab, channel) {
  if (!tab.subs.delete(channel)) return;
  const entry = channels.get(channel);
  if (!entry) return;
  entry.tabs.delete(id);
  if (entry.tabs.size === 0) {
    channels.delete(channel);
    client.unsubscribe(channel);
  }
}

// Nobody wants the connection any more: close it (tabs that come later
// open it again).
function settle() {
  if (client && client.wanted && wanting().length === 0) client.disconnect();
}

function forget(id) {
  const tab = tabs.get(id);
  if (!tab) return;
  for (const channel of [...tab.subs]) unsubscribe(id, tab, channel);
  tabs.delete(id);
  tokenSource();
  for (const [rid, ask] of tokenAsks) {
    if (ask.tab === id) {
      clearTimeout(ask.timer);
      tokenAsks.delete(rid);
      ask.reject(new Error('the tab went away'));
    }
  }
  settle();
}

async function call(tab, rid, method, args) {
  if (!CALLS.has(method)) {
    post(tab, { op: 'result', rid, error: { code: 0, message: `unknown call ${method}` } });
    return;
  }
  try {
    const value = await client[method](...(Array.isArray(args) ? args : []));
    post(tab, { op: 'result', rid, value });
  } catch (e) {
    post(tab, { op: 'result', rid, error: plainError(e) });
  }
}

function onTabMessage(port, state, msg) {
  if (!msg || typeof msg !== 'object') return;
  if (msg.op === 'hello') {
    if (state.id !== null || typeof msg.tab !== 'string' || tabs.has(msg.tab)) return;
    state.id = msg.tab;
    if (staticToken === null && typeof msg.token === 'string') staticToken = msg.token;
    tabs.set(msg.tab, { port, wants: false, subs: new Set(), getToken: !!msg.getToken });
    ensureClient(msg.url);
    tokenSource();
    // The tab holds this lock as long as it lives: ours is granted when it
    // is gone, however it went.
    if (msg.lock) globalThis.navigator?.locks?.request(`wshub-tab-${msg.tab}`, () => forget(msg.tab));
    return;
  }
  const id = state.id;
  const tab = id === null ? null : tabs.get(id);
  if (!tab) return;
  switch (msg.op) {
    case 'connect':
      tab.wants = true;
      if (client.wanted) post(tab, { op: 'state', detail: { state: client.state, client: client.client, user: client.user } });
      else client.connect();
      break;
    case 'disconnect':
      tab.wants = false;
      settle();
      break;
    case 'bye':
      forget(id);
      break;
    case 'subscribe':
      if (typeof msg.channel === 'string') subscribe(id, tab, msg.channel);
      break;
    case 'unsubscribe':
      if (typeof msg.channel === 'string') unsubscribe(id, tab, msg.channel);
      break;
    case 'call':
      call(tab, msg.rid, msg.method, msg.args);
      break;
    case 'token': {
      const ask = tokenAsks.get(msg.rid);
      if (!ask || ask.tab !== id) break;
      tokenAsks.delete(msg.rid);
      clearTimeout(ask.timer);
      if (typeof msg.token === 'string') ask.resolve(msg.token);
      else ask.reject(new Error(msg.error || 'getToken failed'));
      break;
    }
    default:
      break;
  }
}

globalThis.onconnect = (e) => {
  const port = e.ports[0];
  const state = { id: null };
  port.onmessage = (ev) => onTabMessage(port, state, ev.data);
  port.start();
};
