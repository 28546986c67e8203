import { describe, expect, it } from 'vitest';

import { degradedDetail, serviceState } from '../src/service';

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

  it('says how to add a model when the catalogue is fine but empty', () => {
    const hint = 'No chat model is configured: set FREVAGPT_LITELLM_CONFIG to a model catalogue.';
    expect(serviceState([], hint, { status: 'ok', version: '0.1.0' })).toEqual({ kind: 'no-model' });
    expect(serviceState([], null, { status: 'ok', version: '0.1.0' })).toEqual({ kind: 'no-model' });
    expect(serviceState([], '', null)).toEqual({ kind: 'no-model' });
    expect(serviceState([], '   ', { status: 'degraded', detail: '' })).toEqual({ kind: 'no-model' });
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
