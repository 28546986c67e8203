/**
 * The variant → message reducer: turns the lines of a `streamresponse` stream (live) or the variants of
 * `getthread` (stored) into the blocks the panel shows. Pure: no JupyterLab imports, tested with vitest.
 *
 * Rules (API.md):
 * - live, a line of the same variant and id as the line before continues that line's content: it is appended
 *   to what that line wrote, nothing added in between (any variant may be split so). Adjacent `Assistant`
 *   lines thus form one message, adjacent `Code` or `Image` lines with one id one block; any other line in
 *   between (a `ServerHint` too) starts a new one. Empty fragments are keep-alives.
 * - stored variants are already whole: each is one message.
 * - `CodeOutput` and `CodeError` attach to the first earlier `Code` with their id; `ToolOutput` to its
 *   `ToolCall`. Separate `CodeError`s of one call are joined with a newline.
 * - `feedback_index` counts `Assistant` + `Code` messages; `user_index` counts `User` messages.
 * - a `User` variant may carry the notebook cell it asks about (`cell_context`, an object or a JSON string).
 * - legacy shapes: `[text, id]` contents, a one-element list for `CodeError`, a JSON-encoded `ServerHint`,
 *   `Image` without id.
 */
import { ICellContext, parseCellContext } from './cellcontext';

/** One line of the stream / one stored variant, as it comes over the wire. */
export interface IRawVariant {
  variant: string;
  content?: unknown;
  id?: string | null;
  tool_name?: string | null;
  model?: string | null;
  feedback?: string | null;
  cell_context?: unknown;
}

/** A variant with its legacy shapes undone. */
export interface IVariant {
  variant: string;
  content: unknown;
  id: string | null;
  toolName: string | null;
  model: string | null;
  feedback: string | null;
  cellContext: ICellContext | null;
}

interface IBlockBase {
  /** Stable key of the block within its conversation. */
  key: string;
  /** Number of `User` messages before it (a block before the first user message has turn 0). */
  turn: number;
  /** Bumped on every change, so a view knows what to re-render. */
  version: number;
}

export interface IUserBlock extends IBlockBase {
  kind: 'user';
  text: string;
  /** 0-based count of user messages: `editthread`'s `user_index`. */
  userIndex: number;
  /** The notebook cell the question was about. */
  cellContext: ICellContext | null;
}

export interface IAssistantBlock extends IBlockBase {
  kind: 'assistant';
  text: string;
  /** 0-based count of Assistant + Code messages: `userfeedback`'s `feedback_index`. */
  feedbackIndex: number;
  feedback: string | null;
  model: string | null;
}

export interface ICodeBlock extends IBlockBase {
  kind: 'code';
  id: string | null;
  /** The tool call's JSON arguments text, as far as it came. */
  args: string;
  /** `null` until its `CodeOutput` comes. */
  output: string | null;
  error: string | null;
  feedbackIndex: number;
  feedback: string | null;
}

export interface IImageBlock extends IBlockBase {
  kind: 'image';
  id: string | null;
  /** Bare base64 PNG. */
  data: string;
}

export interface IToolBlock extends IBlockBase {
  kind: 'tool';
  id: string | null;
  name: string;
  args: string;
  output: string | null;
}

export interface IErrorBlock extends IBlockBase {
  kind: 'error';
  variant: string;
  text: string;
}

/** A `CodeOutput` whose `Code` never came. */
export interface IOutputBlock extends IBlockBase {
  kind: 'output';
  id: string | null;
  text: string;
}

export type Block =
  IUserBlock | IAssistantBlock | ICodeBlock | IImageBlock | IToolBlock | IErrorBlock | IOutputBlock;

/** The heartbeat statuses the server sends (`ServerHint {"status": ...}`). */
export type Status = 'thinking' | 'executing' | 'waiting_for_kernel' | 'searching' | string;

function asText(value: unknown): string {
  if (typeof value === 'string') {
    return value;
  }
  if (value === null || value === undefined) {
    return '';
  }
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}

/** Undo the legacy shapes of stored upstream documents. */
export function normalizeVariant(raw: IRawVariant): IVariant {
  const name = String(raw.variant ?? '');
  let content: unknown = raw.content;
  let id = raw.id === undefined || raw.id === null ? null : String(raw.id);
  if ((name === 'Code' || name === 'CodeOutput') && Array.isArray(content)) {
    if (content.length > 1 && id === null && content[1] !== null && content[1] !== undefined) {
      id = String(content[1]);
    }
    content = content.length ? content[0] : '';
  } else if (name === 'CodeError' && Array.isArray(content)) {
    content = content.length ? content[0] : '';
  } else if (name === 'ServerHint' && typeof content === 'string') {
    try {
      content = JSON.parse(content);
    } catch {
      content = { hint: content };
    }
  }
  if (name !== 'ServerHint') {
    content = asText(content);
  }
  return {
    variant: name,
    content,
    id,
    toolName: raw.tool_name ?? null,
    model: raw.model ?? null,
    feedback: raw.feedback ?? null,
    cellContext: name === 'User' ? parseCellContext(raw.cell_context) : null
  };
}

const ESCAPES: Record<string, string> = {
  '"': '"',
  '\\': '\\',
  '/': '/',
  b: '\b',
  f: '\f',
  n: '\n',
  r: '\r',
  t: '\t'
};

/**
 * The code of a `code_interpreter` call from its JSON arguments text, also while that text is still cut off
 * (`{"code": "import numpy as np\nprint(np.ar`). Text that is no JSON object is taken as the code itself.
 */
export function codeFromArguments(args: string): string {
  const text = args.trimStart();
  if (!text.startsWith('{')) {
    return args;
  }
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed === 'object') {
      const code = (parsed as Record<string, unknown>).code;
      return typeof code === 'string' ? code : '';
    }
  } catch {
    // Incomplete: scan below.
  }
  const key = /"code"\s*:\s*"/.exec(text);
  if (!key) {
    return '';
  }
  let out = '';
  for (let i = key.index + key[0].length; i < text.length; i++) {
    const ch = text[i];
    if (ch === '"') {
      break;
    }
    if (ch !== '\\') {
      out += ch;
      continue;
    }
    const next = text[i + 1];
    if (next === undefined) {
      break; // a lone backslash at the cut
    }
    if (next === 'u') {
      const hex = text.slice(i + 2, i + 6);
      if (!/^[0-9a-fA-F]{4}$/.test(hex)) {
        break; // an escape cut in the middle
      }
      out += String.fromCharCode(parseInt(hex, 16));
      i += 5;
    } else {
      out += ESCAPES[next] ?? next;
      i += 1;
    }
  }
  return out;
}

/** The last line applied and the block it wrote into (`null`: none, e.g. a keep-alive). */
interface ILine {
  variant: string;
  id: string | null;
  block: Block | null;
}

/** Append a continuation line's text to what the previous line of its variant and id wrote into `block`. */
function extend(block: Block, variant: string, text: string): void {
  switch (block.kind) {
    case 'assistant':
    case 'error':
    case 'output':
      block.text += text;
      break;
    case 'image':
      block.data += text;
      break;
    case 'code':
      if (variant === 'Code') {
        block.args += text;
      } else if (variant === 'CodeOutput') {
        block.output = (block.output ?? '') + text;
      } else {
        block.error = (block.error ?? '') + text;
      }
      break;
    case 'tool':
      if (variant === 'ToolCall') {
        block.args += text;
      } else {
        block.output = (block.output ?? '') + text;
      }
  }
}

/**
 * One conversation as the panel shows it: the blocks, the thread id, the model of each turn and the live
 * status. Feed it with `apply`; read `blocks`.
 */
export class Conversation {
  constructor(keyPrefix = 'c') {
    this._prefix = keyPrefix;
  }

  readonly blocks: Block[] = [];
  threadId: string | null = null;
  /** The model that answered each turn (from the stream's first `ServerHint`, or a stored `Assistant`). */
  readonly turnModels: Map<number, string> = new Map();
  /** The last heartbeat status, `null` once the stream ended. */
  status: Status | null = null;
  /** The reason of `StreamEnd`, once it came. */
  ended: string | null = null;

  get userCount(): number {
    return this._users;
  }

  /** The variant of the last line applied (`null` after a user message or the stream's end). */
  get lastVariant(): string | null {
    return this._last?.variant ?? null;
  }

  /** Take back the last block when it is a user message (a request refused before it started). */
  discardLastUser(): IUserBlock | null {
    const last = this.blocks[this.blocks.length - 1];
    if (!last || last.kind !== 'user') {
      return null;
    }
    this.blocks.pop();
    this._users -= 1;
    this._turn = this._users;
    this._last = null;
    return last;
  }

  /** The model of the turn a block belongs to. */
  modelOf(block: Block): string | null {
    return this.turnModels.get(block.turn) ?? null;
  }

  /** Add the user's own message (live: the stream never carries it), with the cell it asks about. */
  addUser(text: string, cellContext: ICellContext | null = null): IUserBlock {
    this._last = null;
    const block: IUserBlock = {
      ...this._base(this._users + 1),
      kind: 'user',
      text,
      userIndex: this._users,
      cellContext
    };
    this._users += 1;
    this._turn = this._users;
    return this._push(block);
  }

  /** Apply one variant; `live` merges adjacent fragments, stored variants are whole. Returns changed blocks. */
  apply(raw: IRawVariant, live: boolean): Block[] {
    const v = normalizeVariant(raw);
    const previous = this._last;
    const text = typeof v.content === 'string' ? v.content : '';
    if (live && previous?.block && previous.variant === v.variant && previous.id === v.id) {
      if (!text) {
        return []; // a keep-alive
      }
      extend(previous.block, v.variant, text);
      previous.block.version += 1;
      return [previous.block];
    }
    // `User` and `StreamEnd` reset `_last`: the record below is then dropped, and no line continues them.
    const last: ILine = { variant: v.variant, id: v.id, block: null };
    this._last = last;
    last.block = this._applyNew(v, text, live);
    return last.block ? [last.block] : [];
  }

  /** Apply a variant that continues no earlier line; returns the block it changed. */
  private _applyNew(v: IVariant, text: string, live: boolean): Block | null {
    switch (v.variant) {
      case 'User':
        return this.addUser(text, v.cellContext);
      case 'Assistant':
      case 'Code':
      case 'Image':
        if (!text && live) {
          return null; // a keep-alive with nothing to keep alive
        }
        return this._startRun(v, text);
      case 'CodeOutput': {
        const code = this._findCode(v.id);
        if (code) {
          code.output = (code.output ?? '') + text;
          code.version += 1;
          return code;
        }
        return this._push({ ...this._base(this._turn), kind: 'output', id: v.id, text });
      }
      case 'CodeError': {
        const code = this._findCode(v.id);
        if (code) {
          code.error = code.error ? `${code.error}\n${text}` : text;
          code.version += 1;
          return code;
        }
        return this._push({ ...this._base(this._turn), kind: 'error', variant: v.variant, text });
      }
      case 'ServerError':
      case 'OpenAIError':
        return this._push({ ...this._base(this._turn), kind: 'error', variant: v.variant, text });
      case 'ToolCall':
        return this._push({
          ...this._base(this._turn),
          kind: 'tool',
          id: v.id,
          name: v.toolName ?? '',
          args: text,
          output: null
        });
      case 'ToolOutput': {
        const tool = this._findTool(v.id);
        if (tool) {
          tool.output = (tool.output ?? '') + text;
          if (!tool.name && v.toolName) {
            tool.name = v.toolName;
          }
          tool.version += 1;
          return tool;
        }
        return this._push({
          ...this._base(this._turn),
          kind: 'tool',
          id: v.id,
          name: v.toolName ?? '',
          args: '',
          output: text
        });
      }
      case 'ServerHint': {
        const hint = (v.content ?? {}) as Record<string, unknown>;
        if (typeof hint === 'object') {
          if (typeof hint.thread_id === 'string' && hint.thread_id) {
            this.threadId = hint.thread_id;
          }
          if (typeof hint.model === 'string' && hint.model) {
            this.turnModels.set(this._turn, hint.model);
          }
          if (typeof hint.status === 'string') {
            this.status = hint.status;
          }
        }
        return null;
      }
      case 'StreamEnd':
        this.ended = text;
        this.status = null;
        this._last = null;
        return null;
      default:
        // `Prompt` and anything unknown: not shown.
        return null;
    }
  }

  private _startRun(v: IVariant, text: string): Block {
    const base = this._base(this._turn);
    if (v.variant === 'Assistant') {
      if (v.model && !this.turnModels.has(this._turn)) {
        this.turnModels.set(this._turn, v.model);
      }
      return this._push({
        ...base,
        kind: 'assistant',
        text,
        feedbackIndex: this._feedback++,
        feedback: v.feedback,
        model: v.model
      });
    }
    if (v.variant === 'Code') {
      return this._push({
        ...base,
        kind: 'code',
        id: v.id,
        args: text,
        output: null,
        error: null,
        feedbackIndex: this._feedback++,
        feedback: v.feedback
      });
    }
    return this._push({ ...base, kind: 'image', id: v.id, data: text });
  }

  /** The first earlier `Code` with this id (API.md: ids are unique within a thread). */
  private _findCode(id: string | null): ICodeBlock | undefined {
    const codes = this.blocks.filter((b): b is ICodeBlock => b.kind === 'code');
    if (id === null) {
      // Legacy output without id: the last code still waiting for its output.
      return [...codes].reverse().find(b => b.output === null);
    }
    return codes.find(b => b.id === id);
  }

  private _findTool(id: string | null): IToolBlock | undefined {
    const tools = this.blocks.filter((b): b is IToolBlock => b.kind === 'tool');
    if (id === null) {
      return [...tools].reverse().find(b => b.output === null);
    }
    return tools.find(b => b.id === id);
  }

  private _base(turn: number): IBlockBase {
    return { key: `${this._prefix}-${this._count++}`, turn, version: 0 };
  }

  private _push<T extends Block>(block: T): T {
    this.blocks.push(block);
    return block;
  }

  private _prefix: string;
  private _count = 0;
  private _users = 0;
  private _turn = 0;
  private _feedback = 0;
  private _last: ILine | null = null;
}
