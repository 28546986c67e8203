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
  /** The catalogue is fine but lists no chat model. */
  | { kind: 'no-model' }
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
 * header only one shortened line of it); a ping that is `ok` means the catalogue is fine, only empty (the
 * header then repeats the hint the help shows). Without an answer of ping the header is all there is.
 */
export function serviceState(models: readonly string[], header: string | null, ping: unknown): ServiceState {
  if (models.length) {
    return { kind: 'ready' };
  }
  const full = degradedDetail(ping);
  if (full) {
    return { kind: 'degraded', detail: full };
  }
  const detail = header?.trim();
  return detail && !isOk(ping) ? { kind: 'degraded', detail } : { kind: 'no-model' };
}

function isOk(ping: unknown): boolean {
  return !!ping && typeof ping === 'object' && (ping as Record<string, unknown>).status === 'ok';
}
