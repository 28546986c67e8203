/**
 * FrevaGPT's JupyterLab extension: the chat side panel over `<base_url>api/chatbot/*`.
 */
import { ILabShell, ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, IThemeManager, Notification } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';

import { ChatbotApi } from './api';
import { FrevaChatModel } from './model';
import { NotebookBridge } from './notebook';
import { FrevaPanel, PANEL_ID } from './panel';
import { copyText, createChatRendermime } from './renderers';

const PLUGIN_ID = 'freva-gpt-ext:plugin';

namespace CommandIDs {
  export const open = 'freva-gpt:open';
  export const newChat = 'freva-gpt:new-chat';
}

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
    const panel = new FrevaPanel({ model, rendermime: chatRendermime, themeManager });
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
    const category = trans.__('FrevaGPT');
    palette?.addItem({ command: CommandIDs.open, category, args: { isPalette: true } });
    palette?.addItem({ command: CommandIDs.newChat, category });
  }
};

export default plugin;
