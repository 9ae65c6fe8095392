// The panels beside the graph: nodes, the selected node's details, recent packets and the
// selected packet, logs (filtered), balances, settlements and channels. They are drawn at
// most a few times a second whatever the message rate, and only the parts that changed.

import { SHOWN_LOGS, SHOWN_RECORDS } from "./budgets.js";
import { drawSpark } from "./chart.js";
import { byId, clock, duration, text } from "./format.js";
import { markDenseAndSelection, paintNodes } from "./graph.js";
import { nowSecond } from "./ring.js";
import { dirty, nodeRecord, rate, state } from "./state.js";

let renderPending = false;
const nodeRows = new Map();  // nodeId -> {tr, cells, canvas}: rows are kept, cells updated
let lastNodesRender = 0;

export function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  setTimeout(() => { renderPending = false; render(); }, 500);
}

export function render() {
  renderNodes();
  if (dirty.packets) { dirty.packets = false; renderPackets(); }
  renderDetails();
  renderPacket();
  if (dirty.logs) { dirty.logs = false; renderLogs(); }
  if (dirty.settlement) { dirty.settlement = false; renderSettlementPanels(); }
  paintNodes();
}

export function select(nodeId) {
  if (nodeId) nodeRecord(nodeId);  // a peer that never reported has details too: it says so
  state.selected = nodeId;
  markDenseAndSelection();
  lastNodesRender = 0;
  render();
}

export function selectPacket(packetId) {
  state.selectedPacket = packetId;
  dirty.packets = true;
  render();
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// a cell with an id in it, as code
function codeCell(value) {
  const td = document.createElement("td");
  td.innerHTML = "<code></code>";
  td.firstChild.textContent = value;
  return td;
}

function row(...cells) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  return tr;
}

function setText(element, value) {
  if (element.textContent !== value) element.textContent = value;
}

function stateText(node) {
  if (!node.reported) return "has not reported";
  if (node.online) return node.health;
  return node.offlineSince ? `offline for ${duration((Date.now() - node.offlineSince) / 1000)}` : "offline";
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
    const id = codeCell(String(packet.id).slice(0, 12));
    tr.dataset.packetId = String(packet.id);
    if (packet.id === state.selectedPacket) tr.className = "selected";
    const outcomeClass = "outcome-" + packet.outcome.replace(/ /g, "-");
    tr.append(id, cell(packet.destination), cell(packet.amount, "num"),
      cell(packet.hops.join(" → "), "path"), cell(packet.outcome, outcomeClass));
    packetRows.push(tr);
  }
  document.querySelector("#packets tbody").replaceChildren(...packetRows);
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

export function renderLogs() {
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

function channelKind(c) {
  return c.settlementMethod === "xrp" ? "XRP" : text(c.tokenSymbol || c.settlementMethod || "EVM");
}

function channelBalance(c) {
  if (c.settlementMethod === "xrp") return `${text(c.xrpBalance)} of ${text(c.xrpAmount)}`;
  if (c.balance !== undefined && c.myTransferred === undefined) return text(c.balance);
  return `${text(c.myTransferred)} sent / ${text(c.theirTransferred)} received`;
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
    const id = codeCell(text(c.channelId).slice(0, 14));
    id.title = text(c.channelId);
    const tr = row(id, cell(text(c.nodeId)), cell(text(c.peerId)), cell(channelKind(c)),
                   cell(text(c.status)), cell(channelBalance(c), "num"));
    tr.dataset.channelId = text(c.channelId);
    return tr;
  }));
}
