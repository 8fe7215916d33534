'use strict';
// Start/stop a wshub process for node:test suites, and small promise helpers
// around the `ws` client.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const WebSocket = require('ws');

const MULT = Number(process.env.WSH_TEST_TIMEOUT_MULTIPLIER || '1') || 1;

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function withTimeout(p, ms, what) {
  let t;
  const timer = new Promise((_, rej) => {
    t = setTimeout(() => rej(new Error(`timeout after ${ms * MULT} ms: ${what}`)), ms * MULT);
  });
  return Promise.race([p, timer]).finally(() => clearTimeout(t));
}

class Server {
  constructor(args) {
    const bin = process.env.WSHUB_BIN;
    if (!bin) throw new Error('WSHUB_BIN is not set');
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wshub-node-'));
    this.portFile = path.join(this.dir, 'port');
    this.args = ['--listen', '127.0.0.1:0', '--port-file', this.portFile, ...args.map(String)];
    this.log = '';
    this.proc = spawn(bin, this.args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc.stderr.on('data', (d) => { this.log += d.toString(); });
    this.exit = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => resolve({ code, signal }));
    });
    this.exited = false;
    this.exit.then(() => { this.exited = true; });
  }

  async ready() {
    const deadline = Date.now() + 10000 * MULT;
    while (Date.now() < deadline) {
      if (this.exited) throw new Error(`wshub exited at startup: ${this.log.slice(-2000)}`);
      try {
        const txt = fs.readFileSync(this.portFile, 'utf8');
        if (txt.endsWith('\n') && /^\d+\n$/.test(txt)) {
          this.port = Number(txt.trim());
          return this;
        }
      } catch (e) { /* not yet */ }
      await sleep(10);
    }
    throw new Error('wshub did not write its port file');
  }

  url(p) { return `ws://127.0.0.1:${this.port}${p}`; }

  // Kill only the process this object started, by pid.
  async kill() {
    if (!this.exited) {
      this.proc.kill('SIGKILL');
      await this.exit;
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  // The server is alive and answers a fresh client; then it is stopped
  // with SIGTERM and must exit 0.
  async checkAlive() {
    if (this.exited) throw new Error(`wshub died: ${this.log.slice(-2000)}`);
    const h = await healthz(this.port);
    if (h.status !== 200 || h.body !== 'ok\n') throw new Error(`/healthz answered ${h.status} ${h.body}`);
    const echo = this.args.includes('--echo');
    const ws = await open(this.url(echo ? '/echo' : '/raw/__alive_check__'));
    if (echo) {
      ws.send('alive?');
      const m = await nextMessage(ws);
      if (m.data.toString() !== 'alive?' || m.isBinary) throw new Error('fresh echo client got a wrong answer');
    }
    const c = closed(ws);
    ws.close(1000);
    const r = await c;
    if (r.code !== 1000) throw new Error(`fresh client close code ${r.code}`);
    // graceful stop: exit status 0 (under ASan: no leak report either)
    this.proc.kill('SIGTERM');
    const ex = await withTimeout(this.exit, 10000, 'exit after SIGTERM');
    if (ex.code !== 0) throw new Error(`exit after SIGTERM: ${JSON.stringify(ex)}\n${this.log.slice(-3000)}`);
    this.checkLog();
  }

  checkLog() {
    for (const marker of ['ERROR: AddressSanitizer', 'runtime error:', 'ERROR: LeakSanitizer']) {
      if (this.log.includes(marker)) throw new Error(`sanitizer report in wshub log:\n${this.log.slice(-4000)}`);
    }
  }
}

async function startServer(...args) {
  const s = new Server(args);
  return s.ready();
}

function healthz(port) {
  return withTimeout(new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/healthz' }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body, headers: res.headers }));
    });
    req.on('error', reject);
  }), 5000, 'healthz');
}

function open(url, opts = {}) {
  const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 0, ...opts });
  ws.inbox = [];
  ws.waiters = [];
  ws.on('message', (data, isBinary) => {
    const m = { data, isBinary };
    if (ws.waiters.length) ws.waiters.shift()(m); else ws.inbox.push(m);
  });
  ws.closeInfo = new Promise((resolve) => {
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
  });
  ws.on('error', (e) => { ws.lastError = e; });
  return withTimeout(new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  }), 5000, `open ${url}`);
}

function nextMessage(ws, ms = 10000, what = 'message') {
  if (ws.inbox.length) return Promise.resolve(ws.inbox.shift());
  return withTimeout(new Promise((resolve) => ws.waiters.push(resolve)), ms, what);
}

async function noMessage(ws, ms = 200) {
  await sleep(ms);
  if (ws.inbox.length) throw new Error(`unexpected message ${ws.inbox[0].data.slice(0, 40)}`);
}

function closed(ws, ms = 10000) {
  return withTimeout(ws.closeInfo, ms, 'close');
}

module.exports = {
  MULT, sleep, withTimeout, startServer, healthz, open, nextMessage, noMessage, closed, WebSocket,
};
