'use strict';
// What the Chromium tests share: a real wshub started on an ephemeral port
// (stopped by its pid), and Debian's Chromium with a throw-away profile.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const MULT = Number(process.env.WSH_TEST_TIMEOUT_MULTIPLIER || '1') || 1;
const BIN = process.env.WSHUB_BIN;
const SRC = path.join(__dirname, '..', '..', '..');
const WEB_ROOT = process.env.WSH_WEB_ROOT || path.join(SRC, 'web');
const CONFIG = path.join(SRC, 'examples', 'demo.json');
const OUT = process.env.WSH_WEB_OUT || process.cwd();
const CHROMIUM = process.env.WSH_CHROMIUM || '/usr/bin/chromium';
const T = 10000 * MULT; // per-step wait

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Server {
  // env: variables added to ours for the server (the OOM test preloads an
  // allocator that fails with it).
  constructor(listen, config = CONFIG, extra = [], env = {}) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wshub-web-'));
    this.portFile = path.join(this.dir, 'port');
    this.log = '';
    this.proc = spawn(BIN, ['--listen', listen, '--port-file', this.portFile, '--config', config,
      '--web-root', WEB_ROOT, ...extra], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
    this.proc.stderr.on('data', (d) => { this.log += d; });
    this.exited = false;
    this.exit = new Promise((r) => this.proc.on('exit', (code, signal) => { this.exited = true; r({ code, signal }); }));
  }

  async ready() {
    const deadline = Date.now() + T;
    while (Date.now() < deadline) {
      if (this.exited) throw new Error(`wshub exited at startup: ${this.log.slice(-2000)}`);
      try {
        const t = fs.readFileSync(this.portFile, 'utf8');
        if (/^\d+\n$/.test(t)) { this.port = Number(t); return this; }
      } catch (e) { /* not yet */ }
      await sleep(20);
    }
    throw new Error('wshub did not write its port file');
  }

  // Stop only the process we started, by its pid.
  async stop(signal = 'SIGTERM') {
    if (!this.exited) this.proc.kill(signal);
    const r = await this.exit;
    fs.rmSync(this.dir, { recursive: true, force: true });
    return r;
  }
}

// Debian's Chromium, headless, with a profile of its own.
function launchChromium(userDataDir) {
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 900, height: 560 },
  });
}

// Chromium with a throw-away profile for test t. When t ends, the browser
// is closed, the profile and dirs removed, and the server that
// currentServer() returns then is stopped.
async function browserFor(t, currentServer, dirs = []) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'wshub-chromium-'));
  const ctx = await launchChromium(userDataDir);
  t.after(async () => {
    await ctx.close().catch(() => {});
    for (const d of [userDataDir, ...dirs]) fs.rmSync(d, { recursive: true, force: true });
    await currentServer().stop('SIGKILL').catch(() => {});
  });
  return ctx;
}

async function startServer(listen = '127.0.0.1:0') {
  return new Server(listen).ready();
}

const waitFor = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: T });

// A server on configuration cfg (an object, written to a throw-away file)
// and a page of it in a fresh Chromium whose errors are collected; all of
// it ends with test t.
async function pageWithConfig(t, cfg) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wshub-web-cfg-'));
  const cfgPath = path.join(dir, 'config.json');
  fs.writeFileSync(cfgPath, JSON.stringify(cfg));
  const server = await new Server('127.0.0.1:0', cfgPath).ready();
  const ctx = await browserFor(t, () => server, [dir]);
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  return { server, page, errors };
}

module.exports = {
  MULT, BIN, SRC, WEB_ROOT, CONFIG, OUT, CHROMIUM, T, sleep, Server, launchChromium, browserFor, startServer, waitFor,
  pageWithConfig,
};
