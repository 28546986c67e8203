/**
 * A notebook cell as the context of a question ("Ask FrevaGPT" on a cell): what goes to `streamresponse` as
 * `cell_context`, and what the chip on the user's message shows. Pure: no JupyterLab imports, tested with vitest.
 */

/** `streamresponse`'s `cell_context`, as a stored `User` variant carries it too. */
export interface ICellContext {
  source: string;
  /** The error output of the cell's last run when it failed, else empty. */
  outputs: string;
  notebook_path: string;
}

/** The parts of an nbformat output (`IOutputModel.toJSON()`) that say whether and how a run failed. */
export interface IOutputJSON {
  output_type: string;
  ename?: string;
  evalue?: string;
  traceback?: string[];
}

/** An error's end says what went wrong: longer error texts keep this many characters of their end. */
export const MAX_ERROR_CHARS = 4000;
/** The chip's excerpt of the source: its first line, at most this long. */
const EXCERPT_CHARS = 40;
/** The chip's tooltip shows this much of the source. */
const TITLE_SOURCE_CHARS = 1000;

// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;?]*[A-Za-z]/g;

/** The text of the cell's error output (its traceback without colours), or `null` when the run did not fail. */
export function errorOutput(outputs: readonly IOutputJSON[]): string | null {
  const error = outputs.find(output => output.output_type === 'error');
  if (!error) {
    return null;
  }
  const traceback = (error.traceback ?? []).join('\n').replace(ANSI, '').trim();
  const text = traceback || `${error.ename ?? 'Error'}: ${error.evalue ?? ''}`.trim();
  return text.length > MAX_ERROR_CHARS ? `…${text.slice(-MAX_ERROR_CHARS)}` : text;
}

/** The context of a cell: its source and, when its last run failed, the error. */
export function cellContext(
  source: string,
  outputs: readonly IOutputJSON[],
  notebookPath: string
): ICellContext {
  return { source, outputs: errorOutput(outputs) ?? '', notebook_path: notebookPath };
}

/** A `cell_context` as the server sends it (an object, or a JSON-encoded string), else `null`. */
export function parseCellContext(value: unknown): ICellContext | null {
  if (typeof value === 'string') {
    try {
      value = JSON.parse(value);
    } catch {
      return null;
    }
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    return null;
  }
  const { source, outputs, notebook_path } = value as Record<string, unknown>;
  if (typeof source !== 'string') {
    return null;
  }
  return {
    source,
    outputs: typeof outputs === 'string' ? outputs : '',
    notebook_path: typeof notebook_path === 'string' ? notebook_path : ''
  };
}

/** What the chip of a cell context shows. */
export interface ICellChip {
  /** The notebook's file name. */
  notebook: string;
  /** The first non-empty line of the source, shortened. */
  excerpt: string;
  /** Whether the error of a failed run came along. */
  failed: boolean;
  /** The tooltip: the notebook's path, the source and the error's last line. */
  title: string;
}

function shorten(text: string, max: number): string {
  const chars = Array.from(text);
  return chars.length > max ? `${chars.slice(0, max - 1).join('')}…` : text;
}

export function cellChip(context: ICellContext): ICellChip {
  const path = context.notebook_path;
  const notebook = path.slice(path.lastIndexOf('/') + 1);
  const firstLine = context.source.split('\n').find(line => line.trim()) ?? '';
  const failed = context.outputs.trim() !== '';
  const parts = [path, shorten(context.source, TITLE_SOURCE_CHARS)];
  if (failed) {
    const lines = context.outputs.trim().split('\n');
    parts.push(lines[lines.length - 1]);
  }
  return {
    notebook,
    excerpt: shorten(firstLine.trim(), EXCERPT_CHARS),
    failed,
    title: parts.filter(part => part).join('\n\n')
  };
}
