/** Interleaved rotary embedding, in place: pairs (x[2i], x[2i+1]) of each of `vecs` vectors per token
 * rotate by the angle of position pos0 + t, read from cos/sin tables of `half` values per position
 * (the host computes them once, YaRN included). Strides are in floats. */
export function rope(
  x: usize, tokens: i32, vecs: i32, tokenStride: i32, vecStride: i32, cos: usize, sin: usize, pos0: i32, half: i32,
): void {
  for (let t = 0; t < tokens; t++) {
    const c = cos + (<usize>(pos0 + t) * <usize>half << 2);
    const s = sin + (<usize>(pos0 + t) * <usize>half << 2);
    for (let v = 0; v < vecs; v++) {
      const p = x + ((<usize>t * <usize>tokenStride + <usize>v * <usize>vecStride) << 2);
      for (let i = 0; i < half; i++) {
        const pa = p + (<usize>i << 3);
        const a = load<f32>(pa);
        const b = load<f32>(pa, 4);
        const ci = load<f32>(c + (<usize>i << 2));
        const si = load<f32>(s + (<usize>i << 2));
        store<f32>(pa, a * ci - b * si);
        store<f32>(pa, a * si + b * ci, 4);
      }
    }
  }
}
