/**
 * Streaming decode for generation: each `push` returns the text the new token completes. UTF-8 sequences split across
 * tokens (an emoji is often three or four byte tokens) are held back until complete, so no U+FFFD is ever emitted for
 * them; the concatenation of all returned strings plus `flush()` equals `Tokenizer.decode` of the same ids.
 */
export class StreamDecoder {
  // The WHATWG decoder in stream mode holds back exactly the incomplete tail and replaces invalid bytes the way
  // tokenizers' from_utf8_lossy does; ignoreBOM keeps a leading U+FEFF, which tokenizers also keeps.
  private readonly utf8 = new TextDecoder('utf-8', { ignoreBOM: true });

  /** `bytesOf` gives the bytes a token id stands for, or undefined for ids that decode to nothing. */
  constructor(private readonly bytesOf: (id: number) => Uint8Array | undefined) {}

  push(id: number): string {
    const bytes = this.bytesOf(id);
    return bytes === undefined || bytes.length === 0 ? '' : this.utf8.decode(bytes, { stream: true });
  }

  /** Ends the stream: bytes still held back (a sequence that never completed) come out as U+FFFD. */
  flush(): string {
    return this.utf8.decode();
  }
}
