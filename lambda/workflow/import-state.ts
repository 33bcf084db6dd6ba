/**
 * Reading the task payload of the import handlers: the execution and the slots of the state data
 * each handler needs, checked so that a missing slot fails with `InvalidInput` naming it.
 */
import { InvalidInputError } from './errors';
import { executionOf } from './events';
import type { ExecutionInfo, ImportDisk, ImportRequest, ImportStarted, ImportState, ImportStatus } from './payload';

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Checks `{ state, execution }` and returns both. */
export function importPayload(event: unknown): { state: ImportState; execution: ExecutionInfo } {
  if (!isObject(event) || !isObject(event.state)) {
    throw new InvalidInputError(`the task payload must be { state: <state data>, execution: { id, name, startTime } }, got ${JSON.stringify(event)?.slice(0, 300)}`);
  }
  return { state: event.state as ImportState, execution: executionOf(event.execution) };
}

/** `$.request`, checked. */
export function requestOf(state: ImportState): ImportRequest {
  const r = state.request as unknown;
  if (!isObject(r)) throw new InvalidInputError('the state has no "request" (written by the prepare step)');
  const missing = ['clientToken', 'name'].filter((k) => typeof r[k] !== 'string' || r[k] === '');
  if (!isObject(r.source) || typeof r.source.bucket !== 'string' || typeof r.source.key !== 'string') missing.push('source');
  if (!isObject(r.options)) missing.push('options');
  if (missing.length > 0) throw new InvalidInputError(`"request" lacks ${missing.join(', ')}`);
  return r as unknown as ImportRequest;
}

const FORMATS = new Set(['OVA', 'VMDK', 'VHD', 'VHDX', 'RAW']);

/** The disks to import: `$.disks`, else the validation's or the conversion's. */
export function disksOf(state: ImportState): readonly ImportDisk[] {
  const disks = (state.disks ?? state.validation?.importDisks ?? state.conversion?.outputs) as unknown;
  if (!Array.isArray(disks) || disks.length === 0) {
    throw new InvalidInputError('the state has no "disks" (the disks to import, from validation or conversion)');
  }
  disks.forEach((d: unknown, i) => {
    if (!isObject(d) || typeof d.bucket !== 'string' || d.bucket === '' || typeof d.key !== 'string' || d.key === '' || !FORMATS.has(d.format as string)) {
      throw new InvalidInputError(`disks[${i}] must be { bucket, key, format: OVA|VMDK|VHD|VHDX|RAW }, got ${JSON.stringify(d)}`);
    }
  });
  return disks as ImportDisk[];
}

/** `$.import`, checked. */
export function startedOf(state: ImportState): ImportStarted {
  const s = state.import as unknown;
  if (!isObject(s) || (s.mode !== 'image' && s.mode !== 'snapshot')) {
    throw new InvalidInputError('the state has no "import" { mode, importTaskId | snapshotTaskIds } (written by the start step)');
  }
  if (s.mode === 'image' && (typeof s.importTaskId !== 'string' || s.importTaskId === '')) {
    throw new InvalidInputError('"import" lacks importTaskId (image mode)');
  }
  if (s.mode === 'snapshot' && (!Array.isArray(s.snapshotTaskIds) || s.snapshotTaskIds.length === 0 || !s.snapshotTaskIds.every((x) => typeof x === 'string'))) {
    throw new InvalidInputError('"import" lacks snapshotTaskIds (snapshot mode)');
  }
  return s as unknown as ImportStarted;
}

/** `$.status`, checked. */
export function statusOf(state: ImportState): ImportStatus {
  const s = state.status as unknown;
  if (!isObject(s) || s.status !== 'completed' || !Array.isArray(s.snapshotIds)) {
    throw new InvalidInputError('the state has no completed "status" { status, snapshotIds } (written by the check step)');
  }
  return s as unknown as ImportStatus;
}

/** Whole seconds from `startTime` (ISO 8601) to `now`; 0 when the time cannot be read. */
export function secondsSince(startTime: string | number | undefined, now: number = Date.now()): number {
  const start = typeof startTime === 'number' ? startTime : Date.parse(startTime ?? '');
  if (!Number.isFinite(start)) return 0;
  return Math.max(0, Math.round((now - start) / 1000));
}

/** `key=value` tags as the EC2 API takes them. */
export function ec2Tags(tags: Readonly<Record<string, string>>): Array<{ Key: string; Value: string }> {
  return Object.entries(tags).map(([Key, Value]) => ({ Key, Value }));
}
