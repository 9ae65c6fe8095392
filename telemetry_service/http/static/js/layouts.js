// Where the graph's nodes go, for the shapes Cytoscape's own layouts draw badly: a chain
// in rows (snaking), and a mesh by stress, so that distance on the page follows hops in
// the network. graph.js chooses between these and Cytoscape's circle and rings.

import { byId } from "./format.js";

// Stress layout by stochastic gradient descent (Zheng, Pawar and Goodman, "Graph drawing
// by stochastic gradient descent", 2018): each pair of nodes is pulled or pushed towards
// its distance in hops, so neighbours sit together and a sparse mesh of 200 reads as the
// network it is (rings by degree drew it as a hairball). Deterministic: the same network
// gives the same picture, after a reload too. 200 nodes take about 45 ms.
export function stressLayout(nodes, unit) {
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
  sorted.cy().batch(() => sorted.forEach((node, i) => node.position({ x: x[i] * unit, y: y[i] * unit })));
}

// The nodes in order along the path, if the network is one (a line), else null.
export function chainOrder(nodes) {
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
export function snake(order, size) {
  const columns = Math.max(4, Math.ceil(Math.sqrt(order.length * 2)));
  const gap = Math.max(size * 3, 36);
  order.forEach((node, i) => {
    const row = Math.floor(i / columns);
    const column = row % 2 === 0 ? i % columns : columns - 1 - (i % columns);
    node.position({ x: column * gap, y: row * gap * 1.2 });
  });
}
