/**
 * The CloudFormation custom resource protocol: the handler answers by a PUT of a JSON document to
 * the presigned `ResponseURL` of the event.
 */
import * as http from 'node:http';
import * as https from 'node:https';

/** The fields of a custom resource event that the handlers use. */
export interface CustomResourceEvent {
  readonly RequestType: 'Create' | 'Update' | 'Delete';
  readonly ResponseURL: string;
  readonly StackId: string;
  readonly RequestId: string;
  readonly LogicalResourceId: string;
  readonly PhysicalResourceId?: string;
  readonly ResourceProperties: Record<string, unknown>;
  readonly OldResourceProperties?: Record<string, unknown>;
}

/** What a handler answers. */
export interface CustomResourceResult {
  readonly status: 'SUCCESS' | 'FAILED';
  readonly physicalResourceId: string;
  readonly reason?: string;
  readonly data?: Record<string, string>;
}

/** Sends `result` to CloudFormation. Rejects when the response cannot be delivered. */
export async function sendResponse(event: CustomResourceEvent, result: CustomResourceResult): Promise<void> {
  const body = JSON.stringify({
    Status: result.status,
    Reason: (result.reason ?? result.status).slice(0, 3500),
    PhysicalResourceId: result.physicalResourceId,
    StackId: event.StackId,
    RequestId: event.RequestId,
    LogicalResourceId: event.LogicalResourceId,
    Data: result.data ?? {},
  });
  const url = new URL(event.ResponseURL);
  const transport = url.protocol === 'http:' ? http : https;
  await new Promise<void>((resolve, reject) => {
    const req = transport.request(
      url,
      { method: 'PUT', headers: { 'content-type': '', 'content-length': Buffer.byteLength(body) } },
      (res) => {
        res.resume();
        res.on('end', () =>
          res.statusCode && res.statusCode < 300 ? resolve() : reject(new Error(`CloudFormation answered ${res.statusCode}`)),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}
