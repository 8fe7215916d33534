'use strict';
// Unit tests of web/metrics.js, the dashboard's reading of /metrics (pure
// functions), imported as the ES module the browser loads.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { pathToFileURL } = require('node:url');

const webRoot = process.env.WSH_WEB_ROOT || path.join(__dirname, '..', '..', '..', 'web');
const load = () => import(pathToFileURL(path.join(webRoot, 'metrics.js')).href);

const TEXT = `# HELP wshub_connections Open connections.
# TYPE wshub_connections gauge
wshub_connections 3
wshub_messages_in_total{endpoint="echo"} 10
wshub_messages_in_total{endpoint="ws"} 5

wshub_odd{why="a \\"quoted\\" } brace"} 7
this line is not a sample
wshub_nan_value abc
wshub_publish_delivery_seconds_bucket{le="0.001"} 2
wshub_publish_delivery_seconds_bucket{le="0.01"} 6
wshub_publish_delivery_seconds_bucket{le="+Inf"} 8
process_start_time_seconds 1796535910.70 1700000000000
`;

test('parses samples, labels and skips what is not a sample', async () => {
  const { parseMetrics, labelsOf, series, sum } = await load();
  const m = parseMetrics(TEXT);
  assert.equal(m.get('wshub_connections'), 3);
  assert.equal(m.get('wshub_messages_in_total{endpoint="echo"}'), 10);
  assert.equal(m.get('wshub_odd{why="a \\"quoted\\" } brace"}'), 7);
  assert.equal(m.get('process_start_time_seconds'), 1796535910.70); // a timestamp after the value is ignored
  assert.equal(m.has('wshub_nan_value'), false);
  assert.equal(m.has('this'), false);
  assert.deepEqual(labelsOf('wshub_odd{why="a \\"quoted\\" } brace"}'), { why: 'a "quoted" } brace' });
  assert.deepEqual(labelsOf('wshub_connections'), {});
  assert.equal(sum(m, 'wshub_messages_in_total'), 15);
  assert.equal(sum(m, 'wshub_messages'), 0); // a prefix is not a name
  assert.equal(sum(m, 'nothing'), 0);
  assert.deepEqual(series(m, 'wshub_messages_in_total').map((s) => s.labels.endpoint), ['echo', 'ws']);
});

test('rates survive a restart of the server', async () => {
  const { rate } = await load();
  assert.equal(rate(100, 300, 2), 100);
  assert.equal(rate(500, 40, 2), 20); // the counter went down: count from zero
  assert.equal(rate(1, 2, 0), 0);
});

test('the largest rate among the series of a counter', async () => {
  const { parseMetrics, maxRate } = await load();
  const name = 'wshub_worker_busy_seconds_total';
  const before = parseMetrics(`${name}{worker="0"} 1.5\n${name}{worker="1"} 4\n`);
  const after = parseMetrics(`${name}{worker="0"} 3.1\n${name}{worker="1"} 4.2\n${name}{worker="2"} 0.5\n`);
  assert.ok(Math.abs(maxRate(before, after, name, 2) - 0.8) < 1e-12); // worker 0, not the largest value
  assert.ok(Math.abs(maxRate(after, after, name, 2)) < 1e-12);
  assert.equal(maxRate(before, parseMetrics(''), name, 2), 0);
  assert.equal(maxRate(before, after, name, 0), 0);
});

test('histogram quantiles interpolate inside the bucket, over the interval', async () => {
  const { parseMetrics, histogramQuantile } = await load();
  const name = 'wshub_publish_delivery_seconds';
  const before = parseMetrics(`${name}_bucket{le="0.001"} 0\n${name}_bucket{le="0.01"} 0\n${name}_bucket{le="+Inf"} 0\n`);
  const after = parseMetrics(TEXT);
  // 8 observations: 2 under 1 ms, 4 in (1, 10] ms, 2 above 10 ms
  assert.equal(histogramQuantile(before, after, name, 0.25), 0.001);
  assert.ok(Math.abs(histogramQuantile(before, after, name, 0.5) - 0.0055) < 1e-12);
  assert.equal(histogramQuantile(before, after, name, 0.99), 0.01); // in +Inf: the largest bound
  assert.equal(histogramQuantile(after, after, name, 0.5), null); // nothing new
  assert.equal(histogramQuantile(null, parseMetrics(''), name, 0.5), null);
});

test('units', async () => {
  const { formatCount, formatBytes, formatSeconds } = await load();
  assert.equal(formatCount(3), '3');
  assert.equal(formatCount(2.25), '2.3');
  assert.equal(formatCount(12345), '12.3 k');
  assert.equal(formatCount(2500000), '2.50 M');
  assert.equal(formatBytes(512), '512 B');
  assert.equal(formatBytes(1536), '1.5 KiB');
  assert.equal(formatBytes(5 * 1024 * 1024), '5.0 MiB');
  assert.equal(formatSeconds(0.00042), '420 µs');
  assert.equal(formatSeconds(0.0123), '12.3 ms');
  assert.equal(formatSeconds(0.005), '5.00 ms');
  assert.equal(formatSeconds(null), '–');
});
