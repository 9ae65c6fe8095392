// What the page knows of the network, and the changes messages make to it: nodes and
// their counters, packets, logs, the settlement records, the links the nodes report and
// the messages/s series. Every collection is bounded (budgets.js).

import { HISTORY_S, MAX_PACKETS, MAX_RECORDS, MAX_SERIES, MAX_SETTLEMENTS,
  RATE_WINDOW_S, SPARK_S } from "./budgets.js";
import { text } from "./format.js";
import { Ring, nowSecond } from "./ring.js";

export const state = {
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

// What changed since the last render: only those parts are drawn again. At 2,000
// messages/s with 200 nodes, redrawing everything a few times a second left the page
// under one frame a second (benchmarks/page.py).
export const dirty = { packets: true, logs: true, settlement: true };

export function nodeRecord(id) {
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

export function countPacket(node) {
  const second = nowSecond();
  advanceBuckets(node, second);
  node.buckets[second % RATE_WINDOW_S] += 1;
  node.spark.add(second, 1);
}

// the messages/s series called `name`, started empty if there is none yet
export function seriesRing(name) {
  let ring = state.series.get(name);
  if (!ring) { ring = new Ring(HISTORY_S); state.series.set(name, ring); }
  return ring;
}

export function countSeries(name, count = 1) {
  if (!state.series.has(name) && state.series.size >= MAX_SERIES && name !== "rejected") {
    name = "other";
  }
  seriesRing(name).add(nowSecond(), count);
}

function advanceBuckets(node, second) {
  if (node.bucketAt === 0) node.bucketAt = second;
  for (let s = node.bucketAt + 1; s <= second && s - node.bucketAt <= RATE_WINDOW_S; s++) {
    node.buckets[s % RATE_WINDOW_S] = 0;
  }
  if (second - node.bucketAt > RATE_WINDOW_S) node.buckets.fill(0);
  node.bucketAt = Math.max(node.bucketAt, second);
}

export function rate(node) {
  advanceBuckets(node, nowSecond());
  return node.buckets.reduce((a, b) => a + b, 0) / RATE_WINDOW_S;
}

export function packetRecord(id) {
  let packet = state.packets.get(id);
  if (!packet) {
    packet = { id, destination: "", amount: "", hops: [], outcome: "in flight", first: null,
               fields: {} };
    state.packets.set(id, packet);
    bounded(state.packets, MAX_PACKETS);
  }
  return packet;
}

export function addHop(packet, nodeId) {
  if (packet.hops[packet.hops.length - 1] !== nodeId) packet.hops.push(nodeId);
  if (packet.hops.length > 16) packet.hops.shift();
}

// Flat events (ACCOUNT_BALANCE, SETTLEMENT_*, channels) carry their fields at the top;
// some connector versions nest them in data. Either way, one object to read from.
export function flat(m) {
  const d = m.data && typeof m.data === "object" && !Array.isArray(m.data) ? m.data : {};
  return { ...d, ...m };
}

export function setOnline(node, online) {
  if (node.online && !online) node.offlineSince = Date.now();
  if (online) node.offlineSince = null;
  node.online = online;
}

// the oldest entries of `map` dropped, down to `limit`
export function bounded(map, limit = MAX_RECORDS) {
  while (map.size > limit) map.delete(map.keys().next().value);
}

export function putBalance(f, live) {
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

export function addSettlement(m) {
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
export function channelEvent(m) {
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
