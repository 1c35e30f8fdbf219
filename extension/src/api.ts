// The server extension's REST API (workbench/server_extension.py), behind Jupyter's own auth.

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IEngineStatus {
  state: 'starting' | 'running' | 'stopped' | 'error';
  error: string | null;
  connection_file: string;
  started_by_server: boolean;
  engine_pid?: number;
  model?: string;
  device?: string;
  dtype?: string;
  page_size?: number;
  pages_total?: number;
  pages_used?: number;
  pages_free?: number;
  pages_swapped?: number;
  pages_cached?: number;
  prefix_sharing?: boolean;
  prefix_hits?: number;
  prefix_misses?: number;
  batches?: number;
  batches_per_second?: number;
  processes?: number;
  sessions?: number;
  policy?: string;
  uptime?: number;
}

export interface IProcess {
  pid: number;
  name: string;
  owner: string;
  state: string;
  priority: number;
  parent: number | null;
  tokens_in: number;
  tokens_out: number;
  tokens_cached: number;
  calls: number;
  time_waiting: number;
  time_computing: number;
  started: number;
  ended: number | null;
  error: string | null;
  notebook: string | null;
  mine: boolean;
}

export interface IProcessTable {
  user: string | null;
  processes: IProcess[];
  exited_total: number;
}

export interface IFileStat {
  path: string;
  tokens: number;
  num_pages: number;
  num_shared_pages: number;
  shared_with: { [path: string]: number };
  parent: string | null;
  owner: string;
  pid: number | null;
  mode: string;
  hidden: number;
  open_handles: number;
}

export interface IKVEntry {
  name: string;
  path: string;
  kind: 'dir' | 'file';
  stat?: IFileStat;
}

export interface IKVListing {
  path: string;
  kind: 'dir' | 'file';
  entries?: IKVEntry[];
  stat?: IFileStat;
}

/** The prefix cache's hit rate, as the sidebar writes it: full pages taken of those looked up. */
export function hitRate(hits: number, misses: number): string {
  const looked = hits + misses;
  if (!looked) {
    return 'no lookups yet';
  }
  return `${Math.round((100 * hits) / looked)}% (${hits} of ${looked} pages)`;
}

/** What share of a process's input tokens came from the prefix cache (`tokens_in` counts
 * those it computed, `tokens_cached` those it took). */
export function cachedShare(p: IProcess): string {
  if (!p.tokens_cached) {
    return '';
  }
  const share = (100 * p.tokens_cached) / (p.tokens_in + p.tokens_cached);
  return `${Math.round(share)}% cached`;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

/** One request to `<base>/symphony/<endpoint>`: its JSON, or an ApiError. */
export async function request<T>(
  endpoint: string,
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'symphony', endpoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(0, String(error));
  }
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(
      response.status,
      (data && (data.message || data.reason)) || response.statusText
    );
  }
  return data as T;
}

export const api = {
  status: () => request<IEngineStatus>('status'),
  processes: () => request<IProcessTable>('processes'),
  kvfs: (path: string) =>
    request<IKVListing>(`kvfs?path=${encodeURIComponent(path)}`),
  kill: (pid: number) =>
    request<{ pid: number; killed: boolean }>('kill', {
      method: 'POST',
      body: JSON.stringify({ pid })
    })
};
