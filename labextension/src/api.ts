/**
 * The client of `<base_url>api/chatbot/*`: every request goes through `ServerConnection.makeRequest`, so the
 * base URL, the token and the XSRF cookie are right (also on JupyterHub). Routes take a POST JSON body.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IRawVariant } from './conversation';
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

  private async _request(
    route: string,
    body: Record<string, unknown>,
    signal?: AbortSignal
  ): Promise<Response> {
    const init: RequestInit = {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'Content-Type': 'application/json' },
      signal
    };
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(this.url(route), init, this.settings);
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
