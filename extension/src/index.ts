// Symphony Workbench in JupyterLab: a sidebar and a status-bar item showing the shared engine.

import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { EngineModel } from './model';
import { PANEL_ID, SymphonyPanel } from './panel';
import { EngineStatusItem } from './statusbar';

const ICON = `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161">
<rect x="3" y="4" width="4" height="16" rx="1"/><rect x="10" y="8" width="4" height="12" rx="1"/>
<rect x="17" y="12" width="4" height="8" rx="1"/></g></svg>`;

export const symphonyIcon = new LabIcon({
  name: 'symphony-workbench:engine',
  svgstr: ICON
});

const COMMAND = 'symphony-workbench:open';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'symphony-workbench:plugin',
  description:
    'The shared Symphony engine: status, processes (with kill) and KV files.',
  autoStart: true,
  optional: [ILabShell, ILayoutRestorer, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell | null,
    restorer: ILayoutRestorer | null,
    statusBar: IStatusBar | null
  ) => {
    const model = new EngineModel();
    const panel = new SymphonyPanel(model);
    panel.title.icon = symphonyIcon;
    app.shell.add(panel, 'left', { rank: 900 });
    if (restorer) {
      restorer.add(panel, PANEL_ID);
    }
    app.commands.addCommand(COMMAND, {
      label: 'Show the Symphony engine',
      execute: () => app.shell.activateById(PANEL_ID)
    });
    if (statusBar) {
      const item = new EngineStatusItem(model, () =>
        app.commands.execute(COMMAND)
      );
      statusBar.registerStatusItem('symphony-workbench:status', {
        item,
        align: 'left',
        rank: 5
      });
    }
    void model.refresh();
  }
};

export default plugin;
