/**
 * The import workflow's EC2 steps, one handler each (each deployed as its own function):
 *
 * - `start`: ImportImage, or ImportSnapshot per disk, with the request's options -> `$.import`
 * - `check`: the task's progress; throws `ImportInProgress` until it completes -> `$.status`
 * - `register`: RegisterImage from the snapshots (snapshot mode) -> `$.registered`
 * - `finalize`: tags, sharing, copies, Image Builder -> `$.result`
 * - `cleanup`: cancels the execution's running tasks and explains the failure -> `$.failure`
 *
 * Each takes the task payload `{ state, execution }`; cleanup also takes the Step Functions
 * `Execution Status Change` event. Clients are made once per container.
 */
import { ec2Clients } from '../aws/ec2';
import { putEvent } from '../aws/events';
import { imagebuilderClients } from '../aws/imagebuilder';
import { checkImport } from '../workflow/import-check';
import { cleanupImport, type CleanupDeps, type EventEmitter } from '../workflow/import-cleanup';
import { finalizeImport, registerImage } from '../workflow/import-finalize';
import { startImport } from '../workflow/import-start';
import { log } from '../workflow/log';
import type { ImportFailure, ImportResult, ImportStarted, ImportStatus, Registered } from '../workflow/payload';

export type { EventEmitter, WorkflowEvent } from '../workflow/import-cleanup';

/** Starts the import. */
export async function start(event: unknown): Promise<ImportStarted> {
  return startImport(ec2Clients.get(), event);
}

/** Checks the import task(s). */
export async function check(event: unknown): Promise<ImportStatus> {
  return checkImport(ec2Clients.get(), event);
}

/** Registers the AMI from the imported snapshots (snapshot mode). */
export async function register(event: unknown): Promise<Registered> {
  return registerImage(ec2Clients.get(), event);
}

/** Tags, shares and copies the AMI, and makes the Image Builder image. */
export async function finalize(event: unknown): Promise<ImportResult> {
  return finalizeImport({ ec2: (region) => ec2Clients.get(region), imagebuilder: () => imagebuilderClients.get() }, event);
}

/**
 * An emitter that only logs the event (for tests that look at the event without a bus).
 */
export const logEmitter: EventEmitter = async (event) => {
  log('info', 'failure event', { event });
};

/** The emitter of the deployed function: EventBridge PutEvents, and a log line. */
export const busEmitter: EventEmitter = async (event) => {
  await putEvent(event);
  log('info', 'failure event put on the bus', { detailType: event.detailType });
};

/** A cleanup handler with the given event emitter (and, for tests, clients and clock). */
export function createCleanupHandler(deps: Partial<CleanupDeps> = {}): (event: unknown) => Promise<ImportFailure> {
  const full: CleanupDeps = { ec2: deps.ec2 ?? (() => ec2Clients.get()), emit: deps.emit ?? busEmitter, ...(deps.now ? { now: deps.now } : {}) };
  return (event) => cleanupImport(full, event);
}

/** Cancels the execution's running import tasks and explains the failure. */
export const cleanup = createCleanupHandler();
