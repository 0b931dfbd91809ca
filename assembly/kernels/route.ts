// Mixture-of-experts routing for one layer, token by token (E is at most a few hundred).
// Methods as DeepSeek defines them: greedy (plain top-k), group_limited_greedy (V2: group score is
// the group's best score) and noaux_tc (V3: choose by score + correction bias, group score is the
// sum of the group's two best biased scores). The weights are always the unbiased scores.

import { ROUTE_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID } from '../constants';

/**
 * logits [T, E] (f32) -> experts [T, k] (i32) and weights [T, k] (f32).
 * bias: E floats or 0. scratch: 2 * E + groups floats.
 */
export function route(
  logits: usize, tokens: i32, experts: i32, bias: usize, method: i32, scoring: i32,
  groups: i32, keepGroups: i32, k: i32, normalize: i32, routedScale: f32,
  outExperts: usize, outWeights: usize, scratch: usize,
): void {
  const score = scratch;
  const choice = scratch + (<usize>experts << 2);
  const groupScore = choice + (<usize>experts << 2);
  const perGroup = experts / groups;
  for (let t = 0; t < tokens; t++) {
    const l = logits + (<usize>t * <usize>experts << 2);
    if (scoring == SCORE_SIGMOID) {
      for (let e = 0; e < experts; e++) {
        store<f32>(score + (<usize>e << 2), <f32>(1 / (1 + Math.exp(-<f64>load<f32>(l + (<usize>e << 2))))));
      }
    } else {
      let m = -Infinity as f32;
      for (let e = 0; e < experts; e++) m = max(m, load<f32>(l + (<usize>e << 2)));
      let sum: f64 = 0;
      for (let e = 0; e < experts; e++) {
        const v = Math.exp(<f64>(load<f32>(l + (<usize>e << 2)) - m));
        store<f32>(score + (<usize>e << 2), <f32>v);
        sum += v;
      }
      for (let e = 0; e < experts; e++) {
        const p = score + (<usize>e << 2);
        store<f32>(p, <f32>(<f64>load<f32>(p) / sum));
      }
    }
    for (let e = 0; e < experts; e++) {
      const b: f32 = bias ? load<f32>(bias + (<usize>e << 2)) : 0;
      store<f32>(choice + (<usize>e << 2), load<f32>(score + (<usize>e << 2)) + b);
    }
    if (method != ROUTE_GREEDY && groups > 1) {
      for (let g = 0; g < groups; g++) {
        const first = choice + (<usize>(g * perGroup) << 2);
        store<f32>(groupScore + (<usize>g << 2), method == ROUTE_NOAUX_TC ? topTwoSum(first, perGroup) : maxOf(first, perGroup));
      }
      // Drop the weakest groups: their experts can no longer be chosen.
      for (let dropped = 0; dropped < groups - keepGroups; dropped++) {
        const g = argmin(groupScore, groups);
        store<f32>(groupScore + (<usize>g << 2), Infinity);
        for (let e = g * perGroup; e < (g + 1) * perGroup; e++) store<f32>(choice + (<usize>e << 2), -Infinity);
      }
    }
    const ex = outExperts + (<usize>t * <usize>k << 2);
    const wt = outWeights + (<usize>t * <usize>k << 2);
    let sum: f32 = 0;
    for (let j = 0; j < k; j++) {
      const e = argmax(choice, experts);
      store<f32>(choice + (<usize>e << 2), -Infinity);
      const w = load<f32>(score + (<usize>e << 2));
      store<i32>(ex + (<usize>j << 2), e);
      store<f32>(wt + (<usize>j << 2), w);
      sum += w;
    }
    const factor: f32 = normalize ? routedScale / (sum + 1e-20) : routedScale;
    for (let j = 0; j < k; j++) {
      const p = wt + (<usize>j << 2);
      store<f32>(p, load<f32>(p) * factor);
    }
  }
}

// Ties go to the lowest index, which is also what the routing tests expect of a stable top-k.
function argmax(x: usize, n: i32): i32 {
  let best = 0;
  let v = load<f32>(x);
  for (let i = 1; i < n; i++) {
    const c = load<f32>(x + (<usize>i << 2));
    if (c > v) {
      v = c;
      best = i;
    }
  }
  return best;
}

function argmin(x: usize, n: i32): i32 {
  let best = 0;
  let v = load<f32>(x);
  for (let i = 1; i < n; i++) {
    const c = load<f32>(x + (<usize>i << 2));
    if (c < v) {
      v = c;
      best = i;
    }
  }
  return best;
}

function maxOf(x: usize, n: i32): f32 {
  let m = -Infinity as f32;
  for (let i = 0; i < n; i++) m = max(m, load<f32>(x + (<usize>i << 2)));
  return m;
}

function topTwoSum(x: usize, n: i32): f32 {
  let a = -Infinity as f32;
  let b = -Infinity as f32;
  for (let i = 0; i < n; i++) {
    const v = load<f32>(x + (<usize>i << 2));
    if (v > a) {
      b = a;
      a = v;
    } else if (v > b) b = v;
  }
  return n > 1 ? a + b : a;
}
