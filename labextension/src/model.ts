/**
 * The chat model behind `@jupyter/chat`'s widget: it sends the user's message to `streamresponse`, feeds the
 * stream into a `Conversation` (the variant reducer) and turns its blocks into chat messages, updating the
 * same message while it streams.
 */
import {
  AbstractChatContext,
  AbstractChatModel,
  IChatContext,
  IChatModel,
  IMessageContent,
  IMimeModelBody,
  INewMessage,
  IUser
} from '@jupyter/chat';
import { Notification } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import { ISignal, Signal } from '@lumino/signaling';

import { ChatbotApi, ChatbotError, IStreamRequest } from './api';
import { ICellContext } from './cellcontext';
import { Block, Conversation, codeFromArguments } from './conversation';
import { notebookStem, writeUnique } from './exportfile';
import { NotebookBridge } from './notebook';
import { ICodeData, IErrorData, IToolData, MIME } from './renderers';
import { ServiceState, serviceState, shouldReask, singleFlight } from './service';

declare module '@jupyter/chat' {
  interface IMessageMetadata {
    /** The key of the panel's block this message shows. */
    frevaBlock?: string;
  }
}

/** What the status line says. */
export type StatusKey =
  | 'thinking'
  | 'writing'
  | 'coding'
  | 'executing'
  | 'waiting_for_kernel'
  | 'searching'
  | 'stopping'
  | 'stopped'
  | 'cutoff'
  | string;

const BOT_USERNAME = 'frevagpt';
/** Streamed updates are rendered at most this often (ms). */
const FLUSH_INTERVAL = 50;

/** What an error says to people: the API's `detail`, else the message. */
export function errorText(error: unknown): string {
  return error instanceof ChatbotError
    ? error.detail
    : error instanceof Error
      ? error.message
      : String(error);
}

export class FrevaChatContext extends AbstractChatContext {
  get users(): IUser[] {
    return [];
  }
}

export namespace FrevaChatModel {
  export interface IOptions extends IChatModel.IOptions {
    api: ChatbotApi;
    notebook: NotebookBridge;
    trans: TranslationBundle;
    user: IUser;
  }
}

export class FrevaChatModel extends AbstractChatModel {
  constructor(options: FrevaChatModel.IOptions) {
    super({
      ...options,
      config: {
        sendWithShiftEnter: false,
        stackMessages: true,
        unreadNotifications: false,
        sendTypingNotification: false,
        // Our own buttons sit under each code block (copy, insert, insert and run).
        enableCodeToolbar: false,
        ...options.config
      }
    });
    this.api = options.api;
    this.notebook = options.notebook;
    this.trans = options.trans;
    this._user = options.user;
    // Names the chat widget's id (`jupyter-chat::widget::<name>`), unique beside other chat extensions.
    this.name = 'freva-gpt';
    this.setReady();
  }

  readonly api: ChatbotApi;
  readonly notebook: NotebookBridge;
  readonly trans: TranslationBundle;

  get user(): IUser {
    return this._user;
  }

  /** Emits when anything the header, status line or buttons show changes. */
  get stateChanged(): ISignal<this, void> {
    return this._stateChanged;
  }

  /** Emits after the chat's messages were brought up to date with the conversation. */
  get flushed(): ISignal<this, void> {
    return this._flushed;
  }

  /** Emits when the list of threads may have changed (a turn ended, a thread was renamed or deleted). */
  get threadsChanged(): ISignal<this, void> {
    return this._threadsChanged;
  }

  get threadId(): string | null {
    return this._conv.threadId;
  }

  get streaming(): boolean {
    return this._streaming;
  }

  /** The current status line key, or `null` when there is nothing to say. */
  get status(): StatusKey | null {
    if (this._streaming) {
      if (this._stopping) {
        return 'stopping';
      }
      const last = this._conv.lastVariant;
      if (last === 'Assistant') {
        return 'writing';
      }
      if (last === 'Code') {
        return 'coding';
      }
      return this._conv.status ?? 'thinking';
    }
    return this._notice;
  }

  get models(): string[] {
    return this._models;
  }

  /** The model to ask (`chatbot`); empty: the server's default. */
  get chatbot(): string {
    return this._chatbot;
  }
  set chatbot(value: string) {
    if (value !== this._chatbot) {
      this._chatbot = value;
      this._stateChanged.emit();
    }
  }

  /** Run code in the active notebook's kernel. */
  get runInNotebookKernel(): boolean {
    return this._runInKernel;
  }
  set runInNotebookKernel(value: boolean) {
    if (value !== this._runInKernel) {
      this._runInKernel = value;
      this._stateChanged.emit();
    }
  }

  /** The notebook cell the next question is about (`null`: none). */
  get pendingCell(): ICellContext | null {
    return this._pendingCell;
  }
  set pendingCell(value: ICellContext | null) {
    if (value !== this._pendingCell) {
      this._pendingCell = value;
      this._stateChanged.emit();
    }
  }

  /**
   * Whether the next question sends the summary of the notebook kernel's variables (when it runs there).
   * Switched off, it is off for that one question.
   */
  get shareKernelContext(): boolean {
    return this._shareKernel;
  }
  set shareKernelContext(value: boolean) {
    if (value !== this._shareKernel) {
      this._shareKernel = value;
      this._stateChanged.emit();
    }
  }

  /** Attach a notebook cell to the next question; `question` fills the input. */
  askAboutCell(context: ICellContext, question?: string): void {
    this.pendingCell = context;
    if (question !== undefined) {
      this.input.value = question;
    }
    this.input.focus();
  }

  /** Whether the server can answer, and if not, what the panel tells the user. */
  get service(): ServiceState {
    return this._service;
  }

  /**
   * Load the model names (keep `preferred` selected when it is one of them) and with them the state of the
   * service. Its problems are shown in the panel, not as notifications. A call while they are being asked
   * for gets that answer.
   */
  loadModels(preferred = ''): Promise<void> {
    if (preferred) {
      // Models found later (discovery) are offered with the same preference.
      this._preferred = preferred;
    }
    return this._load();
  }

  /**
   * Ask for the models again when none is known (the panel was shown or focused): one may have appeared
   * since, e.g. a local model server the server's discovery found. A request that runs already is joined.
   */
  refreshModels(): Promise<void> {
    return shouldReask(this._models, this._service) ? this._load() : Promise.resolve();
  }

  /** Whether the models (and with none, why) are being asked for right now. */
  get askingForModels(): boolean {
    return this._askingForModels;
  }

  createChatContext(): IChatContext {
    return new FrevaChatContext({ model: this });
  }

  sendMessage(message: INewMessage): Promise<void> {
    return this.ask(message.body);
  }

  /**
   * Ask the assistant; the answer streams into the chat. The question is about `cell` (by default the cell
   * attached with `askAboutCell`, which it then takes).
   */
  async ask(text: string, cell: ICellContext | null = this._pendingCell): Promise<void> {
    if (!text.trim()) {
      return;
    }
    if (this._streaming) {
      Notification.info(this.trans.__('FrevaGPT is still answering: wait, or stop it first.'), {
        autoClose: 4000
      });
      this.input.value = text;
      return;
    }
    const conv = this._conv;
    const share = this._shareKernel;
    this._streaming = true;
    this._notice = null;
    this._stopping = false;
    // Both are for this one question; a refused question gets them back with its text.
    this._pendingCell = null;
    this._shareKernel = true;
    this._stateChanged.emit();
    const controller = new AbortController();
    this._abort = controller;
    let started = false;
    let added = false;
    try {
      // Know the thread id before the first line, so that `stop` works at once.
      conv.threadId ??= await this.api.newThread();
      const request: IStreamRequest = { input: text, thread_id: conv.threadId, chatbot: this._chatbot };
      if (this._runInKernel) {
        const target = this.notebook.target();
        if (target.kernelId) {
          request.kernel_id = target.kernelId;
          if (!share) {
            request.kernel_context = false;
          }
        }
      }
      if (cell) {
        request.cell_context = cell;
      }
      conv.addUser(text, cell);
      added = true;
      this._flush();
      for await (const variant of this.api.stream(request, controller.signal)) {
        started = true;
        if (conv !== this._conv) {
          break;
        }
        const status = this.status;
        conv.apply(variant, true);
        if (this.status !== status || variant.variant === 'StreamEnd') {
          this._stateChanged.emit();
        }
        this._scheduleFlush();
      }
      if (conv === this._conv) {
        if (conv.ended === null) {
          this._notice = 'cutoff';
          Notification.warning(this.trans.__('FrevaGPT: the answer was cut off (the connection closed).'), {
            autoClose: 8000
          });
        } else if (this._stopping || /stopped/i.test(conv.ended)) {
          this._notice = 'stopped';
        }
      }
    } catch (error) {
      if ((error as Error)?.name !== 'AbortError' && conv === this._conv) {
        if (!this._models.length && !started && error instanceof ChatbotError) {
          // Refused for want of a model: the panel says why and what to do, fresh from the server.
          void this.loadModels();
        } else {
          this.notifyError(error);
        }
        if (!started && error instanceof ChatbotError) {
          // Refused before it started (busy, invalid, no model): nothing was stored; let the user retry.
          const user = added ? conv.discardLastUser() : null;
          if (user) {
            this._remove(user.key);
          }
          this.input.value = text;
          this._pendingCell = cell;
          this._shareKernel = share;
        }
      }
    } finally {
      if (this._abort === controller) {
        this._abort = null;
      }
      if (conv === this._conv) {
        this._streaming = false;
        this._stopping = false;
        this._flush();
        this._stateChanged.emit();
        this._threadsChanged.emit();
      }
    }
  }

  /** Stop the running answer (the server ends the stream with `StreamEnd`). */
  async stop(): Promise<void> {
    const threadId = this._conv.threadId;
    if (!this._streaming || !threadId || this._stopping) {
      return;
    }
    this._stopping = true;
    this._stateChanged.emit();
    // Right after sending, the server may not run the turn yet: try again for a moment.
    for (let attempt = 0; attempt < 10 && this._streaming; attempt++) {
      try {
        await this.api.stop(threadId);
        return;
      } catch (error) {
        if (!(error instanceof ChatbotError && error.status === 404) || attempt === 9) {
          this._stopping = false;
          this._stateChanged.emit();
          if (this._streaming) {
            this.notifyError(error);
          }
          return;
        }
        await new Promise(resolve => setTimeout(resolve, 300));
      }
    }
  }

  /** Start an empty conversation. A running answer goes on in the server and is stored. */
  newChat(): void {
    this._reset();
    this._stateChanged.emit();
  }

  /** Show a stored thread, as it looked live. */
  async openThread(threadId: string): Promise<boolean> {
    try {
      const variants = await this.api.getThread(threadId);
      this._reset();
      this._conv.threadId = threadId;
      for (const variant of variants) {
        this._conv.apply(variant, false);
      }
      this._flush();
      this._stateChanged.emit();
      return true;
    } catch (error) {
      this.notifyError(error);
      return false;
    }
  }

  /**
   * Edit an earlier message of the user: the thread is forked before that message (`editthread`) and the
   * edited text is asked in the fork.
   */
  async updateMessage(id: string, message: IMessageContent): Promise<boolean> {
    const block = this._conv.blocks.find(b => b.key === id);
    const threadId = this._conv.threadId;
    const text = typeof message.body === 'string' ? message.body : '';
    if (!block || block.kind !== 'user' || !threadId || !text.trim()) {
      return false;
    }
    if (this._streaming) {
      Notification.info(this.trans.__('Wait until the answer is complete, or stop it, to edit a message.'), {
        autoClose: 4000
      });
      return false;
    }
    let fork: { new_thread_id: string; history: unknown[] };
    try {
      fork = await this.api.editThread(threadId, block.userIndex);
    } catch (error) {
      this.notifyError(error);
      return false;
    }
    this._reset();
    this._conv.threadId = fork.new_thread_id;
    for (const variant of fork.history) {
      this._conv.apply(variant as never, false);
    }
    this._flush();
    this._threadsChanged.emit();
    await this.ask(text, block.cellContext);
    return true;
  }

  /**
   * Write a thread as a notebook into `folder` (a contents path, `''`: the root) as `<topic>.ipynb`, or the
   * first of `<topic>-1.ipynb`, `<topic>-2.ipynb`, … that does not exist yet; its path. Without a `topic`, the
   * server's name for the download is taken.
   */
  async exportNotebook(threadId: string, folder: string, topic?: string): Promise<string> {
    const name = topic ?? (await this.api.downloadThread(threadId)).filename?.replace(/\.ipynb$/i, '') ?? '';
    return writeUnique(
      folder,
      name,
      path => this.api.exportThread(threadId, path),
      error => error instanceof ChatbotError && error.status === 409
    );
  }

  /** Save a thread as a notebook file through the browser's download. */
  async downloadNotebook(threadId: string, topic?: string): Promise<void> {
    const { blob, filename } = await this.api.downloadThread(threadId);
    const url = URL.createObjectURL(blob);
    try {
      const link = document.createElement('a');
      link.href = url;
      link.download = filename ?? `${notebookStem(topic ?? '')}.ipynb`;
      document.body.appendChild(link);
      link.click();
      link.remove();
    } finally {
      // The browser reads the blob after the click returned: give it time before the URL goes.
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    }
  }

  /** The block a message shows. */
  block(key: string | undefined): Block | undefined {
    return key === undefined ? undefined : this._blocks.get(key);
  }

  /** Whether no later answer text follows this one in its turn (feedback buttons go there). */
  isLastAnswerOfTurn(key: string): boolean {
    const blocks = this._conv.blocks;
    const index = blocks.findIndex(b => b.key === key);
    if (index === -1) {
      return false;
    }
    const turn = blocks[index].turn;
    return !blocks.slice(index + 1).some(b => b.turn === turn && b.kind === 'assistant' && b.text);
  }

  /** Rate an answer: `up`, `down`, or `remove`. */
  async feedback(key: string, value: 'up' | 'down' | 'remove'): Promise<void> {
    const block = this._blocks.get(key);
    const threadId = this._conv.threadId;
    if (!block || (block.kind !== 'assistant' && block.kind !== 'code') || !threadId) {
      return;
    }
    try {
      await this.api.feedback(threadId, block.feedbackIndex, value);
      block.feedback = value === 'remove' ? null : value;
      this._stateChanged.emit();
    } catch (error) {
      this.notifyError(error);
    }
  }

  /** Whether the conversation is still writing into this block. */
  isLive(key: string): boolean {
    const blocks = this._conv.blocks;
    return this._streaming && blocks.length > 0 && blocks[blocks.length - 1].key === key;
  }

  /** Show an API error as a JupyterLab notification with its `detail`. */
  notifyError(error: unknown): void {
    Notification.error(this.trans.__('FrevaGPT: %1', errorText(error)), { autoClose: 10000 });
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._abort?.abort();
    if (this._timer !== null) {
      clearTimeout(this._timer);
    }
    Signal.clearData(this);
    super.dispose();
  }

  private _reset(): void {
    this._abort?.abort();
    this._abort = null;
    this._streaming = false;
    this._stopping = false;
    this._notice = null;
    this._epoch += 1;
    this._conv = new Conversation(`t${this._epoch}`);
    this._blocks.clear();
    this._versions.clear();
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    this.clearMessages();
  }

  /** Remove the message of a block that is gone. */
  private _remove(key: string): void {
    const index = this.messages.findIndex(m => m.id === key);
    if (index !== -1) {
      // The library tracks unread messages by index: without this, its next update reads the removed one.
      this.unreadMessages = this.unreadMessages.filter(i => i < index);
      this.messagesDeleted(index, 1);
    }
    this._blocks.delete(key);
    this._versions.delete(key);
  }

  private _scheduleFlush(): void {
    if (this._timer === null) {
      this._timer = setTimeout(() => {
        this._timer = null;
        this._flush();
      }, FLUSH_INTERVAL);
    }
  }

  /** Bring the chat's messages up to date with the conversation's blocks. */
  private _flush(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    const added: IMessageContent[] = [];
    const byId = new Map(this.messages.map(m => [m.id, m]));
    for (const block of this._conv.blocks) {
      const seen = this._versions.get(block.key);
      const live = this.isLive(block.key);
      // A block that stops being live re-renders once (e.g. a code block is no longer running).
      const version = block.version * 2 + (live ? 1 : 0);
      if (seen === version) {
        continue;
      }
      this._versions.set(block.key, version);
      this._blocks.set(block.key, block);
      const content = this._message(block);
      const message = byId.get(block.key);
      if (message) {
        message.update({ body: content.body, sender: content.sender });
      } else {
        added.push(content);
      }
    }
    if (added.length) {
      this.messagesInserted(this.messages.length, added);
    }
    this._flushed.emit();
  }

  private _message(block: Block): IMessageContent {
    const sender = block.kind === 'user' ? this._user : this._bot(this._conv.modelOf(block));
    return {
      id: block.key,
      type: 'msg',
      time: Date.now() / 1000,
      sender,
      body: this._body(block),
      metadata: { frevaBlock: block.key }
    };
  }

  private _body(block: Block): string | IMimeModelBody {
    const mime = (type: string, value: unknown): IMimeModelBody => ({
      data: { [type]: value as never }
    });
    switch (block.kind) {
      case 'user':
      case 'assistant':
        return block.text;
      case 'code': {
        const data: ICodeData = {
          id: block.id,
          code: codeFromArguments(block.args),
          output: block.output,
          error: block.error,
          running: this._streaming && block.output === null
        };
        return mime(MIME.code, data);
      }
      case 'output': {
        const data: ICodeData = { id: block.id, code: null, output: block.text, error: null, running: false };
        return mime(MIME.code, data);
      }
      case 'image':
        return mime(MIME.image, block.data);
      case 'tool': {
        const data: IToolData = { id: block.id, name: block.name, args: block.args, output: block.output };
        return mime(MIME.tool, data);
      }
      case 'error': {
        const data: IErrorData = { variant: block.variant, text: block.text };
        return mime(MIME.error, data);
      }
    }
  }

  private async _fetchModels(): Promise<void> {
    this._askingForModels = true;
    this._stateChanged.emit();
    try {
      const { models, detail } = await this.api.availableChatbots();
      // With no model, `ping` tells why in full (the header holds one shortened line).
      const ping = models.length ? null : await this.api.ping().catch(() => null);
      this._models = models;
      this._service = serviceState(models, detail, ping);
    } catch (error) {
      this._models = [];
      this._service = { kind: 'unreachable', detail: errorText(error) };
    }
    if (!this._models.includes(this._chatbot)) {
      const preferred = this._preferred;
      this._chatbot = this._models.includes(preferred) ? preferred : (this._models[0] ?? '');
    }
    this._askingForModels = false;
    this._stateChanged.emit();
  }

  private _bot(model: string | null): IUser {
    const name = this.trans.__('FrevaGPT');
    return {
      username: BOT_USERNAME,
      name,
      display_name: model ? `${name} · ${model}` : name,
      initials: 'AI',
      color: 'var(--jp-brand-color1)',
      bot: true
    };
  }

  private _user: IUser;
  private _conv = new Conversation('t0');
  private _epoch = 0;
  private _blocks = new Map<string, Block>();
  private _versions = new Map<string, number>();
  private _streaming = false;
  private _stopping = false;
  private _notice: StatusKey | null = null;
  private _models: string[] = [];
  private _service: ServiceState = { kind: 'loading' };
  private _preferred = '';
  private _askingForModels = false;
  private _load = singleFlight(() => this._fetchModels());
  private _chatbot = '';
  private _runInKernel = false;
  private _pendingCell: ICellContext | null = null;
  private _shareKernel = true;
  private _abort: AbortController | null = null;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _stateChanged = new Signal<this, void>(this);
  private _threadsChanged = new Signal<this, void>(this);
  private _flushed = new Signal<this, void>(this);
}
