/**
 * Keeps the chat's message list at the bottom while an answer streams in, and leaves it alone once the reader
 * scrolls up. `@jupyter/chat` relies on CSS scroll anchoring, which neither follows a long streamed answer nor
 * stays put for a reader who scrolled up (base.css turns the anchoring off in our panel).
 *
 * The listeners sit on the chat's root (capture phase) and the scroll container is looked up again when the
 * content changes, so a re-rendered container is followed too.
 */
import { IDisposable } from '@lumino/disposable';

const SCROLLER = '[id^="jupyter-chat-scroll-container-"]';
/** A reader this close to the bottom (px) is following. */
const NEAR = 40;
/** Scroll events this soon (ms) after a wheel, key, touch or scroll-bar press are the reader's. */
const READER_WINDOW = 1000;

export class StreamFollower implements IDisposable {
  constructor(
    private _root: HTMLElement,
    private _onChange?: (following: boolean) => void
  ) {
    _root.addEventListener('wheel', this._onWheel, { capture: true, passive: true });
    _root.addEventListener('keydown', this._onKey, true);
    _root.addEventListener('touchmove', this._onTouch, { capture: true, passive: true });
    _root.addEventListener('pointerdown', this._onPointer, true);
    _root.addEventListener('scroll', this._onScroll, { capture: true, passive: true });
    this._resize = new ResizeObserver(() => {
      if (this._following) {
        this.toEnd();
      }
    });
  }

  get following(): boolean {
    return this._following;
  }
  set following(value: boolean) {
    if (value !== this._following) {
      this._following = value;
      this._onChange?.(value);
    }
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Find the scroll container (again) and watch its size. */
  refresh(): HTMLElement | null {
    const scroller = this._root.querySelector<HTMLElement>(SCROLLER);
    if (scroller !== this._scroller) {
      this._resize.disconnect();
      this._scroller = scroller;
      if (scroller) {
        this._resize.observe(scroller);
        if (scroller.firstElementChild) {
          this._resize.observe(scroller.firstElementChild);
        }
        this._lastTop = scroller.scrollTop;
      }
    }
    return scroller;
  }

  /** Follow again, from the bottom. */
  follow(): void {
    this.following = true;
    this.toEnd();
  }

  toEnd(): void {
    const scroller = this.refresh();
    if (scroller) {
      scroller.scrollTop = scroller.scrollHeight;
      this._lastTop = scroller.scrollTop;
    }
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._resize.disconnect();
    this._root.removeEventListener('wheel', this._onWheel, true);
    this._root.removeEventListener('keydown', this._onKey, true);
    this._root.removeEventListener('touchmove', this._onTouch, true);
    this._root.removeEventListener('pointerdown', this._onPointer, true);
    this._root.removeEventListener('scroll', this._onScroll, true);
  }

  private _inList(target: EventTarget | null): boolean {
    const scroller = this.refresh();
    return !!scroller && target instanceof Node && scroller.contains(target);
  }

  /** The reader moves up: stop following at once, before the next growth scrolls down again. */
  private _up(): void {
    this._readerAt = performance.now();
    this.following = false;
  }

  private _onWheel = (event: WheelEvent): void => {
    if (this._inList(event.target)) {
      if (event.deltaY < 0) {
        this._up();
      } else {
        this._readerAt = performance.now();
      }
    }
  };

  private _onKey = (event: KeyboardEvent): void => {
    if (!this._inList(event.target)) {
      return;
    }
    if (['ArrowUp', 'PageUp', 'Home'].includes(event.key)) {
      this._up();
    } else if (['ArrowDown', 'PageDown', 'End', ' '].includes(event.key)) {
      this._readerAt = performance.now();
    }
  };

  private _onTouch = (event: TouchEvent): void => {
    if (this._inList(event.target)) {
      this._readerAt = performance.now();
    }
  };

  /** A press on the container itself is on its scroll bar. */
  private _onPointer = (event: PointerEvent): void => {
    if (event.target instanceof Element && event.target.matches(SCROLLER)) {
      this._readerAt = performance.now();
    }
  };

  private _onScroll = (event: Event): void => {
    const target = event.target;
    if (!(target instanceof HTMLElement) || !target.matches(SCROLLER)) {
      return;
    }
    if (target !== this._scroller) {
      this.refresh();
    }
    const top = target.scrollTop;
    const distance = target.scrollHeight - top - target.clientHeight;
    const byReader = performance.now() - this._readerAt < READER_WINDOW;
    // Re-renders and size changes scroll too (a clamp, even to the top): only the reader stops the following;
    // a clamp ends at the bottom.
    if (byReader && top < this._lastTop && distance >= NEAR) {
      this.following = false;
    } else if (distance < NEAR || (byReader && top > this._lastTop && distance < 4 * NEAR)) {
      // Back at the bottom (a smooth scroll ends a little short of it while the answer grows).
      this.following = true;
    }
    this._lastTop = top;
  };

  private _scroller: HTMLElement | null = null;
  private _resize: ResizeObserver;
  private _following = true;
  private _lastTop = 0;
  private _readerAt = -Infinity;
  private _disposed = false;
}
