// What the page reads from the hub over HTTP besides its stream: the settlement panels'
// records and the minutes of rates before the page opened (both on a fresh start), the
// hub's refusals (from /health, polled), and its version.

import { HISTORY_S, MAX_SERIES } from "./budgets.js";
import { text, timeValue } from "./format.js";
import { scheduleRender } from "./panels.js";
import { nowSecond } from "./ring.js";
import { addSettlement, bounded, dirty, putBalance, seriesRing, state } from "./state.js";

// A viewer token, where the hub needs one, comes in the page's own URL (?token=...) and
// goes on to what the page asks of the hub, as a query parameter: browsers cannot set
// headers on a WebSocket.
export function tokenQuery() {
  const token = new URLSearchParams(location.search).get("token");
  return token ? `?token=${encodeURIComponent(token)}` : "";
}

// the hub's state for the settlement panels, once per fresh start (resumes miss nothing)
export async function loadSettlementState() {
  const query = tokenQuery();
  const get = async (path) => {
    const response = await fetch(path + query, { cache: "no-store" });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    const body = await response.json();
    return Array.isArray(body) ? body : [];
  };
  try {
    const [balances, settlements, channels] = await Promise.all(
      [get("api/balances"), get("api/settlements/recent"), get("api/channels")]);
    for (const b of balances) if (b && typeof b === "object") putBalance(b, false);
    for (const e of settlements.slice().reverse()) if (e && typeof e === "object") addSettlement(e);
    for (const c of channels) {
      if (c && typeof c === "object" && c.channelId && !state.channels.has(c.channelId)) {
        state.channels.set(text(c.channelId), c);
      }
    }
    bounded(state.channels);
    state.settlements.sort((a, b) => timeValue(a.time) - timeValue(b.time));
    dirty.settlement = true;
    scheduleRender();
  } catch (error) {
    console.warn("settlement state not loaded:", error.message);
  }
}

// the minutes before this page opened, for the chart: from the hub's own counts
const pageSecond = nowSecond();
let ratesLoaded = false;
export async function loadRates() {
  if (ratesLoaded) return;
  try {
    const response = await fetch("api/rates" + tokenQuery(), { cache: "no-store" });
    if (!response.ok) return;
    const answer = await response.json();
    if (!answer || typeof answer.series !== "object" || typeof answer.until !== "number") return;
    ratesLoaded = true;
    for (const [name, values] of Object.entries(answer.series).slice(0, MAX_SERIES)) {
      if (!Array.isArray(values)) continue;
      const ring = seriesRing(name);
      values.forEach((value, i) => {
        const second = answer.until - values.length + 1 + i;
        // seconds this page counted itself are its own
        if (second < pageSecond && second > nowSecond() - HISTORY_S && typeof value === "number") {
          ring.add(second, value);
        }
      });
    }
  } catch (error) {
    console.warn("rates not loaded:", error.message);
  }
}

// the hub's refusals (bad messages from connectors), from /health: the page hears of
// none itself, as they go back to their sender only
let lastRejected = null, lastRejectedAt = 0;
export async function pollRejections() {
  if (!state.connected) return;  // the hub is away: polled again once reconnected
  try {
    const response = await fetch("health", { cache: "no-store" });
    const health = await response.json();
    if (typeof health.rejected !== "number") return;  // a hub with tokens says less
    const now = Date.now();
    if (lastRejected !== null && health.rejected >= lastRejected) {
      const seconds = Math.max(1, Math.round((now - lastRejectedAt) / 1000));
      const perSecond = (health.rejected - lastRejected) / seconds;
      for (let i = 0; i < seconds && i < HISTORY_S; i++) {
        seriesRing("rejected").add(nowSecond() - i, perSecond);
      }
    } else {
      seriesRing("rejected");  // charted, at 0, before the first refusal
    }
    lastRejected = health.rejected;
    lastRejectedAt = now;
  } catch (error) {
    // the hub is away: the connection's badge says so
  }
}

// on every (re)connection: a restarted hub counts from 0, so the count starts over
export function pollRejectionsAfresh() {
  lastRejected = null;
  pollRejections();
}

export function showVersion() {
  fetch("health", { cache: "no-store" }).then((r) => r.json()).then((h) => {
    document.getElementById("hub-info").textContent = `telemetry-hub ${h.version}`;
  }).catch(() => {});
}
