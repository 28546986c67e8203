/**
 * The panel's view of the active notebook: which kernel "run code in the notebook's kernel" targets,
 * inserting (and running) code below its active cell, and its active cell as the context of a question.
 *
 * The notebook is `INotebookTracker.currentWidget` — the last notebook the user focused — never
 * `shell.currentWidget`, which is the chat panel itself while the user types in it.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { ISignal, Signal } from '@lumino/signaling';

import { ICellContext, IOutputJSON, cellContext, errorOutput } from './cellcontext';
import { folderOf } from './exportfile';

export interface IKernelTarget {
  /** The notebook's path, or `null` when no notebook is open. */
  path: string | null;
  /** The notebook's tab label. */
  name: string | null;
  kernelId: string | null;
  kernelName: string | null;
}

export class NotebookBridge {
  constructor(
    readonly app: JupyterFrontEnd,
    readonly tracker: INotebookTracker
  ) {
    tracker.currentChanged.connect(this._onCurrentChanged, this);
    NotebookActions.executed.connect(this._onExecuted, this);
    this._onCurrentChanged();
  }

  /** Emits when the current notebook, its kernel or its name changes. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emits when a cell of the current notebook finished running (its kernel's variables may have changed). */
  get executed(): ISignal<this, void> {
    return this._executed;
  }

  get current(): NotebookPanel | null {
    return this.tracker.currentWidget;
  }

  /** The kernel that code would run in. */
  target(): IKernelTarget {
    const panel = this.current;
    if (!panel) {
      return { path: null, name: null, kernelId: null, kernelName: null };
    }
    const kernel = panel.sessionContext.session?.kernel ?? null;
    return {
      path: panel.context.path,
      name: panel.title.label || panel.context.path,
      kernelId: kernel?.id ?? null,
      kernelName: kernel ? panel.sessionContext.kernelDisplayName : null
    };
  }

  /** The folder of the current notebook (its contents path without a drive), `''` (the root) without one. */
  folder(): string {
    const panel = this.current;
    return panel ? folderOf(this.app.serviceManager.contents.localPath(panel.context.path)) : '';
  }

  /** The active cell of the current notebook as the context of a question, `null` without one. */
  activeCellContext(): ICellContext | null {
    const panel = this.current;
    const cell = panel?.content.activeCell;
    if (!panel || !cell) {
      return null;
    }
    const path = this.app.serviceManager.contents.localPath(panel.context.path);
    return cellContext(cell.model.sharedModel.getSource(), this._outputs(cell.model), path);
  }

  /** Whether the last run of the current notebook's active cell failed. */
  activeCellFailed(): boolean {
    const cell = this.current?.content.activeCell;
    return !!cell && errorOutput(this._outputs(cell.model)) !== null;
  }

  /**
   * Insert `code` in a new code cell below the active cell of the current notebook; `run` runs it in the
   * notebook's kernel. Returns false when no notebook is open.
   */
  async insert(code: string, run: boolean): Promise<boolean> {
    const panel = this.current;
    if (!panel) {
      return false;
    }
    await panel.context.ready;
    const notebook = panel.content;
    if (notebook.widgets.length === 0 || notebook.activeCellIndex < 0) {
      notebook.activeCellIndex = Math.max(0, notebook.widgets.length - 1);
    }
    NotebookActions.insertBelow(notebook);
    NotebookActions.changeCellType(notebook, 'code');
    const cell = notebook.activeCell;
    if (!cell) {
      return false;
    }
    cell.model.sharedModel.setSource(code);
    // Show the notebook (without moving it into the background when it already shows).
    if (!panel.isVisible) {
      this.app.shell.activateById(panel.id);
    }
    if (run) {
      await NotebookActions.run(notebook, panel.sessionContext);
    }
    return true;
  }

  dispose(): void {
    NotebookActions.executed.disconnect(this._onExecuted, this);
    Signal.clearData(this);
  }

  /** A cell's outputs as nbformat JSON (markdown and raw cells have none). */
  private _outputs(model: { toJSON(): unknown }): IOutputJSON[] {
    const outputs = (model.toJSON() as { outputs?: IOutputJSON[] }).outputs;
    return Array.isArray(outputs) ? outputs : [];
  }

  private _onCurrentChanged(): void {
    const panel = this.current;
    if (panel === this._watched) {
      return;
    }
    if (this._watched) {
      this._watched.sessionContext.kernelChanged.disconnect(this._emit, this);
      this._watched.sessionContext.statusChanged.disconnect(this._emit, this);
      this._watched.title.changed.disconnect(this._emit, this);
      this._watched.disposed.disconnect(this._onDisposed, this);
    }
    this._watched = panel;
    if (panel) {
      panel.sessionContext.kernelChanged.connect(this._emit, this);
      panel.sessionContext.statusChanged.connect(this._emit, this);
      panel.title.changed.connect(this._emit, this);
      panel.disposed.connect(this._onDisposed, this);
    }
    this._emit();
  }

  private _onExecuted(_: unknown, args: { notebook: unknown }): void {
    if (args.notebook === this.current?.content) {
      this._executed.emit();
    }
  }

  private _onDisposed(): void {
    this._watched = null;
    this._emit();
  }

  private _emit(): void {
    this._changed.emit();
  }

  private _watched: NotebookPanel | null = null;
  private _changed = new Signal<this, void>(this);
  private _executed = new Signal<this, void>(this);
}
