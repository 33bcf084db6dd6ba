/**
 * A local EventBridge endpoint for tests: it answers PutEvents (AWS JSON 1.1, `AWSEvents.PutEvents`)
 * over HTTP for the real @aws-sdk/client-eventbridge and keeps the entries it was given. Nothing
 * else of EventBridge (rules, targets) is simulated. Point clients at it with
 * `AWS_ENDPOINT_URL_EVENTBRIDGE`.
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';

/** An entry as PutEvents received it, with its Detail parsed. */
export interface PutEntry {
  readonly source: string;
  readonly detailType: string;
  readonly detail: any;
  readonly eventBusName?: string;
  readonly resources?: string[];
}

/** A running local EventBridge endpoint. */
export interface LocalEvents {
  readonly endpoint: string;
  /** `AWS_ENDPOINT_URL_EVENTBRIDGE` and test credentials. */
  readonly env: Record<string, string>;
  /** Every entry put, in order. */
  readonly entries: PutEntry[];
  /** The next PutEvents answers this many entries failed (a per-entry error, HTTP 200). */
  failNext(errorCode: string): void;
  close(): Promise<void>;
}

/** Starts the endpoint on 127.0.0.1 at a free port. */
export async function startLocalEvents(): Promise<LocalEvents> {
  const entries: PutEntry[] = [];
  let fail: string | undefined;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const target = String(req.headers['x-amz-target'] ?? '');
      res.setHeader('content-type', 'application/x-amz-json-1.1');
      if (target !== 'AWSEvents.PutEvents') {
        res.statusCode = 400;
        res.end(JSON.stringify({ __type: 'UnknownOperationException', message: `${target} is not simulated` }));
        return;
      }
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
      const given: any[] = body.Entries ?? [];
      if (fail) {
        const code = fail;
        fail = undefined;
        res.end(JSON.stringify({ FailedEntryCount: given.length, Entries: given.map(() => ({ ErrorCode: code, ErrorMessage: 'refused by the test' })) }));
        return;
      }
      for (const e of given) {
        entries.push({
          source: e.Source,
          detailType: e.DetailType,
          detail: JSON.parse(e.Detail),
          ...(e.EventBusName ? { eventBusName: e.EventBusName } : {}),
          ...(e.Resources ? { resources: e.Resources } : {}),
        });
      }
      res.end(JSON.stringify({ FailedEntryCount: 0, Entries: given.map((_, i) => ({ EventId: `local-${entries.length - given.length + i}` })) }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    endpoint,
    env: { AWS_ENDPOINT_URL_EVENTBRIDGE: endpoint, AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' },
    entries,
    failNext(code) {
      fail = code;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
