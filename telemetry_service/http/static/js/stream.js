// What the hub's messages do to the page: one handler per message type, and RESUME, the
// hub's answer to CLIENT_CONNECT, which says whether the page missed nothing or must start
// its picture again from the snapshot that follows.

import { MAX_LOGS } from "./budgets.js";
import { flight } from "./flights.js";
import { text, timeValue } from "./format.js";
import { syncGraph } from "./graph.js";
import { loadRates, loadSettlementState } from "./hub-api.js";
import { scheduleRender } from "./panels.js";
import { addHop, addSettlement, channelEvent, countPacket, countSeries, dirty, flat, nodeRecord,
  packetRecord, putBalance, setOnline, state } from "./state.js";

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

export function handle(message) {
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
