// Counts per second in a ring, and the second they are counted in.

// Counts per second over the last `size` seconds, in a ring: memory is fixed whatever
// the rate and however long the page stays open.
export class Ring {
  constructor(size) { this.values = new Float32Array(size); this.at = 0; }
  advance(second) {
    if (this.at === 0) { this.at = second; return; }
    if (second <= this.at) return;
    const size = this.values.length;
    const steps = Math.min(second - this.at, size);
    for (let i = 1; i <= steps; i++) this.values[(this.at + i) % size] = 0;
    this.at = second;
  }
  add(second, count) { this.advance(second); this.values[second % this.values.length] += count; }
  // oldest first, up to and including `second`
  series(second) {
    this.advance(second);
    const size = this.values.length;
    return Array.from({ length: size }, (_, i) => this.values[(second - size + 1 + i) % size]);
  }
}

export function nowSecond() { return Math.floor(Date.now() / 1000); }
