// The left sidebar: engine status, the process table (with kill buttons), a KV file browser.

import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  api,
  cachedShare,
  hitRate,
  IEngineStatus,
  IFileStat,
  IKVEntry,
  IProcess
} from './api';
import { EngineModel } from './model';

export const PANEL_ID = 'symphony-workbench-sidebar';
const KV_EVERY = 3; // the KV tree refreshes every this many polls

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

function section(title: string, className: string): HTMLElement {
  const node = el('section', `jp-Symphony-section ${className}`);
  node.appendChild(el('h3', 'jp-Symphony-sectionTitle', title));
  return node;
}

function basename(path: string | null): string {
  if (!path) {
    return '';
  }
  const parts = path.split('/');
  return parts[parts.length - 1] || path;
}

export class SymphonyPanel extends Widget {
  constructor(readonly model: EngineModel) {
    super();
    this.id = PANEL_ID;
    this.addClass('jp-Symphony-panel');
    this.title.caption = 'Symphony engine';

    const header = el('header', 'jp-Symphony-header');
    header.appendChild(el('h2', 'jp-Symphony-title', 'Symphony engine'));
    this._badge = el('span', 'jp-Symphony-state', '…');
    header.appendChild(this._badge);
    this.node.appendChild(header);

    const engine = section('Engine', 'jp-Symphony-engine');
    this._facts = el('dl', 'jp-Symphony-facts');
    this._pagesBar = el('div', 'jp-Symphony-pagesBar');
    this._pagesBar.appendChild(el('div', 'jp-Symphony-pagesUsed'));
    this._problem = el('div', 'jp-Symphony-problem');
    engine.append(this._facts, this._pagesBar, this._problem);
    this.node.appendChild(engine);

    const procs = section('Processes', 'jp-Symphony-processes');
    const table = el('table', 'jp-Symphony-processTable');
    const head = el('tr');
    for (const h of ['process', 'state · tokens', '']) {
      head.appendChild(el('th', '', h));
    }
    table.appendChild(el('thead')).appendChild(head);
    this._rows = table.appendChild(el('tbody'));
    this._procNote = el('div', 'jp-Symphony-note');
    procs.append(table, this._procNote);
    this.node.appendChild(procs);

    const kv = section('KV files', 'jp-Symphony-kvfs');
    this._tree = el('ul', 'jp-Symphony-tree');
    this._fileInfo = el('div', 'jp-Symphony-fileInfo');
    kv.append(this._tree, this._fileInfo);
    this.node.appendChild(kv);
    this._root = this._dirNode('/', '/', true);
    this._tree.appendChild(this._root);

    model.changed.connect(this._render, this);
  }

  dispose(): void {
    this.model.changed.disconnect(this._render, this);
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    this.model.detailed = true;
    this._render();
  }

  protected onAfterHide(msg: Message): void {
    this.model.detailed = false;
  }

  // --- engine status ---------------------------------------------------------------------------

  private _render(): void {
    if (!this.isVisible) {
      return;
    }
    const status = this.model.status;
    this._renderStatus(status);
    this._renderProcesses(
      status?.state === 'running' ? this.model.processes?.processes ?? [] : []
    );
    if (status?.state === 'running' && this._ticks++ % KV_EVERY === 0) {
      void this._refreshTree();
    }
  }

  private _renderStatus(s: IEngineStatus | null): void {
    const state = s?.state ?? 'unknown';
    this._badge.textContent = state;
    this._badge.dataset.state = state;
    this.node.dataset.engineState = state;
    const facts: [string, string, string][] = [];
    if (s && s.model !== undefined) {
      const used = s.pages_used ?? 0;
      const total = s.pages_total ?? 0;
      facts.push(
        ['model', 'model', s.model ?? ''],
        ['device', 'device', `${s.device} (${s.dtype})`],
        ['pages', 'pages used/free', `${used} / ${s.pages_free} of ${total}`],
        [
          'prefix',
          'prefix cache',
          s.prefix_sharing === false
            ? 'off'
            : `${hitRate(s.prefix_hits ?? 0, s.prefix_misses ?? 0)}, ` +
              `${s.pages_cached ?? 0} pages cached`
        ],
        ['rate', 'batches/s', (s.batches_per_second ?? 0).toFixed(1)],
        ['processes', 'processes', String(s.processes ?? 0)],
        ['policy', 'batch policy', s.policy ?? '']
      );
      const bar = this._pagesBar.firstChild as HTMLElement;
      bar.style.width = total ? `${(100 * used) / total}%` : '0';
      this._pagesBar.title = `${used} of ${total} KV pages in use`;
    }
    this._facts.replaceChildren();
    for (const [key, label, value] of facts) {
      const dt = el('dt', '', label);
      const dd = el('dd', '', value);
      dd.dataset.fact = key;
      this._facts.append(dt, dd);
    }
    const problem = this.model.problem ?? s?.error ?? '';
    this._problem.textContent = state === 'running' ? '' : problem;
  }

  // --- processes -------------------------------------------------------------------------------

  private _renderProcesses(procs: IProcess[]): void {
    const seen = new Set<number>();
    for (const p of procs) {
      seen.add(p.pid);
      let row = this._rowOf.get(p.pid);
      if (!row) {
        row = this._newRow(p.pid);
        this._rowOf.set(p.pid, row);
      }
      this._fillRow(row, p);
    }
    for (const [pid, row] of this._rowOf) {
      if (!seen.has(pid)) {
        row.remove();
        this._rowOf.delete(pid);
      }
    }
    // newest first: live ones above exited ones
    const order = [...procs].sort(
      (a, b) =>
        Number(a.state === 'exited') - Number(b.state === 'exited') ||
        b.pid - a.pid
    );
    order.forEach((p, i) => {
      const row = this._rowOf.get(p.pid)!;
      if (this._rows.children[i] !== row) {
        this._rows.insertBefore(row, this._rows.children[i] ?? null);
      }
    });
    const live = procs.filter(p => p.state !== 'exited').length;
    this._procNote.textContent = procs.length
      ? `${live} running, ${procs.length - live} ended`
      : 'no processes';
  }

  private _newRow(pid: number): HTMLTableRowElement {
    const row = el('tr', 'jp-Symphony-process');
    row.dataset.pid = String(pid);
    // the process: its name, and below it its pid and notebook (or owner)
    const who = row.appendChild(el('td', 'jp-Symphony-who'));
    const name = who.appendChild(el('div', 'jp-Symphony-name'));
    name.dataset.col = 'name';
    const where = who.appendChild(el('div', 'jp-Symphony-where'));
    where.appendChild(el('span', 'jp-Symphony-pid')).dataset.col = 'pid';
    where.appendChild(el('span', 'jp-Symphony-notebook')).dataset.col = 'notebook';
    // its state, and below it its tokens in/out
    const how = row.appendChild(el('td', 'jp-Symphony-how'));
    how.appendChild(el('div', 'jp-Symphony-stateCell')).dataset.col = 'state';
    how.appendChild(el('div', 'jp-Symphony-tokens')).dataset.col = 'tokens';
    how.appendChild(el('div', 'jp-Symphony-cached')).dataset.col = 'cached';
    const kill = el('button', 'jp-Symphony-kill jp-mod-styled', 'kill');
    kill.addEventListener('click', () => void this._kill(pid, kill));
    row.appendChild(el('td')).appendChild(kill);
    return row;
  }

  private _fillRow(row: HTMLTableRowElement, p: IProcess): void {
    const cell = (key: string) =>
      row.querySelector(`[data-col="${key}"]`) as HTMLElement;
    row.dataset.state = p.state;
    cell('pid').textContent = String(p.pid);
    cell('name').textContent = p.name;
    const where = cell('notebook');
    where.textContent = p.notebook ? basename(p.notebook) : p.owner;
    where.title = p.notebook ? `${p.notebook} (${p.owner})` : `owner: ${p.owner}`;
    cell('state').textContent = p.state;
    cell('state').title = p.error ?? '';
    cell('tokens').textContent = `${p.tokens_in} in, ${p.tokens_out} out`;
    cell('tokens').title = `${p.tokens_in} in, ${p.tokens_out} out, ${p.calls} calls`;
    // the prefix cache, for this process: how many of its input tokens it did not compute
    cell('cached').textContent = cachedShare(p);
    cell('cached').title =
      `${p.tokens_cached} of ${p.tokens_in + p.tokens_cached} input tokens from the prefix cache`;
    const kill = row.querySelector('button') as HTMLButtonElement;
    const exited = p.state === 'exited';
    kill.disabled = exited || !p.mine || this._killing.has(p.pid);
    kill.title = exited
      ? 'ended'
      : p.mine
        ? `kill process ${p.pid}`
        : `process ${p.pid} belongs to ${p.owner}`;
  }

  private async _kill(pid: number, button: HTMLButtonElement): Promise<void> {
    this._killing.add(pid);
    button.disabled = true;
    try {
      await api.kill(pid);
      this._procNote.textContent = `killed ${pid}`;
    } catch (error) {
      this._procNote.textContent = `kill ${pid}: ${(error as Error).message}`;
    } finally {
      this._killing.delete(pid);
      await this.model.poke();
    }
  }

  // --- the KV file tree ------------------------------------------------------------------------

  private _dirNode(name: string, path: string, open = false): HTMLLIElement {
    const li = el('li', 'jp-Symphony-dir');
    li.dataset.path = path;
    const label = el('span', 'jp-Symphony-dirLabel', name);
    const children = el('ul', 'jp-Symphony-tree');
    li.append(label, children);
    label.addEventListener('click', () => {
      const opening = !li.classList.contains('jp-mod-open');
      li.classList.toggle('jp-mod-open', opening);
      if (opening) {
        void this._loadDir(li);
      } else {
        children.replaceChildren();
      }
    });
    if (open) {
      li.classList.add('jp-mod-open');
    }
    return li;
  }

  private _fileNode(entry: IKVEntry): HTMLLIElement {
    const li = el('li', 'jp-Symphony-file');
    li.dataset.path = entry.path;
    const st = entry.stat;
    li.appendChild(el('span', 'jp-Symphony-fileName', entry.name));
    if (st) {
      const shared = st.num_shared_pages ? `, ${st.num_shared_pages} shared` : '';
      li.appendChild(
        el('span', 'jp-Symphony-fileMeta', `${st.tokens} tok, ${st.num_pages} pages${shared}`)
      );
    }
    li.addEventListener('click', () => void this._showFile(entry.path));
    return li;
  }

  private async _loadDir(li: HTMLLIElement): Promise<void> {
    const path = li.dataset.path!;
    const children = li.querySelector(':scope > ul') as HTMLUListElement;
    try {
      const listing = await api.kvfs(path);
      const nodes = (listing.entries ?? []).map(e => {
        if (e.kind === 'file') {
          return this._fileNode(e);
        }
        const old = children.querySelector(
          `:scope > li.jp-Symphony-dir[data-path="${CSS.escape(e.path)}"]`
        ) as HTMLLIElement | null;
        return old ?? this._dirNode(e.name, e.path);
      });
      children.replaceChildren(...nodes);
      if (!nodes.length) {
        const empty = path.startsWith('/proc')
          ? '(none: a process’s own files are private to it)'
          : '(empty)';
        children.appendChild(el('li', 'jp-Symphony-empty', empty));
      }
      for (const node of nodes) {
        if (node.classList.contains('jp-mod-open')) {
          await this._loadDir(node);
        }
      }
    } catch (error) {
      children.replaceChildren(
        el('li', 'jp-Symphony-problem', (error as Error).message)
      );
    }
  }

  private async _refreshTree(): Promise<void> {
    await this._loadDir(this._root);
  }

  private async _showFile(path: string): Promise<void> {
    this._fileInfo.replaceChildren();
    try {
      const listing = await api.kvfs(path);
      const st = listing.stat as IFileStat;
      const dl = el('dl', 'jp-Symphony-facts');
      const shared = Object.entries(st.shared_with ?? {})
        .map(([p, n]) => `${p} (${n})`)
        .join(', ');
      const rows: [string, string][] = [
        ['path', st.path],
        ['tokens', String(st.tokens)],
        ['pages', String(st.num_pages)],
        ['shared pages', String(st.num_shared_pages)],
        ['shared with', shared || '—'],
        ['parent', st.parent ?? '—'],
        ['owner', st.owner],
        ['mode', st.mode]
      ];
      if (st.pid !== null) {
        rows.push(['process', String(st.pid)]);
      }
      for (const [k, v] of rows) {
        dl.append(el('dt', '', k), el('dd', '', v));
      }
      this._fileInfo.appendChild(dl);
    } catch (error) {
      this._fileInfo.textContent = (error as Error).message;
    }
  }

  private _badge: HTMLElement;
  private _facts: HTMLElement;
  private _pagesBar: HTMLElement;
  private _problem: HTMLElement;
  private _rows: HTMLElement;
  private _procNote: HTMLElement;
  private _tree: HTMLElement;
  private _fileInfo: HTMLElement;
  private _root: HTMLLIElement;
  private _rowOf = new Map<number, HTMLTableRowElement>();
  private _killing = new Set<number>();
  private _ticks = 0;
}
