// wshub browser client: an ES module with no dependencies and no build step.
// It speaks the JSON envelope protocol of docs/protocol.md on /ws.
//
//   import { WshubClient } from './wshub.js';
//   const client = new WshubClient('ws://127.0.0.1:8080/ws', { getToken });
//   client.addEventListener('state', (e) => badge(e.detail.state));
//   const sub = client.subscribe('chat:lobby', { onMessage(m) { ... } });
//   client.connect();
//   await client.publish('chat:lobby', { text: 'hi' });
//
// Guarantees (DESIGN.md §4): the last offset/epoch seen on each channel is
// kept and sent as `recover` when re-subscribing after a reconnect, and
// messages at or below that offset are dropped, so a handler sees every
// message once and in order. Publishes carry a `msg_id` and are re-sent
// under the same id until acknowledged (the server de-duplicates them);
// publishes made while offline wait in a buffer and go out after reconnect.

export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 10000;

// "Full jitter" exponential backoff (AWS architecture blog): a uniformly
// random delay in [0, min(cap, base * 2^attempt)). attempt counts from 0.
export function backoffDelay(attempt, { base = BACKOFF_BASE_MS, cap = BACKOFF_CAP_MS, random = Math.random } = {}) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.floor(random() * ceiling);
}

// The delay before the next reconnect: the server's retry_after_ms (from a
// `disconnect` push), if any, plus our own jitter.
export function reconnectDelay(attempt, retryAfterMs = 0, opts = {}) {
  const hint = Number.isFinite(retryAfterMs) && retryAfterMs > 0 ? retryAfterMs : 0;
  return hint + backoffDelay(attempt, opts);
}

// Close codes 4500-4999 are terminal (docs/close-codes.md); everything else
// (1000-range restarts and errors, 4000-4499) may reconnect.
export function mayReconnect(code) {
  return !(code >= 4500 && code <= 4999);
}

// Error codes worth retrying a publish for: rate limited, internal error,
// broker temporarily unavailable.
const RETRYABLE_ERRORS = new Set([3000, 5000, 5001]);
// Publishes sent and not yet answered, at most: a full buffer flushed
// after a reconnect goes out at the pace of the acks, not all at once.
// Told we publish too fast (3000), we keep one in flight and let the
// window grow by one per ack (as TCP does), so that we meet at most a
// few refusals each time, never the many a server closes for (4103).
export const MAX_IN_FLIGHT = 8;
const REQUEST_TIMEOUT_MS = 10000;
// A connection that lasted this long resets the backoff; one the server
// closes sooner (over a limit, a restart that fails) keeps it growing.
export const STABLE_MS = 5000;
// Messages asked of `history` at once when filling a gap: ten of the
// largest (64 KiB) stay well under the server's outbound queue limit
// (1 MiB), past which a reply and what follows it would cut us off.
export const HISTORY_PAGE = 10;
// Publishes the offline buffer holds at most, by default: past it a publish
// is refused at once (WshubError 3003) rather than memory growing for as
// long as the network is away.
export const MAX_OUTBOX = 1000;

export class WshubError extends Error {
  constructor(code, message, reply) {
    super(message || `wshub error ${code}`);
    this.name = 'WshubError';
    this.code = code;
    this.reply = reply;
  }
}

function randomId() {
  const a = new Uint8Array(8);
  globalThis.crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

// What a subscription offers whoever holds the connection (this module's
// client, or the shared one of wshub-shared.js): the channel's commands, and
// calling its handlers.
export class ChannelHandle {
  constructor(client, channel, handlers) {
    this.client = client;
    this.channel = channel;
    this.handlers = handlers || {};
  }

  publish(payload, opts) { return this.client.publish(this.channel, payload, opts); }
  presence() { return this.client.presence(this.channel); }
  history(opts) { return this.client.history(this.channel, opts); }
  signal(payload) { return this.client.signal(this.channel, payload); }
  read(offset) { return this.client.read(this.channel, offset); }
  unsubscribe() { return this.client.unsubscribe(this.channel); }

  call(name, arg) {
    const fn = this.handlers[name];
    if (typeof fn !== 'function') return;
    try {
      fn.call(this, arg, this);
    } catch (e) {
      console.error(`wshub: ${name} handler for ${this.channel} threw`, e);
    }
  }
}

class Subscription extends ChannelHandle {
  constructor(client, channel, handlers) {
    super(client, channel, handlers);
    this.offset = null; // last offset delivered to onMessage
    this.epoch = null;
    this.held = null; // messages that wait while a gap is fetched (fillGap)
    this.subscribeTries = 0; // subscribes refused with an error to retry
    this.active = false; // subscribed on the current connection
    this.pending = false; // a subscribe sent and not yet answered
    this.noRecover = false; // the namespace has recovery off (4004)
  }

  // Offsets before `offset` (same epoch) that will never be delivered:
  // history no longer holds them, or the channel keeps none.
  gapBefore(offset) {
    if (this.offset === null || offset <= this.offset + 1) return;
    this.call('onGap', { from: this.offset + 1, to: offset - 1, epoch: this.epoch });
  }

  // A message push or a replayed history entry. Returns true if delivered.
  deliver(m) {
    if (this.epoch !== null && m.epoch === this.epoch && this.offset !== null && m.offset <= this.offset) {
      return false; // seen already (replay overlap)
    }
    this.epoch = m.epoch ?? this.epoch;
    this.offset = m.offset;
    this.call('onMessage', m);
    return true;
  }
}

export class WshubClient extends EventTarget {
  // url: ws(s)://host/ws. options.token: a JWT; options.getToken: an async
  // function returning a fresh JWT (called before each connect and on
  // refresh_required). options.WebSocket: a constructor (for Node tests).
  constructor(url, { token = null, getToken = null, WebSocket = globalThis.WebSocket, maxOutbox = MAX_OUTBOX } = {}) {
    super();
    this.maxOutbox = maxOutbox;
    this.url = url;
    this.token = token;
    this.getToken = getToken;
    this.WebSocketImpl = WebSocket;
    this.state = 'disconnected';
    this.client = null; // connection id from `connected`
    this.user = null; // user id from `connected`
    this.ws = null;
    this.subs = new Map(); // channel -> Subscription
    this.pending = new Map(); // command id -> {resolve, reject, timer}
    this.outbox = []; // publishes not yet acknowledged, in order
    this.nextId = 1;
    this.attempt = 0;
    this.retryAfterMs = 0;
    this.serverSaysNoReconnect = false;
    this.reconnectTimer = null;
    this.wanted = false; // the user wants to be connected
    this.msgPrefix = randomId();
    this.msgSeq = 0;
    this.inFlight = 0; // publishes sent, not yet answered
    this.window = MAX_IN_FLIGHT; // how many may be (1 after a 3000)
    this.rateLimits = 0; // pauses for 3000 since the window was last full
    this.outboxPausedUntil = 0;
    this.outboxTimer = null;
    this.opens = 0; // open() calls: a later one supersedes a pending one
    this.connectedAt = null; // when the current connection was accepted
    // Back online: try now instead of waiting out the backoff, unless the
    // server said when to come back.
    this.onOnline = () => {
      if (this.reconnectTimer && !this.retryAfterMs) {
        clearTimeout(this.reconnectTimer);
        this.reconnectTimer = null;
        this.open('connecting');
      }
    };
    globalThis.addEventListener?.('online', this.onOnline);
  }

  // --- connection ---------------------------------------------------------

  connect() {
    if (this.wanted) return;
    this.wanted = true;
    this.attempt = 0;
    this.open('connecting');
  }

  disconnect() {
    this.wanted = false;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
      try { ws.close(1000); } catch (e) { /* already closed */ }
      this.lost();
    }
    this.setState('disconnected');
  }

  // disconnect(), and lets go of what ties the client to the page (the
  // 'online' listener, timers): for a client that is done with for good.
  // Publishes still waiting are refused (code 0).
  close() {
    this.disconnect();
    globalThis.removeEventListener?.('online', this.onOnline);
    clearTimeout(this.outboxTimer);
    this.outboxTimer = null;
    this.refuseOutbox(new WshubError(0, 'client closed'));
  }

  // Every publish still waiting is refused with why: none will go out.
  refuseOutbox(why) {
    for (const item of this.outbox.splice(0)) item.reject(why);
  }

  // Drop the connection as if the network failed (reconnects normally).
  // Useful for demos and tests.
  dropConnection() {
    if (this.ws) this.ws.close(4000, 'client dropped');
  }

  setState(state, detail = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, ...detail } }));
  }

  async open(state) {
    const gen = ++this.opens;
    this.setState(state);
    let token = this.token;
    if (this.getToken) {
      try {
        token = await this.getToken();
        this.token = token;
      } catch (e) {
        if (this.wanted && gen === this.opens) this.scheduleReconnect({ reason: `getToken failed: ${e.message}` });
        return;
      }
    }
    // Given up meanwhile (disconnect), or another open() began (connect
    // again after a disconnect while this one awaited its token).
    if (!this.wanted || gen !== this.opens) return;
    const ws = new this.WebSocketImpl(this.url);
    this.ws = ws;
    this.serverSaysNoReconnect = false;
    this.retryAfterMs = 0;
    ws.onopen = () => {
      const payload = token ? { token } : undefined;
      this.request({ type: 'connect', payload }).then((r) => this.onConnected(r), (e) => {
        this.dispatchEvent(new CustomEvent('error', { detail: e }));
      });
    };
    ws.onmessage = (ev) => this.onFrame(ev.data);
    ws.onclose = (ev) => this.onClose(ws, ev.code, ev.reason);
    ws.onerror = () => { /* onclose follows */ };
  }

  async onConnected(reply) {
    this.client = reply.payload.client;
    this.user = reply.payload.user;
    this.connectedAt = Date.now();
    this.setState('connected', { client: this.client, user: this.user });
    // Re-subscribe (with recovery), then flush the publish buffer, so our
    // own publishes are not sent before we are a subscriber again. Each
    // connection gets a subscription's retries afresh.
    for (const s of this.subs.values()) s.subscribeTries = 0;
    await Promise.all([...this.subs.values()].map((s) => this.sendSubscribe(s)));
    this.flushOutbox();
  }

  onClose(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    if (this.connectedAt !== null && Date.now() - this.connectedAt >= STABLE_MS) this.attempt = 0;
    this.connectedAt = null;
    this.lost();
    this.setState('disconnected', { code, reason });
    if (!this.wanted) return;
    // An expired token (4100) with no getToken for a fresh one would be
    // refused again at every reconnect, for good.
    const stale = code === 4100 && !this.getToken;
    if (!mayReconnect(code) || this.serverSaysNoReconnect || stale) {
      this.wanted = false;
      this.setState('closed', { code, reason });
      // Nothing in the buffer will go out now: say so to each publisher.
      this.refuseOutbox(new WshubError(code, `closed for good (${code}${reason ? ` ${reason}` : ''})`));
      return;
    }
    this.scheduleReconnect({ code, reason });
  }

  scheduleReconnect(detail) {
    const delay = reconnectDelay(this.attempt, this.retryAfterMs);
    this.attempt++;
    this.setState('reconnecting', { ...detail, delay, attempt: this.attempt });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.wanted) this.open('connecting');
    }, delay);
  }

  // The connection is gone: fail pending requests (publishes stay in the
  // outbox and are re-sent under the same msg_id).
  lost() {
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      if (!p.publish) p.reject(new WshubError(0, 'disconnected'));
    }
    this.pending.clear();
    for (const s of this.subs.values()) s.active = false;
    for (const item of this.outbox) item.sent = false;
    this.inFlight = 0; // their answers will never come: all are re-sent
  }

  // --- wire ---------------------------------------------------------------

  send(obj) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  request(cmd, { publish = false } = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const p = { resolve, reject, publish, timer: null };
      if (!publish) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new WshubError(0, `timeout: ${cmd.type}`));
        }, REQUEST_TIMEOUT_MS);
      }
      this.pending.set(id, p);
      if (!this.send({ ...cmd, id })) {
        clearTimeout(p.timer);
        this.pending.delete(id);
        reject(new WshubError(0, 'not connected'));
      }
    });
  }

  onFrame(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch (e) {
      return;
    }
    if (typeof m.id === 'number' && this.pending.has(m.id)) {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.type === 'error') p.reject(new WshubError(m.payload?.code, m.payload?.message, m));
      else p.resolve(m);
      return;
    }
    const sub = m.channel ? this.subs.get(m.channel) : null;
    switch (m.type) {
      case 'message':
        if (sub) this.onMessage(sub, m);
        break;
      case 'join': if (sub) sub.call('onJoin', m.payload); break;
      case 'leave': if (sub) sub.call('onLeave', m.payload); break;
      case 'signal': if (sub) sub.call('onSignal', { from: m.from, payload: m.payload, timestamp: m.timestamp }); break;
      case 'read': if (sub) sub.call('onRead', m.payload); break;
      case 'lagged': if (sub) this.catchUp(sub); break;
      case 'refresh_required': this.refresh(); break;
      case 'disconnect':
        this.retryAfterMs = m.payload?.retry_after_ms || 0;
        if (m.payload?.reconnect === false) this.serverSaysNoReconnect = true;
        break;
      case 'error':
        this.dispatchEvent(new CustomEvent('error', { detail: new WshubError(m.payload?.code, m.payload?.message, m) }));
        if (sub) sub.call('onError', m.payload);
        break;
      default:
        break;
    }
  }

  async refresh() {
    if (!this.getToken) return;
    try {
      this.token = await this.getToken();
      await this.request({ type: 'refresh', payload: { token: this.token } });
    } catch (e) {
      this.dispatchEvent(new CustomEvent('error', { detail: e }));
    }
  }

  // --- channels -----------------------------------------------------------

  // handlers: onMessage(msg), onJoin(entry), onLeave(entry), onSignal({from,
  // payload}), onRead({user, offset}), onSubscribed({offset, epoch,
  // recovered, resubscribe}), onError(payload).
  subscribe(channel, handlers = {}) {
    if (this.subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, handlers);
    this.subs.set(channel, sub);
    if (this.state === 'connected') this.sendSubscribe(sub);
    return sub;
  }

  async unsubscribe(channel) {
    const sub = this.subs.get(channel);
    if (!sub) return;
    this.subs.delete(channel);
    // With its subscribe still unanswered too: the server takes commands
    // in order, so this one undoes that one whatever its answer.
    if (sub.active || sub.pending) {
      sub.active = false;
      await this.request({ type: 'unsubscribe', channel }).catch(() => {});
    }
  }

  async sendSubscribe(sub) {
    sub.held = null; // recovery replays from sub.offset, gap included
    const cmd = { type: 'subscribe', channel: sub.channel };
    const resubscribe = sub.epoch !== null;
    if (resubscribe && sub.offset !== null && !sub.noRecover) {
      cmd.payload = { recover: { offset: sub.offset, epoch: sub.epoch } };
    }
    const ws = this.ws;
    let r;
    sub.pending = true;
    try {
      r = await this.request(cmd);
    } catch (e) {
      sub.pending = false;
      if (this.subs.get(sub.channel) !== sub) return; // unsubscribed meanwhile
      if (e.code === 4004 && cmd.payload) {
        // Recovery is off in this namespace: subscribe afresh, and the
        // application hears recovered: false.
        sub.noRecover = true;
        this.sendSubscribe(sub);
        return;
      }
      if (e.code === 4002 && sub.subscribeTries++ < 10) {
        // The server has a subscription we have no position for (a
        // subscribe whose answer came after its timeout): leave it and
        // subscribe again, which tells us where the channel is.
        await this.request({ type: 'unsubscribe', channel: sub.channel }).catch(() => {});
        if (ws === this.ws && this.subs.get(sub.channel) === sub) this.sendSubscribe(sub);
        return;
      }
      const timedOut = e.code === 0 && ws === this.ws && this.state === 'connected';
      if (e.code === 0 && !timedOut) return; // connection lost: re-subscribed on reconnect
      if ((timedOut || RETRYABLE_ERRORS.has(e.code)) && sub.subscribeTries++ < 10) {
        setTimeout(() => {
          if (ws === this.ws && this.subs.get(sub.channel) === sub && !sub.active) this.sendSubscribe(sub);
        }, backoffDelay(sub.subscribeTries));
        return;
      }
      sub.call('onError', { code: e.code, message: e.message });
      return;
    }
    sub.pending = false;
    sub.subscribeTries = 0;
    if (this.subs.get(sub.channel) !== sub) return;
    sub.active = true;
    const { offset, epoch, recovered } = r.payload;
    if (!recovered) {
      // Nothing replayed: start from the channel's current position. The
      // application re-syncs (history) in onSubscribed when resubscribe is
      // true and recovered is false.
      sub.epoch = epoch;
      sub.offset = offset;
    }
    sub.call('onSubscribed', { offset, epoch, recovered: !!recovered, resubscribe });
    // Publishes to this channel made before the reply waited for it.
    this.flushOutbox();
  }

  // Offsets grow by one per publish, so a message more than one past the
  // last one seen (same epoch) means some were not delivered: the server
  // could not (it ran out of memory, docs/server.md). They are fetched from
  // history first, and what arrives meanwhile waits, so the handler still
  // sees every message once and in order.
  onMessage(sub, m) {
    if (sub.held) {
      sub.held.push(m);
    } else if (sub.offset !== null && m.epoch === sub.epoch && m.offset > sub.offset + 1) {
      sub.held = [m];
      this.fillGap(sub);
    } else {
      sub.deliver(m);
    }
  }

  async fillGap(sub) {
    const held = sub.held;
    let failed = null;
    try {
      await this.replayFrom(sub);
    } catch (e) {
      failed = e;
    }
    if (sub.held !== held) return; // re-subscribed meanwhile: recovery replays it all
    sub.held = null;
    if (failed?.code === 0) return; // connection lost: the same; or timed out: the next gap refetches
    if (failed) {
      // Refused (no history here): the gap stays, and the messages go on.
      sub.call('onError', { code: failed.code, message: failed.message });
      sub.gapBefore(held[0].offset);
      for (const m of held) sub.deliver(m);
      return;
    }
    // What history gave is skipped. Without the missing ones (they left
    // its window) the gap stays, told to onGap: the message that showed
    // it goes on, and a further gap among the others is fetched in turn.
    const [first, ...rest] = held;
    sub.gapBefore(first.offset);
    sub.deliver(first);
    for (const m of rest) this.onMessage(sub, m);
  }

  // After `lagged`: fetch what was dropped from history.
  async catchUp(sub) {
    try {
      await this.replayFrom(sub);
    } catch (e) {
      sub.call('onError', { code: e.code, message: e.message });
    }
  }

  // Delivers what history holds after sub.offset, HISTORY_PAGE messages a
  // request. A refusal to retry (5000: the server short of memory, 5001:
  // its broker away) is retried after a backoff, a few times; what else
  // ends it is thrown.
  async replayFrom(sub) {
    for (let attempt = 0; ; attempt++) {
      try {
        for (;;) {
          const since = sub.offset ?? 0;
          const r = await this.history(sub.channel, { since, limit: HISTORY_PAGE });
          for (const m of r.messages) {
            if (r.epoch === sub.epoch) sub.gapBefore(m.offset); // history had lost the first ones
            sub.deliver({ channel: sub.channel, epoch: r.epoch, ...m });
          }
          if (r.messages.length < HISTORY_PAGE || (sub.offset ?? 0) <= since) return;
        }
      } catch (e) {
        if (!RETRYABLE_ERRORS.has(e.code) || attempt >= 5) throw e;
        await new Promise((resolve) => setTimeout(resolve, backoffDelay(attempt)));
      }
    }
  }

  // --- commands -----------------------------------------------------------

  // Resolves with the ack payload ({offset}) once the server stored the
  // message. Offline, the publish waits in the buffer and goes out after
  // reconnect; a publish that was sent but not acked is re-sent under the
  // same msg_id, which the server de-duplicates.
  publish(channel, payload, { msgId } = {}) {
    const msg_id = msgId || `${this.msgPrefix}-${++this.msgSeq}`;
    if (this.outbox.length >= this.maxOutbox) {
      return Promise.reject(new WshubError(3003, `offline buffer full (${this.maxOutbox} publishes waiting)`));
    }
    return new Promise((resolve, reject) => {
      const item = { channel, payload, msg_id, resolve, reject, sent: false, tries: 0 };
      this.outbox.push(item);
      this.flushOutbox();
    });
  }

  get pendingPublishes() { return this.outbox.length; }

  // Sends what the buffer holds, in order, up to MAX_IN_FLIGHT unanswered,
  // unless the server said we publish too fast: then all of it waits.
  flushOutbox() {
    if (this.state !== 'connected' || Date.now() < this.outboxPausedUntil) return;
    for (const item of this.outbox) {
      if (this.inFlight >= this.window) break;
      if (!item.sent) this.sendPublish(item);
    }
  }

  // Over the rate (error 3000) the whole buffer waits, longer each time
  // until the window is full again, and then sends one at a time: a
  // server closes a client that goes on being refused (4103). The other
  // refusals of the same flight find the wait begun.
  pauseOutbox() {
    this.window = 1;
    if (Date.now() < this.outboxPausedUntil) return;
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(this.rateLimits++, 5));
    const wait = ceiling / 2 + Math.random() * (ceiling / 2);
    this.outboxPausedUntil = Math.max(this.outboxPausedUntil, Date.now() + wait);
    clearTimeout(this.outboxTimer);
    this.outboxTimer = setTimeout(() => {
      this.outboxTimer = null;
      this.outboxPausedUntil = 0; // a timer may fire a little before Date.now() says
      this.flushOutbox();
    }, this.outboxPausedUntil - Date.now());
  }

  sendPublish(item) {
    if (this.state !== 'connected' || item.sent) return;
    const sub = this.subs.get(item.channel);
    if (sub && !sub.active) return; // wait for the re-subscribe
    item.sent = true;
    item.tries++;
    this.inFlight++;
    const ws = this.ws;
    this.request({ type: 'publish', channel: item.channel, msg_id: item.msg_id, payload: item.payload }, { publish: true })
      .then((r) => {
        if (ws === this.ws) this.inFlight--;
        if (this.window < MAX_IN_FLIGHT) this.window++;
        if (this.window === MAX_IN_FLIGHT) this.rateLimits = 0;
        this.outbox = this.outbox.filter((x) => x !== item);
        item.resolve(r.payload);
        this.flushOutbox();
      }, (e) => {
        if (ws === this.ws && this.inFlight > 0) this.inFlight--;
        if (e.code === 0) return; // disconnected: stays in the outbox
        if (e.code === 3000 && item.tries < 10) {
          item.sent = false;
          this.pauseOutbox();
          return;
        }
        if (RETRYABLE_ERRORS.has(e.code) && item.tries < 10) {
          item.sent = false;
          setTimeout(() => this.sendPublish(item), backoffDelay(item.tries));
          return;
        }
        this.outbox = this.outbox.filter((x) => x !== item);
        item.reject(e);
        this.flushOutbox();
      });
  }

  async presence(channel) {
    return (await this.request({ type: 'presence', channel })).payload;
  }

  // opts: {since, limit}. Resolves with {offset, epoch, messages}.
  async history(channel, { since, limit } = {}) {
    const payload = {};
    if (since !== undefined) payload.since = since;
    if (limit !== undefined) payload.limit = limit;
    return (await this.request({ type: 'history', channel, payload })).payload;
  }

  // Ephemeral, best effort, no reply: returns false when not sent.
  signal(channel, payload) {
    const sub = this.subs.get(channel);
    if (this.state !== 'connected' || (sub && !sub.active)) return false;
    return this.send({ type: 'signal', channel, payload });
  }

  async read(channel, offset) {
    return (await this.request({ type: 'read', channel, payload: { offset } })).payload;
  }
}
