// Values as the page shows them: short strings from events of any shape, times, durations,
// and node ids in the order they are listed.

// node ids in a stable order whatever the browser's locale: connector-2 before connector-10
const collator = new Intl.Collator("en", { numeric: true });
export function byId(a, b) {
  return collator.compare(a, b) || (a < b ? -1 : a > b ? 1 : 0);
}

// anything to a short display string: events of unexpected shape must never break the page
export function text(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value).slice(0, 200);
  return String(value).slice(0, 500);
}

export function timeValue(stamp) {
  if (typeof stamp === "number") return stamp;
  const t = Date.parse(stamp);
  return Number.isNaN(t) ? 0 : t;
}

export function clock(stamp) {
  const t = timeValue(stamp);
  return t ? new Date(t).toLocaleTimeString() : "";
}

export function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}
