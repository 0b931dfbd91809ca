// Each filter on small logit vectors whose results are worked out by hand, the penalties, and the seeded draw.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DeepWasmError } from '../host/errors.js';
import { resolveGenerateOptions, resolveSampling, type GenerateOptions, type SamplingOptions } from '../host/generate/options.js';
import { mulberry32 } from '../host/generate/rng.js';
import { Sampler } from '../host/generate/sampler.js';

const EPS = 1e-6;

function sampler(vocab: number, opts: SamplingOptions, promptIds: number[] = []): Sampler {
  return new Sampler(vocab, resolveSampling({ temperature: 1, seed: 1, ...opts }), promptIds);
}

function probs(opts: SamplingOptions, logits: number[]): number[] {
  return Array.from(sampler(logits.length, opts).probabilities(Float32Array.from(logits)));
}

/** Logits whose softmax is exactly `p`. */
const logitsOf = (p: number[]): number[] => p.map(Math.log);

function close(actual: number[], expected: number[], label: string): void {
  assert.is(actual.length, expected.length, `${label}: length`);
  actual.forEach((a, i) => assert.ok(Math.abs(a - expected[i]) < EPS, `${label}: [${i}] is ${a}, expected ${expected[i]} (all: ${actual.join(', ')})`));
}

test('greedy takes the first highest logit and draws nothing', () => {
  const s = sampler(4, { temperature: 0 });
  assert.is(s.sample(Float32Array.from([1, 3, 2, 3])), 1);
  close(Array.from(s.probabilities(Float32Array.from([1, 3, 2, 3]))), [0, 1, 0, 0], 'one-hot');
});

test('temperature divides the logits before the softmax', () => {
  const l = [0, 2 * Math.LN2, 4 * Math.LN2];
  close(probs({ temperature: 1 }, l), [1 / 21, 4 / 21, 16 / 21], 'T=1');
  close(probs({ temperature: 2 }, l), [1 / 7, 2 / 7, 4 / 7], 'T=2');
  close(probs({ temperature: 0.5 }, [0, Math.LN2]), [1 / 5, 4 / 5], 'T=0.5');
  close(probs({ temperature: 1e-30 }, [1, 3, 2]), [0, 1, 0], 'a tiny temperature is nearly greedy, not NaN');
});

test('top-k keeps the k highest logits, lower ids first on ties', () => {
  const e = Math.E;
  close(probs({ topK: 2 }, [1, 4, 3, 2]), [0, e / (e + 1), 1 / (e + 1), 0], 'k=2');
  close(probs({ topK: 1 }, [1, 4, 3, 2]), [0, 1, 0, 0], 'k=1');
  close(probs({ topK: 2 }, [1, 1, 1, 1]), [0.5, 0.5, 0, 0], 'ties');
  close(probs({ topK: 3 }, [5, 1, 5, 5, 5]), [1 / 3, 0, 1 / 3, 1 / 3, 0], 'ties among the best');
  close(probs({ topK: 9 }, logitsOf([0.1, 0.2, 0.3, 0.4])), [0.1, 0.2, 0.3, 0.4], 'k above the vocabulary is off');
  // Selection on a larger shuffled vector agrees with a sort.
  const rand = mulberry32(3);
  const big = Array.from({ length: 500 }, () => Math.floor(rand() * 50));
  const kept = probs({ topK: 37 }, big).flatMap((p, i) => (p > 0 ? [i] : []));
  const bySort = big.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, 37).map(([, i]) => i).sort((a, b) => a - b);
  assert.equal(kept, bySort);
});

test('top-p keeps the most likely tokens until they hold p', () => {
  const l = logitsOf([0.1, 0.2, 0.3, 0.4]);
  close(probs({ topP: 0.35 }, l), [0, 0, 0, 1], 'p=0.35: 0.4 alone holds it');
  close(probs({ topP: 0.5 }, l), [0, 0, 3 / 7, 4 / 7], 'p=0.5');
  close(probs({ topP: 0.75 }, l), [0, 2 / 9, 3 / 9, 4 / 9], 'p=0.75');
  close(probs({ topP: 1 }, l), [0.1, 0.2, 0.3, 0.4], 'p=1 is off');
});

test('top-p reaches the nucleus when it lies among many unlikely tokens', () => {
  // One token at 0.5 and 1000 at 0.0005: with p = 0.89975 the token after the big one and 799 small ones (holding
  // 0.8995) is kept, the next (0.9) is not: the big one and 800 small ones, lower ids first.
  const l = [Math.log(0.5), ...new Array<number>(1000).fill(Math.log(0.0005))];
  const p = probs({ topP: 0.89975 }, l);
  const kept = p.flatMap((v, i) => (v > 0 ? [i] : []));
  assert.is(kept.length, 801);
  assert.is(kept[800], 800, 'the small tokens kept are the first 800');
  assert.ok(Math.abs(p[0] - 0.5 / 0.9) < EPS, `renormalized: ${p[0]}`);
  // A flat distribution over 10000 tokens: half the mass is 5000 tokens.
  const flat = probs({ topP: 0.49995 }, new Array<number>(10000).fill(0));
  assert.is(flat.filter((v) => v > 0).length, 5000);
  assert.ok(flat[4999] > 0 && flat[5000] === 0);
});

test('min-p drops tokens below a fraction of the most likely one', () => {
  const l = logitsOf([0.1, 0.2, 0.3, 0.4]);
  close(probs({ minP: 0.3 }, l), [0, 2 / 9, 3 / 9, 4 / 9], 'floor 0.12');
  close(probs({ minP: 0.6 }, l), [0, 0, 3 / 7, 4 / 7], 'floor 0.24');
  close(probs({ minP: 1 }, l), [0, 0, 0, 1], 'only the most likely');
  close(probs({ minP: 0 }, l), [0.1, 0.2, 0.3, 0.4], '0 is off');
});

test('filters run in order temperature, top-k, top-p, min-p on renormalized probabilities', () => {
  const l = logitsOf([0.1, 0.2, 0.3, 0.4]);
  // After top-k 3 the 0.4 token holds 4/9 > 0.42, so top-p keeps it alone (without renormalizing it would not).
  close(probs({ topK: 3, topP: 0.42 }, l), [0, 0, 0, 1], 'top-k then top-p');
  // Temperature 0.5 squares the probabilities: 1, 4, 9, 16 over 30; top-p 0.8 keeps 16/30 and 9/30.
  close(probs({ temperature: 0.5, topP: 0.8 }, l), [0, 0, 9 / 25, 16 / 25], 'temperature then top-p');
});

test('NaN and -Infinity logits are never drawn', () => {
  close(probs({}, [NaN, 0, -Infinity, 0]), [0, 0.5, 0, 0.5], 'dropped');
  assert.throws(() => probs({}, [NaN, -Infinity]), (e: unknown) => e instanceof DeepWasmError && /largest logit is -Infinity .*no token to sample/.test((e as Error).message));
});

test('repetition penalty divides positive and multiplies negative logits of prompt and output tokens, once each', () => {
  const s = sampler(5, { repetitionPenalty: 2 }, [0, 1, 0]);
  s.accept(3);
  s.accept(3);
  const x = Float32Array.from([2, -2, 1, 0.5, 3]);
  s.penalize(x);
  close(Array.from(x), [1, -4, 1, 0.25, 3], 'penalized');
});

test('frequency and presence penalties count generated tokens only', () => {
  const s = sampler(4, { frequencyPenalty: 0.5, presencePenalty: 0.25 }, [2]);
  s.accept(0);
  s.accept(0);
  s.accept(1);
  const x = Float32Array.from([1, 1, 1, 1]);
  s.penalize(x);
  close(Array.from(x), [-0.25, 0.25, 1, 1], 'penalized');
  const neg = sampler(2, { frequencyPenalty: -1 });
  neg.accept(1);
  const y = Float32Array.from([0, 0]);
  neg.penalize(y);
  close(Array.from(y), [0, 1], 'a negative penalty encourages');
});

test('penalties apply before greedy choice', () => {
  const s = sampler(3, { temperature: 0, repetitionPenalty: 10 }, [0]);
  assert.is(s.sample(Float32Array.from([3, 2, 1])), 1);
});

test('a seed gives the same draws; another seed other draws', () => {
  const draws = (seed: number): number[] => {
    const s = sampler(8, { seed });
    return Array.from({ length: 100 }, () => s.sample(new Float32Array(8)));
  };
  assert.equal(draws(7), draws(7));
  assert.not.equal(draws(7), draws(8));
});

test('draws follow the distribution', () => {
  const p = [0.1, 0.2, 0.3, 0.4];
  const l = Float32Array.from(logitsOf(p));
  const s = sampler(4, { seed: 12345 });
  const counts = [0, 0, 0, 0];
  const N = 40000;
  const x = new Float32Array(4);
  for (let i = 0; i < N; i++) {
    x.set(l);
    counts[s.sample(x)]++;
  }
  counts.forEach((c, i) => assert.ok(Math.abs(c / N - p[i]) < 0.01, `token ${i}: ${c / N}, expected ${p[i]}`));
  const k = sampler(4, { seed: 5, topK: 2 });
  for (let i = 0; i < 1000; i++) {
    x.set(l);
    assert.ok(k.sample(x) >= 2, 'top-k never draws a removed token');
  }
});

function rejects(opts: GenerateOptions, pattern: RegExp, namer?: (o: keyof GenerateOptions) => string): void {
  try {
    resolveGenerateOptions(opts, namer);
  } catch (e) {
    assert.instance(e, DeepWasmError, JSON.stringify(opts));
    assert.match((e as Error).message, pattern);
    return;
  }
  assert.unreachable(`${JSON.stringify(opts)} was accepted`);
}

test('invalid options fail naming the option and the expected range', () => {
  rejects({ temperature: -1 }, /^temperature must be a number >= 0 \(0 = greedy\), got -1$/);
  rejects({ temperature: NaN }, /temperature must be/);
  rejects({ topP: 0 }, /^topP must be in \(0, 1\] \(1 = off\), got 0$/);
  rejects({ topP: 1.5 }, /topP must be in \(0, 1\]/);
  rejects({ minP: -0.1 }, /^minP must be in \[0, 1\]/);
  rejects({ minP: 1.1 }, /minP must be in \[0, 1\]/);
  rejects({ topK: -1 }, /^topK must be a whole number >= 0/);
  rejects({ topK: 2.5 }, /topK must be a whole number/);
  rejects({ repetitionPenalty: 0 }, /^repetitionPenalty must be a number > 0/);
  rejects({ repetitionPenalty: -1 }, /repetitionPenalty must be a number > 0/);
  rejects({ frequencyPenalty: Infinity }, /^frequencyPenalty must be a finite number/);
  rejects({ presencePenalty: NaN }, /^presencePenalty must be a finite number/);
  rejects({ seed: -1 }, /^seed must be a whole number from 0 to 4294967295, got -1$/);
  rejects({ seed: 2 ** 32 }, /seed must be a whole number/);
  rejects({ maxTokens: 0 }, /^maxTokens must be a whole number >= 1, got 0$/);
  rejects({ maxTokens: 1.5 }, /maxTokens must be/);
  rejects({ stop: '' }, /^stop must be a non-empty string or a list of them, got ""$/);
  rejects({ stop: ['ok', ''] }, /stop must be a non-empty string/);
  rejects({ topP: 0 }, /^--top-p must be in/, (o) => (o === 'topP' ? '--top-p' : o));
});

test('defaults: greedy, filters off, 256 tokens, a random seed in range', () => {
  const r = resolveGenerateOptions({});
  assert.equal({ ...r.sampling, seed: 0 }, {
    temperature: 0,
    topK: 0,
    topP: 1,
    minP: 0,
    repetitionPenalty: 1,
    frequencyPenalty: 0,
    presencePenalty: 0,
    seed: 0,
  });
  assert.ok(Number.isInteger(r.sampling.seed) && r.sampling.seed >= 0 && r.sampling.seed <= 0xffffffff);
  assert.is(r.maxTokens, 256);
  assert.equal(resolveGenerateOptions({ stop: 'x' }).stop, ['x']);
});

test.run();
