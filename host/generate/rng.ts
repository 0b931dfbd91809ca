/**
 * mulberry32: a 32-bit-state PRNG, small and fast, and plenty for picking tokens. Its own file so sampling depends on
 * nothing but the seed: Math.random cannot be seeded, and the sequence must not depend on the thread count.
 */
export function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
