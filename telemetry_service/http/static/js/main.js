// The live network page. It is a dashboard like any other: it connects to the hub's
// WebSocket, sends CLIENT_CONNECT (asking to resume after a reconnect) and draws what it
// hears. Memory is bounded: a fixed number of packets, fixed rate windows per node.
//
// This is its entry point, a module loaded by index.html after the vendored Cytoscape (a
// classic script: it defines the global `cytoscape`), with no build step: it starts the
// page's clocks, wires the clicks and connects. The modules beside it hold the rest, one
// concern each.

import { renderChart } from "./chart.js";
import { connect, showReachability } from "./connection.js";
import { watchFrames } from "./flights.js";
import { cy, renderFlows } from "./graph.js";
import { pollRejections, showVersion } from "./hub-api.js";
import { render, renderLogs, select, selectPacket } from "./panels.js";
import { state } from "./state.js";

// A module's names are not the page's globals: these two are, on purpose, for people
// poking at the page in the console and for tests/test_browser.py, which reads them
// through page.evaluate.
window.hubState = state;
window.cy = cy;

requestAnimationFrame(watchFrames);
setInterval(render, 1000);  // rates decay even when nothing arrives
setInterval(pollRejections, 2000);
setInterval(() => { renderChart(); renderFlows(); }, 1000);

document.querySelector("#nodes tbody").addEventListener("click", (event) => {
  const tr = event.target.closest("tr");
  if (tr && tr.dataset.nodeId) select(tr.dataset.nodeId);
});
cy.on("tap", "node", (event) => select(event.target.id()));
document.getElementById("details-close").addEventListener("click", () => select(null));
document.querySelector("#packets tbody").addEventListener("click", (event) => {
  const tr = event.target.closest("tr");
  if (tr && tr.dataset.packetId) selectPacket(tr.dataset.packetId);
});
document.getElementById("packet-close").addEventListener("click", () => selectPacket(null));
for (const id of ["log-level", "log-node", "log-text"]) {
  document.getElementById(id).addEventListener("input", () => renderLogs());
}

setInterval(showReachability, 500);
showVersion();
connect();
