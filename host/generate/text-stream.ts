import type { Tokenizer } from '../tokenizer/index.js';
import type { TokenLoop } from './generate.js';
import { StopMatcher } from './stop.js';

/**
 * Streams a TokenLoop as text: UTF-8 sequences split across tokens are held until complete, special tokens are left
 * out, and the text ends before the first stop string. Leaving the iteration early aborts the loop.
 */
export async function* streamText(
  loop: TokenLoop,
  tokenizer: Tokenizer,
  stops: readonly string[],
  onText?: (text: string) => void,
): AsyncGenerator<string, void, undefined> {
  const decoder = tokenizer.streamDecoder({ skipSpecialTokens: true });
  const matcher = new StopMatcher(stops);
  try {
    for (let id = await loop.next(); id !== undefined; id = await loop.next()) {
      const text = matcher.push(decoder.push(id));
      if (text !== '') {
        onText?.(text);
        yield text;
      }
      if (matcher.stopped) {
        loop.finish('stop');
        return;
      }
    }
    const rest = matcher.end(decoder.flush());
    if (rest !== '') {
      onText?.(rest);
      yield rest;
    }
  } finally {
    loop.finish('abort');
  }
}
