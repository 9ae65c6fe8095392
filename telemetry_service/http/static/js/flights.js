// Packets in flight: a dot along the edge for each hop, sampled and drawn on a canvas of
// the page's own over the graph, and when each link last carried traffic each way (the
// graph's arrows, graph.js renderFlows). Dots are the first to go when frames run late.

import { FLIGHTS_PER_S, FLIGHT_MS, MAX_FLYING, MAX_RECORDS } from "./budgets.js";
import { cy, edgeId, graphNodes } from "./graph.js";
import { nowSecond } from "./ring.js";
import { state } from "./state.js";

const flights = [];
const flightCanvas = document.getElementById("flights");
let flightsThisSecond = 0, flightSecond = 0, flying = 0;

// how long frames take lately: when the page falls behind, dots are the first to go
let frameMs = 16, lastFrame = 0;
export function watchFrames(t) {
  if (lastFrame) frameMs = 0.8 * frameMs + 0.2 * Math.min(t - lastFrame, 1000);
  lastFrame = t;
  requestAnimationFrame(watchFrames);
}

// A dot along the edge for a hop, sampled: at most FLIGHTS_PER_S new ones a second and
// MAX_FLYING at once, so 2,000 messages/s cost what 25 do.
export function flight(from, to) {
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
