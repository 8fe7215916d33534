// Reading wshub's /metrics (Prometheus text format 0.0.4) for the
// dashboard: pure functions, no DOM, so node can test them.

// Parses the exposition text into a Map from "name{labels}" (as written,
// labels in the server's order) to a number. Comments and blank lines are
// skipped; a line that is not `series value` is ignored rather than fatal,
// so one odd line never blanks the page.
export function parseMetrics(text) {
  const out = new Map();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    // The value follows the last space outside the braces.
    const close = line.lastIndexOf('}');
    const sp = line.indexOf(' ', close >= 0 ? close : 0);
    if (sp <= 0) continue;
    const series = line.slice(0, sp);
    const value = Number(line.slice(sp + 1).trim().split(' ')[0]);
    if (series === '' || Number.isNaN(value)) continue;
    out.set(series, value);
  }
  return out;
}

// The label set of a series key as an object: 'a{x="1",y="b"}' -> {x:'1', y:'b'}.
export function labelsOf(series) {
  const open = series.indexOf('{');
  const labels = {};
  if (open < 0) return labels;
  const body = series.slice(open + 1, series.lastIndexOf('}'));
  const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  let m;
  while ((m = re.exec(body)) !== null) labels[m[1]] = m[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
  return labels;
}

// Every series of metric `name` (any labels): [{labels, value}].
export function series(map, name) {
  const out = [];
  for (const [k, v] of map) {
    if (k === name || k.startsWith(name + '{')) out.push({ labels: labelsOf(k), value: v });
  }
  return out;
}

// The sum over every series of `name`, 0 when there is none.
export function sum(map, name) {
  return series(map, name).reduce((a, s) => a + s.value, 0);
}

// Per-second rate of a counter between two scrapes dt seconds apart; a
// counter that went down (the server restarted) counts from zero.
export function rate(before, after, dt) {
  if (!(dt > 0)) return 0;
  const d = after >= before ? after - before : after;
  return d / dt;
}

// The largest per-second rate among the series of a counter, each series
// matched by its labels across the two scrapes (per worker, say: the
// busiest one). A series the earlier scrape lacked counts from zero.
export function maxRate(before, after, name, dt) {
  const was = new Map(series(before, name).map((s) => [JSON.stringify(s.labels), s.value]));
  return series(after, name).reduce(
    (m, s) => Math.max(m, rate(was.get(JSON.stringify(s.labels)) ?? 0, s.value, dt)), 0);
}

// The q-quantile (0..1) of the observations a histogram gained between two
// scrapes, by linear interpolation inside the bucket, as Prometheus's
// histogram_quantile does. null when nothing was observed. The +Inf bucket
// answers with the largest finite bound.
export function histogramQuantile(before, after, name, q) {
  const buckets = (m) => new Map(series(m, name + '_bucket').map((s) => [s.labels.le, s.value]));
  const b0 = before ? buckets(before) : new Map();
  const rows = [];
  for (const [le, v] of buckets(after)) {
    const bound = le === '+Inf' ? Infinity : Number(le);
    rows.push({ bound, n: Math.max(0, v - (b0.get(le) || 0)) });
  }
  rows.sort((a, b) => a.bound - b.bound);
  if (rows.length === 0) return null;
  const total = rows[rows.length - 1].n;
  if (total === 0) return null;
  const rank = q * total;
  let prevBound = 0;
  let prevN = 0;
  for (const r of rows) {
    if (r.n >= rank) {
      if (r.bound === Infinity) return prevBound;
      const inBucket = r.n - prevN;
      return inBucket > 0 ? prevBound + ((r.bound - prevBound) * (rank - prevN)) / inBucket : r.bound;
    }
    prevBound = r.bound;
    prevN = r.n;
  }
  return prevBound;
}

// Human units: 1536 -> "1.5 Ki", 0.00042 s -> "420 µs".
export function formatCount(v) {
  if (!Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + ' G';
  if (a >= 1e6) return (v / 1e6).toFixed(2) + ' M';
  if (a >= 1e4) return (v / 1e3).toFixed(1) + ' k';
  return a >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1);
}

export function formatBytes(v) {
  if (!Number.isFinite(v)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? String(Math.round(v)) : v.toFixed(1)) + ' ' + units[i];
}

export function formatSeconds(v) {
  if (v === null || !Number.isFinite(v)) return '–';
  if (v < 1e-3) return Math.round(v * 1e6) + ' µs';
  if (v < 1) return (v * 1e3).toFixed(v < 0.01 ? 2 : 1) + ' ms';
  return v.toFixed(2) + ' s';
}
