// The connection to the hub's WebSocket: CLIENT_CONNECT (asking to resume after a
// reconnect), reconnecting with backoff, and the badge and banner that say how it is.

import { UNREACHABLE_AFTER_MS } from "./budgets.js";
import { pollRejectionsAfresh, tokenQuery } from "./hub-api.js";
import { state } from "./state.js";
import { handle } from "./stream.js";

let socket = null;
let attempt = 0;
let disconnectedSince = Date.now();

function setHubState(name, text) {
  const badge = document.getElementById("hub-state");
  badge.className = "badge " + name;
  badge.dataset.state = name;
  badge.textContent = text;
}

// the banner and the badge once the hub has been away for UNREACHABLE_AFTER_MS
export function showReachability() {
  const unreachable = !state.connected && Date.now() - disconnectedSince > UNREACHABLE_AFTER_MS;
  document.getElementById("unreachable").hidden = !unreachable;
  if (unreachable) setHubState("unreachable", "hub unreachable");
}

export async function connect() {
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
  socket = new WebSocket(`${scheme}://${location.hostname}:${port}/${tokenQuery()}`);
  socket.onopen = () => {
    attempt = 0;
    state.connected = true;
    setHubState("connected", "connected");
    document.getElementById("unreachable").hidden = true;
    pollRejectionsAfresh();
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
