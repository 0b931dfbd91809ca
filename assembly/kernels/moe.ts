/**
 * Groups route()'s (token, expert) pairs by expert, a stable counting sort: starts [experts + 1] (expert
 * e's pairs are [starts[e], starts[e + 1])), then rows (each pair's token) and rowWeights (its weight),
 * tokens * k of each, in expert order and within an expert in token order. chosen and weights [tokens, k]
 * are route()'s outExperts and outWeights.
 */
export function moe_group(chosen: usize, weights: usize, tokens: i32, k: i32, experts: i32, starts: usize, rows: usize, rowWeights: usize): void {
  const pairs = tokens * k;
  memory.fill(starts, 0, <usize>(experts + 1) << 2);
  for (let p = 0; p < pairs; p++) {
    const at = starts + (<usize>(load<i32>(chosen + (<usize>p << 2)) + 1) << 2);
    store<i32>(at, load<i32>(at) + 1);
  }
  // starts[e + 1] becomes the end of e's pairs; placing the pairs from the last one down, each just below
  // its expert's end, keeps them in order and leaves starts[e + 1] at the start of e's pairs.
  for (let e = 0; e < experts; e++) {
    const at = starts + (<usize>(e + 1) << 2);
    store<i32>(at, load<i32>(at) + load<i32>(at - 4));
  }
  for (let p = pairs - 1; p >= 0; p--) {
    const end = starts + (<usize>(load<i32>(chosen + (<usize>p << 2)) + 1) << 2);
    const j = load<i32>(end) - 1;
    store<i32>(end, j);
    store<i32>(rows + (<usize>j << 2), p / k);
    store<f32>(rowWeights + (<usize>j << 2), load<f32>(weights + (<usize>p << 2)));
  }
  memory.copy(starts, starts + 4, <usize>experts << 2);
  store<i32>(starts + (<usize>experts << 2), pairs);
}
