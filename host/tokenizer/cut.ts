// A byte-level BPE tokenizer.json cut to a smaller vocabulary: what a model of vocab_size ids can use when
// its tokenizer was made for more (synthetic checkpoints, reference fixtures). DeepSeek's layout keeps the 256
// byte tokens among the first ids, so any text still encodes after the cut.

interface TokenizerJson {
  added_tokens: { id: number }[];
  model: { vocab: Record<string, number>; merges: (string | string[])[] };
}

/** The ids below `vocab` of a parsed tokenizer.json: its vocabulary, the merges whose parts and result stay, the added tokens. */
export function cutTokenizerJson<T extends TokenizerJson>(json: T, vocab: number): T {
  const kept = Object.fromEntries(Object.entries(json.model.vocab).filter(([, id]) => id < vocab));
  const merges = json.model.merges.filter((m) => {
    const [a, b] = typeof m === 'string' ? m.split(' ') : m;
    return a in kept && b in kept && a + b in kept;
  });
  return { ...json, added_tokens: json.added_tokens.filter((t) => t.id < vocab), model: { ...json.model, vocab: kept, merges } };
}

/** The highest id a parsed tokenizer.json holds, plus one. */
export function tokenizerIds(json: TokenizerJson): number {
  return Math.max(...Object.values(json.model.vocab), ...json.added_tokens.map((t) => t.id)) + 1;
}
