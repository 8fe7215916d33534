// Socket.IO comparison server for wshub-bench fanout --proto socketio.
//   "join" room  -> the socket joins the room and gets "joined" back
//   "pub" data   -> socket.to("bench").emit("msg", data) (everyone in the
//                   room but the sender), like wshub's channel fan-out
// WebSocket transport only (wshub-bench speaks Engine.IO v4 over /socket.io/).
// Usage: node socketio-server.js [port]   (0 = any; prints "port=N" on stderr)
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const ROOM = 'bench';
const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const io = new Server(server, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  maxHttpBufferSize: 64 * 1024,
  serveClient: false,
});

io.on('connection', (socket) => {
  socket.on('join', (room) => {
    if (typeof room !== 'string') return;
    socket.join(room);
    socket.emit('joined', room);
  });
  socket.on('pub', (data) => {
    socket.to(ROOM).emit('msg', data);
  });
});

server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stderr.write(`port=${server.address().port}\n`);
});
