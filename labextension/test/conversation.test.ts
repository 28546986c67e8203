import { describe, expect, it } from 'vitest';

import { Block, Conversation, IRawVariant, codeFromArguments, normalizeVariant } from '../src/conversation';

const A = (content: string): IRawVariant => ({ variant: 'Assistant', content });
const hint = (content: Record<string, unknown>): IRawVariant => ({ variant: 'ServerHint', content });

/** What a person sees of the blocks (no keys, versions). */
function view(blocks: Block[]): unknown[] {
  return blocks.map(b => {
    switch (b.kind) {
      case 'user':
        return ['user', b.text, b.userIndex];
      case 'assistant':
        return ['assistant', b.text, b.feedbackIndex];
      case 'code':
        return ['code', b.id, codeFromArguments(b.args), b.output, b.error, b.feedbackIndex];
      case 'image':
        return ['image', b.id, b.data];
      case 'tool':
        return ['tool', b.id, b.name, b.args, b.output];
      case 'error':
        return ['error', b.variant, b.text];
      case 'output':
        return ['output', b.id, b.text];
    }
  });
}

function live(lines: IRawVariant[], user = 'question'): Conversation {
  const c = new Conversation();
  c.addUser(user);
  for (const line of lines) {
    c.apply(line, true);
  }
  return c;
}

function stored(variants: IRawVariant[]): Conversation {
  const c = new Conversation();
  for (const v of variants) {
    c.apply(v, false);
  }
  return c;
}

describe('adjacent fragments', () => {
  it('merges a run of Assistant fragments into one message', () => {
    const c = live([
      hint({ thread_id: 't1', model: 'm1' }),
      A('Hel'),
      A('lo '),
      A('world'),
      { variant: 'StreamEnd', content: 'done' }
    ]);
    expect(view(c.blocks)).toEqual([
      ['user', 'question', 0],
      ['assistant', 'Hello world', 0]
    ]);
    expect(c.threadId).toBe('t1');
    expect(c.modelOf(c.blocks[1])).toBe('m1');
    expect(c.ended).toBe('done');
    expect(c.status).toBeNull();
  });

  it('starts a new message after any other line, a ServerHint too', () => {
    const c = live([A('first '), A('call'), hint({ status: 'thinking' }), A('second call')]);
    expect(view(c.blocks).slice(1)).toEqual([
      ['assistant', 'first call', 0],
      ['assistant', 'second call', 1]
    ]);
    expect(c.status).toBe('thinking');
  });

  it('merges Code fragments of one id and splits on another id', () => {
    const c = live([
      { variant: 'Code', content: '{"code": "print(', id: 'call_1' },
      { variant: 'Code', content: '1)"}', id: 'call_1' },
      { variant: 'Code', content: '{"code": "x"}', id: 'call_2' }
    ]);
    expect(view(c.blocks).slice(1)).toEqual([
      ['code', 'call_1', 'print(1)', null, null, 0],
      ['code', 'call_2', 'x', null, null, 1]
    ]);
  });

  it('numbers Assistant and Code messages together for feedback', () => {
    const c = live([
      A('Let me compute.'),
      { variant: 'Code', content: '{"code": "1+1"}', id: 'c1' },
      hint({ status: 'executing' }),
      { variant: 'CodeOutput', content: '2', id: 'c1' },
      hint({ status: 'thinking' }),
      A('It is 2.')
    ]);
    const indexes = c.blocks.flatMap(b => ('feedbackIndex' in b ? [b.feedbackIndex] : []));
    expect(indexes).toEqual([0, 1, 2]);
  });
});

describe('empty keep-alive fragments', () => {
  it('merge away inside a run', () => {
    const c = live([A('a'), A(''), A(''), A('b')]);
    expect(view(c.blocks).slice(1)).toEqual([['assistant', 'ab', 0]]);
  });

  it('keep a Code run open', () => {
    const c = live([
      { variant: 'Code', content: '{"code": "a', id: 'k' },
      { variant: 'Code', content: '', id: 'k' },
      { variant: 'Code', content: 'b"}', id: 'k' }
    ]);
    expect(view(c.blocks).slice(1)).toEqual([['code', 'k', 'ab', null, null, 0]]);
  });

  it('never create an empty message on their own', () => {
    const c = live([hint({ status: 'thinking' }), A(''), A('text'), hint({ status: 'thinking' }), A('')]);
    expect(view(c.blocks).slice(1)).toEqual([['assistant', 'text', 0]]);
  });

  it('report only real changes', () => {
    const c = live([A('a')]);
    expect(c.apply(A(''), true)).toEqual([]);
    expect(c.apply(A('b'), true)).toHaveLength(1);
  });
});

describe('images', () => {
  it('joins the lines of one image and separates two images', () => {
    const c = live([
      { variant: 'Code', content: '{"code": "plot()"}', id: 'c1' },
      { variant: 'CodeOutput', content: '', id: 'c1' },
      { variant: 'Image', content: 'AAAA', id: 'c1_0' },
      { variant: 'Image', content: 'BBBB', id: 'c1_0' },
      hint({ image: 1 }),
      { variant: 'Image', content: 'CCCC', id: 'c1_1' }
    ]);
    expect(view(c.blocks).slice(2)).toEqual([
      ['image', 'c1_0', 'AAAABBBB'],
      ['image', 'c1_1', 'CCCC']
    ]);
  });

  it('keeps two adjacent images with different ids apart', () => {
    const c = live([
      { variant: 'Image', content: 'AA', id: 'x_0' },
      { variant: 'Image', content: 'BB', id: 'x_1' }
    ]);
    expect(view(c.blocks).slice(1)).toEqual([
      ['image', 'x_0', 'AA'],
      ['image', 'x_1', 'BB']
    ]);
  });
});

describe('CodeOutput attached to its Code', () => {
  it('attaches output and error by id, also after other blocks', () => {
    const c = live([
      { variant: 'Code', content: '{"code": "a"}', id: 'c1' },
      { variant: 'CodeOutput', content: 'out a', id: 'c1' },
      { variant: 'Code', content: '{"code": "b"}', id: 'c2' },
      hint({ status: 'executing' }),
      { variant: 'CodeOutput', content: 'partial', id: 'c2' },
      { variant: 'CodeError', content: 'Timeout', id: 'c2' }
    ]);
    expect(view(c.blocks).slice(1)).toEqual([
      ['code', 'c1', 'a', 'out a', null, 0],
      ['code', 'c2', 'b', 'partial', 'Timeout', 1]
    ]);
  });

  it('attaches to the first earlier Code with the id', () => {
    const c = live([
      { variant: 'Code', content: '{"code": "a"}', id: 'same' },
      hint({ status: 'executing' }),
      { variant: 'Code', content: '{"code": "b"}', id: 'other' },
      { variant: 'CodeOutput', content: 'for a', id: 'same' }
    ]);
    expect(view(c.blocks).slice(1)).toEqual([
      ['code', 'same', 'a', 'for a', null, 0],
      ['code', 'other', 'b', null, null, 1]
    ]);
  });

  it('shows an output without its Code on its own, and errors as errors', () => {
    const c = live([
      { variant: 'CodeOutput', content: 'lost', id: 'nowhere' },
      { variant: 'CodeError', content: 'lost too', id: 'nowhere' },
      { variant: 'ServerError', content: 'LLM down' }
    ]);
    expect(view(c.blocks).slice(1)).toEqual([
      ['output', 'nowhere', 'lost'],
      ['error', 'CodeError', 'lost too'],
      ['error', 'ServerError', 'LLM down']
    ]);
  });
});

describe('tool calls', () => {
  it('pairs ToolCall and ToolOutput by id', () => {
    const c = live([
      {
        variant: 'ToolCall',
        content: '{"query": "era5"}',
        id: 't1',
        tool_name: 'get_context_from_resources'
      },
      hint({ status: 'searching' }),
      { variant: 'ToolOutput', content: 'docs...', id: 't1', tool_name: 'get_context_from_resources' }
    ]);
    expect(view(c.blocks).slice(1)).toEqual([
      ['tool', 't1', 'get_context_from_resources', '{"query": "era5"}', 'docs...']
    ]);
    expect(c.status).toBe('searching');
  });
});

describe('content split over adjacent lines of one variant and id', () => {
  const code = (id: string): IRawVariant => ({ variant: 'Code', content: '{"code":"x"}', id });

  it('joins a split CodeOutput, also one that looks like JSON', () => {
    const c = live([
      code('c1'),
      { variant: 'CodeOutput', content: '{', id: 'c1' },
      { variant: 'CodeOutput', content: "'answer': 42}", id: 'c1' },
      code('c2'),
      { variant: 'CodeOutput', content: '{', id: 'c2' },
      { variant: 'CodeOutput', content: '}', id: 'c2' }
    ]);
    expect(view(c.blocks).slice(1)).toEqual([
      ['code', 'c1', 'x', "{'answer': 42}", null, 0],
      ['code', 'c2', 'x', '{}', null, 1]
    ]);
  });

  it('joins a split CodeOutput whose Code never came into one block', () => {
    const c = live([
      { variant: 'CodeOutput', content: '{', id: 'lost' },
      { variant: 'CodeOutput', content: '}', id: 'lost' }
    ]);
    expect(view(c.blocks).slice(1)).toEqual([['output', 'lost', '{}']]);
  });

  it('joins a split CodeError without a newline, separate CodeErrors with one', () => {
    const c = live([
      code('c1'),
      { variant: 'CodeOutput', content: '', id: 'c1' },
      { variant: 'CodeError', content: '{', id: 'c1' },
      { variant: 'CodeError', content: 'timeout}', id: 'c1' },
      hint({ status: 'executing' }),
      { variant: 'CodeError', content: 'kernel died', id: 'c1' }
    ]);
    expect(view(c.blocks).slice(1)).toEqual([['code', 'c1', 'x', '', '{timeout}\nkernel died', 0]]);
  });

  it('joins a split error into one block, and keeps errors of two lines apart', () => {
    const c = live([
      { variant: 'ServerError', content: '{' },
      { variant: 'ServerError', content: 'reason}' },
      { variant: 'OpenAIError', content: '{' },
      { variant: 'OpenAIError', content: 'quota}' },
      { variant: 'CodeError', content: '{', id: 'lost' },
      { variant: 'CodeError', content: 'gone}', id: 'lost' },
      hint({ status: 'thinking' }),
      { variant: 'ServerError', content: 'again' }
    ]);
    expect(view(c.blocks).slice(1)).toEqual([
      ['error', 'ServerError', '{reason}'],
      ['error', 'OpenAIError', '{quota}'],
      ['error', 'CodeError', '{gone}'],
      ['error', 'ServerError', 'again']
    ]);
  });

  it('joins a split ToolCall and ToolOutput', () => {
    const tool = (variant: string, content: string): IRawVariant => ({
      variant,
      content,
      id: 't1',
      tool_name: 'search'
    });
    const c = live([
      tool('ToolCall', '{'),
      tool('ToolCall', '"query": "era5"}'),
      hint({ status: 'searching' }),
      tool('ToolOutput', '{'),
      tool('ToolOutput', '"hits": 2}')
    ]);
    expect(view(c.blocks).slice(1)).toEqual([['tool', 't1', 'search', '{"query": "era5"}', '{"hits": 2}']]);
  });

  it('keeps stored variants whole, one message each', () => {
    const c = stored([
      { variant: 'ServerError', content: '{' },
      { variant: 'ServerError', content: '}' }
    ]);
    expect(view(c.blocks)).toEqual([
      ['error', 'ServerError', '{'],
      ['error', 'ServerError', '}']
    ]);
  });
});

describe('canonical Code fragments', () => {
  const source = 'd = {"a": "b"}\ns = \'"}\'\nprint(d, s, "é\\\\")';
  // `{"code":"`, the escaped code (non-ASCII as `\uXXXX`; no fragment but the last ends in `"}`), `"}`.
  const fragments = [
    '{"code":"',
    'd = {\\"a\\": \\"b\\"',
    "}\\ns = '\\\"}'",
    '\\nprint(d, s, \\"\\u00e9\\\\\\\\\\")',
    '"}'
  ];
  const args = fragments.join('');

  it('are the JSON of the code', () => {
    expect(JSON.parse(args)).toEqual({ code: source });
  });

  it('render a prefix of the code at every cut and the exact code at the end', () => {
    for (const whole of [args, JSON.stringify({ code: source })]) {
      for (let cut = 0; cut < whole.length; cut++) {
        const shown = codeFromArguments(whole.slice(0, cut));
        expect(source.startsWith(shown), `cut ${cut}: ${shown}`).toBe(true);
      }
      expect(codeFromArguments(whole)).toBe(source);
    }
  });

  it('merge into one Code block that shows the code as it grows', () => {
    const c = new Conversation();
    const shown: string[] = [];
    for (const content of fragments) {
      const [block] = c.apply({ variant: 'Code', content, id: 'c1' }, true);
      shown.push(block.kind === 'code' ? codeFromArguments(block.args) : '');
    }
    expect(view(c.blocks)).toEqual([['code', 'c1', source, null, null, 0]]);
    expect(shown).toEqual(['', 'd = {"a": "b"', 'd = {"a": "b"}\ns = \'"}\'', source, source]);
  });
});

describe('legacy shapes', () => {
  it('undoes [text, id], one-element CodeError, JSON-string ServerHint', () => {
    expect(normalizeVariant({ variant: 'Code', content: ['{"code": "x"}', 'id9'] })).toMatchObject({
      content: '{"code": "x"}',
      id: 'id9'
    });
    expect(normalizeVariant({ variant: 'CodeError', content: ['boom'] })).toMatchObject({ content: 'boom' });
    expect(normalizeVariant({ variant: 'ServerHint', content: '{"thread_id": "t"}' })).toMatchObject({
      content: { thread_id: 't' }
    });
    expect(normalizeVariant({ variant: 'ServerHint', content: 'not json' })).toMatchObject({
      content: { hint: 'not json' }
    });
    expect(normalizeVariant({ variant: 'Assistant', content: null })).toMatchObject({ content: '' });
  });

  it('renders an upstream thread', () => {
    const c = stored([
      { variant: 'ServerHint', content: '{"thread_id": "old"}' },
      { variant: 'User', content: 'plot it' },
      { variant: 'Assistant', content: 'Sure.' },
      { variant: 'Code', content: ['{"code": "plt.plot()"}', 'call_1'] },
      { variant: 'CodeOutput', content: ['', 'call_1'] },
      { variant: 'Image', content: 'iVBOR' },
      { variant: 'Image', content: 'iVBOR2' },
      { variant: 'CodeError', content: ['interrupted'], id: 'call_1' },
      { variant: 'OpenAIError', content: 'quota' }
    ]);
    expect(view(c.blocks)).toEqual([
      ['user', 'plot it', 0],
      ['assistant', 'Sure.', 0],
      ['code', 'call_1', 'plt.plot()', '', 'interrupted', 1],
      ['image', null, 'iVBOR'],
      ['image', null, 'iVBOR2'],
      ['error', 'OpenAIError', 'quota']
    ]);
    expect(c.threadId).toBe('old');
  });
});

describe('stored threads render like the live stream', () => {
  const liveLines: IRawVariant[] = [
    hint({ thread_id: 't', model: 'gpt' }),
    A('Let me '),
    A('plot.'),
    { variant: 'Code', content: '{"code": "import ', id: 'call_1' },
    { variant: 'Code', content: '', id: 'call_1' },
    { variant: 'Code', content: 'matplotlib"}', id: 'call_1' },
    hint({ status: 'executing' }),
    { variant: 'CodeOutput', content: 'done', id: 'call_1' },
    { variant: 'Image', content: 'AAA', id: 'call_1_0' },
    { variant: 'Image', content: 'BBB', id: 'call_1_0' },
    hint({ image: 1 }),
    { variant: 'Image', content: 'CCC', id: 'call_1_1' },
    hint({ status: 'thinking' }),
    A('Here it is.'),
    { variant: 'StreamEnd', content: 'Generation complete' }
  ];
  const storedVariants: IRawVariant[] = [
    { variant: 'User', content: 'question' },
    { variant: 'Assistant', content: 'Let me plot.', model: 'gpt' },
    { variant: 'Code', content: '{"code": "import matplotlib"}', id: 'call_1' },
    { variant: 'CodeOutput', content: 'done', id: 'call_1' },
    { variant: 'Image', content: 'AAABBB', id: 'call_1_0' },
    { variant: 'Image', content: 'CCC', id: 'call_1_1' },
    { variant: 'Assistant', content: 'Here it is.', model: 'gpt', feedback: 'up' }
  ];

  it('gives the same blocks, models and numbering', () => {
    const a = live(liveLines);
    const b = stored(storedVariants);
    expect(view(b.blocks)).toEqual(view(a.blocks));
    expect(b.blocks.map(x => b.modelOf(x))).toEqual(a.blocks.map(x => a.modelOf(x)));
    const last = b.blocks[b.blocks.length - 1];
    expect(last.kind === 'assistant' && last.feedback).toBe('up');
  });

  it('keeps two stored Assistant variants apart (two LLM calls)', () => {
    const c = stored([A('one'), A('two')]);
    expect(view(c.blocks)).toEqual([
      ['assistant', 'one', 0],
      ['assistant', 'two', 1]
    ]);
  });

  it('counts user messages for edits and turns for models', () => {
    const c = stored([
      { variant: 'User', content: 'q1' },
      { variant: 'Assistant', content: 'a1', model: 'm1' },
      { variant: 'User', content: 'q2' },
      { variant: 'Code', content: '{"code": "1"}', id: 'x' },
      { variant: 'CodeOutput', content: '1', id: 'x' },
      { variant: 'Assistant', content: 'a2', model: 'm2' }
    ]);
    expect(c.blocks.filter(b => b.kind === 'user').map(b => (b.kind === 'user' ? b.userIndex : -1))).toEqual([
      0, 1
    ]);
    expect(c.blocks.map(b => c.modelOf(b))).toEqual(['m1', 'm1', 'm2', 'm2', 'm2']);
    expect(c.userCount).toBe(2);
  });
});

describe('codeFromArguments', () => {
  it('reads complete and cut-off arguments', () => {
    expect(codeFromArguments('{"code": "print(\\"hi\\")\\nx = 1"}')).toBe('print("hi")\nx = 1');
    expect(codeFromArguments('{"code": "import numpy as np\\nprint(np.ar')).toBe(
      'import numpy as np\nprint(np.ar'
    );
    expect(codeFromArguments('{"code": "a\\')).toBe('a');
    expect(codeFromArguments('{"code": "\\u00b0\\u00')).toBe('°');
    expect(codeFromArguments('{"co')).toBe('');
    expect(codeFromArguments('')).toBe('');
    expect(codeFromArguments('{"code": 5}')).toBe('');
    expect(codeFromArguments('print(1)')).toBe('print(1)');
  });
});

describe('the cell a question is about', () => {
  const cell = { source: 'ds.tas.plot()', outputs: '', notebook_path: 'a.ipynb' };

  it('goes with the live user message', () => {
    const c = new Conversation();
    expect(c.addUser('Why?', cell)).toMatchObject({ kind: 'user', text: 'Why?', cellContext: cell });
    expect(c.addUser('And?')).toMatchObject({ cellContext: null });
  });

  it("comes from a stored User variant's cell_context, an object or a JSON string", () => {
    const c = stored([
      { variant: 'User', content: 'Why?', cell_context: cell },
      { variant: 'Assistant', content: 'Because.' },
      { variant: 'User', content: 'And this?', cell_context: JSON.stringify(cell) },
      { variant: 'User', content: 'Plain.' },
      { variant: 'Assistant', content: 'x', cell_context: cell } as IRawVariant
    ]);
    expect(c.blocks.map(b => (b.kind === 'user' ? b.cellContext : b.kind))).toEqual([
      cell,
      'assistant',
      cell,
      null,
      'assistant'
    ]);
  });
});
