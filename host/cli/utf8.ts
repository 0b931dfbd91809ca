/**
 * Text users pass as bytes (a prompt file, stdin). Bytes that are not UTF-8 become U+FFFD, as the tokenizer cannot
 * take them, with one warning on stderr naming `what`, since the text the model sees then differs from the input.
 */
export function decodeUserText(bytes: Uint8Array, what: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    warnNotUtf8(what);
    return new TextDecoder('utf-8').decode(bytes);
  }
}

/**
 * Warns once if the bytes `stream` delivers are not UTF-8, for readers that decode them themselves (readline
 * replaces bad bytes silently). It listens beside the reader and changes nothing it reads.
 */
export function watchUtf8(stream: NodeJS.ReadableStream, what: string): void {
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const check = (chunk: string | Buffer, last = false): void => {
    if (typeof chunk === 'string') return;
    try {
      decoder.decode(chunk, { stream: !last });
    } catch {
      stop();
      warnNotUtf8(what);
    }
  };
  const onData = (chunk: string | Buffer): void => check(chunk);
  // A character cut off at the end shows only when the decoder is flushed.
  const onEnd = (): void => check(Buffer.alloc(0), true);
  const stop = (): void => {
    stream.off('data', onData);
    stream.off('end', onEnd);
  };
  stream.on('data', onData);
  stream.once('end', onEnd);
}

function warnNotUtf8(what: string): void {
  process.stderr.write(`warning: ${what} is not valid UTF-8; its invalid bytes were replaced with U+FFFD\n`);
}
