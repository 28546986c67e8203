/**
 * The requests `ChatbotApi` makes, through JupyterLab's real `ServerConnection` with a transport that records
 * each request and answers like the server.
 */
import { ServerConnection } from '@jupyterlab/services';
import { describe, expect, it } from 'vitest';

import { ChatbotApi, ChatbotError } from '../src/api';

const BASE = 'http://lab.test/user/u/';

/** An API whose requests go to `answer`; `requests` holds them. */
function api(answer: (request: Request) => Response) {
  const requests: Request[] = [];
  const fetch = async (input: RequestInfo | URL) => {
    const request = input as Request;
    requests.push(request.clone());
    return answer(request);
  };
  const settings = ServerConnection.makeSettings({ baseUrl: BASE, token: 'secret', fetch });
  return { api: new ChatbotApi(settings), requests };
}

/** Where a request goes: its path and query, without the cache buster `ServerConnection` adds (`?<time>`). */
function target(request: Request): { path: string; query: Record<string, string> } {
  const url = new URL(request.url);
  const query = [...url.searchParams].filter(([key, value]) => !(value === '' && /^\d+$/.test(key)));
  return { path: url.pathname, query: Object.fromEntries(query) };
}

const json = (value: unknown, status = 200, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(value), {
    status,
    headers: { 'Content-Type': 'application/json', ...headers }
  });

describe('streamresponse', () => {
  it('sends the cell context as an object and kernel_context only when it is off', async () => {
    const ndjson = [
      '{"variant":"ServerHint","content":{"thread_id":"t1"}}',
      '{"variant":"StreamEnd","content":"done"}'
    ]
      .join('\n')
      .concat('\n');
    const { api: chat, requests } = api(() => new Response(ndjson));
    const cell = {
      source: 'ds.tas.plot()',
      outputs: "NameError: name 'ds' is not defined",
      notebook_path: 'a.ipynb'
    };
    const variants = [];
    for await (const variant of chat.stream({
      input: 'Why?',
      thread_id: 't1',
      chatbot: '',
      kernel_id: 'k1',
      kernel_context: false,
      cell_context: cell
    })) {
      variants.push(variant.variant);
    }
    expect(variants).toEqual(['ServerHint', 'StreamEnd']);
    const [request] = requests;
    expect(request.method).toBe('POST');
    expect(target(request)).toEqual({ path: '/user/u/api/chatbot/streamresponse', query: {} });
    expect(request.headers.get('Authorization')).toBe('token secret');
    expect(await request.json()).toEqual({
      input: 'Why?',
      thread_id: 't1',
      kernel_id: 'k1',
      kernel_context: false,
      cell_context: cell,
      show_tools: true
    });
  });

  it('leaves both out of a plain question', async () => {
    const { api: chat, requests } = api(() => new Response(''));
    for await (const variant of chat.stream({ input: '', thread_id: 't' })) {
      expect(variant).toBeUndefined();
    }
    expect(await requests[0].json()).toEqual({ input: '', thread_id: 't', show_tools: true });
  });
});

describe('exportthread', () => {
  it('writes with a POST and answers the path', async () => {
    const { api: chat, requests } = api(() => json({ path: 'w/T.ipynb' }));
    expect(await chat.exportThread('t1', 'w/T.ipynb')).toBe('w/T.ipynb');
    expect(requests[0].method).toBe('POST');
    expect(target(requests[0])).toEqual({ path: '/user/u/api/chatbot/exportthread', query: {} });
    expect(await requests[0].json()).toEqual({ thread_id: 't1', path: 'w/T.ipynb', overwrite: false });
  });

  it("refuses a taken name with the server's 409 and detail", async () => {
    const { api: chat } = api(() => json({ detail: 'w/T.ipynb exists.' }, 409));
    const error = await chat.exportThread('t1', 'w/T.ipynb').catch(e => e);
    expect(error).toBeInstanceOf(ChatbotError);
    expect(error).toMatchObject({ status: 409, detail: 'w/T.ipynb exists.' });
  });

  it("downloads with a GET and reads the file's name", async () => {
    const notebook = { nbformat: 4, nbformat_minor: 5, cells: [], metadata: {} };
    const disposition = `attachment; filename="Kln.ipynb"; filename*=UTF-8''K%C3%B6ln.ipynb`;
    const { api: chat, requests } = api(() =>
      json(notebook, 200, { 'Content-Type': 'application/x-ipynb+json', 'Content-Disposition': disposition })
    );
    const { blob, filename } = await chat.downloadThread('t 1/x');
    expect(filename).toBe('Köln.ipynb');
    expect(JSON.parse(await blob.text())).toEqual(notebook);
    expect(requests[0].method).toBe('GET');
    expect(target(requests[0])).toEqual({
      path: '/user/u/api/chatbot/exportthread',
      query: { thread_id: 't 1/x' }
    });
    expect(await requests[0].text()).toBe('');
  });
});

describe('kernelcontext', () => {
  it("asks for the kernel's summary", async () => {
    const answer = {
      kernel_id: 'k1',
      spec: 'python3',
      language: 'python',
      summary: 'ds: Dataset',
      variables: ['ds'],
      state: 'ok'
    };
    const { api: chat, requests } = api(() => json(answer));
    expect(await chat.kernelContext('k1')).toEqual(answer);
    expect(target(requests[0])).toEqual({ path: '/user/u/api/chatbot/kernelcontext', query: {} });
    expect(await requests[0].json()).toEqual({ kernel_id: 'k1' });
  });
});
