/**
 * The client of `<base_url>api/chatbot/*`: every request goes through `ServerConnection.makeRequest`, so the
 * base URL, the token and the XSRF cookie are right (also on JupyterHub). Routes take a POST JSON body.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { ICellContext } from './cellcontext';
import { IRawVariant } from './conversation';
import { dispositionFilename } from './exportfile';
import { readNdjson } from './ndjson';
import { DETAIL_HEADER } from './service';

/** An answer of the API that is not a success: its `detail` is for people. */
export class ChatbotError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string
  ) {
    super(detail);
    this.name = 'ChatbotError';
  }
}

/** One thread in a listing. */
export interface IThreadInfo {
  user_id: string;
  thread_id: string;
  /** ISO-8601 UTC of the last activity. */
  date: string;
  topic: string;
}

export interface IThreadPage {
  threads: IThreadInfo[];
  total: number;
}

export interface IStreamRequest {
  input: string;
  thread_id?: string;
  chatbot?: string;
  kernel_id?: string;
  notebook_path?: string;
  /** `false`: the summary of the notebook kernel's variables is not sent (the server's default is to send it). */
  kernel_context?: boolean;
  /** The notebook cell the question is about. */
  cell_context?: ICellContext;
}

/** What `kernelcontext` says a turn in that notebook kernel sends the LLM. */
export interface IKernelContext {
  kernel_id: string;
  /** The kernel spec's name. */
  spec: string;
  language: string;
  /** The text the LLM gets (empty: nothing). */
  summary: string;
  /** The names of the variables in it. */
  variables: string[];
  /** Why the summary is empty: `off` (the server's setting), `busy`, `timeout`, `not_python`, `unavailable`. */
  state: 'ok' | 'off' | 'busy' | 'timeout' | 'not_python' | 'unavailable' | string;
  /** The introspection code that runs (silently) in the kernel: fixed, the server's own. */
  code?: string;
}

/** A thread exported as a notebook, to save. */
export interface IExportedNotebook {
  blob: Blob;
  /** The server's file name (`Content-Disposition`), `null` when it named none. */
  filename: string | null;
}

export class ChatbotApi {
  constructor(settings?: ServerConnection.ISettings) {
    this.settings = settings ?? ServerConnection.makeSettings();
  }

  readonly settings: ServerConnection.ISettings;

  url(route: string): string {
    return URLExt.join(this.settings.baseUrl, 'api', 'chatbot', route);
  }

  /** POST `route` with a JSON body; the parsed JSON answer, or a `ChatbotError`. */
  async call<T>(route: string, body: Record<string, unknown> = {}, signal?: AbortSignal): Promise<T> {
    const response = await this._request(route, body, signal);
    return (await response.json()) as T;
  }

  /** The model names, and the server's reason when there are none (the `X-FrevaGPT-Detail` header). */
  async availableChatbots(): Promise<{ models: string[]; detail: string | null }> {
    const response = await this._request('availablechatbots', {});
    const models = (await response.json()) as string[];
    return { models, detail: response.headers.get(DETAIL_HEADER) };
  }

  /** `{"status": "ok" | "degraded", "version", "detail"?}`: whether the server can answer, and if not, why. */
  ping(): Promise<unknown> {
    return this.call('ping');
  }

  newThread(): Promise<string> {
    return this.call<string>('newthread');
  }

  getThread(threadId: string): Promise<IRawVariant[]> {
    return this.call<IRawVariant[]>('getthread', { thread_id: threadId, show_tools: true });
  }

  async userThreads(page: number, size: number, query = ''): Promise<IThreadPage> {
    const q = query.trim();
    const [threads, total] = q
      ? await this.call<[IThreadInfo[], number]>('searchthreads', { query: q, num_threads: size, page })
      : await this.call<[IThreadInfo[], number]>('getuserthreads', { num_threads: size, page });
    return { threads, total };
  }

  setTopic(threadId: string, topic: string): Promise<unknown> {
    return this.call('setthreadtopic', { thread_id: threadId, topic });
  }

  deleteThread(threadId: string): Promise<unknown> {
    return this.call('deletethread', { thread_id: threadId });
  }

  stop(threadId: string): Promise<unknown> {
    return this.call('stop', { thread_id: threadId });
  }

  editThread(
    threadId: string,
    userIndex: number
  ): Promise<{ new_thread_id: string; history: IRawVariant[] }> {
    // The panel shows tool calls as getThread does.
    return this.call('editthread', { source_thread_id: threadId, user_index: userIndex, show_tools: true });
  }

  /** What a turn run in this notebook kernel would tell the LLM about the kernel's variables. */
  kernelContext(kernelId: string, signal?: AbortSignal): Promise<IKernelContext> {
    return this.call<IKernelContext>('kernelcontext', { kernel_id: kernelId }, signal);
  }

  /** Write the thread as a notebook at `path` (contents API path); its path. 409: the file exists. */
  async exportThread(threadId: string, path: string, overwrite = false): Promise<string> {
    const answer = await this.call<{ path: string }>('exportthread', {
      thread_id: threadId,
      path,
      overwrite
    });
    return answer.path;
  }

  /** The thread as a notebook file, to download. */
  async downloadThread(threadId: string): Promise<IExportedNotebook> {
    const response = await this._request('exportthread', { thread_id: threadId }, undefined, 'GET');
    return {
      blob: await response.blob(),
      filename: dispositionFilename(response.headers.get('Content-Disposition'))
    };
  }

  feedback(threadId: string, index: number, feedback: string): Promise<unknown> {
    return this.call('userfeedback', { thread_id: threadId, feedback_index: index, feedback });
  }

  /**
   * Ask the assistant: the variants of the NDJSON stream as they arrive. Asks for tool variants
   * (`show_tools=true`). Aborting `signal` stops reading (the turn itself goes on; see `stop`).
   */
  async *stream(request: IStreamRequest, signal?: AbortSignal): AsyncGenerator<IRawVariant> {
    const body: Record<string, unknown> = { ...request, show_tools: true };
    for (const key of Object.keys(body)) {
      if (body[key] === undefined || body[key] === '') {
        delete body[key];
      }
    }
    body.input = request.input;
    const response = await this._request('streamresponse', body, signal);
    if (!response.body) {
      throw new ChatbotError(0, 'The browser cannot read streamed answers.');
    }
    for await (const value of readNdjson(response.body, line =>
      console.warn('FrevaGPT: bad stream line', line)
    )) {
      if (value && typeof value === 'object' && 'variant' in value) {
        yield value as IRawVariant;
      }
    }
  }

  /** A POST with `body` as JSON, or a GET with it as the query (values as strings). */
  private async _request(
    route: string,
    body: Record<string, unknown>,
    signal?: AbortSignal,
    method: 'POST' | 'GET' = 'POST'
  ): Promise<Response> {
    let url = this.url(route);
    const init: RequestInit = { method, signal };
    if (method === 'GET') {
      url += URLExt.objectToQueryString(body as Record<string, string>);
    } else {
      init.body = JSON.stringify(body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (error) {
      if ((error as Error)?.name === 'AbortError') {
        throw error;
      }
      throw new ChatbotError(0, `The server cannot be reached: ${(error as Error)?.message ?? error}`);
    }
    if (!response.ok) {
      throw new ChatbotError(response.status, await errorDetail(response));
    }
    return response;
  }
}

/** The `detail` of an error answer, else its reason phrase. */
async function errorDetail(response: Response): Promise<string> {
  const fallback = `${response.status} ${response.statusText}`.trim();
  try {
    const text = await response.text();
    try {
      const json = JSON.parse(text);
      if (json && typeof json.detail === 'string') {
        return json.detail;
      }
      if (json && typeof json.message === 'string') {
        return json.message;
      }
    } catch {
      if (text && text.length < 300 && !text.trimStart().startsWith('<')) {
        return text;
      }
    }
  } catch {
    // no body
  }
  return fallback;
}
