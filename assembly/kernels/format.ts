// Weight formats and the row primitives every kernel builds on. A format's dot product and axpy sit
// side by side so that a new format (q8, q4, fp8) is one more case here, not a new kernel family.

export const F32: i32 = 0;
export const BF16: i32 = 1;

/** Bytes of one row of `cols` weights. */
@inline export function rowBytes(fmt: i32, cols: i32): usize {
  return fmt == BF16 ? <usize>cols << 1 : <usize>cols << 2;
}

@inline export function hsum(v: v128): f32 {
  return (
    f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 1) + (f32x4.extract_lane(v, 2) + f32x4.extract_lane(v, 3))
  );
}

// bf16 is the top half of an f32: widening is a zero-extend and a shift.
@inline export function bf16Low(v: v128): v128 {
  return i32x4.shl(i32x4.extend_low_i16x8_u(v), 16);
}

@inline export function bf16High(v: v128): v128 {
  return i32x4.shl(i32x4.extend_high_i16x8_u(v), 16);
}

@inline export function bf16At(p: usize): f32 {
  return reinterpret<f32>(<u32>load<u16>(p) << 16);
}

/** a . b over n f32 values; four accumulators hide the add latency. */
export function dotF32(a: usize, b: usize, n: i32): f32 {
  let s0 = f32x4.splat(0);
  let s1 = s0;
  let s2 = s0;
  let s3 = s0;
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const pa = a + (<usize>i << 2);
    const pb = b + (<usize>i << 2);
    s0 = f32x4.add(s0, f32x4.mul(v128.load(pa), v128.load(pb)));
    s1 = f32x4.add(s1, f32x4.mul(v128.load(pa, 16), v128.load(pb, 16)));
    s2 = f32x4.add(s2, f32x4.mul(v128.load(pa, 32), v128.load(pb, 32)));
    s3 = f32x4.add(s3, f32x4.mul(v128.load(pa, 48), v128.load(pb, 48)));
  }
  for (; i + 4 <= n; i += 4) {
    s0 = f32x4.add(s0, f32x4.mul(v128.load(a + (<usize>i << 2)), v128.load(b + (<usize>i << 2))));
  }
  let s = hsum(f32x4.add(f32x4.add(s0, s1), f32x4.add(s2, s3)));
  for (; i < n; i++) s += load<f32>(a + (<usize>i << 2)) * load<f32>(b + (<usize>i << 2));
  return s;
}

/** w . x with bf16 weights and f32 activations. */
export function dotBF16(w: usize, x: usize, n: i32): f32 {
  let s0 = f32x4.splat(0);
  let s1 = s0;
  let s2 = s0;
  let s3 = s0;
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const pw = w + (<usize>i << 1);
    const px = x + (<usize>i << 2);
    const v0 = v128.load(pw);
    const v1 = v128.load(pw, 16);
    s0 = f32x4.add(s0, f32x4.mul(bf16Low(v0), v128.load(px)));
    s1 = f32x4.add(s1, f32x4.mul(bf16High(v0), v128.load(px, 16)));
    s2 = f32x4.add(s2, f32x4.mul(bf16Low(v1), v128.load(px, 32)));
    s3 = f32x4.add(s3, f32x4.mul(bf16High(v1), v128.load(px, 48)));
  }
  for (; i + 8 <= n; i += 8) {
    const v = v128.load(w + (<usize>i << 1));
    const px = x + (<usize>i << 2);
    s0 = f32x4.add(s0, f32x4.mul(bf16Low(v), v128.load(px)));
    s1 = f32x4.add(s1, f32x4.mul(bf16High(v), v128.load(px, 16)));
  }
  let s = hsum(f32x4.add(f32x4.add(s0, s1), f32x4.add(s2, s3)));
  for (; i < n; i++) s += bf16At(w + (<usize>i << 1)) * load<f32>(x + (<usize>i << 2));
  return s;
}

@inline export function dotRow(fmt: i32, w: usize, x: usize, n: i32): f32 {
  return fmt == BF16 ? dotBF16(w, x, n) : dotF32(w, x, n);
}

/** y += a * w over n values of a row in format fmt. */
export function axpyRow(fmt: i32, y: usize, w: usize, a: f32, n: i32): void {
  const va = f32x4.splat(a);
  let i = 0;
  if (fmt == BF16) {
    for (; i + 8 <= n; i += 8) {
      const v = v128.load(w + (<usize>i << 1));
      const py = y + (<usize>i << 2);
      v128.store(py, f32x4.add(v128.load(py), f32x4.mul(va, bf16Low(v))));
      v128.store(py, f32x4.add(v128.load(py, 16), f32x4.mul(va, bf16High(v))), 16);
    }
    for (; i < n; i++) {
      const py = y + (<usize>i << 2);
      store<f32>(py, load<f32>(py) + a * bf16At(w + (<usize>i << 1)));
    }
    return;
  }
  for (; i + 4 <= n; i += 4) {
    const py = y + (<usize>i << 2);
    v128.store(py, f32x4.add(v128.load(py), f32x4.mul(va, v128.load(w + (<usize>i << 2)))));
  }
  for (; i < n; i++) {
    const py = y + (<usize>i << 2);
    store<f32>(py, load<f32>(py) + a * load<f32>(w + (<usize>i << 2)));
  }
}
