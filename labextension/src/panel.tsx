/**
 * The FrevaGPT side panel: a header (new chat, threads, model, kernel toggle, the thread's menu), the thread
 * list, and `@jupyter/chat`'s chat widget with our status line, stop button, feedback buttons, the chip of the
 * notebook cell a question is about, and above the input what goes along with the next question.
 */
import {
  ChatWidget,
  IMessageContent,
  IMessageFooterRegistry,
  InputToolbarRegistry,
  MessageFooterRegistry,
  MessageFooterSectionProps,
  MessagePreambleProps,
  MessagePreambleRegistry,
  TooltippedIconButton
} from '@jupyter/chat';
import { Dialog, IThemeManager, ReactWidget, showDialog } from '@jupyterlab/apputils';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { TranslationBundle } from '@jupyterlab/translation';
import {
  HTMLSelect,
  MenuSvg,
  addIcon,
  caretLeftIcon,
  caretRightIcon,
  closeIcon,
  deleteIcon,
  editIcon,
  ellipsesIcon,
  historyIcon,
  notebookIcon,
  stopIcon
} from '@jupyterlab/ui-components';
import { ReadonlyJSONObject } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';
import { Menu, Panel } from '@lumino/widgets';
import React, { useCallback, useEffect, useRef, useState } from 'react';
import { Root, createRoot } from 'react-dom/client';

import { IKernelContext, IThreadInfo, IThreadPage } from './api';
import { ICellContext, cellChip } from './cellcontext';
import { StreamFollower } from './follow';
import { frevaIcon, thumbDownIcon, thumbUpIcon } from './icons';
import { FrevaChatModel, StatusKey, errorText } from './model';
import { pageRange } from './paging';

export const PANEL_ID = 'freva-gpt-panel';
const PAGE_SIZE = 20;
/** The kernel's variables are read again this long (ms) after the last cell ran or a turn ended. */
const KERNEL_CONTEXT_DELAY = 500;
/** Reads again after a `timeout` answer of `kernelcontext`, at most (each after twice the wait before). */
const KERNEL_CONTEXT_RETRIES = 4;

export namespace CommandIDs {
  export const open = 'freva-gpt:open';
  export const newChat = 'freva-gpt:new-chat';
  /** Args: `threadId` (default: the panel's thread), `topic` (the file name's stem). */
  export const exportNotebook = 'freva-gpt:export-notebook';
  /** Args as `exportNotebook`. */
  export const downloadNotebook = 'freva-gpt:download-notebook';
  /** The active notebook cell as the context of the next question. */
  export const askCell = 'freva-gpt:ask-cell';
  /** As `askCell`, with the question to explain the cell's error. */
  export const explainError = 'freva-gpt:explain-error';
}

/** Re-render whenever one of the signals emits. */
function useSignals(...signals: ISignal<unknown, unknown>[]): void {
  const [, setTick] = useState(0);
  useEffect(() => {
    const bump = () => setTick(t => t + 1);
    signals.forEach(s => s.connect(bump));
    // The effect runs after the first render: what emitted in between (e.g. the models loaded) shows now.
    bump();
    return () => signals.forEach(s => s.disconnect(bump));
  }, signals);
}

export function statusText(key: StatusKey | null, trans: TranslationBundle): string {
  switch (key) {
    case null:
    case undefined:
      return '';
    case 'thinking':
      return trans.__('Thinking…');
    case 'writing':
      return trans.__('Writing…');
    case 'coding':
      return trans.__('Writing code…');
    case 'executing':
      return trans.__('Executing code…');
    case 'waiting_for_kernel':
      return trans.__('Waiting for your kernel…');
    case 'searching':
      return trans.__('Searching documentation…');
    case 'stopping':
      return trans.__('Stopping…');
    case 'stopped':
      return trans.__('Stopped.');
    case 'cutoff':
      return trans.__('The answer was cut off.');
    default:
      return trans.__('%1…', String(key).replace(/_/g, ' '));
  }
}

/** The line under "Run code in the notebook's kernel": which notebook, or why none. */
function KernelTarget(props: { model: FrevaChatModel; trans: TranslationBundle }): JSX.Element | null {
  const { model, trans } = props;
  useSignals(model.stateChanged, model.notebook.changed);
  if (!model.runInNotebookKernel) {
    return null;
  }
  const target = model.notebook.target();
  let state: string;
  let text: string;
  if (!target.path) {
    state = 'no-notebook';
    text = trans.__("No notebook is open: code runs in FrevaGPT's own kernel.");
  } else if (!target.kernelId) {
    state = 'no-kernel';
    text = trans.__("%1 has no kernel: code runs in FrevaGPT's own kernel.", target.name ?? target.path);
  } else {
    state = 'kernel';
    text = trans.__('Code runs in %1 (%2).', target.name ?? target.path, target.kernelName ?? '');
  }
  return (
    <div className="freva-gpt-kernel-target" data-state={state} title={target.path ?? ''}>
      {text}
    </div>
  );
}

/** Why no model can answer, and what to do: in the panel, for as long as it is so. */
function ServiceNotice(props: { model: FrevaChatModel; trans: TranslationBundle }): JSX.Element | null {
  const { model, trans } = props;
  const service = model.service;
  switch (service.kind) {
    case 'loading':
    case 'ready':
      return null;
    case 'degraded':
      return (
        <div className="freva-gpt-notice" data-kind={service.kind} role="alert">
          <div className="freva-gpt-notice-title">{trans.__('The model catalogue cannot be used')}</div>
          <div className="freva-gpt-notice-detail">{service.detail}</div>
        </div>
      );
    case 'no-model':
      return (
        <div className="freva-gpt-notice" data-kind={service.kind} role="status">
          <div className="freva-gpt-notice-title">{trans.__('No model is configured')}</div>
          {service.detail && (
            <div className="freva-gpt-notice-detail" data-server-detail="">
              {service.detail}
            </div>
          )}
          <div>
            {trans.__(
              'To add one, set FREVAGPT_LITELLM_CONFIG to a model catalogue, a YAML file like examples/litellm_config.yaml of the FrevaGPT repository.'
            )}
          </div>
          <div>{trans.__('Then restart JupyterLab: the catalogue is read at start.')}</div>
          <div>
            {trans.__(
              'Or, on your own computer, start a model server on it: FrevaGPT finds it by itself. Ollama (ollama serve, then ollama pull <model>), or the OpenAI-compatible server of llama.cpp (port 8080) or vLLM (port 8000).'
            )}
          </div>
          <div>
            {trans.__(
              'On a JupyterHub your administrator configures the models. The panel looks again whenever you open it or click into it.'
            )}
          </div>
        </div>
      );
    case 'unreachable':
      return (
        <div className="freva-gpt-notice" data-kind={service.kind} role="alert">
          <div className="freva-gpt-notice-title">{trans.__('The FrevaGPT server does not answer')}</div>
          <div className="freva-gpt-notice-detail">{service.detail}</div>
          <div>
            {trans.__(
              'Is the server extension freva_gpt_ext installed and enabled (jupyter server extension list)? The server log says why it is not.'
            )}
          </div>
        </div>
      );
  }
}

function Header(props: { panel: FrevaPanel }): JSX.Element {
  const { panel } = props;
  const { model, trans } = panel;
  useSignals(model.stateChanged, panel.viewChanged);
  const models = model.models;
  return (
    <div className="freva-gpt-header">
      <div className="freva-gpt-header-row">
        <button
          type="button"
          className="jp-Button jp-mod-minimal freva-gpt-new-chat"
          title={trans.__('New chat')}
          aria-label={trans.__('New chat')}
          onClick={() => panel.newChat()}
        >
          <addIcon.react tag="span" className="freva-gpt-button-icon" />
          <span>{trans.__('New')}</span>
        </button>
        <button
          type="button"
          className="jp-Button jp-mod-minimal freva-gpt-threads-button"
          title={trans.__('Your threads')}
          aria-pressed={panel.showingThreads}
          onClick={() => panel.showThreads(!panel.showingThreads)}
        >
          <historyIcon.react tag="span" className="freva-gpt-button-icon" />
          <span>{trans.__('Threads')}</span>
        </button>
        <button
          type="button"
          className="jp-Button jp-mod-minimal freva-gpt-thread-menu-button"
          title={trans.__('This thread')}
          aria-label={trans.__('This thread')}
          aria-haspopup="menu"
          disabled={!model.threadId}
          onClick={event =>
            model.threadId && panel.openThreadMenu(event.currentTarget, { threadId: model.threadId })
          }
        >
          <ellipsesIcon.react tag="span" />
        </button>
        <HTMLSelect
          className="freva-gpt-model"
          aria-label={trans.__('Model')}
          title={trans.__('Model')}
          value={model.chatbot}
          disabled={!models.length}
          onChange={event => (model.chatbot = event.currentTarget.value)}
          options={models.length ? models : [{ label: trans.__('No model configured'), value: '' }]}
        />
      </div>
      <label className="freva-gpt-kernel-toggle">
        <input
          type="checkbox"
          checked={model.runInNotebookKernel}
          onChange={event => (model.runInNotebookKernel = event.currentTarget.checked)}
        />
        <span>{trans.__("Run code in the active notebook's kernel")}</span>
      </label>
      <KernelTarget model={model} trans={trans} />
      <ServiceNotice model={model} trans={trans} />
    </div>
  );
}

function formatDate(iso: string): string {
  const date = new Date(iso);
  return isNaN(date.getTime()) ? iso : date.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
}

function ThreadItem(props: {
  panel: FrevaPanel;
  thread: IThreadInfo;
  current: boolean;
  onChanged: () => void;
}): JSX.Element {
  const { panel, thread, current, onChanged } = props;
  const { model, trans } = panel;
  const [renaming, setRenaming] = useState(false);
  const [draft, setDraft] = useState(thread.topic);
  const topic = thread.topic || trans.__('(untitled)');

  const rename = async () => {
    const value = draft.trim();
    setRenaming(false);
    if (!value || value === thread.topic) {
      return;
    }
    try {
      await model.api.setTopic(thread.thread_id, value);
      onChanged();
    } catch (error) {
      model.notifyError(error);
    }
  };

  const remove = async () => {
    const result = await showDialog({
      title: trans.__('Delete thread'),
      body: trans.__('Delete “%1”? This cannot be undone. Files the assistant wrote stay.', topic),
      buttons: [
        Dialog.cancelButton({ label: trans.__('Cancel') }),
        Dialog.warnButton({ label: trans.__('Delete') })
      ]
    });
    if (!result.button.accept) {
      return;
    }
    try {
      await model.api.deleteThread(thread.thread_id);
      if (model.threadId === thread.thread_id) {
        model.newChat();
      }
      onChanged();
    } catch (error) {
      model.notifyError(error);
    }
  };

  return (
    <li className="freva-gpt-thread" data-thread-id={thread.thread_id} aria-current={current}>
      {renaming ? (
        <input
          className="jp-mod-styled freva-gpt-thread-rename"
          autoFocus
          value={draft}
          aria-label={trans.__('New name')}
          onChange={event => setDraft(event.currentTarget.value)}
          onBlur={() => void rename()}
          onKeyDown={event => {
            if (event.key === 'Enter') {
              void rename();
            } else if (event.key === 'Escape') {
              setDraft(thread.topic);
              setRenaming(false);
            }
          }}
        />
      ) : (
        <button
          type="button"
          className="freva-gpt-thread-open"
          title={trans.__('Open this thread')}
          onClick={() => void panel.openThread(thread.thread_id)}
        >
          <span className="freva-gpt-thread-topic">{topic}</span>
          <span className="freva-gpt-thread-date">{formatDate(thread.date)}</span>
        </button>
      )}
      <button
        type="button"
        className="jp-Button jp-mod-minimal freva-gpt-thread-action"
        data-action="rename"
        title={trans.__('Rename')}
        aria-label={trans.__('Rename')}
        onClick={() => {
          setDraft(thread.topic);
          setRenaming(true);
        }}
      >
        <editIcon.react tag="span" />
      </button>
      <button
        type="button"
        className="jp-Button jp-mod-minimal freva-gpt-thread-action"
        data-action="delete"
        title={trans.__('Delete')}
        aria-label={trans.__('Delete')}
        onClick={() => void remove()}
      >
        <deleteIcon.react tag="span" />
      </button>
      <button
        type="button"
        className="jp-Button jp-mod-minimal freva-gpt-thread-action"
        data-action="menu"
        title={trans.__('More')}
        aria-label={trans.__('More')}
        aria-haspopup="menu"
        onClick={event =>
          panel.openThreadMenu(event.currentTarget, { threadId: thread.thread_id, topic: thread.topic })
        }
      >
        <ellipsesIcon.react tag="span" />
      </button>
    </li>
  );
}

/** A loaded page of threads, with the page and query it answers. */
interface IShownThreads extends IThreadPage {
  page: number;
  query: string;
}

/** The user's threads: search, pages, open, rename, delete. */
function ThreadsView(props: { panel: FrevaPanel }): JSX.Element {
  const { panel } = props;
  const { model, trans } = panel;
  const [query, setQuery] = useState('');
  // The page asked for; what the list, the count and the buttons show is `shown` (the loaded data).
  const [page, setPage] = useState(0);
  const [shown, setShown] = useState<IShownThreads | null>(null);
  const [loading, setLoading] = useState(false);
  const request = useRef(0);

  const load = useCallback(async () => {
    const id = ++request.current;
    setLoading(true);
    try {
      const result = await model.api.userThreads(page, PAGE_SIZE, query);
      if (id !== request.current) {
        return;
      }
      const last = Math.max(0, Math.ceil(result.total / PAGE_SIZE) - 1);
      if (page > last) {
        // The page is gone (threads were deleted): the change of `page` loads the last one.
        setPage(last);
        return;
      }
      setShown({ ...result, page, query });
    } catch (error) {
      if (id === request.current) {
        model.notifyError(error);
      }
    } finally {
      if (id === request.current) {
        setLoading(false);
      }
    }
  }, [model, page, query]);

  // Search as the user types (debounced), and reload on page changes.
  useEffect(() => {
    if (!panel.showingThreads) {
      return;
    }
    const timer = setTimeout(() => void load(), query ? 250 : 0);
    return () => clearTimeout(timer);
  }, [load, panel.showingThreads]);

  useEffect(() => {
    const reload = () => {
      if (panel.showingThreads) {
        void load();
      }
    };
    model.threadsChanged.connect(reload);
    panel.viewChanged.connect(reload);
    return () => {
      model.threadsChanged.disconnect(reload);
      panel.viewChanged.disconnect(reload);
    };
  }, [load]);

  const range = pageRange(shown && { page: shown.page, items: shown.threads, total: shown.total }, PAGE_SIZE);
  return (
    <div className="freva-gpt-threads">
      <input
        className="jp-mod-styled freva-gpt-thread-search"
        type="search"
        placeholder={trans.__('Search threads')}
        aria-label={trans.__('Search threads')}
        value={query}
        onChange={event => {
          setQuery(event.currentTarget.value);
          setPage(0);
        }}
      />
      {shown && shown.threads.length === 0 && !loading && (
        <div className="freva-gpt-threads-empty">
          {shown.query.trim()
            ? trans.__('No thread matches “%1”.', shown.query)
            : trans.__('No threads yet.')}
        </div>
      )}
      <ul className="freva-gpt-thread-list" aria-busy={loading}>
        {shown?.threads.map(thread => (
          <ThreadItem
            key={thread.thread_id}
            panel={panel}
            thread={thread}
            current={thread.thread_id === model.threadId}
            onChanged={() => void load()}
          />
        ))}
      </ul>
      <div className="freva-gpt-thread-pages">
        <button
          type="button"
          className="jp-Button jp-mod-minimal"
          data-action="previous"
          title={trans.__('Newer threads')}
          disabled={!range.previous}
          onClick={() => setPage(range.page - 1)}
        >
          <caretLeftIcon.react tag="span" />
        </button>
        <span className="freva-gpt-thread-count">
          {range.first ? trans.__('%1–%2 of %3', range.first, range.last, range.total) : ''}
        </span>
        <button
          type="button"
          className="jp-Button jp-mod-minimal"
          data-action="next"
          title={trans.__('Older threads')}
          disabled={!range.next}
          onClick={() => setPage(range.page + 1)}
        >
          <caretRightIcon.react tag="span" />
        </button>
      </div>
    </div>
  );
}

/** The status line, left in the input toolbar: heartbeats and what the stream is doing. */
function StatusItem(props: InputToolbarRegistry.IToolbarItemProps): JSX.Element {
  const model = props.chatModel as FrevaChatModel;
  useSignals(model.stateChanged);
  if (props.edit) {
    return <></>;
  }
  const key = model.status;
  return (
    <div className="freva-gpt-status" data-status={key ?? ''} aria-live="polite">
      {key && model.streaming && <span className="freva-gpt-spinner" aria-hidden="true" />}
      <span>{statusText(key, model.trans)}</span>
    </div>
  );
}

/** Our stop button (the library's only logs): shown while an answer streams. */
function StopItem(props: InputToolbarRegistry.IToolbarItemProps): JSX.Element {
  const model = props.chatModel as FrevaChatModel;
  useSignals(model.stateChanged);
  if (props.edit || !model.streaming) {
    return <></>;
  }
  const tooltip = model.trans.__('Stop the answer');
  return (
    <TooltippedIconButton
      onClick={() => void model.stop()}
      tooltip={tooltip}
      aria-label={tooltip}
      buttonProps={{ title: tooltip, className: 'freva-gpt-stop' }}
    >
      <stopIcon.react tag="span" />
    </TooltippedIconButton>
  );
}

/** Thumbs up/down under the last answer text of each turn. */
function FeedbackFooter(props: MessageFooterSectionProps): JSX.Element | null {
  const model = props.model as FrevaChatModel;
  useSignals(model.stateChanged);
  const key = (props.message as IMessageContent).metadata?.frevaBlock;
  const block = model.block(key);
  if (!key || !block || block.kind !== 'assistant' || !block.text || !model.threadId) {
    return null;
  }
  if (model.isLive(key) || !model.isLastAnswerOfTurn(key)) {
    return null;
  }
  const trans = model.trans;
  const rate = (value: 'up' | 'down') =>
    void model.feedback(key, block.feedback === value ? 'remove' : value);
  return (
    <div className="freva-gpt-feedback">
      <button
        type="button"
        className="jp-Button jp-mod-minimal"
        data-feedback="up"
        aria-pressed={block.feedback === 'up'}
        title={trans.__('Good answer')}
        onClick={() => rate('up')}
      >
        <thumbUpIcon.react tag="span" />
      </button>
      <button
        type="button"
        className="jp-Button jp-mod-minimal"
        data-feedback="down"
        aria-pressed={block.feedback === 'down'}
        title={trans.__('Bad answer')}
        onClick={() => rate('down')}
      >
        <thumbDownIcon.react tag="span" />
      </button>
    </div>
  );
}

/** The chip of the notebook cell a question is about; `onRemove` adds a button that takes it away. */
export function CellChip(props: {
  context: ICellContext;
  trans: TranslationBundle;
  onRemove?: () => void;
}): JSX.Element {
  const { context, trans, onRemove } = props;
  const chip = cellChip(context);
  return (
    <span className="freva-gpt-cell-chip" data-failed={chip.failed} title={chip.title}>
      <notebookIcon.react tag="span" className="freva-gpt-cell-chip-icon" />
      <span className="freva-gpt-cell-chip-notebook">{chip.notebook || trans.__('notebook')}</span>
      {chip.excerpt && <code className="freva-gpt-cell-chip-excerpt">{chip.excerpt}</code>}
      {chip.failed && <span className="freva-gpt-cell-chip-error">{trans.__('error')}</span>}
      {onRemove && (
        <button
          type="button"
          className="jp-Button jp-mod-minimal freva-gpt-cell-chip-remove"
          title={trans.__('Do not send this cell')}
          aria-label={trans.__('Do not send this cell')}
          onClick={onRemove}
        >
          <closeIcon.react tag="span" />
        </button>
      )}
    </span>
  );
}

/** Above a user's message: the notebook cell it asked about. */
function CellPreamble(props: MessagePreambleProps): JSX.Element | null {
  const model = props.model as FrevaChatModel;
  const block = model.block(props.message.metadata?.frevaBlock);
  if (!block || block.kind !== 'user' || !block.cellContext) {
    return null;
  }
  return (
    <div className="freva-gpt-cell-preamble">
      <CellChip context={block.cellContext} trans={model.trans} />
    </div>
  );
}

/** What `kernelcontext` answered for one kernel. */
interface IKernelContextState {
  kernelId: string;
  info: IKernelContext | null;
  error: string | null;
}

/** What the kernel context line says, and its `data-state`. */
function kernelContextText(
  name: string,
  share: boolean,
  current: IKernelContextState | null,
  trans: TranslationBundle
): { kind: string; text: string } {
  const info = current?.info;
  if (current?.error) {
    return {
      kind: 'error',
      text: trans.__('What the assistant sees of the kernel of %1 is unknown: %2', name, current.error)
    };
  }
  if (!info) {
    return { kind: 'loading', text: trans.__('The assistant sees the kernel of %1.', name) };
  }
  if (info.state === 'off') {
    return { kind: 'server-off', text: trans.__('This server tells the assistant nothing of your kernels.') };
  }
  if (!share) {
    return { kind: 'off', text: trans.__('Nothing of the kernel of %1 goes with the next question.', name) };
  }
  switch (info.state) {
    case 'not_python':
      return {
        kind: 'unsupported',
        text: trans.__(
          'The assistant sees no variables of the %1 kernel of %2.',
          info.language || info.spec,
          name
        )
      };
    case 'busy':
      return {
        kind: 'busy',
        text: trans.__(
          'The kernel of %1 is busy: while it runs, the assistant sees none of its variables.',
          name
        )
      };
    case 'timeout':
    case 'unavailable':
      return {
        kind: 'unavailable',
        text: trans.__('The variables of the kernel of %1 cannot be read now.', name)
      };
  }
  if (!info.variables.length) {
    return { kind: 'empty', text: trans.__('The assistant sees the kernel of %1: no variables yet.', name) };
  }
  return {
    kind: 'shared',
    text: trans._n(
      'The assistant sees %1 variable of the kernel of %2.',
      'The assistant sees %1 variables of the kernel of %2.',
      info.variables.length,
      name
    )
  };
}

/**
 * Which notebook's kernel the assistant sees and the variables it shares with the next question (from
 * `kernelcontext`, read again after a cell of the notebook ran, after each turn and when opened), and the
 * switch that keeps them back for the next question. Never on the kernel's own state changes: each read runs
 * (silent) code in the kernel, which changes its state.
 */
function KernelContextView(props: { model: FrevaChatModel }): JSX.Element | null {
  const { model } = props;
  const trans = model.trans;
  useSignals(model.stateChanged, model.notebook.changed);
  const target = model.notebook.target();
  const kernelId = model.runInNotebookKernel ? target.kernelId : null;
  const [state, setState] = useState<IKernelContextState | null>(null);
  const [reads, setReads] = useState(0);
  // Tries left after a `timeout` (the server's first connection to a kernel may take longer than a read).
  const retries = useRef(0);
  // The line itself: while the panel is collapsed nobody looks, and a read would run code in the kernel.
  const line = useRef<HTMLDivElement>(null);
  const read = useCallback(() => {
    retries.current = KERNEL_CONTEXT_RETRIES;
    setReads(n => n + 1);
  }, []);

  useEffect(() => {
    if (!kernelId) {
      return;
    }
    let timer: ReturnType<typeof setTimeout> | null = null;
    const later = () => {
      if (timer !== null) {
        clearTimeout(timer);
      }
      timer = setTimeout(() => {
        timer = null;
        if (line.current?.offsetParent) {
          read();
        }
      }, KERNEL_CONTEXT_DELAY);
    };
    model.notebook.executed.connect(later);
    model.threadsChanged.connect(later);
    retries.current = KERNEL_CONTEXT_RETRIES;
    return () => {
      if (timer !== null) {
        clearTimeout(timer);
      }
      model.notebook.executed.disconnect(later);
      model.threadsChanged.disconnect(later);
    };
  }, [model, kernelId, read]);

  useEffect(() => {
    if (!kernelId) {
      return;
    }
    const controller = new AbortController();
    let retry: ReturnType<typeof setTimeout> | null = null;
    model.api.kernelContext(kernelId, controller.signal).then(
      info => {
        setState({ kernelId, info, error: null });
        if (info.state === 'timeout' && retries.current > 0) {
          const wait = KERNEL_CONTEXT_DELAY * 2 ** (KERNEL_CONTEXT_RETRIES - retries.current);
          retries.current -= 1;
          retry = setTimeout(() => setReads(n => n + 1), wait);
        }
      },
      error => {
        if ((error as Error)?.name !== 'AbortError') {
          setState({ kernelId, info: null, error: errorText(error) });
        }
      }
    );
    return () => {
      controller.abort();
      if (retry !== null) {
        clearTimeout(retry);
      }
    };
  }, [model, kernelId, reads]);

  if (!kernelId) {
    return null;
  }
  const name = target.name ?? target.path ?? '';
  const current = state?.kernelId === kernelId ? state : null;
  const info = current?.info ?? null;
  const share = model.shareKernelContext;
  const { kind, text } = kernelContextText(name, share, current, trans);
  return (
    <div className="freva-gpt-kernel-context" data-state={kind} title={target.path ?? ''} ref={line}>
      {kind === 'shared' && info ? (
        <details
          className="freva-gpt-kernel-context-details"
          onToggle={event => event.currentTarget.open && read()}
        >
          <summary>{text}</summary>
          <ul className="freva-gpt-kernel-variables" aria-label={trans.__('Shared variables')}>
            {info.variables.map(variable => (
              <li key={variable}>
                <code>{variable}</code>
              </li>
            ))}
          </ul>
          <pre className="freva-gpt-kernel-summary" aria-label={trans.__('What the assistant is told')}>
            {info.summary}
          </pre>
          {info.code && (
            <details className="freva-gpt-kernel-code">
              <summary>{trans.__('The code that reads it (runs silently in your kernel)')}</summary>
              <pre>{info.code}</pre>
            </details>
          )}
        </details>
      ) : (
        <span className="freva-gpt-kernel-context-text">{text}</span>
      )}
      {kind !== 'server-off' && (
        <label
          className="freva-gpt-kernel-share"
          title={trans.__('Switched off, for the next question only')}
        >
          <input
            type="checkbox"
            checked={share}
            onChange={event => (model.shareKernelContext = event.currentTarget.checked)}
          />
          <span>{trans.__('Share')}</span>
        </label>
      )}
    </div>
  );
}

/** Above the input: the notebook cell the next question is about, and what the assistant sees of the kernel. */
function ContextBar(props: { model: FrevaChatModel }): JSX.Element {
  const { model } = props;
  useSignals(model.stateChanged);
  const cell = model.pendingCell;
  return (
    <>
      {cell && (
        <div className="freva-gpt-pending-cell">
          <span>{model.trans.__('About')}</span>
          <CellChip context={cell} trans={model.trans} onRemove={() => (model.pendingCell = null)} />
        </div>
      )}
      <KernelContextView model={model} />
    </>
  );
}

export namespace FrevaPanel {
  export interface IOptions {
    model: FrevaChatModel;
    rendermime: IRenderMimeRegistry;
    themeManager: IThemeManager | null;
    /** Runs the thread menu's items (JupyterLab's command registry). */
    commands: Menu.IOptions['commands'];
  }
}

export class FrevaPanel extends Panel {
  constructor(options: FrevaPanel.IOptions) {
    super();
    this.model = options.model;
    this.trans = options.model.trans;
    this.id = PANEL_ID;
    this.addClass('freva-gpt-panel');
    this.title.icon = frevaIcon;
    this.title.caption = this.trans.__('FrevaGPT');

    const toolbar = InputToolbarRegistry.defaultToolbarRegistry();
    // Messages carry no attachments here.
    toolbar.hide('attach');
    toolbar.addItem('freva-status', { element: StatusItem, position: 1 });
    toolbar.addItem('freva-stop', { element: StopItem, position: 90 });
    this._toolbar = toolbar;

    const footers: IMessageFooterRegistry = new MessageFooterRegistry();
    footers.addSection({ component: FeedbackFooter, position: 'right' });
    const preambles = new MessagePreambleRegistry();
    preambles.addComponent(CellPreamble);
    this._threadMenu = new MenuSvg({ commands: options.commands });
    this._threadMenu.addClass('freva-gpt-thread-menu');

    this._header = ReactWidget.create(<Header panel={this} />);
    this._header.addClass('freva-gpt-header-widget');
    this._threads = ReactWidget.create(<ThreadsView panel={this} />);
    this._threads.addClass('freva-gpt-threads-widget');
    this._threads.hide();
    this._chat = new ChatWidget({
      model: this.model,
      rmRegistry: options.rendermime,
      themeManager: options.themeManager,
      inputToolbarRegistry: toolbar,
      messageFooterRegistry: footers,
      messagePreambleRegistry: preambles,
      area: 'sidebar',
      // Ends with a newline: a one-line welcome message would render as a heading.
      welcomeMessage:
        this.trans.__(
          '**FrevaGPT** answers questions about climate data and writes and runs Python for you: ask for a plot, a statistic, or how to use freva.'
        ) + '\n'
    });
    this._chat.addClass('freva-gpt-chat');
    this.addWidget(this._header);
    this.addWidget(this._threads);
    this.addWidget(this._chat);

    // Goes into the chat's own DOM, right above its input, whenever the chat (re-)renders it.
    this._contextBar = document.createElement('div');
    this._contextBar.className = 'freva-gpt-context-bar';
    this._contextRoot = createRoot(this._contextBar);
    this._contextRoot.render(<ContextBar model={this.model} />);
    this._chatObserver = new MutationObserver(() => this._placeContextBar());
    this._chatObserver.observe(this._chat.node, { childList: true, subtree: true });

    // For people and tests: whether the list follows the stream.
    this._follower = new StreamFollower(this._chat.node, following => {
      this.node.dataset.follows = String(following);
    });
    this.node.dataset.follows = String(this._follower.following);
    this.model.stateChanged.connect(this._onStateChanged, this);
    this.model.flushed.connect(this._onFlushed, this);
    this._onStateChanged();
    // A click on the notice's text focuses nothing, yet is the user turning back to the panel.
    this.node.addEventListener('focusin', this._refreshModels);
    this.node.addEventListener('pointerdown', this._refreshModels);
  }

  readonly model: FrevaChatModel;
  readonly trans: TranslationBundle;

  get viewChanged(): ISignal<this, void> {
    return this._viewChanged;
  }

  get showingThreads(): boolean {
    return !this._threads.isHidden;
  }

  showThreads(show: boolean): void {
    if (show === !this._threads.isHidden) {
      return;
    }
    if (show) {
      this._chat.hide();
      this._threads.show();
    } else {
      this._threads.hide();
      this._chat.show();
    }
    this._viewChanged.emit();
  }

  newChat(): void {
    this.model.newChat();
    this.showThreads(false);
    this._follower.following = true;
    this.model.input.focus();
  }

  async openThread(threadId: string): Promise<void> {
    if (await this.model.openThread(threadId)) {
      this.showThreads(false);
      this._follower.follow();
    }
  }

  /** The menu of a thread (`args` of its commands: `threadId`, `topic`), below `anchor`. */
  openThreadMenu(anchor: HTMLElement, args: ReadonlyJSONObject): void {
    const menu = this._threadMenu;
    menu.clearItems();
    menu.addItem({ command: CommandIDs.exportNotebook, args });
    menu.addItem({ command: CommandIDs.downloadNotebook, args });
    const box = anchor.getBoundingClientRect();
    menu.open(box.left, box.bottom);
  }

  /** Attach a notebook cell to the next question, in the chat (not the thread list). */
  askAboutCell(context: ICellContext, question?: string): void {
    this.showThreads(false);
    this.model.askAboutCell(context, question);
  }

  protected onAfterShow(): void {
    this._refreshModels();
    // The chat renders once the panel shows for the first time.
    requestAnimationFrame(() => {
      this._onFlushed();
      if (this._follower.following) {
        this._follower.toEnd();
      }
    });
  }

  protected onActivateRequest(): void {
    this._refreshModels();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.node.removeEventListener('focusin', this._refreshModels);
    this.node.removeEventListener('pointerdown', this._refreshModels);
    this._follower.dispose();
    this._chatObserver.disconnect();
    this._contextRoot.unmount();
    this._contextBar.remove();
    this._threadMenu.dispose();
    Signal.clearData(this);
    super.dispose();
  }

  /**
   * Whenever the user turns to the panel while it has no model: a model server may have started since
   * (the model asks only while none is known, and joins a request that runs already).
   */
  private _refreshModels = (): void => {
    void this.model.refreshModels();
  };

  private _onStateChanged(): void {
    // For people and tests: which thread the panel shows, whether it streams, whether it asks for the models.
    this.node.dataset.threadId = this.model.threadId ?? '';
    this.node.dataset.streaming = String(this.model.streaming);
    this.node.dataset.askingModels = String(this.model.askingForModels);
    this._refreshInput();
    const streaming = this.model.streaming;
    if (streaming !== this._wasStreaming) {
      this._wasStreaming = streaming;
      // While an answer streams the stop button takes the send button's place.
      if (streaming) {
        this._toolbar.hide('send');
        this._follower.follow();
      } else {
        this._toolbar.show('send');
      }
    }
  }

  /** The input says what it is for (the library's placeholder talks about mentions). */
  private _refreshInput(): void {
    const textarea = this._chat.node.querySelector<HTMLTextAreaElement>('.jp-chat-input-container textarea');
    const placeholder = this.trans.__('Ask FrevaGPT (Enter sends, Shift+Enter for a new line)');
    if (textarea && textarea.placeholder !== placeholder) {
      textarea.placeholder = placeholder;
    }
  }

  /** After a change of the messages: find the (maybe re-rendered) list and input again. */
  private _onFlushed(): void {
    this._follower.refresh();
    this._refreshInput();
  }

  /** Put the context bar right above the chat's input (again, after the chat re-rendered it). */
  private _placeContextBar(): void {
    const input = this._inputBox;
    if (input?.isConnected && this._contextBar.nextElementSibling === input) {
      return;
    }
    this._inputBox = this._chat.node.querySelector<HTMLElement>('.jp-chat-input-container');
    this._inputBox?.parentElement?.insertBefore(this._contextBar, this._inputBox);
  }

  private _header: ReactWidget;
  private _threads: ReactWidget;
  private _chat: ChatWidget;
  private _toolbar: InputToolbarRegistry;
  private _follower: StreamFollower;
  private _threadMenu: MenuSvg;
  private _contextBar: HTMLDivElement;
  private _contextRoot: Root;
  private _chatObserver: MutationObserver;
  private _inputBox: HTMLElement | null = null;
  private _wasStreaming = false;
  private _viewChanged = new Signal<this, void>(this);
}
