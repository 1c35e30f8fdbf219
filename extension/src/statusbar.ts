// The status-bar item: the engine's state at a glance; a click opens the sidebar.

import { Widget } from '@lumino/widgets';

import { EngineModel } from './model';

export class EngineStatusItem extends Widget {
  constructor(
    readonly model: EngineModel,
    onClick: () => void
  ) {
    super();
    this.addClass('jp-Symphony-statusItem');
    this.node.addEventListener('click', onClick);
    model.changed.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    this.model.changed.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const s = this.model.status;
    const state = this.model.problem ? 'unreachable' : s?.state ?? '…';
    let text = `Symphony: ${state}`;
    let title = 'Symphony engine — click for details';
    if (s?.state === 'running' && s.pages_total !== undefined) {
      const lips = s.processes === 1 ? 'LIP' : 'LIPs';
      text += ` · ${s.processes} ${lips} · ${s.pages_used}/${s.pages_total} pages`;
      title = `${s.model} on ${s.device}; ${(s.batches_per_second ?? 0).toFixed(1)} batches/s`;
    } else if (s?.error || this.model.problem) {
      title = this.model.problem ?? s?.error ?? title;
    }
    this.node.textContent = text;
    this.node.title = title;
    this.node.dataset.state = state;
  }
}
