// Comparison server for wshub-bench: the same endpoints as wshub.
//   /echo          echoes every message (text stays text, binary stays binary)
//   /raw/<channel> relays every message to every OTHER connection on the channel
// Usage: node server.js [port]   (0 = any; prints "port=N" on stderr)
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
// perMessageDeflate off: wshub-bench does not negotiate it, and neither do we.
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 64 * 1024 });
const channels = new Map();

server.on('upgrade', (req, socket, head) => {
  const path = req.url.split('?')[0];
  if (path !== '/echo' && !path.startsWith('/raw/')) { socket.destroy(); return; }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (path === '/echo') {
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
      return;
    }
    let set = channels.get(path);
    if (!set) { set = new Set(); channels.set(path, set); }
    set.add(ws);
    ws.on('message', (data, isBinary) => {
      for (const peer of set) if (peer !== ws) peer.send(data, { binary: isBinary });
    });
    ws.on('close', () => { set.delete(ws); if (set.size === 0) channels.delete(path); });
  });
});

server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stderr.write(`port=${server.address().port}\n`);
});
