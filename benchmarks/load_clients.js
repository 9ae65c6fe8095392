// Dashboards and connectors with Node's ws, the library of the real clients: N dashboards
// that send CLIENT_CONNECT and read everything, M connectors that send NODE_STATUS once and
// then a PACKET_SENT every 100 ms. Prints "open" when all are connected, and when all are
// closed "closed" with the count of each close code.
//   NODE_PATH=<a folder with ws in node_modules> node load_clients.js PORT DASHBOARDS CONNECTORS
const WebSocket = require('ws');
const [port, dashboards, connectors] = process.argv.slice(2).map(Number);
const total = dashboards + connectors;
const TS = new Date().toISOString();
let open = 0, closed = 0;
const codes = {};

function track(ws, onOpen) {
  ws.on('open', () => { onOpen(); if (++open === total) console.log('open'); });
  ws.on('message', () => {});
  ws.on('error', () => {});
  ws.on('close', (code) => {
    codes[code] = (codes[code] || 0) + 1;
    if (++closed === total) { console.log('closed', JSON.stringify(codes)); process.exit(0); }
  });
}

for (let i = 0; i < dashboards; i++) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
  track(ws, () => ws.send(JSON.stringify({type: 'CLIENT_CONNECT'})));
}
for (let i = 0; i < connectors; i++) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
  const nodeId = `connector-${i}`;
  let n = 0;
  track(ws, () => {
    ws.send(JSON.stringify({type: 'NODE_STATUS', nodeId, timestamp: TS, data: {
      routes: [], peers: [], health: 'healthy', uptime: 1, peersConnected: 0, totalPeers: 0}}));
    setInterval(() => {
      if (ws.readyState !== WebSocket.OPEN) return;
      const packetId = (n++).toString(16).padStart(64, '0');
      ws.send(JSON.stringify({type: 'PACKET_SENT', nodeId, timestamp: TS,
        data: {packetId, nextHop: 'connector-0', timestamp: TS}}));
    }, 100);
  });
}
