// The topology graph: the Cytoscape instance (the global `cytoscape` comes from the
// vendored classic script loaded before the modules), its look, when and how it is laid
// out, the view, and the nodes and links the nodes report, drawn and kept in step.

import { FLOW_S } from "./budgets.js";
import { byId } from "./format.js";
import { chainOrder, snake, stressLayout } from "./layouts.js";
import { state } from "./state.js";

const COLORS = { healthy: "#2e7d32", starting: "#f9a825", unhealthy: "#c62828", offline: "#9e9e9e" };
const FIT_MAX_ZOOM = 1.4;
// labels always drawn in a network of over 100 nodes (the best-connected)
const LANDMARKS = 12;
// Past this many nodes the stress layout (n² pairs) blocks the page too long: 400 nodes
// took 150 ms, 700 took 480 ms (median of 5, Chromium, the 2-core machine of the README)
const STRESS_MAX_NODES = 500;
// Past DENSE_EDGES links no drawing is readable, and drawing them all took the page
// under two frames a second (200 nodes in a full mesh, benchmarks/page.py): then only the
// selected node's links are drawn.
const DENSE_EDGES = 1500;

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
export const cy = cytoscape({
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

// nodes in the graph at the last layout
export let graphNodes = 0;

// a peer that never reported is drawn faded, whatever its presence says
function graphHealth(node) {
  if (!node.reported) return "unknown";
  return node.online ? node.health : "offline";
}

function nodeColor(node) {
  if (!node.online) return COLORS.offline;
  return COLORS[node.health] || COLORS.starting;
}

// only what changed: every data() write restyles the element
function paint(element, node) {
  const color = nodeColor(node), health = graphHealth(node);
  if (element.data("color") !== color) element.data("color", color);
  if (element.data("health") !== health) element.data("health", health);
}

// every node's colour and health as the state has them now
export function paintNodes() {
  for (const node of state.nodes.values()) {
    const element = cy.getElementById(node.id);
    if (!element.empty()) paint(element, node);
  }
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

export function edgeId(a, b) {
  const [x, y] = [a, b].sort();
  return `${x}--${y}`;
}

export function syncGraph(node) {
  let changed = false;
  let element = cy.getElementById(node.id);
  if (element.empty()) {
    element = cy.add({ group: "nodes", data: { id: node.id, color: nodeColor(node) } });
    changed = true;
  }
  paint(element, node);
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

// The links drawn (all, or in a dense network the selected node's only) and the selected
// node outlined with its neighbours named.
export function markDenseAndSelection() {
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

// each drawn edge's arrows: the directions traffic went in the last FLOW_S seconds
export function renderFlows() {
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
