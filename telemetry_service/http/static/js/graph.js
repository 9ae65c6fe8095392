// The live network page. It is a dashboard like any other: it connects to the hub's
// WebSocket, sends CLIENT_CONNECT (asking to resume after a reconnect) and draws what it
// hears. Memory is bounded: a fixed number of packets, fixed rate windows per node.
"use strict";

const MAX_PACKETS = 40;         // packets kept and shown
const MAX_LOGS = 500;           // LOG events kept (the filters search these)
const SHOWN_LOGS = 100;         // ... and at most this many rows drawn
const SHOWN_RECORDS = 100;      // balances, settlements and channels drawn (newest)
const MAX_SETTLEMENTS = 100;    // settlement events kept, as the hub's API keeps them
const MAX_RECORDS = 1000;       // balances kept, and channels kept
const HISTORY_S = 300;          // the messages/s chart's window
const SPARK_S = 60;             // each node's sparkline
const MAX_SERIES = 12;          // message types charted apart; the rest are "other"
const MAX_FLYING = 40;          // packet dots on the graph at once
const FLIGHTS_PER_S = 25;       // new dots per second at most (the rest are not drawn)
const FLIGHT_MS = 700;
const FLOW_S = 5;               // an edge shows the direction of traffic seen this recently
const SERIES_COLORS = ["#2563eb", "#16a34a", "#f59e0b", "#9333ea", "#0891b2", "#db2777",
  "#65a30d", "#ea580c", "#4f46e5", "#0d9488", "#a16207", "#475569", "#94a3b8"];

// Counts per second over the last `size` seconds, in a ring: memory is fixed whatever
// the rate and however long the page stays open.
class Ring {
  constructor(size) { this.values = new Float32Array(size); this.at = 0; }
  advance(second) {
    if (this.at === 0) { this.at = second; return; }
    if (second <= this.at) return;
    const size = this.values.length;
    const steps = Math.min(second - this.at, size);
    for (let i = 1; i <= steps; i++) this.values[(this.at + i) % size] = 0;
    this.at = second;
  }
  add(second, count) { this.advance(second); this.values[second % this.values.length] += count; }
  // oldest first, up to and including `second`
  series(second) {
    this.advance(second);
    const size = this.values.length;
    return Array.from({ length: size }, (_, i) => this.values[(second - size + 1 + i) % size]);
  }
}

function nowSecond() { return Math.floor(Date.now() / 1000); }

// node ids in a stable order whatever the browser's locale: connector-2 before connector-10
const collator = new Intl.Collator("en", { numeric: true });
function byId(a, b) {
  return collator.compare(a, b) || (a < b ? -1 : a > b ? 1 : 0);
}
const RATE_WINDOW_S = 10;       // packets/s is averaged over this many seconds
const UNREACHABLE_AFTER_MS = 3000;
const COLORS = { healthy: "#2e7d32", starting: "#f9a825", unhealthy: "#c62828", offline: "#9e9e9e" };

const state = {
  nodes: new Map(),    // nodeId -> node record
  packets: new Map(),  // packetId -> packet record, oldest first
  logs: [],            // LOG events, oldest first
  balances: new Map(), // "node|peer|token" -> balance, as /api/balances lists them
  settlements: [],     // settlement events, oldest first
  settlementSeqs: new Set(),
  channels: new Map(), // channelId -> channel, as /api/channels lists them
  selected: null,      // the node whose details are shown
  selectedPacket: null,
  series: new Map(),   // message type (or "rejected", "other") -> Ring of messages/s
  flows: new Map(),    // edge id -> {fwd, rev}: when traffic last went each way (ms)
  links: new Map(),    // edge id -> {id, source, target, route, by}: every link reported
  linksOf: new Map(),  // nodeId -> Set of its links' edge ids
  epoch: null,
  seq: null,
  connected: false,
};
window.hubState = state;  // for people poking at the page in the console

// -- the graph

// Nodes and labels shrink as the network grows, so 200 stay legible; past 100 nodes most
// labels wait for the user to zoom in. Bezier edges cost most of a big graph's drawing
// (their control points): straight ones beyond a small network.
function graphLook(n) {
  return { size: n > 100 ? 10 : n > 24 ? 14 : n > 12 ? 20 : 26,
           font: n > 100 ? 6 : n > 24 ? 8 : 11,
           // Cytoscape compares the font size at the zoom rounded up to a power of two:
           // 13 hides a 6 px label until the user zooms in past 2x
           minFont: n > 100 ? 13 : 5,
           curve: n > 24 ? "straight" : "bezier",
           ringSpacing: n > 100 ? 6 : n > 24 ? 18 : 30 };
}

function graphStyle(look) {
  return [
    { selector: "node", style: {
        "background-color": "data(color)", label: "data(id)", color: "#222",
        "font-size": look.font, "text-valign": "bottom", "text-margin-y": 4,
        width: look.size, height: look.size, "min-zoomed-font-size": look.minFont } },
    { selector: 'node[health = "unknown"]', style: {
        "background-opacity": 0.15, "border-width": 2, "border-color": "#9e9e9e",
        width: Math.round(look.size * 0.7), height: Math.round(look.size * 0.7) } },
    // the best-connected nodes of a big network and the selected node's neighbourhood
    // keep their labels (relayout, markDenseAndSelection)
    { selector: "node.landmark, node.near", style: {
        "min-zoomed-font-size": 0, "font-weight": "bold", "font-size": look.font + 3 } },
    { selector: "node.chosen", style: { "border-width": 3, "border-color": "#2563eb" } },
    { selector: "edge", style: { width: 2, "line-color": "#cbd5e1", "curve-style": look.curve } },
    { selector: "edge.route", style: { "line-style": "dashed", "line-color": "#94a3b8" } },
    // the direction traffic went lately (PACKET_SENT from a node to its next hop)
    { selector: "edge.fwd", style: { "target-arrow-shape": "triangle", "target-arrow-color": "#64748b", "line-color": "#94a3b8" } },
    { selector: "edge.rev", style: { "source-arrow-shape": "triangle", "source-arrow-color": "#64748b", "line-color": "#94a3b8" } },
  ];
}

let look = graphLook(0);
const cy = cytoscape({
  container: document.getElementById("graph"),
  style: graphStyle(look),
  layout: { name: "grid" },
  wheelSensitivity: 0.2,
  maxZoom: 4,
  // a big network stays cheap to draw: no HiDPI canvas, a texture while panning
  pixelRatio: 1,
  textureOnViewport: true,
  hideEdgesOnViewport: true,
});
window.cy = cy;

// a peer that never reported is drawn faded, whatever its presence says
function graphHealth(node) {
  if (!node.reported) return "unknown";
  return node.online ? node.health : "offline";
}

function nodeColor(node) {
  if (!node.online) return COLORS.offline;
  return COLORS[node.health] || COLORS.starting;
}

// The layout runs once the network stops changing (200 ms after the last change, at most
// a second after the first), so a snapshot of hundreds of nodes is laid out once or twice,
// not once per node.
let layoutTimer = null, layoutFirstAsked = 0;
function relayout() {
  const now = Date.now();
  if (layoutTimer === null) layoutFirstAsked = now;
  clearTimeout(layoutTimer);
  const wait = Math.max(0, Math.min(200, layoutFirstAsked + 1000 - now));
  layoutTimer = setTimeout(() => {
    layoutTimer = null;
    const nodes = cy.nodes();
    const n = nodes.length;
    graphNodes = n;
    const dense = state.links.size > DENSE_EDGES;
    // The layout follows the network's shape: a chain is drawn as a chain (in rows,
    // snaking), a star around its hub, a mesh so that distance on the page follows hops
    // in the network, and what no drawing can show (thousands of links) in rings by degree.
    const fresh = graphLook(n);
    if (JSON.stringify(fresh) !== JSON.stringify(look)) {
      look = fresh;
      cy.style().fromJson(graphStyle(look)).update();
    }
    const size = look.size;
    const landmarks = n > 100 ? new Set(nodes.map((node) => node.id())
      .sort((a, b) => degree(b) - degree(a) || byId(a, b)).slice(0, LANDMARKS)) : new Set();
    cy.batch(() => nodes.forEach((node) => {
      if (node.hasClass("landmark") !== landmarks.has(node.id())) node.toggleClass("landmark");
    }));
    const chain = dense ? null : chainOrder(nodes);
    if (chain) {
      snake(chain, size);
    } else {
      const star = n > 4 && Math.max(...nodes.map((node) => degree(node.id()))) >= n / 2;
      if (n <= 12) {
        nodes.layout({ name: "circle", padding: 30, animate: false }).run();
      } else if (star || dense || n > STRESS_MAX_NODES) {
        nodes.layout({ name: "concentric", padding: 24, animate: false,
                       minNodeSpacing: look.ringSpacing,
                       concentric: (node) => degree(node.id()), levelWidth: () => 1 }).run();
      } else {
        stressLayout(nodes, Math.max(size * 5, 50));
      }
    }
    if (!userView) fitGraph();
    markDenseAndSelection();
  }, wait);
}

// The whole network in view. Once the user pans or zooms, the view is theirs: layouts
// no longer move it, and a double click on the background gives it back.
let userView = false, fitting = false;
function fitGraph() {
  fitting = true;
  // fitting a small network must not blow its nodes up; the user may zoom in further
  cy.maxZoom(FIT_MAX_ZOOM);
  cy.fit(cy.nodes(), 20);
  cy.maxZoom(4);
  fitting = false;
}
cy.on("viewport", () => { if (!fitting) userView = true; });
cy.on("dbltap", (event) => {
  if (event.target === cy) { userView = false; fitGraph(); }
});

const FIT_MAX_ZOOM = 1.4;
let graphNodes = 0;  // nodes in the graph at the last layout
// labels always drawn in a network of over 100 nodes (the best-connected)
const LANDMARKS = 12;
// Past this many nodes the stress layout (n² pairs) blocks the page too long: 400 nodes
// took 150 ms, 700 took 480 ms (median of 5, Chromium, the 2-core machine of the README)
const STRESS_MAX_NODES = 500;

// Stress layout by stochastic gradient descent (Zheng, Pawar and Goodman, "Graph drawing
// by stochastic gradient descent", 2018): each pair of nodes is pulled or pushed towards
// its distance in hops, so neighbours sit together and a sparse mesh of 200 reads as the
// network it is (rings by degree drew it as a hairball). Deterministic: the same network
// gives the same picture, after a reload too. 200 nodes take about 45 ms.
function stressLayout(nodes, unit) {
  const sorted = nodes.sort((a, b) => byId(a.id(), b.id()));
  const n = sorted.length;
  const index = new Map(sorted.map((node, i) => [node.id(), i]));
  const neighbours = sorted.map((node) => node.neighborhood("node").map((o) => index.get(o.id())));
  // hops between every pair, breadth-first from each node
  const unseen = 0xffff;
  const hops = new Uint16Array(n * n).fill(unseen);
  let longest = 1;
  for (let s = 0; s < n; s++) {
    const row = s * n, queue = [s];
    hops[row + s] = 0;
    for (let q = 0; q < queue.length; q++) {
      const u = queue[q], next = hops[row + u] + 1;
      for (const v of neighbours[u]) {
        if (v !== undefined && hops[row + v] === unseen) {
          hops[row + v] = next;
          if (next > longest) longest = next;
          queue.push(v);
        }
      }
    }
  }
  // pairs of nodes apart: a little beyond the longest path
  const count = n * (n - 1) / 2;
  const pairI = new Uint16Array(count), pairJ = new Uint16Array(count), pairD = new Float32Array(count);
  let k = 0;
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const d = hops[i * n + j];
      pairI[k] = i; pairJ[k] = j; pairD[k] = d === unseen ? longest + 1 : d; k++;
    }
  }
  // from a circle, with a seeded shuffle of the pairs each pass
  const x = new Float64Array(n), y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    x[i] = longest * Math.cos(2 * Math.PI * i / n);
    y[i] = longest * Math.sin(2 * Math.PI * i / n);
  }
  let seed = 1;
  const random = () => {  // mulberry32
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const order = new Uint32Array(count).map((_, i) => i);
  // the step falls from moving the farthest pair all the way to a tenth of the nearest's
  const passes = 30, etaMax = (longest + 1) ** 2, etaMin = 0.1;
  const decay = Math.log(etaMax / etaMin) / (passes - 1);
  for (let pass = 0; pass < passes; pass++) {
    const eta = etaMax * Math.exp(-decay * pass);
    for (let i = count - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      const swap = order[i]; order[i] = order[j]; order[j] = swap;
    }
    for (let o = 0; o < count; o++) {
      const p = order[o], i = pairI[p], j = pairJ[p], d = pairD[p];
      const mu = Math.min(eta / (d * d), 1);
      const dx = x[i] - x[j], dy = y[i] - y[j];
      const length = Math.hypot(dx, dy) || 1e-6;
      const r = mu * (length - d) / (2 * length);
      x[i] -= r * dx; y[i] -= r * dy;
      x[j] += r * dx; y[j] += r * dy;
    }
  }
  cy.batch(() => sorted.forEach((node, i) => node.position({ x: x[i] * unit, y: y[i] * unit })));
}

// The nodes in order along the path, if the network is one (a line), else null.
function chainOrder(nodes) {
  const n = nodes.length;
  if (n < 3) return null;
  const ends = nodes.filter((node) => node.degree() === 1);
  if (ends.length !== 2 || nodes.some((node) => node.degree() > 2)) return null;
  const order = [ends[0]];
  const seen = new Set([ends[0].id()]);
  let current = ends[0];
  while (order.length < n) {
    const next = current.neighborhood("node").filter((other) => !seen.has(other.id()));
    if (next.length !== 1) return null;
    current = next[0];
    seen.add(current.id());
    order.push(current);
  }
  return order;
}

// A chain in rows, left to right then right to left, so that neighbours stay neighbours.
function snake(order, size) {
  const columns = Math.max(4, Math.ceil(Math.sqrt(order.length * 2)));
  const gap = Math.max(size * 3, 36);
  order.forEach((node, i) => {
    const row = Math.floor(i / columns);
    const column = row % 2 === 0 ? i % columns : columns - 1 - (i % columns);
    node.position({ x: column * gap, y: row * gap * 1.2 });
  });
}

let flightsThisSecond = 0, flightSecond = 0, flying = 0;

// how long frames take lately: when the page falls behind, dots are the first to go
let frameMs = 16, lastFrame = 0;
function watchFrames(t) {
  if (lastFrame) frameMs = 0.8 * frameMs + 0.2 * Math.min(t - lastFrame, 1000);
  lastFrame = t;
  requestAnimationFrame(watchFrames);
}
requestAnimationFrame(watchFrames);

// A dot along the edge for a hop, sampled: at most FLIGHTS_PER_S new ones a second and
// MAX_FLYING at once, so 2,000 messages/s cost what 25 do.
function flight(from, to) {
  const edge = edgeId(from, to);
  let flow = state.flows.get(edge);
  if (!flow) {
    if (state.flows.size > 4 * MAX_RECORDS) state.flows.delete(state.flows.keys().next().value);
    flow = { fwd: 0, rev: 0 };
    state.flows.set(edge, flow);
  }
  flow[from < to ? "fwd" : "rev"] = Date.now();
  const second = nowSecond();
  if (second !== flightSecond) { flightSecond = second; flightsThisSecond = 0; }
  const budget = graphNodes > 100 ? FLIGHTS_PER_S / 2 : FLIGHTS_PER_S;
  if (flightsThisSecond >= budget || flying >= MAX_FLYING || document.hidden || frameMs > 40) return;
  const source = cy.getElementById(from), target = cy.getElementById(to);
  if (source.empty() || target.empty()) return;
  flightsThisSecond += 1;
  flying += 1;
  // drawn on a canvas of the page's own over the graph, not as graph elements: moving
  // elements made Cytoscape restyle and redraw the whole network every frame
  flights.push({ source, target, start: performance.now() });
  if (flights.length === 1) requestAnimationFrame(drawFlights);
}

const flights = [];
const flightCanvas = document.getElementById("flights");

function drawFlights(now) {
  const graph = document.getElementById("graph");
  const width = graph.clientWidth, height = graph.clientHeight;
  if (flightCanvas.width !== width || flightCanvas.height !== height) {
    flightCanvas.width = width;
    flightCanvas.height = height;
  }
  const g = flightCanvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  g.fillStyle = "#2563eb";
  for (let i = flights.length - 1; i >= 0; i--) {
    const f = flights[i];
    const t = (now - f.start) / FLIGHT_MS;
    if (t >= 1 || f.source.removed() || f.target.removed()) {
      flights.splice(i, 1);
      flying -= 1;
      continue;
    }
    const a = f.source.renderedPosition(), b = f.target.renderedPosition();
    g.beginPath();
    g.arc(a.x + (b.x - a.x) * t, a.y + (b.y - a.y) * t, 3.5, 0, 2 * Math.PI);
    g.fill();
  }
  if (flights.length) requestAnimationFrame(drawFlights);
}

function edgeId(a, b) {
  const [x, y] = [a, b].sort();
  return `${x}--${y}`;
}

function syncGraph(node) {
  let changed = false;
  let element = cy.getElementById(node.id);
  if (element.empty()) {
    element = cy.add({ group: "nodes", data: { id: node.id, color: nodeColor(node) } });
    changed = true;
  }
  element.data("color", nodeColor(node));
  element.data("health", graphHealth(node));
  const reported = new Set();
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
    const id = edgeId(node.id, other);
    reported.add(id);
    if (addLink(id, node.id, other, kind)) changed = true;
  }
  // the links this node reported before and no longer does
  for (const id of node.links) {
    if (!reported.has(id) && dropLink(id, node.id)) changed = true;
  }
  node.links = reported;
  if (changed) relayout();
}

// Every link the nodes report is in state.links, with the nodes that report it (either
// end, or both); Cytoscape holds only those drawn: all of them up to DENSE_EDGES, past
// that the selected node's (markDenseAndSelection). A full mesh of 200 (19,900 links) as
// hidden graph elements cost 77 MiB of heap and Cytoscape's work per element on every
// change.
function addLink(id, from, to, kind) {
  const link = state.links.get(id);
  if (link) {
    link.by.add(from);
    if (kind === "peer" && link.route) {  // a peer link is drawn solid, even if a route too
      link.route = false;
      cy.getElementById(id).removeClass("route");
    }
    return false;
  }
  const [source, target] = [from, to].sort();  // as edgeId orders them
  const added = { id, source, target, route: kind === "route", by: new Set([from]) };
  state.links.set(id, added);
  for (const end of [source, target]) {
    let ids = state.linksOf.get(end);
    if (!ids) { ids = new Set(); state.linksOf.set(end, ids); }
    ids.add(id);
  }
  if (state.links.size <= DENSE_EDGES) drawLink(added);
  return true;
}

// A link no longer reported by C{nodeId}: gone once neither end reports it.
function dropLink(id, nodeId) {
  const link = state.links.get(id);
  if (!link) return false;
  link.by.delete(nodeId);
  if (link.by.size) return false;
  state.links.delete(id);
  for (const end of [link.source, link.target]) state.linksOf.get(end)?.delete(id);
  cy.getElementById(id).remove();
  return true;
}

function drawLink(link) {
  if (!cy.getElementById(link.id).empty()) return;
  cy.add({ group: "edges", data: { id: link.id, source: link.source, target: link.target },
           classes: link.route ? "route" : "" });
}

function degree(nodeId) {
  const ids = state.linksOf.get(nodeId);
  return ids ? ids.size : 0;
}

// -- state

function nodeRecord(id) {
  let node = state.nodes.get(id);
  if (!node) {
    node = { id, health: "starting", online: true, reported: false, peers: [], routes: [],
             routeTable: [], peerTable: [], links: new Set(),  // edge ids it reports
             uptime: null, uptimeAt: 0, offlineSince: null,
             spark: new Ring(SPARK_S),
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
  node.spark.add(second, 1);
}

function countSeries(name, count = 1) {
  let ring = state.series.get(name);
  if (!ring) {
    if (state.series.size >= MAX_SERIES && name !== "rejected") name = "other";
    ring = state.series.get(name);
    if (!ring) { ring = new Ring(HISTORY_S); state.series.set(name, ring); }
  }
  ring.add(nowSecond(), count);
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
    packet = { id, destination: "", amount: "", hops: [], outcome: "in flight", first: null,
               fields: {} };
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

// Flat events (ACCOUNT_BALANCE, SETTLEMENT_*, channels) carry their fields at the top;
// some connector versions nest them in data. Either way, one object to read from.
function flat(m) {
  const d = m.data && typeof m.data === "object" && !Array.isArray(m.data) ? m.data : {};
  return { ...d, ...m };
}

// anything to a short display string: events of unexpected shape must never break the page
function text(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value).slice(0, 200);
  return String(value).slice(0, 500);
}

function setOnline(node, online) {
  if (node.online && !online) node.offlineSince = Date.now();
  if (online) node.offlineSince = null;
  node.online = online;
}

function bounded(map) {
  while (map.size > MAX_RECORDS) map.delete(map.keys().next().value);
}

function putBalance(f, live) {
  dirty.settlement = true;
  const key = `${text(f.nodeId)}|${text(f.peerId)}|${text(f.tokenId)}`;
  // what the API served on load must not undo a newer live update
  if (!live && state.balances.has(key)) return;
  state.balances.delete(key);
  state.balances.set(key, { nodeId: text(f.nodeId), peerId: text(f.peerId), tokenId: text(f.tokenId),
    netBalance: text(f.netBalance), settlementThreshold: text(f.settlementThreshold),
    settlementState: text(f.settlementState) });
  bounded(state.balances);
}

function addSettlement(m) {
  dirty.settlement = true;
  // the API's events carry the hub's seq too: one seen live and listed again is kept once
  if (typeof m.seq === "number") {
    if (state.settlementSeqs.has(m.seq)) return;
    state.settlementSeqs.add(m.seq);
  }
  const f = flat(m);
  let event = "triggered", amount = text(f.currentBalance), outcome = "";
  if (m.type === "SETTLEMENT_COMPLETED") {
    event = f.success === false ? "failed" : "completed";
    amount = text(f.settledAmount);
    outcome = f.success === false ? text(f.errorMessage) : "";
  }
  state.settlements.push({ time: f.timestamp, nodeId: text(f.nodeId), peerId: text(f.peerId),
                           event, amount, outcome, seq: m.seq });
  while (state.settlements.length > MAX_SETTLEMENTS) {
    state.settlementSeqs.delete(state.settlements.shift().seq);
  }
}

// The channel records and their changes are those of the hub's /api/channels
// (telemetry_service/settlement.py), so a channel loaded from it and one followed live
// look the same.
function channelEvent(m) {
  dirty.settlement = true;
  const f = flat(m);
  const id = text(f.channelId);
  if (!id) return;
  const base = { channelId: id, nodeId: text(f.nodeId), peerId: text(f.peerId), status: "active",
                 openedAt: f.timestamp, lastActivityAt: f.timestamp };
  let channel = state.channels.get(id);
  switch (m.type) {
    case "PAYMENT_CHANNEL_OPENED":
      channel = { ...base, tokenSymbol: text(f.tokenSymbol), myTransferred: "0", theirTransferred: "0" };
      break;
    case "XRP_CHANNEL_OPENED":
      channel = { ...base, settlementMethod: "xrp", tokenSymbol: "XRP", xrpAmount: text(f.amount), xrpBalance: "0" };
      break;
    case "AGENT_CHANNEL_OPENED":
      channel = { ...base, settlementMethod: text(f.chain), tokenSymbol: text(f.chain).toUpperCase(),
                  balance: text(f.amount) };
      break;
    default:
      if (!channel) return;  // a channel never seen open: its event is still in the logs
      if (m.type === "PAYMENT_CHANNEL_BALANCE_UPDATE") {
        channel.myTransferred = text(f.myTransferred);
        channel.theirTransferred = text(f.theirTransferred);
      } else if (m.type === "XRP_CHANNEL_CLAIMED") {
        channel.xrpBalance = text(f.claimAmount);
      } else if (m.type === "AGENT_CHANNEL_BALANCE_UPDATE") {
        channel.balance = text(f.newBalance);
      } else if (m.type.endsWith("_CLOSED") || m.type.endsWith("_SETTLED")) {
        channel.status = "settled";
      }
      channel.lastActivityAt = f.timestamp;
  }
  state.channels.delete(id);
  state.channels.set(id, channel);
  bounded(state.channels);
}

function channelKind(c) {
  return c.settlementMethod === "xrp" ? "XRP" : text(c.tokenSymbol || c.settlementMethod || "EVM");
}

function channelBalance(c) {
  if (c.settlementMethod === "xrp") return `${text(c.xrpBalance)} of ${text(c.xrpAmount)}`;
  if (c.balance !== undefined && c.myTransferred === undefined) return text(c.balance);
  return `${text(c.myTransferred)} sent / ${text(c.theirTransferred)} received`;
}

// the hub's state for the settlement panels, once per fresh start (resumes miss nothing)
async function loadSettlementState() {
  const token = new URLSearchParams(location.search).get("token");
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  const get = async (path) => {
    const response = await fetch(path + query, { cache: "no-store" });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    const body = await response.json();
    return Array.isArray(body) ? body : [];
  };
  try {
    const [balances, settlements, channels] = await Promise.all(
      [get("api/balances"), get("api/settlements/recent"), get("api/channels")]);
    for (const b of balances) if (b && typeof b === "object") putBalance(b, false);
    for (const e of settlements.slice().reverse()) if (e && typeof e === "object") addSettlement(e);
    for (const c of channels) {
      if (c && typeof c === "object" && c.channelId && !state.channels.has(c.channelId)) {
        state.channels.set(text(c.channelId), c);
      }
    }
    bounded(state.channels);
    state.settlements.sort((a, b) => timeValue(a.time) - timeValue(b.time));
    dirty.settlement = true;
    scheduleRender();
  } catch (error) {
    console.warn("settlement state not loaded:", error.message);
  }
}

// the minutes before this page opened, for the chart: from the hub's own counts
const pageSecond = nowSecond();
let ratesLoaded = false;
async function loadRates() {
  if (ratesLoaded) return;
  const token = new URLSearchParams(location.search).get("token");
  try {
    const response = await fetch("api/rates" + (token ? `?token=${encodeURIComponent(token)}` : ""),
                                 { cache: "no-store" });
    if (!response.ok) return;
    const answer = await response.json();
    if (!answer || typeof answer.series !== "object" || typeof answer.until !== "number") return;
    ratesLoaded = true;
    for (const [name, values] of Object.entries(answer.series).slice(0, MAX_SERIES)) {
      if (!Array.isArray(values)) continue;
      let ring = state.series.get(name);
      if (!ring) { ring = new Ring(HISTORY_S); state.series.set(name, ring); }
      values.forEach((value, i) => {
        const second = answer.until - values.length + 1 + i;
        // seconds this page counted itself are its own
        if (second < pageSecond && second > nowSecond() - HISTORY_S && typeof value === "number") {
          ring.add(second, value);
        }
      });
    }
  } catch (error) {
    console.warn("rates not loaded:", error.message);
  }
}

function timeValue(stamp) {
  if (typeof stamp === "number") return stamp;
  const t = Date.parse(stamp);
  return Number.isNaN(t) ? 0 : t;
}

function clock(stamp) {
  const t = timeValue(stamp);
  return t ? new Date(t).toLocaleTimeString() : "";
}

function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function stateText(node) {
  if (!node.reported) return "has not reported";
  if (node.online) return node.health;
  return node.offlineSince ? `offline for ${duration((Date.now() - node.offlineSince) / 1000)}` : "offline";
}

const handlers = {
  NODE_STATUS(m) {
    const node = nodeRecord(m.nodeId);
    const d = m.data && typeof m.data === "object" ? m.data : {};
    // a node first seen offline (in a replay) has been so since before this page knew it
    if (!node.reported && m.online === false) node.online = false;
    node.reported = true;
    node.health = ["healthy", "unhealthy", "starting"].includes(d.health) ? d.health : "starting";
    setOnline(node, m.online !== false);
    const peers = Array.isArray(d.peers) ? d.peers.slice(0, 200) : [];
    const routes = Array.isArray(d.routes) ? d.routes.slice(0, 200) : [];
    node.peers = peers.map((p) => text(p && p.id)).filter(Boolean);
    node.routes = routes.map((r) => text(r && r.nextHop)).filter(Boolean);
    node.peerTable = peers.map((p) => ({ id: text(p && p.id), connected: Boolean(p && p.connected) }));
    node.routeTable = routes.map((r) => ({ prefix: text(r && r.prefix), nextHop: text(r && r.nextHop) }));
    // uptime comes in seconds (the m2m dashboard read it as milliseconds and showed "0s")
    node.uptime = typeof d.uptime === "number" && d.uptime >= 0 ? d.uptime : null;
    // as of the status's own time (a replayed status may be hours old), never the future
    node.uptimeAt = Math.min(timeValue(m.timestamp) || Date.now(), Date.now());
    node.peersConnected = d.peersConnected ?? (d.peers || []).filter((p) => p.connected).length;
    node.totalPeers = d.totalPeers ?? (d.peers || []).length;
    syncGraph(node);
  },
  NODE_PRESENCE(m) {
    const node = nodeRecord(m.nodeId);
    setOnline(node, m.online !== false);
    syncGraph(node);
  },
  LOG(m) {
    const f = flat(m);
    state.logs.push({ time: f.timestamp, level: text(f.level || "info").toLowerCase(),
                      node: text(m.nodeId || f.nodeId), message: text(f.message) });
    if (state.logs.length > MAX_LOGS) state.logs.splice(0, state.logs.length - MAX_LOGS);
  },
  ACCOUNT_BALANCE(m) {
    putBalance(flat(m), true);
  },
  SETTLEMENT_TRIGGERED(m) { addSettlement(m); },
  SETTLEMENT_COMPLETED(m) { addSettlement(m); },
  PACKET_RECEIVED(m) {
    const node = nodeRecord(m.nodeId);
    node.received += 1;
    countPacket(node);
    const d = m.data || {};
    const packet = packetRecord(d.packetId);
    if (!packet.first) packet.first = m.nodeId;
    // every plain field the connectors said of it (condition, expiry, fulfillment, error
    // code and message, ...), for the packet's details; bounded like the packets
    for (const [key, value] of Object.entries(d).slice(0, 30)) {
      if (value !== null && typeof value !== "object") packet.fields[key.slice(0, 40)] = text(value);
    }
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
    if (typeof d.nextHop === "string") flight(m.nodeId, d.nextHop);
    const packet = state.packets.get(d.packetId);
    // PACKET_SENT follows the downstream reply; at the first hop it closes the packet
    if (packet && packet.first === m.nodeId && packet.outcome === "in flight") {
      packet.outcome = "fulfilled";
    }
  },
};

// the channel events, as the hub's /api/channels takes them (telemetry_service/settlement.py)
for (const type of ["PAYMENT_CHANNEL_OPENED", "PAYMENT_CHANNEL_BALANCE_UPDATE",
  "PAYMENT_CHANNEL_SETTLED", "XRP_CHANNEL_OPENED", "XRP_CHANNEL_CLAIMED", "XRP_CHANNEL_CLOSED",
  "AGENT_CHANNEL_OPENED", "AGENT_CHANNEL_BALANCE_UPDATE", "AGENT_CHANNEL_PAYMENT_SENT",
  "AGENT_CHANNEL_CLOSED"]) {
  handlers[type] = channelEvent;
}

function handle(message) {
  if (typeof message.seq === "number") state.seq = message.seq;
  if (message.type === "RESUME") {
    state.epoch = message.epoch;
    state.seq = message.seq;
    if (message.status !== "resumed") {
      // the snapshot follows: start the picture again from it
      for (const node of state.nodes.values()) setOnline(node, false);
      loadSettlementState();
      loadRates();
    }
    return;
  }
  if (typeof message.type === "string") countSeries(message.type.slice(0, 40));
  const handler = handlers[message.type];
  if (!handler) return;
  handler(message);
  if (message.type === "LOG") dirty.logs = true;
  else if (message.type.startsWith("PACKET_") || message.type === "ROUTE_LOOKUP") dirty.packets = true;
  scheduleRender();
}

// -- rendering (at most a few times a second, whatever the message rate)

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  setTimeout(() => { renderPending = false; render(); }, 500);
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// What changed since the last render: only those parts are drawn again. At 2,000
// messages/s with 200 nodes, redrawing everything a few times a second left the page
// under one frame a second (benchmarks/page.py).
const dirty = { packets: true, logs: true, settlement: true };
const nodeRows = new Map();  // nodeId -> {tr, cells, canvas}: rows are kept, cells updated
let lastNodesRender = 0;

function setText(element, value) {
  if (element.textContent !== value) element.textContent = value;
}

function nodeRow(node) {
  let entry = nodeRows.get(node.id);
  if (!entry) {
    const tr = document.createElement("tr");
    tr.dataset.nodeId = node.id;
    const cells = Array.from({ length: 7 }, () => document.createElement("td"));
    cells[0].textContent = node.id;
    ["num", "num received", "num sent", "num", "num rate"].forEach((c, i) => { cells[i + 2].className = c; });
    const sparkTd = document.createElement("td");
    const canvas = document.createElement("canvas");
    canvas.className = "spark";
    canvas.width = 60;
    canvas.height = 16;
    sparkTd.append(canvas);
    tr.append(...cells, sparkTd);
    entry = { tr, cells, canvas, sparkTd, status: null, stateText: null };
    nodeRows.set(node.id, entry);
  }
  return entry;
}

function renderNodes() {
  const now = Date.now();
  if (now - lastNodesRender < 900) return;  // counters and rates: once a second is plenty
  lastNodesRender = now;
  const second = nowSecond();
  const rows = [];
  for (const node of [...state.nodes.values()].filter((n) => n.reported).sort((a, b) => byId(a.id, b.id))) {
    const entry = nodeRow(node);
    const { tr, cells } = entry;
    const status = node.online ? node.health : "offline";
    const label = stateText(node);
    if (entry.status !== status || entry.stateText !== label) {
      entry.status = status;
      entry.stateText = label;
      tr.dataset.state = status;
      cells[1].innerHTML = `<span class="dot ${status}"></span>`;
      cells[1].append(label);
    }
    tr.className = node.id === state.selected ? "selected" : "";
    setText(cells[2], `${node.peersConnected}/${node.totalPeers}`);
    setText(cells[3], String(node.received));
    setText(cells[4], String(node.sent));
    setText(cells[5], String(node.noRoute));
    setText(cells[6], rate(node).toFixed(1));
    drawSpark(entry, node.spark.series(second));
    rows.push(tr);
  }
  const tbody = document.querySelector("#nodes tbody");
  const same = tbody.children.length === rows.length && rows.every((tr, i) => tbody.children[i] === tr);
  if (!same) tbody.replaceChildren(...rows);
}

function renderPackets() {
  const packetRows = [];
  for (const packet of [...state.packets.values()].reverse()) {
    const tr = document.createElement("tr");
    const id = document.createElement("td");
    id.innerHTML = "<code></code>";
    id.firstChild.textContent = String(packet.id).slice(0, 12);
    tr.dataset.packetId = String(packet.id);
    if (packet.id === state.selectedPacket) tr.className = "selected";
    const outcomeClass = "outcome-" + packet.outcome.replace(/ /g, "-");
    tr.append(id, cell(packet.destination), cell(packet.amount, "num"),
      cell(packet.hops.join(" → "), "path"), cell(packet.outcome, outcomeClass));
    packetRows.push(tr);
  }
  document.querySelector("#packets tbody").replaceChildren(...packetRows);
}

function render() {
  renderNodes();
  if (dirty.packets) { dirty.packets = false; renderPackets(); }
  renderDetails();
  renderPacket();
  if (dirty.logs) { dirty.logs = false; renderLogs(); }
  if (dirty.settlement) { dirty.settlement = false; renderSettlementPanels(); }

  for (const node of state.nodes.values()) {
    const element = cy.getElementById(node.id);
    if (element.empty()) continue;
    // only what changed: every data() write restyles the element
    const color = nodeColor(node), health = graphHealth(node);
    if (element.data("color") !== color) element.data("color", color);
    if (element.data("health") !== health) element.data("health", health);
  }
}
setInterval(render, 1000);  // rates decay even when nothing arrives

function row(...cells) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  return tr;
}

function renderDetails() {
  const panel = document.getElementById("details-panel");
  const node = state.selected && state.nodes.get(state.selected);
  if (!node) { panel.hidden = true; return; }
  panel.hidden = false;
  document.getElementById("details-id").textContent = node.id;
  document.getElementById("details-state").textContent = stateText(node);
  const uptime = node.uptime === null ? "unknown"
    : duration(node.uptime + (node.online ? (Date.now() - node.uptimeAt) / 1000 : 0));
  document.getElementById("details-uptime").textContent = uptime;
  document.getElementById("details-received").textContent = String(node.received);
  document.getElementById("details-sent").textContent = String(node.sent);
  document.getElementById("details-noroute").textContent = String(node.noRoute);
  document.querySelector("#details-routes tbody").replaceChildren(
    ...node.routeTable.map((r) => row(cell(r.prefix), cell(r.nextHop))));
  document.querySelector("#details-peers tbody").replaceChildren(
    ...node.peerTable.map((p) => row(cell(p.id), cell(p.connected ? "yes" : "no", p.connected ? "ok" : "bad"))));
}

function drawSpark(entry, values) {
  const { canvas, sparkTd: td } = entry;
  const max = Math.max(1, ...values);
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.strokeStyle = "#2563eb";
  g.beginPath();
  values.forEach((v, i) => {
    const x = (i / (values.length - 1)) * 59, y = 15 - (v / max) * 14;
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  td.title = `${values.reduce((a, b) => a + b, 0)} packets in the last ${values.length} s`;
}

function renderPacket() {
  const panel = document.getElementById("packet-panel");
  const packet = state.selectedPacket !== null && state.packets.get(state.selectedPacket);
  if (!packet) { panel.hidden = true; return; }
  panel.hidden = false;
  document.getElementById("packet-id").textContent = text(packet.id);
  const facts = [["outcome", packet.outcome], ...Object.entries(packet.fields)];
  document.getElementById("packet-fields").replaceChildren(...facts.flatMap(([key, value]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = key;
    dd.textContent = value;
    dd.dataset.field = key;
    return [dt, dd];
  }));
  document.getElementById("packet-path").replaceChildren(...packet.hops.map((hop) => {
    const li = document.createElement("li");
    li.textContent = hop;
    return li;
  }));
}

// the messages/s chart: a line per message type (and the hub's rejections), complete
// seconds only, redrawn once a second
function renderChart() {
  const canvas = document.getElementById("rate-chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 900, height = canvas.clientHeight || 160;
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const last = nowSecond() - 1;
  const lines = [...state.series.entries()].map(([name, ring]) => [name, ring.series(last)]);
  let max = 1;
  for (const [, values] of lines) for (const v of values) if (v > max) max = v;
  const left = 40, bottom = height - 14, plot = width - left - 4;
  g.fillStyle = "#6b7280";
  g.font = "10px system-ui, sans-serif";
  g.fillText(`${Math.round(max)}/s`, 2, 12);
  g.fillText("0", 2, bottom);
  g.fillText(`-${HISTORY_S / 60} min`, left, height - 2);
  g.fillText("now", width - 22, height - 2);
  g.strokeStyle = "#e5e7eb";
  g.beginPath(); g.moveTo(left, bottom); g.lineTo(width, bottom); g.stroke();
  const legend = [];
  lines.sort((a, b) => a[0].localeCompare(b[0]));
  lines.forEach(([name, values], index) => {
    const color = name === "rejected" ? "#c62828" : SERIES_COLORS[index % SERIES_COLORS.length];
    g.strokeStyle = color;
    g.lineWidth = name === "rejected" ? 2 : 1.2;
    g.beginPath();
    values.forEach((v, i) => {
      const x = left + (i / (values.length - 1)) * plot, y = bottom - (v / max) * (bottom - 16);
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
    const recent = values.slice(-10).reduce((a, b) => a + b, 0) / 10;
    const li = document.createElement("li");
    li.dataset.series = name;
    li.dataset.rate = recent.toFixed(1);
    li.innerHTML = '<span class="swatch"></span>';
    li.firstChild.style.background = color;
    li.append(`${name} ${recent.toFixed(1)}/s`);
    legend.push(li);
  });
  g.lineWidth = 1;
  document.getElementById("rate-legend").replaceChildren(...legend);
}

function renderFlows() {
  const now = Date.now();
  for (const [id, flow] of state.flows) {
    const edge = cy.getElementById(id);
    if (edge.empty()) continue;  // not drawn (a dense network's)
    // only changes: every class change restyles the edge
    const fwd = now - flow.fwd < FLOW_S * 1000, rev = now - flow.rev < FLOW_S * 1000;
    if (edge.hasClass("fwd") !== fwd) edge.toggleClass("fwd", fwd);
    if (edge.hasClass("rev") !== rev) edge.toggleClass("rev", rev);
  }
}

// the hub's refusals (bad messages from connectors), from /health: the page hears of
// none itself, as they go back to their sender only
let lastRejected = null, lastRejectedAt = 0;
async function pollRejections() {
  if (!state.connected) return;  // the hub is away: polled again once reconnected
  try {
    const response = await fetch("health", { cache: "no-store" });
    const health = await response.json();
    if (typeof health.rejected !== "number") return;  // a hub with tokens says less
    const now = Date.now();
    if (lastRejected !== null && health.rejected >= lastRejected) {
      const seconds = Math.max(1, Math.round((now - lastRejectedAt) / 1000));
      const perSecond = (health.rejected - lastRejected) / seconds;
      for (let i = 0; i < seconds && i < HISTORY_S; i++) {
        const ring = state.series.get("rejected") || new Ring(HISTORY_S);
        state.series.set("rejected", ring);
        ring.add(nowSecond() - i, perSecond);
      }
    } else if (!state.series.has("rejected")) {
      state.series.set("rejected", new Ring(HISTORY_S));
    }
    lastRejected = health.rejected;
    lastRejectedAt = now;
  } catch (error) {
    // the hub is away: the connection's badge says so
  }
}
setInterval(pollRejections, 2000);
setInterval(() => { renderChart(); renderFlows(); }, 1000);

function renderLogs() {
  const level = document.getElementById("log-level").value;
  const nodeFilter = document.getElementById("log-node").value.trim().toLowerCase();
  const textFilter = document.getElementById("log-text").value.trim().toLowerCase();
  const rows = [];
  let matching = 0;
  for (let i = state.logs.length - 1; i >= 0; i--) {
    const log = state.logs[i];
    if (level && log.level !== level) continue;
    if (nodeFilter && !log.node.toLowerCase().includes(nodeFilter)) continue;
    if (textFilter && !log.message.toLowerCase().includes(textFilter)) continue;
    matching += 1;
    if (rows.length < SHOWN_LOGS) {
      const tr = row(cell(clock(log.time)), cell(log.level, `level-${log.level}`), cell(log.node), cell(log.message, "msg"));
      tr.dataset.level = log.level;
      rows.push(tr);
    }
  }
  document.querySelector("#logs tbody").replaceChildren(...rows);
  document.getElementById("log-count").textContent = `${matching} of ${state.logs.length}`;
}

function renderSettlementPanels() {
  document.querySelector("#balances tbody").replaceChildren(...[...state.balances.values()].slice(-SHOWN_RECORDS).map((b) =>
    row(cell(b.nodeId), cell(b.peerId), cell(b.tokenId), cell(b.netBalance, "num"),
        cell(b.settlementThreshold, "num"), cell(b.settlementState))));
  document.querySelector("#settlements tbody").replaceChildren(...state.settlements.slice().reverse().map((e) => {
    const tr = row(cell(clock(e.time)), cell(e.nodeId), cell(e.peerId),
                   cell(e.outcome ? `${e.event}: ${e.outcome}` : e.event, e.event === "failed" ? "bad" : e.event === "completed" ? "ok" : ""),
                   cell(e.amount, "num"));
    tr.dataset.event = e.event;
    return tr;
  }));
  document.querySelector("#channels tbody").replaceChildren(...[...state.channels.values()].slice(-SHOWN_RECORDS).reverse().map((c) => {
    const id = document.createElement("td");
    id.innerHTML = "<code></code>";
    id.firstChild.textContent = text(c.channelId).slice(0, 14);
    id.title = text(c.channelId);
    const tr = row(id, cell(text(c.nodeId)), cell(text(c.peerId)), cell(channelKind(c)),
                   cell(text(c.status)), cell(channelBalance(c), "num"));
    tr.dataset.channelId = text(c.channelId);
    return tr;
  }));
}

// Past DENSE_EDGES links no drawing is readable, and drawing them all took the page
// under two frames a second (200 nodes in a full mesh, benchmarks/page.py): then only the
// selected node's links are drawn.
const DENSE_EDGES = 1500;
function markDenseAndSelection() {
  const dense = state.links.size > DENSE_EDGES;
  cy.batch(() => {
    if (dense) {
      const wanted = (state.selected && state.linksOf.get(state.selected)) || new Set();
      cy.edges().filter((edge) => !wanted.has(edge.id())).remove();
      for (const id of wanted) drawLink(state.links.get(id));
    } else if (cy.edges().length < state.links.size) {
      for (const link of state.links.values()) drawLink(link);  // no longer dense
    }
    cy.nodes(".near").removeClass("near");
    cy.nodes(".chosen").removeClass("chosen");
    if (state.selected) {
      // the selected node outlined and its neighbours named
      const chosen = cy.getElementById(state.selected);
      chosen.addClass("chosen");
      chosen.closedNeighborhood("node").addClass("near");
    }
  });
  document.getElementById("graph").dataset.dense = String(dense);
  const note = document.getElementById("graph-note");
  note.hidden = !dense;
  note.textContent = `${state.links.size} links: only the selected node's are drawn`;
}

function select(nodeId) {
  if (nodeId) nodeRecord(nodeId);  // a peer that never reported has details too: it says so
  state.selected = nodeId;
  markDenseAndSelection();
  lastNodesRender = 0;
  render();
}
document.querySelector("#nodes tbody").addEventListener("click", (event) => {
  const tr = event.target.closest("tr");
  if (tr && tr.dataset.nodeId) select(tr.dataset.nodeId);
});
cy.on("tap", "node", (event) => select(event.target.id()));
document.getElementById("details-close").addEventListener("click", () => select(null));
document.querySelector("#packets tbody").addEventListener("click", (event) => {
  const tr = event.target.closest("tr");
  if (tr && tr.dataset.packetId) { state.selectedPacket = tr.dataset.packetId; dirty.packets = true; render(); }
});
document.getElementById("packet-close").addEventListener("click", () => {
  state.selectedPacket = null;
  dirty.packets = true;
  render();
});
for (const id of ["log-level", "log-node", "log-text"]) {
  document.getElementById(id).addEventListener("input", () => renderLogs());
}

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
    document.getElementById("unreachable").hidden = true;
    lastRejected = null;  // a restarted hub counts from 0: start over
    pollRejections();
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
