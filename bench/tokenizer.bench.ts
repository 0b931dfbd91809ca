import { Bench } from 'tinybench';
import { Tokenizer } from '../host/tokenizer/index.js';
import { prng, readFixtureJson } from '../test/tokenizer-fixtures.js';

/**
 * Encoding throughput on ~1 MB of mixed text (prose, code, numbers, CJK, emoji, whitespace runs). "cold" starts each
 * run with a fresh tokenizer, so every distinct piece goes through BPE; "warm" reuses one whose piece cache is full,
 * as a server that has seen similar text does.
 */

const TARGET_BYTES = 1 << 20;

const WORDS = (
  'the of and to in is that it was for on are as with his they at be this from have or by one had not but what all ' +
  'were when we there can an your which their said if do will each about how up out them then she many some so ' +
  'these would other into has more her two like him see time could no make than first been its who now people'
).split(' ');
const CODE = [
  'function add(a: number, b: number): number {\n  return a + b;\n}\n',
  'for (let i = 0; i < items.length; i++) {\n    total += items[i].price * 1.08;\n}\n',
  'def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n',
  'SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL 7 DAY;\n',
  '<div class="card"><span id="x42">Hello</span></div>\n',
  '{"key": [1, 2, {"nested": null, "ok": true}], "pi": 3.14159}\n',
];
const EMOJI = ['🦙', '🚀', '👍🏽', '👨‍👩‍👧‍👦', '✨', '🙂', '🎉', '🔥', '❤️', '🇯🇵'];
const KANA = 'あいうえおかきくけこさしすせそアイウエオカキクケコ';

function mixedText(): string {
  const random = prng(1);
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
  const cjk = (from: number, to: number, n: number): string =>
    Array.from({ length: n }, () => String.fromCodePoint(from + Math.floor(random() * (to - from)))).join('');
  const sections: (() => string)[] = [
    () => {
      const words = Array.from({ length: 40 + Math.floor(random() * 80) }, () => pick(WORDS));
      words[0] = words[0]![0]!.toUpperCase() + words[0]!.slice(1);
      return words.join(' ').replace(/(\w+) (\w+) (\w+) /g, (m, a, b, c) => (random() < 0.1 ? `${a}, ${b} ${c} ` : m)) + '. ';
    },
    () => pick(CODE).replace(/\d+/g, () => String(Math.floor(random() * 1000))),
    () => Array.from({ length: 20 }, () => (random() < 0.5 ? (random() * 1e6).toFixed(2) : String(Math.floor(random() * 1e9)))).join(' ') + '\n',
    () => cjk(0x4e00, 0x9fa5, 30 + Math.floor(random() * 60)) + '，' + cjk(0x4e00, 0x9fa5, 20) + '。\n',
    () => Array.from({ length: 20 }, () => KANA[Math.floor(random() * KANA.length)]).join('') + ' ' + cjk(0xac00, 0xd7a3, 15) + '\n',
    () => Array.from({ length: 8 }, () => pick(EMOJI)).join(random() < 0.5 ? '' : ' ') + ' ',
    () => pick([' ', '  ', '\t', '\n', '\n\n', '    ', '\t\t', ' \n ']).repeat(1 + Math.floor(random() * 20)),
  ];
  const parts: string[] = [];
  let bytes = 0;
  const encoder = new TextEncoder();
  while (bytes < TARGET_BYTES) {
    const part = pick(sections)();
    parts.push(part);
    bytes += encoder.encode(part).length;
  }
  return parts.join('');
}

const text = mixedText();
const megabytes = new TextEncoder().encode(text).length / 1e6;
const bench = new Bench({ name: `tokenizer encode, ${megabytes.toFixed(2)} MB of mixed text`, time: 3000, iterations: 5 });

for (const name of ['deepseek-llm', 'v3-format']) {
  const json = readFixtureJson<unknown>(`${name}/tokenizer.json`);
  let fresh = Tokenizer.fromJSON(json);
  const warm = Tokenizer.fromJSON(json);
  warm.encode(text);
  bench.add(`${name} cold`, () => void fresh.encode(text), { beforeEach: () => void (fresh = Tokenizer.fromJSON(json)) });
  bench.add(`${name} warm`, () => void warm.encode(text));
}

await bench.run();
console.log(bench.name);
console.table(
  bench.tasks.map((task) => {
    const result = task.result;
    if (result.state !== 'completed') return { task: task.name, state: result.state };
    return {
      task: task.name,
      'mean ms': result.latency.mean.toFixed(1),
      'MB/s': (megabytes / (result.latency.mean / 1000)).toFixed(2),
      samples: result.latency.samplesCount,
    };
  }),
);
