/** Puts the workflows' own events on an EventBridge bus (the default bus unless told otherwise). */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import { EventBridgeClient, PutEventsCommand } from '@aws-sdk/client-eventbridge';

/** One event to put. */
export interface BusEvent {
  readonly source: string;
  readonly detailType: string;
  readonly detail: unknown;
  readonly resources?: readonly string[];
}

let cached: { key: string; client: EventBridgeClient } | undefined;

function client(): EventBridgeClient {
  const key = `${process.env.AWS_ENDPOINT_URL_EVENTBRIDGE ?? process.env.AWS_ENDPOINT_URL ?? ''}|${process.env.AWS_REGION ?? ''}`;
  if (cached?.key !== key) {
    cached?.client.destroy();
    cached = { key, client: new EventBridgeClient({ maxAttempts: 5, retryMode: 'standard' }) };
  }
  return cached.client;
}

/**
 * Puts `event` on the bus named by `VMIE_EVENT_BUS` (default: the default bus). PutEvents answers
 * 200 with per-entry failures: those are raised, so a lost event is a failed invocation.
 */
export async function putEvent(event: BusEvent): Promise<void> {
  const out = await client().send(new PutEventsCommand({
    Entries: [{
      Source: event.source,
      DetailType: event.detailType,
      Detail: JSON.stringify(event.detail),
      ...(event.resources?.length ? { Resources: [...event.resources] } : {}),
      ...(process.env.VMIE_EVENT_BUS ? { EventBusName: process.env.VMIE_EVENT_BUS } : {}),
    }],
  }));
  if ((out.FailedEntryCount ?? 0) > 0) {
    const e = out.Entries?.find((x) => x.ErrorCode);
    throw Object.assign(new Error(`PutEvents refused the ${event.detailType} event: ${e?.ErrorCode} ${e?.ErrorMessage}`), { name: 'Transient' });
  }
}
