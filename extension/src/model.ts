// What the sidebar and the status bar show, polled from the server extension.

import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { api, IEngineStatus, IProcessTable } from './api';

const FAST = 1000; // ms between polls while the sidebar is open
const SLOW = 3000; // ms between polls otherwise (the status bar only)

export class EngineModel {
  status: IEngineStatus | null = null;
  processes: IProcessTable | null = null;
  /** Why the last poll failed (the server unreachable, say), or null. */
  problem: string | null = null;

  constructor() {
    this._poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: SLOW, backoff: false },
      name: 'symphony-workbench:engine',
      standby: 'when-hidden'
    });
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Poll fast (the process table too) while something shows the details. */
  set detailed(value: boolean) {
    if (value === this._detailed) {
      return;
    }
    this._detailed = value;
    this._poll.frequency = {
      interval: value ? FAST : SLOW,
      backoff: false,
      max: SLOW
    };
    if (value) {
      void this._poll.refresh();
    }
  }

  get detailed(): boolean {
    return this._detailed;
  }

  async refresh(): Promise<void> {
    try {
      this.status = await api.status();
      if (this._detailed && this.status.state === 'running') {
        this.processes = await api.processes();
      }
      this.problem = null;
    } catch (error) {
      this.problem = String((error as Error).message ?? error);
    }
    this._changed.emit();
  }

  /** Refresh now (after a kill, say) rather than at the next tick. */
  async poke(): Promise<void> {
    await this._poll.refresh();
  }

  dispose(): void {
    this._poll.dispose();
  }

  private _changed = new Signal<this, void>(this);
  private _detailed = false;
  private _poll: Poll;
}
