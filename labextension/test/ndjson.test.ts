import { describe, expect, it } from 'vitest';

import { NdjsonParser, readNdjson } from '../src/ndjson';

function streamOf(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks) {
        controller.enqueue(chunk);
      }
      controller.close();
    }
  });
}

async function collect(stream: ReadableStream<Uint8Array>, onError?: (line: string) => void) {
  const out: unknown[] = [];
  for await (const value of readNdjson(stream, onError)) {
    out.push(value);
  }
  return out;
}

/** Split bytes at the given offsets. */
function split(bytes: Uint8Array, ...at: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let start = 0;
  for (const end of [...at, bytes.length]) {
    out.push(bytes.slice(start, end));
    start = end;
  }
  return out;
}

describe('NdjsonParser', () => {
  it('parses complete lines and keeps the incomplete rest', () => {
    const parser = new NdjsonParser();
    expect(parser.push('{"a":1}\n{"b"')).toEqual([{ a: 1 }]);
    expect(parser.push(':2}')).toEqual([]);
    expect(parser.push('\n')).toEqual([{ b: 2 }]);
    expect(parser.flush()).toEqual([]);
  });

  it('takes a last line without newline at the end', () => {
    const parser = new NdjsonParser();
    expect(parser.push('{"a":1}\n{"b":2}')).toEqual([{ a: 1 }]);
    expect(parser.flush()).toEqual([{ b: 2 }]);
  });

  it('skips blank lines, strips CR and reports bad lines without stopping', () => {
    const bad: string[] = [];
    const parser = new NdjsonParser(line => bad.push(line));
    expect(parser.push('\n{"a":1}\r\n  \n{oops\n{"c":3}\n')).toEqual([{ a: 1 }, { c: 3 }]);
    expect(bad).toEqual(['{oops']);
  });

  it('survives a line split in every possible place', () => {
    const text = '{"variant":"Assistant","content":"Hello"}\n{"variant":"StreamEnd","content":"done"}\n';
    for (let i = 0; i <= text.length; i++) {
      const parser = new NdjsonParser();
      const values = [...parser.push(text.slice(0, i)), ...parser.push(text.slice(i)), ...parser.flush()];
      expect(values).toHaveLength(2);
    }
  });
});

describe('readNdjson', () => {
  it('reads values across chunks', async () => {
    const bytes = new TextEncoder().encode(
      '{"variant":"ServerHint","content":{"thread_id":"t1"}}\n{"n":2}\n'
    );
    expect(await collect(streamOf(split(bytes, 5, 20, 21, 60)))).toEqual([
      { variant: 'ServerHint', content: { thread_id: 't1' } },
      { n: 2 }
    ]);
  });

  it('decodes multi-byte characters split between reads', async () => {
    // Raw UTF-8 (a server may send it although ours escapes): °, ü, € and an emoji (4 bytes).
    const text = '{"content":"25 °C über € 🌍"}\n{"content":"ok"}\n';
    const bytes = new TextEncoder().encode(text);
    // Split every possible way into three pieces around the multi-byte characters.
    for (let i = 14; i < 35; i++) {
      const values = await collect(streamOf(split(bytes, i, i + 1)));
      expect(values).toEqual([{ content: '25 °C über € 🌍' }, { content: 'ok' }]);
    }
    // And one byte per read.
    const single = Array.from(bytes, b => Uint8Array.of(b));
    expect(await collect(streamOf(single))).toEqual([{ content: '25 °C über € 🌍' }, { content: 'ok' }]);
  });

  it('handles escaped non-ASCII as the server writes it', async () => {
    const bytes = new TextEncoder().encode('{"content":"\\u00b0C \\ud83c\\udf0d"}\n');
    expect(await collect(streamOf(split(bytes, 15)))).toEqual([{ content: '°C 🌍' }]);
  });

  it('reads a last line without newline and skips bad lines', async () => {
    const bad: string[] = [];
    const bytes = new TextEncoder().encode('{"a":1}\nnot json\n{"b":2}');
    expect(await collect(streamOf([bytes]), line => bad.push(line))).toEqual([{ a: 1 }, { b: 2 }]);
    expect(bad).toEqual(['not json']);
  });

  it('cancels the body when the consumer stops early', async () => {
    let cancelled = false;
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('{"a":1}\n{"a":2}\n'));
      },
      cancel() {
        cancelled = true;
      }
    });
    for await (const value of readNdjson(stream)) {
      expect(value).toEqual({ a: 1 });
      break;
    }
    expect(cancelled).toBe(true);
  });
});
