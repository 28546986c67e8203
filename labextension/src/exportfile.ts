/**
 * The file names of exported threads: where "Export as notebook" writes (next to the active notebook, a new
 * name per try) and what "Download .ipynb" saves as. Pure: tested with vitest.
 */

/** The name of a thread without a topic (as the server's download name). */
export const UNTITLED = 'FrevaGPT conversation';
const SUFFIX = '.ipynb';
/** A file name has at most this many characters, the suffix included (as the server's download name). */
const NAME_CHARS = 100;
/** "Export as notebook" gives up after this many taken names. */
export const MAX_EXPORT_TRIES = 100;

/**
 * A file name stem from a thread's topic, as the server makes its download name: one line (control, format
 * and space characters become spaces), without the characters that file systems refuse (`/ \ : * ? " < > |`),
 * no leading dot (a hidden file) and no trailing dot or space.
 */
export function notebookStem(topic: string): string {
  const cleaned = topic
    .replace(/[\p{C}\p{Z}\\/:*?"<>|]/gu, ' ')
    .split(' ')
    .filter(word => word)
    .join(' ')
    .replace(/^[. ]+/, '');
  const cut = Array.from(cleaned)
    .slice(0, NAME_CHARS - SUFFIX.length)
    .join('')
    .replace(/[. ]+$/, '');
  return cut || UNTITLED;
}

/** The folder of a contents path (`''`: the root). */
export function folderOf(path: string): string {
  const index = path.lastIndexOf('/');
  return index === -1 ? '' : path.slice(0, index);
}

/** The path of try `attempt` (0, 1, …) to export a thread: `<topic>.ipynb`, then `<topic>-1.ipynb`, … */
export function exportPath(folder: string, topic: string, attempt: number): string {
  const name = `${notebookStem(topic)}${attempt ? `-${attempt}` : ''}${SUFFIX}`;
  return folder ? `${folder.replace(/\/+$/, '')}/${name}` : name;
}

/**
 * Write with `write` at the first of `exportPath(folder, topic, 0)`, `…1`, … that is free; `taken(error)` says
 * that `write` failed because its path exists. Gives up after `MAX_EXPORT_TRIES` with the last error.
 */
export async function writeUnique<T>(
  folder: string,
  topic: string,
  write: (path: string) => Promise<T>,
  taken: (error: unknown) => boolean
): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await write(exportPath(folder, topic, attempt));
    } catch (error) {
      if (!taken(error) || attempt + 1 >= MAX_EXPORT_TRIES) {
        throw error;
      }
    }
  }
}

/**
 * The file name of an RFC 6266 `Content-Disposition` header: `filename*` (RFC 5987, UTF-8) before
 * `filename`; `null` when it names none.
 */
export function dispositionFilename(header: string | null): string | null {
  if (!header) {
    return null;
  }
  const extended = /filename\*\s*=\s*([^']*)'[^']*'([^;\s]+)/i.exec(header);
  if (extended && /^utf-8$/i.test(extended[1])) {
    try {
      return decodeURIComponent(extended[2]);
    } catch {
      // A broken encoding: the plain name below.
    }
  }
  const quoted = /(?:^|;)\s*filename\s*=\s*"((?:\\.|[^"\\])*)"/i.exec(header);
  if (quoted) {
    return quoted[1].replace(/\\(.)/g, '$1');
  }
  const token = /(?:^|;)\s*filename\s*=\s*([^;\s]+)/i.exec(header);
  return token ? token[1] : null;
}
