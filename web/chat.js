// The demo chat: rooms are channels `chat:<room>`. Every payload carries
// the sender's display name, so anonymous user ids ("anon-<client>") are
// mapped to names as they are seen (messages, signals). All user text goes
// into the page with textContent, never innerHTML.
import { WshubClient } from './wshub.js';

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

const TYPING_SEND_EVERY_MS = 2000;
const TYPING_SHOW_MS = 4000;
const HISTORY_LIMIT = 100;

const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
const client = new WshubClient(wsUrl);
const tabId = crypto.getRandomValues(new Uint32Array(2)).join('-'); // "mine" across reconnects

let me = ''; // display name
let channel = '';
let sub = null;
let epoch = null;
const names = new Map(); // user id -> display name
const present = new Map(); // client id -> user id
const messages = new Map(); // key (offset or "p:"+mid) -> message
// mids stored once: an anonymous sender is a new user after a reconnect, so
// the server does not de-duplicate its retried publish (docs/protocol.md).
const storedMids = new Set();
const readBy = new Map(); // user id -> offset
const typing = new Map(); // user id -> timer
let lastTypingSent = 0;
let lastReadSent = 0;

const cleanName = (s) => (typeof s === 'string' ? s.trim().slice(0, 32) : '');
const nameOf = (user) => names.get(user) || user || 'server';
const learn = (user, payload) => {
  const n = cleanName(payload && payload.name);
  if (user && n) names.set(user, n);
};

// --- connection badge --------------------------------------------------------

client.addEventListener('state', (e) => {
  const { state, delay } = e.detail;
  const b = $('badge');
  b.className = `badge ${state}`;
  b.dataset.state = state;
  document.body.classList.toggle('online', state === 'connected');
  b.textContent = state === 'reconnecting' && delay !== undefined
    ? `reconnecting in ${(delay / 1000).toFixed(1)} s`
    : state;
  if (state === 'connected') names.set(client.user, me);
});

// --- rendering ---------------------------------------------------------------

function normalize(m) {
  const p = m.payload;
  const obj = p && typeof p === 'object' && !Array.isArray(p);
  return {
    offset: m.offset,
    from: m.from,
    name: obj && cleanName(p.name) ? cleanName(p.name) : nameOf(m.from),
    text: obj && typeof p.text === 'string' ? p.text : JSON.stringify(p),
    mid: obj && typeof p.mid === 'string' ? p.mid : null,
    mine: obj && p.tab === tabId,
    time: m.timestamp ? new Date(m.timestamp) : new Date(),
    pending: false,
  };
}

function addMessage(m) {
  const n = normalize(m);
  learn(m.from, m.payload);
  if (messages.has(n.offset)) return;
  if (n.mid && storedMids.has(n.mid)) return; // stored twice: shown once
  if (n.mid) storedMids.add(n.mid);
  if (n.mid) messages.delete(`p:${n.mid}`); // our local echo is now stored
  messages.set(n.offset, n);
  stopTyping(m.from);
}

function renderMessages() {
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const sorted = [...messages.values()].sort((a, b) =>
    (a.pending - b.pending) || (a.pending ? a.seq - b.seq : a.offset - b.offset));

  // "seen by": per display name (a reconnect gives a new anonymous id), the
  // last message at or below that reader's offset.
  const seenAt = new Map(); // name -> offset
  for (const [user, off] of readBy) {
    if (user === client.user) continue;
    const n = nameOf(user);
    seenAt.set(n, Math.max(seenAt.get(n) || 0, off));
  }
  const seenUnder = new Map(); // message offset -> [names]
  for (const [n, off] of seenAt) {
    let target = null;
    for (const m of sorted) if (!m.pending && m.offset <= off) target = m.offset;
    if (target !== null) seenUnder.set(target, [...(seenUnder.get(target) || []), n]);
  }

  const items = sorted.map((m) => {
    const li = el('li', m.mine ? 'mine' : '');
    if (m.pending) li.classList.add('pending');
    if (!m.pending) li.dataset.offset = String(m.offset);
    const when = m.time.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    li.append(el('div', 'meta', `${m.name} · ${m.pending ? 'sending…' : when}`), el('div', 'bubble', m.text));
    const seen = seenUnder.get(m.offset);
    if (!m.pending && seen) li.append(el('div', 'seen', `seen by ${seen.sort().join(', ')}`));
    return li;
  });
  list.replaceChildren(...items);
  if (atBottom || sorted.length && sorted[sorted.length - 1].mine) list.scrollTop = list.scrollHeight;
  markRead();
}

function renderPresence() {
  const users = new Set(present.values());
  const list = $('presence');
  const rows = [...users].map((u) => {
    const mine = u === client.user;
    const li = el('li', mine ? 'me' : '', mine ? `${me} (you)` : nameOf(u));
    li.dataset.user = u;
    return li;
  }).sort((a, b) => a.textContent.localeCompare(b.textContent));
  list.replaceChildren(...rows);
  $('count').textContent = `(${users.size})`;
}

function renderTyping() {
  const uniq = [...new Set([...typing.keys()].map(nameOf))];
  $('typing').textContent = uniq.length === 0 ? ''
    : uniq.length === 1 ? `${uniq[0]} is typing…`
      : `${uniq.slice(0, -1).join(', ')} and ${uniq[uniq.length - 1]} are typing…`;
}

function stopTyping(user) {
  if (!typing.has(user)) return;
  clearTimeout(typing.get(user));
  typing.delete(user);
  renderTyping();
}

// --- read receipts -----------------------------------------------------------

// One read receipt a second at most, for the latest message seen: in a
// busy room a receipt per message would be most of what we send (and the
// server's read bucket would refuse them).
const READ_EVERY_MS = 1000;
let readTimer = null;

function markRead() {
  if (readTimer || !sub || document.visibilityState !== 'visible' || client.state !== 'connected') return;
  let max = 0;
  for (const m of messages.values()) if (!m.pending && !m.mine && m.offset > max) max = m.offset;
  if (max > lastReadSent) {
    lastReadSent = max;
    client.read(channel, max).catch(() => { lastReadSent = 0; });
    readTimer = setTimeout(() => {
      readTimer = null;
      markRead(); // what came meanwhile
    }, READ_EVERY_MS);
  }
}
document.addEventListener('visibilitychange', markRead);

// --- the room ----------------------------------------------------------------

function hello() {
  client.signal(channel, { name: me, hello: true });
}

async function resync(info) {
  if (info.epoch !== epoch) {
    // A new epoch: the history we showed is gone (server restart). Start over.
    for (const [k, m] of messages) if (!m.pending) messages.delete(k);
    readBy.clear();
    lastReadSent = 0;
    epoch = info.epoch;
  }
  try {
    const h = await client.history(channel, { limit: HISTORY_LIMIT });
    for (const m of h.messages) addMessage({ ...m, channel, epoch: h.epoch });
  } catch (e) {
    console.warn('history failed', e);
  }
  renderMessages();
}

async function refreshPresence() {
  try {
    const p = await client.presence(channel);
    present.clear();
    for (const c of p.clients || []) present.set(c.client, c.user);
    renderPresence();
  } catch (e) {
    console.warn('presence failed', e);
  }
}

function join(name, room) {
  me = name;
  channel = `chat:${room}`;
  document.title = `${room} · wshub chat`;
  $('room-title').textContent = `# ${room} — you are ${name}`;
  $('join').hidden = true;
  $('chat').hidden = false;
  sub = client.subscribe(channel, {
    onSubscribed(info) {
      names.set(client.user, me);
      hello();
      refreshPresence();
      if (!info.recovered) resync(info);
      else renderMessages();
    },
    onMessage(m) {
      addMessage(m);
      renderMessages();
    },
    onJoin(p) {
      present.set(p.client, p.user);
      renderPresence();
      // Tell the newcomer our name (after a short random pause, so a big
      // room does not answer all at once).
      setTimeout(hello, Math.random() * 300);
    },
    onLeave(p) {
      present.delete(p.client);
      stopTyping(p.user);
      renderPresence();
    },
    onSignal({ from, payload }) {
      learn(from, payload);
      if (payload && payload.typing === true) {
        clearTimeout(typing.get(from));
        typing.set(from, setTimeout(() => stopTyping(from), TYPING_SHOW_MS));
        renderTyping();
      } else if (payload && payload.typing === false) {
        stopTyping(from);
      }
      renderPresence();
      renderMessages();
    },
    onRead({ user, offset }) {
      readBy.set(user, Math.max(readBy.get(user) || 0, offset));
      renderMessages();
    },
    onError(p) {
      console.warn('channel error', p);
    },
  });
  client.connect();
  $('text').focus();
}

let pendingSeq = 0;
function send(text) {
  const mid = `${tabId}-${++pendingSeq}`;
  messages.set(`p:${mid}`, {
    pending: true, seq: pendingSeq, mid, mine: true, name: me, text, time: new Date(), offset: Infinity,
  });
  renderMessages();
  client.signal(channel, { name: me, typing: false });
  lastTypingSent = 0;
  client.publish(channel, { name: me, text, mid, tab: tabId }).catch((e) => {
    const m = messages.get(`p:${mid}`);
    if (m) m.text += `  (not sent: ${e.message})`;
    renderMessages();
  });
}

// --- wiring ------------------------------------------------------------------

const params = new URLSearchParams(location.hash.slice(1));
$('name').value = params.get('name') || sessionStorage.getItem('wshub-name') || '';
$('room').value = params.get('room') || $('room').value;

$('join').addEventListener('submit', (e) => {
  e.preventDefault();
  const name = cleanName($('name').value);
  const room = $('room').value.trim();
  if (!name || !/^[A-Za-z0-9_.=@-]{1,64}$/.test(room)) return;
  sessionStorage.setItem('wshub-name', name);
  join(name, room);
});

$('send').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('text').value;
  if (!text.trim()) return;
  $('text').value = '';
  send(text);
});

$('text').addEventListener('input', () => {
  const now = Date.now();
  if ($('text').value && now - lastTypingSent > TYPING_SEND_EVERY_MS) {
    if (client.signal(channel, { name: me, typing: true })) lastTypingSent = now;
  }
});

// For the browser test and the curious: window.wshubChat.client.
window.wshubChat = { client, get channel() { return channel; } };
