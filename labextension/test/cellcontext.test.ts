import { describe, expect, it } from 'vitest';

import { MAX_ERROR_CHARS, cellChip, cellContext, errorOutput, parseCellContext } from '../src/cellcontext';

const ERROR = {
  output_type: 'error',
  ename: 'NameError',
  evalue: "name 'ds' is not defined",
  traceback: [
    '\u001b[0;31m---------------------------------------------------------------------------\u001b[0m',
    '\u001b[0;31mNameError\u001b[0m                                 Traceback (most recent call last)',
    "\u001b[0;31mNameError\u001b[0m: name 'ds' is not defined"
  ]
};

describe('errorOutput', () => {
  it('is null when the last run did not fail', () => {
    expect(errorOutput([])).toBeNull();
    expect(errorOutput([{ output_type: 'stream' }, { output_type: 'execute_result' }])).toBeNull();
  });

  it("is the error's traceback without terminal colours", () => {
    const text = errorOutput([{ output_type: 'stream' }, ERROR]);
    expect(text).toBe(
      '---------------------------------------------------------------------------\n' +
        'NameError                                 Traceback (most recent call last)\n' +
        "NameError: name 'ds' is not defined"
    );
  });

  it('falls back to name and value, and keeps the end of a long traceback', () => {
    expect(errorOutput([{ output_type: 'error', ename: 'KeyError', evalue: "'tas'" }])).toBe(
      "KeyError: 'tas'"
    );
    const long = errorOutput([
      { output_type: 'error', traceback: ['x'.repeat(10000), 'ValueError: the end'] }
    ]);
    expect(long).toHaveLength(MAX_ERROR_CHARS + 1);
    expect(long!.startsWith('…')).toBe(true);
    expect(long!.endsWith('ValueError: the end')).toBe(true);
  });
});

describe('cellContext', () => {
  it('sends the source, the error of a failed run and the notebook', () => {
    expect(cellContext('ds.tas.plot()', [ERROR], 'work/a.ipynb')).toEqual({
      source: 'ds.tas.plot()',
      outputs: errorOutput([ERROR]),
      notebook_path: 'work/a.ipynb'
    });
    expect(cellContext('x = 1', [{ output_type: 'stream' }], 'a.ipynb')).toEqual({
      source: 'x = 1',
      outputs: '',
      notebook_path: 'a.ipynb'
    });
  });
});

describe('parseCellContext', () => {
  it('reads an object or the JSON string of a GET', () => {
    const context = { source: 's', outputs: 'o', notebook_path: 'n.ipynb' };
    expect(parseCellContext(context)).toEqual(context);
    expect(parseCellContext(JSON.stringify(context))).toEqual(context);
    expect(parseCellContext({ source: 's' })).toEqual({ source: 's', outputs: '', notebook_path: '' });
  });

  it('is null for anything else', () => {
    for (const value of [undefined, null, '', 'not json', '"s"', [], { outputs: 'o' }, { source: 3 }]) {
      expect(parseCellContext(value)).toBeNull();
    }
  });
});

describe('cellChip', () => {
  it("names the notebook and the source's first line", () => {
    const chip = cellChip({
      source: '\n\nimport xarray as xr\nds = xr.open_dataset()',
      outputs: '',
      notebook_path: 'a/b/c.ipynb'
    });
    expect(chip).toEqual({
      notebook: 'c.ipynb',
      excerpt: 'import xarray as xr',
      failed: false,
      title: 'a/b/c.ipynb\n\n\n\nimport xarray as xr\nds = xr.open_dataset()'
    });
  });

  it("shortens the excerpt and shows the error's last line for a failed run", () => {
    const source = `result = ${'very_long_name + '.repeat(5)}1`;
    const chip = cellChip({ source, outputs: 'Traceback\n  ...\nNameError: x\n', notebook_path: 'n.ipynb' });
    expect(Array.from(chip.excerpt)).toHaveLength(40);
    expect(chip.excerpt.endsWith('…')).toBe(true);
    expect(source.startsWith(chip.excerpt.slice(0, -1))).toBe(true);
    expect(chip.failed).toBe(true);
    expect(chip.title).toBe(`n.ipynb\n\n${source}\n\nNameError: x`);
  });

  it('has no notebook name without a path', () => {
    expect(cellChip({ source: 'x', outputs: ' \n', notebook_path: '' })).toMatchObject({
      notebook: '',
      failed: false,
      title: 'x'
    });
  });
});
