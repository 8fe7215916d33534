// The live dashboard at /dashboard: scrapes /metrics every 2 s and shows
// the figures an operator watches, each with a 5-minute curve, plus the
// counters that mean trouble. No dependencies; the parsing is metrics.js.
import {
  parseMetrics, series, sum, rate, maxRate, histogramQuantile, formatCount, formatBytes, formatSeconds,
} from './metrics.js';

const PERIOD_MS = 2000;
const KEEP = 150; // samples: 5 minutes

// Each tile: what it shows, computed from the previous and current scrape.
const TILES = [
  { id: 'connections', gauge: true, title: 'Connections', value: (p, c) => sum(c, 'wshub_connections'), fmt: formatCount },
  { id: 'msgs-in', title: 'Messages in /s', value: (p, c, dt) => rate(sum(p, 'wshub_messages_in_total'), sum(c, 'wshub_messages_in_total'), dt), fmt: formatCount },
  { id: 'frames-out', title: 'Frames out /s', value: (p, c, dt) => rate(sum(p, 'wshub_frames_out_total'), sum(c, 'wshub_frames_out_total'), dt), fmt: formatCount },
  { id: 'bytes-in', title: 'Bytes in /s', value: (p, c, dt) => rate(sum(p, 'wshub_bytes_in_total'), sum(c, 'wshub_bytes_in_total'), dt), fmt: formatBytes },
  { id: 'bytes-out', title: 'Bytes out /s', value: (p, c, dt) => rate(sum(p, 'wshub_bytes_out_total'), sum(c, 'wshub_bytes_out_total'), dt), fmt: formatBytes },
  { id: 'upgrades', title: 'Upgrades /s', value: (p, c, dt) => rate(sum(p, 'wshub_http_responses_total{code="101"}'), sum(c, 'wshub_http_responses_total{code="101"}'), dt), fmt: formatCount },
  { id: 'delivery-p99', title: 'Publish delivery p99', value: (p, c) => histogramQuantile(p, c, 'wshub_publish_delivery_seconds', 0.99), fmt: formatSeconds },
  { id: 'busiest-worker', title: 'Busiest worker %', value: (p, c, dt) => Math.min(100, 100 * maxRate(p, c, 'wshub_worker_busy_seconds_total', dt)), fmt: (v) => v.toFixed(1) },
  { id: 'cpu', title: 'CPU %', value: (p, c, dt) => 100 * rate(sum(p, 'process_cpu_seconds_total'), sum(c, 'process_cpu_seconds_total'), dt), fmt: (v) => v.toFixed(1) },
  { id: 'rss', gauge: true, title: 'Resident memory', value: (p, c) => sum(c, 'process_resident_memory_bytes'), fmt: formatBytes },
  { id: 'client-memory', gauge: true, title: 'Client buffers', value: (p, c) => sum(c, 'wshub_client_memory_bytes'), fmt: formatBytes },
  { id: 'inbox', gauge: true, title: 'Between workers', value: (p, c) => sum(c, 'wshub_inbox_bytes'), fmt: formatBytes },
  { id: 'revocations', gauge: true, title: 'Revoked users and tokens', value: (p, c) => sum(c, 'wshub_revocations'), fmt: formatCount },
];

// Counters whose growth means something went wrong, with what it means.
const PROBLEMS = [
  ['wshub_slow_consumers_total', 'slow consumers cut off'],
  ['wshub_write_stalls_total', 'stalled writers dropped'],
  ['wshub_memory_evictions_total', 'evicted over --max-client-memory'],
  ['wshub_publisher_holds_total', 'publishers paused: a worker was behind'],
  ['wshub_signals_dropped_total', 'signals not sent to readers behind'],
  ['wshub_admission_refused_total', 'upgrades over the admission rate'],
  ['wshub_proxy_header_errors_total', 'bad PROXY headers'],
  ['wshub_jwks_fetches_total{result="error"}', 'failed JWKS fetches'],
  ['wshub_auth_key_waits_total{result="timeout"}', 'tokens that waited for keys in vain'],
  ['wshub_reloads_total{part="auth",result="error"}', 'SIGHUP key reloads refused'],
  ['wshub_reloads_total{part="settings",result="error"}', 'SIGHUP settings reloads refused'],
];

const history = new Map(TILES.map((t) => [t.id, []]));
let prev = null;
let prevAt = 0;

function tile(t) {
  let el = document.getElementById('tile-' + t.id);
  if (el) return el;
  el = document.createElement('div');
  el.className = 'tile';
  el.id = 'tile-' + t.id;
  const h = document.createElement('h2');
  h.textContent = t.title;
  const v = document.createElement('div');
  v.className = 'value';
  v.textContent = '–';
  const c = document.createElement('canvas');
  c.width = 240;
  c.height = 48;
  el.append(h, v, c);
  document.getElementById('tiles').append(el);
  return el;
}

function draw(canvas, points) {
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, canvas.width, canvas.height);
  const vals = points.filter((v) => Number.isFinite(v));
  if (vals.length < 2) return;
  const max = Math.max(...vals, 1e-9);
  g.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue('--accent') || '#2f6fde';
  g.lineWidth = 1.5;
  g.beginPath();
  // The newest sample at the right edge; the curve grows leftwards.
  const first = KEEP - points.length;
  points.forEach((v, i) => {
    const x = ((first + i) / (KEEP - 1)) * canvas.width;
    const y = canvas.height - 2 - ((Number.isFinite(v) ? v : 0) / max) * (canvas.height - 4);
    if (i === 0) g.moveTo(x, y);
    else g.lineTo(x, y);
  });
  g.stroke();
}

// Fills a table with one row per non-zero entry: [label, value].
function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...(rows.length ? rows : [['none', '']]).map(([k, v]) => {
    const tr = document.createElement('tr');
    const a = document.createElement('th');
    a.textContent = k;
    const b = document.createElement('td');
    b.textContent = v === '' ? '' : formatCount(v);
    tr.append(a, b);
    return tr;
  }));
}

// One row per worker: its open connections, and its share of time at work
// since the last scrape (SO_REUSEPORT spreads connections by hash, so an
// uneven row means a few busy clients landed together).
function workers(cur, dt) {
  const was = new Map(prev ? series(prev, 'wshub_worker_busy_seconds_total').map((s) => [s.labels.worker, s.value]) : []);
  const busy = new Map(series(cur, 'wshub_worker_busy_seconds_total').map((s) => [s.labels.worker, s.value]));
  const rows = series(cur, 'wshub_worker_connections')
    .sort((a, b) => Number(a.labels.worker) - Number(b.labels.worker))
    .map((s) => {
      const id = s.labels.worker;
      const share = prev && was.has(id) ? Math.min(100, 100 * rate(was.get(id), busy.get(id) ?? 0, dt)) : NaN;
      const tr = document.createElement('tr');
      tr.dataset.worker = id;
      tr.dataset.connections = String(s.value);
      tr.dataset.busy = Number.isFinite(share) ? String(share) : '';
      const th = document.createElement('th');
      th.textContent = id;
      const n = document.createElement('td');
      n.textContent = formatCount(s.value);
      const b = document.createElement('td');
      b.textContent = Number.isFinite(share) ? share.toFixed(1) : '–';
      tr.append(th, n, b);
      return tr;
    });
  document.querySelector('#workers tbody').replaceChildren(...rows);
}

function render(cur, dt) {
  for (const t of TILES) {
    const el = tile(t);
    // A rate needs two scrapes; a gauge is read from one.
    const v = prev || t.gauge ? t.value(prev, cur, dt) : null;
    const h = history.get(t.id);
    h.push(v === null ? NaN : v);
    if (h.length > KEEP) h.shift();
    el.querySelector('.value').textContent = v === null ? '–' : t.fmt(v);
    el.dataset.value = v === null ? '' : String(v);
    draw(el.querySelector('canvas'), h);
  }
  fill('closes', series(cur, 'wshub_closes_total').filter((s) => s.value > 0)
    .map((s) => [s.labels.code, s.value]));
  fill('statuses', series(cur, 'wshub_http_responses_total').filter((s) => s.value > 0)
    .map((s) => [s.labels.code, s.value]));
  fill('problems', PROBLEMS.map(([k, what]) => [what, sum(cur, k)]).filter(([, v]) => v > 0));
  workers(cur, dt);
  const start = sum(cur, 'process_start_time_seconds');
  if (start > 0) {
    const s = Math.max(0, Math.round(Date.now() / 1000 - start));
    document.getElementById('uptime').textContent =
      `up ${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }
}

function badge(ok, text) {
  const b = document.getElementById('badge');
  b.className = 'badge ' + (ok ? 'connected' : 'disconnected');
  b.dataset.state = ok ? 'connected' : 'disconnected';
  b.textContent = text;
}

async function scrape() {
  try {
    const r = await fetch('metrics', { cache: 'no-store' });
    if (!r.ok) throw new Error(`/metrics answered ${r.status}`);
    const cur = parseMetrics(await r.text());
    const now = performance.now();
    render(cur, prev ? (now - prevAt) / 1000 : 0);
    prev = cur;
    prevAt = now;
    badge(true, 'live');
  } catch (e) {
    badge(false, 'no data: ' + e.message);
  } finally {
    setTimeout(scrape, PERIOD_MS);
  }
}

scrape();
