/**
 * How the chat shows what the assistant sends: a copy of JupyterLab's rendermime registry (Markdown with
 * math and highlighted code, ANSI text) plus renderers for our own message bodies (code with its output,
 * images, tool calls, errors). `@jupyter/chat` renders every message body through this registry.
 */
import { Clipboard, Dialog, showDialog } from '@jupyterlab/apputils';
import { IRenderMimeRegistry, RenderedMarkdown } from '@jupyterlab/rendermime';
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { TranslationBundle } from '@jupyterlab/translation';
import { LabIcon, addBelowIcon, copyIcon, runIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

/** Mime types of our message bodies. */
export const MIME = {
  code: 'application/vnd.freva-gpt.code+json',
  image: 'application/vnd.freva-gpt.image+json',
  tool: 'application/vnd.freva-gpt.tool+json',
  error: 'application/vnd.freva-gpt.error+json'
} as const;

const MARKDOWN = 'text/markdown';
const STDOUT = 'application/vnd.jupyter.stdout';

/** A `Code` with what came of it. `code === null`: an output whose code never came. */
export interface ICodeData {
  id: string | null;
  code: string | null;
  output: string | null;
  error: string | null;
  running: boolean;
}

export interface IToolData {
  id: string | null;
  name: string;
  args: string;
  output: string | null;
}

export interface IErrorData {
  variant: string;
  text: string;
}

/** What the buttons under a code block do. */
export interface ICodeActions {
  copy(code: string): Promise<void> | void;
  /** Insert below the active notebook's active cell; `run` also runs it. */
  insert(code: string, run: boolean): Promise<void> | void;
}

/** A Markdown fence that the code cannot close. */
export function fence(code: string, language = 'python'): string {
  const longest = Math.max(0, ...(code.match(/`+/g) ?? []).map(run => run.length));
  const ticks = '`'.repeat(Math.max(3, longest + 1));
  return `${ticks}${language}\n${code}\n${ticks}\n`;
}

function button(
  icon: LabIcon,
  title: string,
  action: string,
  onClick: () => Promise<void> | void
): HTMLButtonElement {
  const node = document.createElement('button');
  node.type = 'button';
  node.className = 'jp-Button jp-mod-minimal freva-gpt-code-button';
  node.title = title;
  node.setAttribute('aria-label', title);
  node.dataset.action = action;
  node.appendChild(icon.element({ tag: 'span', className: 'freva-gpt-code-button-icon' }));
  node.addEventListener('click', async event => {
    event.preventDefault();
    event.stopPropagation();
    node.disabled = true;
    try {
      await onClick();
      // A moment of feedback that it happened.
      node.classList.add('freva-gpt-done');
      setTimeout(() => node.classList.remove('freva-gpt-done'), 1200);
    } catch {
      // The action said what went wrong.
    } finally {
      node.disabled = false;
    }
  });
  return node;
}

/** Markdown as JupyterLab renders it (sanitized, math, highlighted code), with buttons under each code block. */
class ChatMarkdown extends RenderedMarkdown {
  constructor(
    options: IRenderMime.IRendererOptions,
    private _actions: ICodeActions,
    private _trans: TranslationBundle
  ) {
    super(options);
    this.addClass('freva-gpt-markdown');
  }

  async render(model: IRenderMime.IMimeModel): Promise<void> {
    await super.render(model);
    this.node.querySelectorAll('pre').forEach(pre => {
      const code = (pre.textContent ?? '').replace(/\n$/, '');
      const trans = this._trans;
      const bar = document.createElement('div');
      bar.className = 'freva-gpt-code-toolbar';
      bar.append(
        button(copyIcon, trans.__('Copy'), 'copy', () => this._actions.copy(code)),
        button(addBelowIcon, trans.__('Insert below the active cell of the notebook'), 'insert', () =>
          this._actions.insert(code, false)
        ),
        button(runIcon, trans.__('Insert below the active cell and run it'), 'insert-run', () =>
          this._actions.insert(code, true)
        )
      );
      pre.insertAdjacentElement('afterend', bar);
    });
  }
}

/** Base of our renderers: a widget whose node the chat takes over. */
abstract class BodyRenderer extends Widget implements IRenderMime.IRenderer {
  constructor(
    protected rm: IRenderMimeRegistry,
    protected trans: TranslationBundle,
    protected mimeType: string
  ) {
    super();
  }

  abstract renderModel(model: IRenderMime.IMimeModel): Promise<void>;

  /** Render a sub-bundle (Markdown, ANSI text) through the registry and return its node. */
  protected async sub(mimeType: string, text: string): Promise<HTMLElement> {
    const renderer = this.rm.createRenderer(mimeType);
    await renderer.renderModel(this.rm.createModel({ data: { [mimeType]: text } }));
    return renderer.node;
  }
}

/** A `Code`: highlighted source (with the code buttons), then its output and error. */
class CodeRenderer extends BodyRenderer {
  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const data = model.data[this.mimeType] as unknown as ICodeData;
    const root = document.createElement('div');
    root.className = 'freva-gpt-code';
    if (data.id) {
      root.dataset.callId = data.id;
    }
    root.dataset.state = data.error
      ? 'error'
      : data.output !== null
        ? 'done'
        : data.running
          ? 'running'
          : 'pending';
    if (data.code !== null) {
      const source = document.createElement('div');
      source.className = 'freva-gpt-code-source';
      source.appendChild(await this.sub(MARKDOWN, fence(data.code)));
      root.appendChild(source);
    }
    if (data.output) {
      const output = document.createElement('div');
      output.className = 'freva-gpt-code-output';
      const label = document.createElement('div');
      label.className = 'freva-gpt-label';
      label.textContent = this.trans.__('Output');
      output.append(label, await this.sub(STDOUT, data.output));
      root.appendChild(output);
    }
    if (data.error) {
      root.appendChild(errorBox(this.trans.__('Code error'), data.error));
    }
    this.node.replaceChildren(root);
  }
}

/** An image: a thumbnail in the chat, full size in a dialog on click. */
class ImageRenderer extends BodyRenderer {
  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const data = String(model.data[this.mimeType] ?? '');
    const src = `data:image/png;base64,${data}`;
    const img = document.createElement('img');
    img.className = 'freva-gpt-image';
    img.src = src;
    img.alt = this.trans.__('Figure');
    img.title = this.trans.__('Click to enlarge');
    img.tabIndex = 0;
    const open = () => {
      const big = document.createElement('img');
      big.src = src;
      big.alt = this.trans.__('Figure');
      big.className = 'freva-gpt-image-large';
      void showDialog({
        title: this.trans.__('Figure'),
        body: new Widget({ node: big }),
        buttons: [Dialog.okButton({ label: this.trans.__('Close') })]
      }).catch(() => undefined);
    };
    img.addEventListener('click', open);
    img.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        open();
      }
    });
    this.node.replaceChildren(img);
  }
}

/** Tool calls stay collapsed; which ones the user opened survives re-renders. */
const openTools = new Set<string>();

class ToolRenderer extends BodyRenderer {
  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const data = model.data[this.mimeType] as unknown as IToolData;
    const details = document.createElement('details');
    details.className = 'freva-gpt-tool';
    const key = data.id ?? '';
    details.open = openTools.has(key);
    details.addEventListener('toggle', () => {
      if (details.open) {
        openTools.add(key);
      } else {
        openTools.delete(key);
      }
    });
    const summary = document.createElement('summary');
    const state = data.output === null ? this.trans.__('running…') : this.trans.__('done');
    summary.textContent = this.trans.__('Tool %1 (%2)', data.name || '?', state);
    details.appendChild(summary);
    const section = (label: string, text: string) => {
      const title = document.createElement('div');
      title.className = 'freva-gpt-label';
      title.textContent = label;
      const pre = document.createElement('pre');
      pre.textContent = text;
      details.append(title, pre);
    };
    if (data.args) {
      let args = data.args;
      try {
        args = JSON.stringify(JSON.parse(args), null, 2);
      } catch {
        // still streaming, or not JSON: as it came
      }
      section(this.trans.__('Arguments'), args);
    }
    if (data.output !== null) {
      section(this.trans.__('Result'), data.output);
    }
    this.node.replaceChildren(details);
  }
}

function errorBox(label: string, text: string): HTMLElement {
  const box = document.createElement('div');
  box.className = 'freva-gpt-error';
  box.setAttribute('role', 'alert');
  const title = document.createElement('div');
  title.className = 'freva-gpt-label';
  title.textContent = label;
  const body = document.createElement('pre');
  body.textContent = text;
  box.append(title, body);
  return box;
}

class ErrorRenderer extends BodyRenderer {
  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const data = model.data[this.mimeType] as unknown as IErrorData;
    const labels: Record<string, string> = {
      ServerError: this.trans.__('Error'),
      OpenAIError: this.trans.__('Model error'),
      CodeError: this.trans.__('Code error')
    };
    this.node.replaceChildren(errorBox(labels[data.variant] ?? this.trans.__('Error'), data.text));
  }
}

/**
 * A copy of `base` with our renderers. Markdown keeps its rank and JupyterLab's pipeline; only the code
 * buttons are added.
 */
export function createChatRendermime(
  base: IRenderMimeRegistry,
  actions: ICodeActions,
  trans: TranslationBundle
): IRenderMimeRegistry {
  const rm = base.clone();
  rm.addFactory(
    {
      safe: true,
      mimeTypes: [MARKDOWN],
      createRenderer: options => new ChatMarkdown(options, actions, trans)
    },
    rm.getRank(MARKDOWN)
  );
  const ours: [
    string,
    new (rm: IRenderMimeRegistry, trans: TranslationBundle, mime: string) => BodyRenderer
  ][] = [
    [MIME.code, CodeRenderer],
    [MIME.image, ImageRenderer],
    [MIME.tool, ToolRenderer],
    [MIME.error, ErrorRenderer]
  ];
  for (const [mime, Renderer] of ours) {
    rm.addFactory({ safe: true, mimeTypes: [mime], createRenderer: () => new Renderer(rm, trans, mime) }, 10);
  }
  return rm;
}

/** Copy with the system clipboard, falling back to JupyterLab's. */
export async function copyText(text: string): Promise<void> {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    Clipboard.copyToSystem(text);
  }
}
