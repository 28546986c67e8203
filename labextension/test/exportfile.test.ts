import { describe, expect, it } from 'vitest';

import {
  MAX_EXPORT_TRIES,
  UNTITLED,
  dispositionFilename,
  exportPath,
  folderOf,
  notebookStem,
  writeUnique
} from '../src/exportfile';

describe('notebookStem', () => {
  it('keeps a plain topic, non-ASCII too', () => {
    expect(notebookStem('Seasonal cycle of tas')).toBe('Seasonal cycle of tas');
    expect(notebookStem('Niederschlag über Köln 🌧')).toBe('Niederschlag über Köln 🌧');
  });

  it('drops what file systems refuse, line breaks, hidden and trailing dots', () => {
    expect(notebookStem('a/b\\c: "d" <e>|f*?')).toBe('a b c d e f');
    expect(notebookStem('first line\nsecond\tline\u00a0and\u2028more')).toBe(
      'first line second line and more'
    );
    expect(notebookStem('..hidden..')).toBe('hidden');
    expect(notebookStem(' . ')).toBe(UNTITLED);
    expect(notebookStem('')).toBe(UNTITLED);
  });

  it('keeps the file name within 100 characters', () => {
    expect(Array.from(notebookStem('é'.repeat(300)))).toHaveLength(94);
    expect(notebookStem(`${'a'.repeat(92)} .b`)).toBe('a'.repeat(92));
  });
});

describe('exportPath', () => {
  it('numbers the tries after the first', () => {
    expect([0, 1, 2].map(n => exportPath('work/2024', 'My plot', n))).toEqual([
      'work/2024/My plot.ipynb',
      'work/2024/My plot-1.ipynb',
      'work/2024/My plot-2.ipynb'
    ]);
  });

  it('writes into the root without a folder', () => {
    expect(exportPath('', 'x/y', 0)).toBe('x y.ipynb');
    expect(exportPath('', '', 3)).toBe(`${UNTITLED}-3.ipynb`);
  });
});

describe('folderOf', () => {
  it('is the folder of a contents path', () => {
    expect(folderOf('a/b/c.ipynb')).toBe('a/b');
    expect(folderOf('c.ipynb')).toBe('');
  });
});

describe('dispositionFilename', () => {
  it('prefers the UTF-8 name of RFC 6266', () => {
    expect(
      dispositionFilename(
        `attachment; filename="Niederschlag uber Koln.ipynb"; filename*=UTF-8''Niederschlag%20%C3%BCber%20K%C3%B6ln.ipynb`
      )
    ).toBe('Niederschlag über Köln.ipynb');
  });

  it('reads a quoted or plain name', () => {
    expect(dispositionFilename('attachment; filename="say \\"hi\\".ipynb"')).toBe('say "hi".ipynb');
    expect(dispositionFilename('attachment; filename=plain.ipynb')).toBe('plain.ipynb');
    expect(dispositionFilename(`attachment; filename="ok.ipynb"; filename*=UTF-8''%E0%A4`)).toBe('ok.ipynb');
  });

  it('is null without a name', () => {
    expect(dispositionFilename(null)).toBeNull();
    expect(dispositionFilename('attachment')).toBeNull();
  });
});

describe('writeUnique', () => {
  /** A folder with these files; `write` refuses a taken name as the server does (409). */
  function folder(...names: string[]) {
    const files = new Set(names);
    const tried: string[] = [];
    const write = async (path: string) => {
      tried.push(path);
      if (files.has(path)) {
        throw Object.assign(new Error('exists'), { status: 409 });
      }
      files.add(path);
      return path;
    };
    const taken = (error: unknown) => (error as { status?: number }).status === 409;
    return { files, tried, write, taken };
  }

  it('takes the first free name', async () => {
    const f = folder('w/T.ipynb', 'w/T-1.ipynb', 'w/T-3.ipynb');
    expect(await writeUnique('w', 'T', f.write, f.taken)).toBe('w/T-2.ipynb');
    expect(f.tried).toEqual(['w/T.ipynb', 'w/T-1.ipynb', 'w/T-2.ipynb']);
    expect(await writeUnique('w', 'T', f.write, f.taken)).toBe('w/T-4.ipynb');
  });

  it('passes on other errors at once', async () => {
    const f = folder();
    const denied = Object.assign(new Error('no such folder'), { status: 404 });
    await expect(writeUnique('gone', 'T', () => Promise.reject(denied), f.taken)).rejects.toBe(denied);
  });

  it(`gives up after ${MAX_EXPORT_TRIES} taken names`, async () => {
    const f = folder(...Array.from({ length: MAX_EXPORT_TRIES + 5 }, (_, n) => exportPath('', 'T', n)));
    await expect(writeUnique('', 'T', f.write, f.taken)).rejects.toThrow('exists');
    expect(f.tried).toHaveLength(MAX_EXPORT_TRIES);
  });
});
