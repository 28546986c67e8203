import { describe, expect, it } from 'vitest';

import { pageRange } from '../src/paging';

const items = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

describe('pageRange', () => {
  it('shows nothing before the first page loaded', () => {
    expect(pageRange(null, 20)).toEqual({
      page: 0,
      first: 0,
      last: 0,
      total: 0,
      previous: false,
      next: false
    });
  });

  it('counts the items of the loaded page', () => {
    expect(pageRange({ page: 0, items: items(20), total: 45 }, 20)).toEqual({
      page: 0,
      first: 1,
      last: 20,
      total: 45,
      previous: false,
      next: true
    });
    expect(pageRange({ page: 2, items: items(5), total: 45 }, 20)).toEqual({
      page: 2,
      first: 41,
      last: 45,
      total: 45,
      previous: true,
      next: false
    });
  });

  it('follows what was loaded, not the total: a page shorter than expected ends there', () => {
    // A thread was deleted between the count and the page: 19 items although 40 were counted.
    const range = pageRange({ page: 1, items: items(19), total: 40 }, 20);
    expect([range.first, range.last]).toEqual([21, 39]);
    expect(range.next).toBe(true);
  });

  it('shows no range for an empty page', () => {
    const range = pageRange({ page: 0, items: [], total: 0 }, 20);
    expect([range.first, range.last, range.previous, range.next]).toEqual([0, 0, false, false]);
  });
});
