import { describe, expect, it } from 'vitest';

import { ServiceState, degradedDetail, serviceState, shouldReask, singleFlight } from '../src/service';

const FULL =
  "The model catalogue /srv/models.yaml cannot be read: line 3, column 5: expected ',' or '}'.\n" +
  '  litellm_params: {model: openai/x\n    ^\nFix the file, then restart JupyterLab.';

describe('serviceState', () => {
  it('is ready when there are models, whatever else is said', () => {
    expect(serviceState(['a', 'b'], null, null)).toEqual({ kind: 'ready' });
    expect(serviceState(['a'], 'stale', { status: 'degraded', detail: 'x' })).toEqual({ kind: 'ready' });
  });

  it("takes ping's full text over the shortened header", () => {
    const header = 'The model catalogue /srv/models.yaml cannot be read: line 3, column 5 ...';
    expect(serviceState([], header, { status: 'degraded', version: '0.1.0', detail: FULL })).toEqual({
      kind: 'degraded',
      detail: FULL.trim()
    });
  });

  it('keeps the header when ping did not answer', () => {
    const header = 'The model catalogue /srv/models.yaml does not exist.';
    expect(serviceState([], `  ${header} `, null)).toEqual({ kind: 'degraded', detail: header });
    expect(serviceState([], header, { status: 'degraded' })).toEqual({ kind: 'degraded', detail: header });
  });

  it('says how to add a model when the catalogue is fine but empty, with what the server saw', () => {
    const hint = 'No chat model is configured: set FREVAGPT_LITELLM_CONFIG to a model catalogue.';
    const ok = { status: 'ok', version: '0.1.0' };
    // The generic hint repeats the notice's own help: not shown twice.
    expect(serviceState([], ` ${hint}\n`, ok)).toEqual({ kind: 'no-model', detail: null });
    const seen =
      "Not used: the model server at 127.0.0.1:11434 runs as user 'eve' (another login user could read your " +
      'prompts). No model configured; none found at 127.0.0.1:8080, 127.0.0.1:8000.';
    expect(serviceState([], seen, ok)).toEqual({ kind: 'no-model', detail: seen });
    expect(serviceState([], null, ok)).toEqual({ kind: 'no-model', detail: null });
    expect(serviceState([], '  ', ok)).toEqual({ kind: 'no-model', detail: null });
    expect(serviceState([], '', null)).toEqual({ kind: 'no-model', detail: null });
    expect(serviceState([], '   ', { status: 'degraded', detail: '' })).toEqual({
      kind: 'no-model',
      detail: null
    });
  });
});

describe('shouldReask', () => {
  const noModel: ServiceState = { kind: 'no-model', detail: null };

  it('asks again only while no model is known, after the first answer', () => {
    expect(shouldReask([], noModel)).toBe(true);
    expect(shouldReask([], { kind: 'degraded', detail: 'x' })).toBe(true);
    expect(shouldReask([], { kind: 'unreachable', detail: '404' })).toBe(true);
    expect(shouldReask(['a'], { kind: 'ready' })).toBe(false);
    expect(shouldReask([], { kind: 'loading' })).toBe(false);
  });
});

describe('singleFlight', () => {
  /** A task whose runs are counted and end when `finish` is called. */
  function gated() {
    const state = { runs: 0, finish: (_: number) => {} };
    const task = () =>
      new Promise<number>(resolve => {
        state.runs += 1;
        state.finish = resolve;
      });
    return { state, task };
  }

  it('joins calls while a run is in flight, and runs again after it ended', async () => {
    const { state, task } = gated();
    const run = singleFlight(task);
    const first = run();
    const second = run();
    expect(second).toBe(first);
    expect(state.runs).toBe(1);
    state.finish(1);
    expect(await second).toBe(1);
    const third = run();
    expect(third).not.toBe(first);
    expect(state.runs).toBe(2);
    state.finish(2);
    expect(await third).toBe(2);
  });

  it('runs again after a run that failed', async () => {
    let runs = 0;
    const run = singleFlight(async () => {
      runs += 1;
      if (runs === 1) {
        throw new Error('refused');
      }
      return runs;
    });
    await expect(run()).rejects.toThrow('refused');
    expect(await run()).toBe(2);
  });
});

describe('degradedDetail', () => {
  it('reads only a degraded ping with a detail', () => {
    expect(degradedDetail({ status: 'degraded', detail: ' why \n' })).toBe('why');
    expect(degradedDetail({ status: 'ok', detail: 'why' })).toBeNull();
    expect(degradedDetail({ status: 'degraded', detail: 42 })).toBeNull();
    expect(degradedDetail('degraded')).toBeNull();
    expect(degradedDetail(null)).toBeNull();
  });
});
