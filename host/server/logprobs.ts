/** A sampled token's log-probability and, when asked for, the most likely tokens' at its position. */
export interface TokenLogprob {
  id: number;
  logprob: number;
  top: { id: number; logprob: number }[];
}

/**
 * Log-softmax of `logits` at `id` and the `top` most likely ids (higher id last on ties). The logits are the
 * model's after the response_format mask, before penalties and temperature: what the model thinks, as
 * OpenAI reports it, not what the sampler's settings made of it.
 */
export function logprobOf(logits: Float32Array, id: number, top: number): TokenLogprob {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const lse = max + Math.log(sum);
  const best: number[] = [];
  for (let i = 0; i < logits.length && top > 0; i++) {
    const v = logits[i];
    if (v === -Infinity || (best.length === top && v <= logits[best[top - 1]])) continue;
    let at = best.length < top ? best.length : top - 1;
    while (at > 0 && logits[best[at - 1]] < v) at--;
    best.splice(at, 0, i);
    if (best.length > top) best.pop();
  }
  return { id, logprob: logits[id] - lse, top: best.map((i) => ({ id: i, logprob: logits[i] - lse })) };
}
