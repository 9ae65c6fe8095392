// The charts: the messages/s chart (a line per message type, and the hub's rejections)
// and each node's sparkline of packets.

import { HISTORY_S } from "./budgets.js";
import { nowSecond } from "./ring.js";
import { state } from "./state.js";

const SERIES_COLORS = ["#2563eb", "#16a34a", "#f59e0b", "#9333ea", "#0891b2", "#db2777",
  "#65a30d", "#ea580c", "#4f46e5", "#0d9488", "#a16207", "#475569", "#94a3b8"];

// the messages/s chart: a line per message type (and the hub's rejections), complete
// seconds only, redrawn once a second
export function renderChart() {
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

// a node's packets per second over the last minute, in its row's cell
export function drawSpark(entry, values) {
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
