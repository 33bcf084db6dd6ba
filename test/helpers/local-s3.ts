/**
 * A local S3 server (s3rver) started in-process on 127.0.0.1 at a random port, with a client of
 * the real AWS SDK pointed at it. s3rver keeps its objects in a temporary directory.
 *
 * Known limits of s3rver: it answers suffix ranges (`bytes=-512`) wrongly (the engine never sends
 * them) and lacks ListParts/AbortMultipartUpload.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';

/** A running local S3 server. */
export interface LocalS3 {
  /** `http://127.0.0.1:<port>`. */
  readonly endpoint: string;
  /** A client of the real SDK pointed at the server (path-style, fixed test credentials). */
  readonly client: S3Client;
  /** Environment that points SDK clients made elsewhere (handlers, child processes) at the server. */
  readonly env: Record<string, string>;
  /** Uploads a local file as `s3://bucket/key`. */
  upload(bucket: string, key: string, file: string): Promise<void>;
  /** Uploads bytes as `s3://bucket/key`. */
  put(bucket: string, key: string, body: Buffer | string): Promise<void>;
  /** Stops the server and removes its directory. */
  close(): Promise<void>;
}

/** Starts s3rver with the given buckets. */
export async function startLocalS3(buckets: string[]): Promise<LocalS3> {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'vmie-s3rver-'));
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    configureBuckets: buckets.map((name) => ({ name, configs: [] })),
  });
  const address: AddressInfo = await server.run();
  const endpoint = `http://127.0.0.1:${address.port}`;
  const env = {
    AWS_ENDPOINT_URL_S3: endpoint,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
  };
  const client = new S3Client({
    endpoint,
    region: env.AWS_REGION,
    forcePathStyle: true,
    credentials: { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY },
    // s3rver does not understand aws-chunked uploads with trailing checksums.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  return {
    endpoint,
    client,
    env,
    async upload(bucket, key, file) {
      const size = fs.statSync(file).size;
      await client.send(
        new PutObjectCommand({ Bucket: bucket, Key: key, Body: fs.createReadStream(file), ContentLength: size }),
      );
    },
    async put(bucket, key, body) {
      await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
    },
    async close() {
      client.destroy();
      await server.close();
      fs.rmSync(directory, { recursive: true, force: true });
    },
  };
}

/**
 * Runs `fn` with `env` merged into process.env, restoring the previous values afterwards (for
 * handlers that build their own clients from the environment).
 */
export async function withEnv<T>(env: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(env)) {
    saved[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** What a {@link FaultProxy} does with one request. */
export type Fault =
  | { readonly kind: 'pass'; readonly delayMs?: number }
  /** Forward, but cut the connection after this many body bytes. */
  | { readonly kind: 'cut'; readonly afterBytes: number }
  /** Answer with an S3 error instead of forwarding. */
  | { readonly kind: 'error'; readonly status: number; readonly code: string };

/** An HTTP proxy in front of the local S3 server that injects faults s3rver cannot produce. */
export interface FaultProxy {
  readonly endpoint: string;
  /** Every request seen: method, path and Range/If-Match headers. */
  readonly seen: Array<{ method: string; url: string; range?: string; ifMatch?: string }>;
  /** The most requests that were in flight at once. */
  readonly maxInFlight: number;
  close(): Promise<void>;
}

/**
 * Starts a proxy to `target` that asks `decide` what to do with each request (`n` counts from 0).
 * Real faults on a real socket: a cut body is a response whose connection closes early.
 */
export async function startFaultProxy(
  target: string,
  decide: (req: { method: string; url: string; range?: string }, n: number) => Fault,
): Promise<FaultProxy> {
  const seen: FaultProxy['seen'] = [];
  const upstream = new URL(target);
  let inFlight = 0;
  let maxInFlight = 0;
  const server = http.createServer((req, res) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    res.on('close', () => inFlight--);
    const range = req.headers.range;
    const ifMatch = req.headers['if-match'] as string | undefined;
    seen.push({ method: req.method ?? '', url: req.url ?? '', range, ifMatch });
    const fault = decide({ method: req.method ?? '', url: req.url ?? '', range }, seen.length - 1);
    if (fault.kind === 'error') {
      req.resume();
      const xml = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${fault.code}</Code><Message>injected</Message></Error>`;
      res.writeHead(fault.status, { 'Content-Type': 'application/xml', 'Content-Length': Buffer.byteLength(xml) });
      res.end(req.method === 'HEAD' ? undefined : xml);
      return;
    }
    const headers = { ...req.headers, host: upstream.host };
    const forward = () => {
      const up = http.request(
        { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers },
        (upRes) => {
          res.writeHead(upRes.statusCode ?? 502, upRes.headers);
          if (fault.kind !== 'cut') {
            upRes.pipe(res);
            return;
          }
          if (fault.afterBytes <= 0) {
            res.flushHeaders();
            upRes.destroy();
            setTimeout(() => res.socket?.destroy(), 20);
            return;
          }
          let sent = 0;
          upRes.on('data', (chunk: Buffer) => {
            if (sent >= fault.afterBytes) return;
            const part = chunk.subarray(0, fault.afterBytes - sent);
            sent += part.length;
            const done = sent >= fault.afterBytes;
            // Let the headers and the bytes reach the client before the connection drops.
            res.write(part, () => {
              if (done) setTimeout(() => res.socket?.destroy(), 20);
            });
            if (done) upRes.destroy();
          });
        },
      );
      up.on('error', () => res.destroy());
      req.pipe(up);
    };
    if (fault.kind === 'pass' && fault.delayMs) {
      req.pause();
      setTimeout(forward, fault.delayMs);
    } else {
      forward();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    seen,
    get maxInFlight() {
      return maxInFlight;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
