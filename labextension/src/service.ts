/**
 * Whether the server can answer at all, and what the panel tells the user when it cannot: a catalogue that
 * cannot be read (the server's own words: file, line and what to fix), no model at all (how to add one), or
 * no FrevaGPT API (the extension is not loaded). The panel shows this itself; these are states, not events,
 * so they are no notifications.
 */

/** The response header of `availablechatbots` that says why the list is empty (one ASCII line). */
export const DETAIL_HEADER = 'X-FrevaGPT-Detail';

export type ServiceState =
  /** Not asked yet. */
  | { kind: 'loading' }
  | { kind: 'ready' }
  /**
   * The catalogue is fine but lists no chat model (or there is none); `detail`: the server's one line on
   * it, e.g. what model discovery found or refused (`null`: none).
   */
  | { kind: 'no-model'; detail: string | null }
  /** The catalogue cannot be read or is invalid. */
  | { kind: 'degraded'; detail: string }
  /** `availablechatbots` failed (e.g. 404: the server extension did not load). */
  | { kind: 'unreachable'; detail: string };

/** The full `detail` of a degraded `ping` answer (`{"status": "degraded", "detail"}`), else `null`. */
export function degradedDetail(ping: unknown): string | null {
  if (ping && typeof ping === 'object') {
    const { status, detail } = ping as Record<string, unknown>;
    if (status === 'degraded' && typeof detail === 'string' && detail.trim()) {
      return detail.trim();
    }
  }
  return null;
}

/**
 * The state after `availablechatbots` answered `models`, with its detail header (`null`: none) and, when the
 * list is empty, the answer of `ping` (`null`: none or failed). A degraded ping holds the full text (the
 * header only one shortened line of it); a ping that is `ok` means the catalogue is fine, only empty: the
 * header then says what the server looked at (the model servers discovery asked or refused, else the hint
 * the help shows too). Without an answer of ping the header is all there is.
 */
export function serviceState(models: readonly string[], header: string | null, ping: unknown): ServiceState {
  if (models.length) {
    return { kind: 'ready' };
  }
  const full = degradedDetail(ping);
  if (full) {
    return { kind: 'degraded', detail: full };
  }
  const detail = header?.trim() || null;
  if (detail && !isOk(ping)) {
    return { kind: 'degraded', detail };
  }
  // The server's generic hint says what the notice's help says already.
  return { kind: 'no-model', detail: detail?.startsWith(GENERIC_HINT) ? null : detail };
}

/** How the server's hint begins when it has nothing more to say than "add a catalogue" (discovery off). */
const GENERIC_HINT = 'No chat model is configured:';

/**
 * Whether the panel asks for the models again when it has a reason to (it was shown or focused): only
 * while none is known, since one may have appeared since (a model server started that the server's
 * discovery finds), and not before the first answer (that one brings the preferred model along).
 */
export function shouldReask(models: readonly string[], state: ServiceState): boolean {
  return !models.length && state.kind !== 'loading';
}

/**
 * `task`, one run at a time: a call while it runs gets that run's promise, so that reasons to ask that come
 * together (shown, activated, focused) make one request.
 */
export function singleFlight<T>(task: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | null = null;
  return () => {
    running ??= task().finally(() => {
      running = null;
    });
    return running;
  };
}

function isOk(ping: unknown): boolean {
  return !!ping && typeof ping === 'object' && (ping as Record<string, unknown>).status === 'ok';
}
