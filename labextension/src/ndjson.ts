/**
 * A small NDJSON reader: one JSON object per line, lines ending with `\n`.
 *
 * Network reads split the stream anywhere: inside a line and inside a multi-byte UTF-8 character. The bytes
 * go through one `TextDecoder` in stream mode (it keeps an incomplete character until its last byte comes),
 * and the parser keeps an incomplete line until its newline comes.
 */

/** Splits decoded text into complete lines and parses each as JSON. */
export class NdjsonParser {
  /**
   * @param onError - called with a line that is not valid JSON (the line is skipped).
   */
  constructor(onError?: (line: string, error: unknown) => void) {
    this._onError = onError;
  }

  /** Feed the next piece of text; returns the values of the lines it completed. */
  push(text: string): unknown[] {
    this._buffer += text;
    const out: unknown[] = [];
    let newline = this._buffer.indexOf('\n');
    while (newline !== -1) {
      const line = this._buffer.slice(0, newline);
      this._buffer = this._buffer.slice(newline + 1);
      this._parse(line, out);
      newline = this._buffer.indexOf('\n');
    }
    return out;
  }

  /** The end of the stream: a last line without its newline still counts. */
  flush(): unknown[] {
    const out: unknown[] = [];
    const rest = this._buffer;
    this._buffer = '';
    this._parse(rest, out);
    return out;
  }

  private _parse(line: string, out: unknown[]): void {
    const text = line.endsWith('\r') ? line.slice(0, -1) : line;
    if (!text.trim()) {
      return;
    }
    try {
      out.push(JSON.parse(text));
    } catch (error) {
      this._onError?.(text, error);
    }
  }

  private _buffer = '';
  private _onError?: (line: string, error: unknown) => void;
}

/**
 * The values of an NDJSON byte stream, in order, as they arrive.
 *
 * Reads with `body.getReader()` and decodes with a `TextDecoder` in stream mode. Stops early (and releases the
 * reader) when the consumer breaks out of the loop.
 */
export async function* readNdjson(
  body: ReadableStream<Uint8Array>,
  onError?: (line: string, error: unknown) => void
): AsyncGenerator<unknown, void, undefined> {
  const reader = body.getReader();
  const decoder = new TextDecoder('utf-8');
  const parser = new NdjsonParser(onError);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        break;
      }
      yield* parser.push(decoder.decode(value, { stream: true }));
    }
    yield* parser.push(decoder.decode());
    yield* parser.flush();
  } finally {
    // On an early exit this cancels the request's body; after the end it is a no-op.
    reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
