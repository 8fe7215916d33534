// One wshub connection per browser, not per tab: the tab side of
// wshub-worker.js. An ES module with no dependencies and no build step.
//
//   import { createClient } from './wshub-shared.js';
//   const client = createClient('wss://example.com/ws', { getToken, share: true });
//   client.subscribe('chat:lobby', { onMessage(m) { ... } });
//   client.connect();
//
// With share: true and where the browser has SharedWorker, every tab of
// the origin that names the same URL uses one connection held by a shared
// worker: one handshake, one session, one presence entry, one set of
// server-side subscriptions, one offline buffer. The object returned has
// WshubClient's interface (connect, disconnect, subscribe, publish,
// presence, history, signal, read, dropConnection, 'state' and 'error'
// events, client, user, state), so an application does not change. Each
// tab sees every message of the channels it subscribed to, once and in
// order, across reconnects. Elsewhere (share false, or no SharedWorker, as
// on Chrome for Android) it is a plain WshubClient.
//
// A tab's getToken is called in that tab when the shared connection needs
// a token (any tab that has one may be asked).

import { ChannelHandle, WshubClient, WshubError } from './wshub.js';

export const WORKER_URL = new URL('./wshub-worker.js', import.meta.url).href;

export function createClient(url, { share = false, SharedWorker = globalThis.SharedWorker, workerUrl = WORKER_URL, ...opts } = {}) {
  if (share && typeof SharedWorker === 'function') {
    return new SharedWshubClient(url, { ...opts, SharedWorker, workerUrl });
  }
  return new WshubClient(url, opts);
}

function tabId() {
  const a = new Uint8Array(12);
  globalThis.crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

export class SharedWshubClient extends EventTarget {
  constructor(url, { token = null, getToken = null, SharedWorker = globalThis.SharedWorker, workerUrl = WORKER_URL } = {}) {
    super();
    this.url = url;
    this.getToken = getToken;
    this.state = 'disconnected';
    this.client = null;
    this.user = null;
    this.subs = new Map(); // channel -> ChannelHandle
    this.calls = new Map(); // rid -> {resolve, reject}
    this.nextRid = 1;
    this.wanted = false;
    this.publishes = 0; // this tab's publishes not yet acknowledged
    this.id = tabId();
    // The worker is named by the URL: tabs naming the same server share it.
    const worker = new SharedWorker(workerUrl, { type: 'module', name: `wshub ${url}` });
    this.port = worker.port;
    this.port.onmessage = (ev) => this.onWorker(ev.data);
    this.port.start();
    // Messages posted before the hello are queued until it is sent: the
    // hello waits for this tab's lifetime lock, which tells the worker
    // when the tab is gone (see wshub-worker.js).
    this.queue = [];
    this.ready = false;
    const locks = globalThis.navigator?.locks;
    const hello = () => {
      this.ready = true;
      this.port.postMessage({ op: 'hello', tab: this.id, url, token, getToken: !!getToken, lock: !!locks });
      for (const m of this.queue) this.port.postMessage(m);
      this.queue = [];
    };
    if (locks) {
      locks.request(`wshub-tab-${this.id}`, () => {
        hello();
        return new Promise(() => {}); // held until the tab goes away
      });
    } else {
      hello();
    }
    globalThis.addEventListener?.('pagehide', (e) => { if (!e.persisted) this.post({ op: 'bye' }); });
  }

  post(msg) {
    if (this.ready) this.port.postMessage(msg);
    else this.queue.push(msg);
  }

  setState(detail) {
    this.state = detail.state;
    if (detail.state === 'connected') {
      this.client = detail.client ?? this.client;
      this.user = detail.user ?? this.user;
    }
    this.dispatchEvent(new CustomEvent('state', { detail }));
  }

  async onWorker(m) {
    if (!m || typeof m !== 'object') return;
    switch (m.op) {
      case 'state':
        if (this.wanted) this.setState(m.detail);
        break;
      case 'event': {
        const sub = this.subs.get(m.channel);
        if (sub) sub.call(m.name, m.arg);
        break;
      }
      case 'error':
        this.dispatchEvent(new CustomEvent('error', { detail: new WshubError(m.error.code, m.error.message) }));
        break;
      case 'result': {
        const c = this.calls.get(m.rid);
        if (!c) break;
        this.calls.delete(m.rid);
        if (m.error) c.reject(new WshubError(m.error.code, m.error.message));
        else c.resolve(m.value);
        break;
      }
      case 'token?':
        try {
          this.post({ op: 'token', rid: m.rid, token: await this.getToken() });
        } catch (e) {
          this.post({ op: 'token', rid: m.rid, error: String(e?.message || e) });
        }
        break;
      default:
        break;
    }
  }

  call(method, args) {
    const rid = this.nextRid++;
    return new Promise((resolve, reject) => {
      this.calls.set(rid, { resolve, reject });
      this.post({ op: 'call', rid, method, args });
    });
  }

  // --- connection ---------------------------------------------------------

  connect() {
    if (this.wanted) return;
    this.wanted = true;
    this.post({ op: 'connect' });
  }

  // This tab lets go; the connection stays while another tab wants it.
  disconnect() {
    if (!this.wanted) return;
    this.wanted = false;
    this.post({ op: 'disconnect' });
    this.setState({ state: 'disconnected' });
  }

  // The same for a tab done with the client: the worker lets go of this
  // tab's channels with it.
  close() { this.disconnect(); }

  // Drops the shared connection as if the network failed (every tab sees
  // the reconnect). For demos and tests.
  dropConnection() { this.call('dropConnection', []); }

  // --- channels -----------------------------------------------------------

  subscribe(channel, handlers = {}) {
    if (this.subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new ChannelHandle(this, channel, handlers);
    this.subs.set(channel, sub);
    this.post({ op: 'subscribe', channel });
    return sub;
  }

  async unsubscribe(channel) {
    if (!this.subs.delete(channel)) return;
    this.post({ op: 'unsubscribe', channel });
  }

  // --- commands -----------------------------------------------------------

  async publish(channel, payload, opts) {
    this.publishes++;
    try {
      return await this.call('publish', [channel, payload, opts]);
    } finally {
      this.publishes--;
    }
  }

  get pendingPublishes() { return this.publishes; }

  presence(channel) { return this.call('presence', [channel]); }
  history(channel, opts) { return this.call('history', [channel, opts]); }
  read(channel, offset) { return this.call('read', [channel, offset]); }

  // Best effort, no reply: false when this tab is not connected (the
  // worker may still find the connection down).
  signal(channel, payload) {
    if (this.state !== 'connected') return false;
    this.call('signal', [channel, payload]);
    return true;
  }
}
