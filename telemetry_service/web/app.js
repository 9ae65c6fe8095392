// The live network page. It is a dashboard like any other: it connects to the hub's
// WebSocket, sends CLIENT_CONNECT (asking to resume after a reconnect) and draws what it
// hears. Memory is bounded: a fixed number of packets, fixed rate windows per node.
"use strict";

const MAX_PACKETS = 40;         // packets kept and shown
const RATE_WINDOW_S = 10;       // packets/s is averaged over this many seconds
const UNREACHABLE_AFTER_MS = 3000;
const COLORS = { healthy: "#2e7d32", starting: "#f9a825", unhealthy: "#c62828", offline: "#9e9e9e" };

const state = {
  nodes: new Map(),    // nodeId -> node record
  packets: new Map(),  // packetId -> packet record, oldest first
  epoch: null,
  seq: null,
  connected: false,
};
window.hubState = state;  // for people poking at the page in the console

// -- the graph

const cy = cytoscape({
  container: document.getElementById("graph"),
  style: [
    { selector: "node", style: {
        "background-color": "data(color)", label: "data(id)", color: "#222",
        "font-size": 11, "text-valign": "bottom", "text-margin-y": 4, width: 26, height: 26 } },
    { selector: 'node[health = "unknown"]', style: {
        "background-opacity": 0.15, "border-width": 2, "border-color": "#9e9e9e", width: 18, height: 18 } },
    { selector: "edge", style: { width: 2, "line-color": "#cbd5e1", "curve-style": "bezier" } },
    { selector: "edge.route", style: { "line-style": "dashed", "line-color": "#94a3b8" } },
  ],
  layout: { name: "grid" },
  wheelSensitivity: 0.2,
  maxZoom: 1.4,  // fitting a small network must not blow its nodes up
});
window.cy = cy;
let layoutPending = false;

function nodeColor(node) {
  if (!node.online) return COLORS.offline;
  return COLORS[node.health] || COLORS.starting;
}

function relayout() {
  if (layoutPending) return;
  layoutPending = true;
  setTimeout(() => {
    layoutPending = false;
    const n = cy.nodes().length;
    // A small network on one circle; a larger one in rings by degree: a star's hub sits
    // in the middle, a line or a mesh forms one ring. Nodes and labels shrink as the
    // network grows, so 50 nodes stay legible.
    const size = n > 24 ? 14 : n > 12 ? 20 : 26;
    cy.style().selector("node").style({ width: size, height: size, "font-size": n > 24 ? 8 : 11 }).update();
    const layout = n <= 12
      ? { name: "circle", padding: 30 }
      : { name: "concentric", padding: 24, minNodeSpacing: n > 24 ? 18 : 30,
          concentric: (node) => node.degree(), levelWidth: () => 1 };
    cy.layout({ ...layout, animate: false }).run();
  }, 200);
}

function syncGraph(node) {
  let changed = false;
  let element = cy.getElementById(node.id);
  if (element.empty()) {
    element = cy.add({ group: "nodes", data: { id: node.id, color: nodeColor(node) } });
    changed = true;
  }
  element.data("color", nodeColor(node));
  element.data("health", node.online ? node.health : "offline");
  const links = [
    ...node.peers.map((p) => [p, "peer"]),
    ...node.routes.map((r) => [r, "route"]),
  ];
  for (const [other, kind] of links) {
    if (!other || other === node.id) continue;
    if (cy.getElementById(other).empty()) {
      cy.add({ group: "nodes", data: { id: other, color: COLORS.offline, health: "unknown" } });
      changed = true;
    }
    const [a, b] = [node.id, other].sort();
    const id = `${a}--${b}`;
    if (cy.getElementById(id).empty()) {
      cy.add({ group: "edges", data: { id, source: a, target: b }, classes: kind === "route" ? "route" : "" });
      changed = true;
    } else if (kind === "peer") {
      cy.getElementById(id).removeClass("route");
    }
  }
  if (changed) relayout();
}

// -- state

function nodeRecord(id) {
  let node = state.nodes.get(id);
  if (!node) {
    node = { id, health: "starting", online: true, reported: false, peers: [], routes: [],
             peersConnected: 0, totalPeers: 0, received: 0, sent: 0, noRoute: 0,
             buckets: new Array(RATE_WINDOW_S).fill(0), bucketAt: 0 };
    state.nodes.set(id, node);
  }
  return node;
}

function countPacket(node) {
  const second = Math.floor(Date.now() / 1000);
  advanceBuckets(node, second);
  node.buckets[second % RATE_WINDOW_S] += 1;
}

function advanceBuckets(node, second) {
  if (node.bucketAt === 0) node.bucketAt = second;
  for (let s = node.bucketAt + 1; s <= second && s - node.bucketAt <= RATE_WINDOW_S; s++) {
    node.buckets[s % RATE_WINDOW_S] = 0;
  }
  if (second - node.bucketAt > RATE_WINDOW_S) node.buckets.fill(0);
  node.bucketAt = Math.max(node.bucketAt, second);
}

function rate(node) {
  advanceBuckets(node, Math.floor(Date.now() / 1000));
  return node.buckets.reduce((a, b) => a + b, 0) / RATE_WINDOW_S;
}

function packetRecord(id) {
  let packet = state.packets.get(id);
  if (!packet) {
    packet = { id, destination: "", amount: "", hops: [], outcome: "in flight", first: null };
    state.packets.set(id, packet);
    while (state.packets.size > MAX_PACKETS) {
      state.packets.delete(state.packets.keys().next().value);
    }
  }
  return packet;
}

function addHop(packet, nodeId) {
  if (packet.hops[packet.hops.length - 1] !== nodeId) packet.hops.push(nodeId);
  if (packet.hops.length > 16) packet.hops.shift();
}

const handlers = {
  NODE_STATUS(m) {
    const node = nodeRecord(m.nodeId);
    const d = m.data || {};
    node.reported = true;
    node.health = d.health || "starting";
    node.online = m.online !== false;
    node.peers = (d.peers || []).map((p) => p.id).slice(0, 200);
    node.routes = (d.routes || []).map((r) => r.nextHop).slice(0, 200);
    node.peersConnected = d.peersConnected ?? (d.peers || []).filter((p) => p.connected).length;
    node.totalPeers = d.totalPeers ?? (d.peers || []).length;
    syncGraph(node);
  },
  NODE_PRESENCE(m) {
    const node = nodeRecord(m.nodeId);
    node.online = m.online;
    syncGraph(node);
  },
  PACKET_RECEIVED(m) {
    const node = nodeRecord(m.nodeId);
    node.received += 1;
    countPacket(node);
    const d = m.data || {};
    const packet = packetRecord(d.packetId);
    if (!packet.first) packet.first = m.nodeId;
    packet.destination = d.destination || packet.destination;
    packet.amount = d.amount || packet.amount;
    if (d.packetType === "FULFILL") packet.outcome = "fulfilled";
    if (d.packetType === "REJECT") packet.outcome = "rejected";
    addHop(packet, m.nodeId);
  },
  ROUTE_LOOKUP(m) {
    const d = m.data || {};
    if (d.selectedPeer === null) {
      nodeRecord(m.nodeId).noRoute += 1;
      for (const packet of [...state.packets.values()].reverse()) {
        if (packet.destination === d.destination && packet.hops.at(-1) === m.nodeId && packet.outcome === "in flight") {
          packet.outcome = "no route";
          break;
        }
      }
    }
  },
  PACKET_SENT(m) {
    const node = nodeRecord(m.nodeId);
    node.sent += 1;
    const d = m.data || {};
    const packet = state.packets.get(d.packetId);
    // PACKET_SENT follows the downstream reply; at the first hop it closes the packet
    if (packet && packet.first === m.nodeId && packet.outcome === "in flight") {
      packet.outcome = "fulfilled";
    }
  },
};

function handle(message) {
  if (typeof message.seq === "number") state.seq = message.seq;
  if (message.type === "RESUME") {
    state.epoch = message.epoch;
    state.seq = message.seq;
    if (message.status !== "resumed") {
      // the snapshot follows: start the picture again from it
      for (const node of state.nodes.values()) node.online = false;
    }
    return;
  }
  const handler = handlers[message.type];
  if (handler) handler(message);
  scheduleRender();
}

// -- rendering (at most a few times a second, whatever the message rate)

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  setTimeout(() => { renderPending = false; render(); }, 250);
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function render() {
  const nodeRows = [];
  for (const node of [...state.nodes.values()].filter((n) => n.reported).sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }))) {
    const tr = document.createElement("tr");
    const status = node.online ? node.health : "offline";
    tr.dataset.nodeId = node.id;
    tr.dataset.state = status;
    const stateCell = document.createElement("td");
    stateCell.innerHTML = `<span class="dot ${status}"></span>`;
    stateCell.append(status);
    tr.append(cell(node.id), stateCell, cell(`${node.peersConnected}/${node.totalPeers}`, "num"),
      cell(String(node.received), "num received"), cell(String(node.sent), "num sent"),
      cell(String(node.noRoute), "num"), cell(rate(node).toFixed(1), "num rate"));
    nodeRows.push(tr);
  }
  document.querySelector("#nodes tbody").replaceChildren(...nodeRows);

  const packetRows = [];
  for (const packet of [...state.packets.values()].reverse()) {
    const tr = document.createElement("tr");
    const id = document.createElement("td");
    id.innerHTML = "<code></code>";
    id.firstChild.textContent = String(packet.id).slice(0, 12);
    const outcomeClass = "outcome-" + packet.outcome.replace(/ /g, "-");
    tr.append(id, cell(packet.destination), cell(packet.amount, "num"),
      cell(packet.hops.join(" → "), "path"), cell(packet.outcome, outcomeClass));
    packetRows.push(tr);
  }
  document.querySelector("#packets tbody").replaceChildren(...packetRows);

  for (const node of state.nodes.values()) {
    const element = cy.getElementById(node.id);
    if (!element.empty()) {
      element.data("color", nodeColor(node));
      element.data("health", node.online ? node.health : "offline");
    }
  }
}
setInterval(render, 1000);  // rates decay even when nothing arrives

// -- the connection

let socket = null;
let attempt = 0;
let disconnectedSince = Date.now();

function setHubState(name, text) {
  const badge = document.getElementById("hub-state");
  badge.className = "badge " + name;
  badge.dataset.state = name;
  badge.textContent = text;
}

setInterval(() => {
  const unreachable = !state.connected && Date.now() - disconnectedSince > UNREACHABLE_AFTER_MS;
  document.getElementById("unreachable").hidden = !unreachable;
  if (unreachable) setHubState("unreachable", "hub unreachable");
}, 500);

async function connect() {
  let port = location.port || "9000";
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    const config = await response.json();
    if (config.wsPort) port = String(config.wsPort);
  } catch (error) {
    scheduleReconnect();
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // a viewer token, where the hub needs one, comes in the page's own URL (?token=...):
  // browsers cannot set headers on a WebSocket, so it goes on as a query parameter
  const token = new URLSearchParams(location.search).get("token");
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  socket = new WebSocket(`${scheme}://${location.hostname}:${port}/${query}`);
  socket.onopen = () => {
    attempt = 0;
    state.connected = true;
    setHubState("connected", "connected");
    const resume = state.epoch ? { epoch: state.epoch, seq: state.seq ?? 0 } : {};
    // presence (online/offline) is a hub event: sent only to clients that ask for it
    socket.send(JSON.stringify({ type: "CLIENT_CONNECT", nodeId: "network-page",
      timestamp: new Date().toISOString(), data: {}, resume, hubEvents: ["NODE_PRESENCE"] }));
  };
  socket.onmessage = (event) => {
    try { handle(JSON.parse(event.data)); } catch (error) { console.warn("bad message", error); }
  };
  socket.onclose = () => {
    if (state.connected) disconnectedSince = Date.now();
    state.connected = false;
    setHubState("reconnecting", "reconnecting…");
    scheduleReconnect();
  };
}

function scheduleReconnect() {
  attempt += 1;
  const delay = Math.min(1000 * 2 ** (attempt - 1), 10000);
  setTimeout(connect, delay);
}

fetch("health", { cache: "no-store" }).then((r) => r.json()).then((h) => {
  document.getElementById("hub-info").textContent = `telemetry-hub ${h.version}`;
}).catch(() => {});
connect();
