// What the page keeps, draws and animates, and how often: memory is bounded (a fixed
// number of packets, logs and records, fixed rate windows per node) and so is the work
// per second, whatever the message rate and however long the page stays open.

export const MAX_PACKETS = 40;         // packets kept and shown
export const MAX_LOGS = 500;           // LOG events kept (the filters search these)
export const SHOWN_LOGS = 100;         // ... and at most this many rows drawn
export const SHOWN_RECORDS = 100;      // balances, settlements and channels drawn (newest)
export const MAX_SETTLEMENTS = 100;    // settlement events kept, as the hub's API keeps them
export const MAX_RECORDS = 1000;       // balances kept, and channels kept
export const HISTORY_S = 300;          // the messages/s chart's window
export const SPARK_S = 60;             // each node's sparkline
export const MAX_SERIES = 12;          // message types charted apart; the rest are "other"
export const MAX_FLYING = 40;          // packet dots on the graph at once
export const FLIGHTS_PER_S = 25;       // new dots per second at most (the rest are not drawn)
export const FLIGHT_MS = 700;
export const FLOW_S = 5;               // an edge shows the direction of traffic seen this recently
export const RATE_WINDOW_S = 10;       // packets/s is averaged over this many seconds
export const UNREACHABLE_AFTER_MS = 3000;
