/**
 * What the thread list's pager shows. It is computed from the loaded page only, never from the page a click
 * asked for, so that the count and the items always agree (also while the next page loads).
 */

/** A loaded page of a listing. */
export interface ILoadedPage {
  /** The page (from 0) the items are. */
  page: number;
  items: readonly unknown[];
  /** How many items all pages hold. */
  total: number;
}

export interface IPageRange {
  page: number;
  /** 1-based positions of the first and the last item shown; 0 when none is. */
  first: number;
  last: number;
  total: number;
  previous: boolean;
  next: boolean;
}

export function pageRange(loaded: ILoadedPage | null, size: number): IPageRange {
  if (!loaded) {
    return { page: 0, first: 0, last: 0, total: 0, previous: false, next: false };
  }
  const { page, items, total } = loaded;
  const offset = page * size;
  return {
    page,
    first: items.length ? offset + 1 : 0,
    last: offset + items.length,
    total,
    previous: page > 0,
    next: offset + items.length < total
  };
}
