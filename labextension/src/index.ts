/**
 * FrevaGPT's JupyterLab extension: the chat side panel over `<base_url>api/chatbot/*`.
 */
import { ILabShell, ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, IThemeManager, Notification } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';

import { ChatbotApi } from './api';
import { frevaIcon } from './icons';
import { FrevaChatModel } from './model';
import { NotebookBridge } from './notebook';
import { CommandIDs, FrevaPanel, PANEL_ID } from './panel';
import { copyText, createChatRendermime } from './renderers';

const PLUGIN_ID = 'freva-gpt-ext:plugin';

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'FrevaGPT: a chat panel for the climate-research assistant.',
  autoStart: true,
  requires: [IRenderMimeRegistry, INotebookTracker],
  optional: [ITranslator, ISettingRegistry, IThemeManager, ILayoutRestorer, ICommandPalette, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    rendermime: IRenderMimeRegistry,
    tracker: INotebookTracker,
    translator: ITranslator | null,
    settingRegistry: ISettingRegistry | null,
    themeManager: IThemeManager | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const trans = (translator ?? nullTranslator).load('freva_gpt_ext');
    const api = new ChatbotApi(app.serviceManager.serverSettings);
    const notebook = new NotebookBridge(app, tracker);
    const identity = app.serviceManager.user?.identity;
    const model = new FrevaChatModel({
      api,
      notebook,
      trans,
      commands: app.commands,
      user: {
        username: 'user',
        display_name: identity?.display_name ?? trans.__('You'),
        initials: identity?.initials ?? '',
        color: identity?.color
      }
    });
    const chatRendermime = createChatRendermime(
      rendermime,
      {
        copy: async code => {
          await copyText(code);
        },
        insert: async (code, run) => {
          if (!(await notebook.insert(code, run))) {
            const message = trans.__('FrevaGPT: open a notebook first; the code goes below its active cell.');
            Notification.warning(message, { autoClose: 6000 });
            throw new Error(message);
          }
        }
      },
      trans
    );
    const panel = new FrevaPanel({ model, rendermime: chatRendermime, themeManager, commands: app.commands });
    app.shell.add(panel, 'right', { rank: 500 });
    restorer?.add(panel, 'freva-gpt');

    let defaultModel = '';
    const applySettings = (settings: ISettingRegistry.ISettings, first: boolean) => {
      defaultModel = (settings.get('defaultModel').composite as string) ?? '';
      if (first) {
        model.runInNotebookKernel = (settings.get('runInNotebookKernel').composite as boolean) ?? false;
      }
    };
    const settingsLoaded = settingRegistry
      ? settingRegistry
          .load(PLUGIN_ID)
          .then(settings => {
            applySettings(settings, true);
            settings.changed.connect(() => {
              applySettings(settings, false);
              if (defaultModel && model.models.includes(defaultModel)) {
                model.chatbot = defaultModel;
              }
            });
          })
          .catch(reason => console.error('FrevaGPT: cannot load the settings.', reason))
      : Promise.resolve();
    void Promise.all([app.restored, settingsLoaded]).then(() => model.loadModels(defaultModel));

    app.commands.addCommand(CommandIDs.open, {
      label: trans.__('Open FrevaGPT'),
      caption: trans.__('Open the FrevaGPT chat panel'),
      icon: args => (args['isPalette'] ? undefined : panel.title.icon),
      execute: () => app.shell.activateById(PANEL_ID)
    });
    app.commands.addCommand(CommandIDs.newChat, {
      label: trans.__('New FrevaGPT chat'),
      execute: () => {
        app.shell.activateById(PANEL_ID);
        panel.newChat();
      }
    });

    // The thread menu's items; without a `threadId` they act on the thread the panel shows.
    const threadOf = (args: ReadonlyPartialJSONObject) =>
      (args.threadId as string | undefined) ?? model.threadId;
    app.commands.addCommand(CommandIDs.exportNotebook, {
      label: trans.__('Export as notebook'),
      caption: trans.__('Write the thread as a notebook next to the active notebook, and open it'),
      isEnabled: args => !!threadOf(args),
      execute: async args => {
        const threadId = threadOf(args);
        if (!threadId) {
          return;
        }
        try {
          const topic = args.topic as string | undefined;
          const path = await model.exportNotebook(threadId, notebook.folder(), topic);
          await app.commands.execute('docmanager:open', { path });
          return path;
        } catch (error) {
          model.notifyError(error);
        }
      }
    });
    app.commands.addCommand(CommandIDs.downloadNotebook, {
      label: trans.__('Download .ipynb'),
      caption: trans.__('Download the thread as a notebook file'),
      isEnabled: args => !!threadOf(args),
      execute: async args => {
        const threadId = threadOf(args);
        if (threadId) {
          await model.downloadNotebook(threadId, args.topic as string | undefined).catch(error => {
            model.notifyError(error);
          });
        }
      }
    });

    // On notebook cells: the cell toolbar and the context menu (schema/plugin.json places them).
    const askAbout = (question?: string) => {
      const context = notebook.activeCellContext();
      if (context) {
        app.shell.activateById(PANEL_ID);
        panel.askAboutCell(context, question);
      }
    };
    app.commands.addCommand(CommandIDs.askCell, {
      // The cell toolbar shows the icon alone.
      label: args => (args.toolbar ? '' : trans.__('Ask FrevaGPT')),
      caption: trans.__('Ask FrevaGPT about this cell'),
      icon: frevaIcon,
      isEnabled: () => !!tracker.activeCell,
      execute: () => askAbout()
    });
    app.commands.addCommand(CommandIDs.explainError, {
      label: trans.__('Explain this error'),
      caption: trans.__('Ask FrevaGPT why this cell failed'),
      icon: frevaIcon,
      isVisible: () => notebook.activeCellFailed(),
      execute: () => askAbout(trans.__('Explain this error.'))
    });

    const category = trans.__('FrevaGPT');
    palette?.addItem({ command: CommandIDs.open, category, args: { isPalette: true } });
    palette?.addItem({ command: CommandIDs.newChat, category });
    palette?.addItem({ command: CommandIDs.exportNotebook, category });
    palette?.addItem({ command: CommandIDs.downloadNotebook, category });
  }
};

export default plugin;
