/**
 * A local S3 server (s3rver) started in-process on 127.0.0.1 at a random port, with a client of
 * the real AWS SDK pointed at it. s3rver keeps its objects in a temporary directory.
 *
 * s3rver's multipart support is partial: it lacks ListMultipartUploads, ListParts and
 * AbortMultipartUpload, takes parts for upload ids it never issued, and completes an upload
 * without checking the parts (ETags, order, the 5 MiB minimum) or applying the tags given at its
 * start. A small HTTP front in front of it (the endpoint clients are given) answers those
 * requests itself, from s3rver's own upload directories (`<bucket>/._S3rver_uploads/<id>/`: the
 * `key` and `metadata` files, then each part as `<n>` and `<n>.md5`), checks the rest as S3 does,
 * and forwards everything else.
 *
 * Other known limit of s3rver: it answers suffix ranges (`bytes=-512`) wrongly (the engine never
 * sends them).
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
  /** The multipart uploads in progress in `bucket` (started, neither completed nor aborted), by key. */
  listUploads(bucket: string): Promise<Array<{ key: string; uploadId: string }>>;
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
  const front = await startMultipartFront(`http://127.0.0.1:${address.port}`, directory);
  const endpoint = front.endpoint;
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
    async listUploads(bucket) {
      return scanUploads(directory, bucket).map((u) => ({ key: u.key, uploadId: u.uploadId }));
    },
    async close() {
      client.destroy();
      await front.close();
      await server.close();
      fs.rmSync(directory, { recursive: true, force: true });
    },
  };
}

/** The smallest part S3 accepts in a completed upload, but for the last. */
const MIN_PART = 5 * 1024 * 1024;
/** Where s3rver keeps a bucket's multipart uploads, one directory per upload id. */
const UPLOADS_DIR = '._S3rver_uploads';

/** A multipart upload as s3rver keeps it. */
interface StoredUpload {
  readonly key: string;
  readonly uploadId: string;
  readonly initiated: Date;
  readonly dir: string;
}

/** A part as s3rver keeps it: the bytes, and their MD5 (the ETag) once the part is complete. */
interface StoredPart {
  readonly partNumber: number;
  readonly size: number;
  readonly etag: string;
  readonly lastModified: Date;
}

function isSafeName(name: string): boolean {
  return /^[A-Za-z0-9._-]+$/.test(name) && !name.startsWith('.');
}

function readUpload(directory: string, bucket: string, uploadId: string): StoredUpload | undefined {
  if (!isSafeName(bucket) || !isSafeName(uploadId)) return undefined;
  const dir = path.join(directory, bucket, UPLOADS_DIR, uploadId);
  try {
    const keyFile = path.join(dir, 'key');
    return { key: fs.readFileSync(keyFile, 'utf8'), uploadId, initiated: fs.statSync(keyFile).mtime, dir };
  } catch {
    return undefined;
  }
}

/** The uploads of `bucket`, by key, then upload id. */
function scanUploads(directory: string, bucket: string): StoredUpload[] {
  if (!isSafeName(bucket)) return [];
  let ids: string[];
  try {
    ids = fs.readdirSync(path.join(directory, bucket, UPLOADS_DIR));
  } catch {
    return [];
  }
  return ids
    .map((id) => readUpload(directory, bucket, id))
    .filter((u): u is StoredUpload => u !== undefined)
    .sort((a, b) => compare(a.key, b.key) || compare(a.uploadId, b.uploadId));
}

/** The complete parts of an upload, by number. */
function scanParts(upload: StoredUpload): StoredPart[] {
  const parts: StoredPart[] = [];
  for (const name of fs.readdirSync(upload.dir)) {
    if (!/^[1-9][0-9]*$/.test(name)) continue;
    try {
      const etag = fs.readFileSync(path.join(upload.dir, `${name}.md5`), 'utf8').trim();
      const st = fs.statSync(path.join(upload.dir, name));
      parts.push({ partNumber: Number(name), size: st.size, etag, lastModified: st.mtime });
    } catch {
      // A part still being written has no MD5 yet.
    }
  }
  return parts.sort((a, b) => a.partNumber - b.partNumber);
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

function unescapeXml(s: string): string {
  return s
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&#(\d+);/g, (_, d: string) => String.fromCharCode(Number(d)))
    .replace(/&amp;/g, '&');
}

function sendXml(res: http.ServerResponse, status: number, body: string, head = false): void {
  const xml = `<?xml version="1.0" encoding="UTF-8"?>\n${body}`;
  res.writeHead(status, { 'Content-Type': 'application/xml', 'Content-Length': Buffer.byteLength(xml) });
  res.end(head ? undefined : xml);
}

function sendError(res: http.ServerResponse, status: number, code: string, message: string, head = false): void {
  sendXml(res, status, `<Error><Code>${code}</Code><Message>${escapeXml(message)}</Message></Error>`, head);
}

function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        req.destroy();
        reject(new Error(`request body over ${limit} bytes`));
      } else {
        chunks.push(c);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/**
 * Forwards `req` to `target`, with `body` instead of the request's own stream when given;
 * `beforeReply` runs with the upstream status before the answer goes back.
 */
function forwardTo(
  target: URL,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  body?: Buffer,
  beforeReply?: (status: number) => void,
): void {
  const headers = { ...req.headers, host: target.host };
  // The front has answered any `Expect: 100-continue` itself.
  delete headers.expect;
  const up = http.request(
    { host: target.hostname, port: target.port, method: req.method, path: req.url, headers },
    (upRes) => {
      try {
        beforeReply?.(upRes.statusCode ?? 502);
      } catch (e) {
        upRes.resume();
        sendError(res, 500, 'InternalError', (e as Error).message);
        return;
      }
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.pipe(res);
    },
  );
  up.on('error', () => res.destroy());
  if (body) up.end(body);
  else req.pipe(up);
}

/** ListMultipartUploads (`GET /bucket?uploads`), paginated by key and upload id markers. */
function listUploadsReply(directory: string, bucket: string, q: URLSearchParams, res: http.ServerResponse): void {
  if (q.get('delimiter')) {
    sendError(res, 501, 'NotImplemented', 'the local S3 lists uploads without a delimiter only');
    return;
  }
  const prefix = q.get('prefix') ?? '';
  const keyMarker = q.get('key-marker') ?? '';
  const idMarker = q.get('upload-id-marker') ?? '';
  const max = Math.max(1, Math.min(1000, Number(q.get('max-uploads') ?? 1000) || 1000));
  const after = scanUploads(directory, bucket).filter(
    (u) =>
      u.key.startsWith(prefix) &&
      (!keyMarker || u.key > keyMarker || (idMarker !== '' && u.key === keyMarker && u.uploadId > idMarker)),
  );
  const page = after.slice(0, max);
  const truncated = after.length > page.length;
  const last = page[page.length - 1];
  const uploads = page
    .map(
      (u) =>
        `<Upload><Key>${escapeXml(u.key)}</Key><UploadId>${u.uploadId}</UploadId><Initiated>${u.initiated.toISOString()}</Initiated>` +
        '<StorageClass>STANDARD</StorageClass></Upload>',
    )
    .join('');
  sendXml(
    res,
    200,
    '<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
      `<Bucket>${escapeXml(bucket)}</Bucket><KeyMarker>${escapeXml(keyMarker)}</KeyMarker><UploadIdMarker>${escapeXml(idMarker)}</UploadIdMarker>` +
      (truncated && last ? `<NextKeyMarker>${escapeXml(last.key)}</NextKeyMarker><NextUploadIdMarker>${last.uploadId}</NextUploadIdMarker>` : '') +
      `<Prefix>${escapeXml(prefix)}</Prefix><MaxUploads>${max}</MaxUploads><IsTruncated>${truncated}</IsTruncated>${uploads}` +
      '</ListMultipartUploadsResult>',
  );
}

/** ListParts (`GET /bucket/key?uploadId=…`), paginated by part number marker. */
function listPartsReply(bucket: string, upload: StoredUpload, q: URLSearchParams, res: http.ServerResponse): void {
  const marker = Number(q.get('part-number-marker') ?? 0) || 0;
  const max = Math.max(1, Math.min(1000, Number(q.get('max-parts') ?? 1000) || 1000));
  const after = scanParts(upload).filter((p) => p.partNumber > marker);
  const page = after.slice(0, max);
  const truncated = after.length > page.length;
  const parts = page
    .map(
      (p) =>
        `<Part><PartNumber>${p.partNumber}</PartNumber><LastModified>${p.lastModified.toISOString()}</LastModified>` +
        `<ETag>"${p.etag}"</ETag><Size>${p.size}</Size></Part>`,
    )
    .join('');
  sendXml(
    res,
    200,
    '<ListPartsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
      `<Bucket>${escapeXml(bucket)}</Bucket><Key>${escapeXml(upload.key)}</Key><UploadId>${upload.uploadId}</UploadId>` +
      `<PartNumberMarker>${marker}</PartNumberMarker>` +
      (page.length ? `<NextPartNumberMarker>${page[page.length - 1].partNumber}</NextPartNumberMarker>` : '') +
      `<MaxParts>${max}</MaxParts><IsTruncated>${truncated}</IsTruncated><StorageClass>STANDARD</StorageClass>${parts}` +
      '</ListPartsResult>',
  );
}

/**
 * Checks a CompleteMultipartUpload body as S3 does: at least one part, numbers ascending, every
 * part uploaded with that ETag, every part but the last at least 5 MiB. Returns the S3 error, if any.
 */
function checkCompletion(upload: StoredUpload, xml: string): { code: string; message: string } | undefined {
  const listed = [...xml.matchAll(/<Part>([\s\S]*?)<\/Part>/g)].map((m) => ({
    partNumber: Number(/<PartNumber>\s*(\d+)\s*<\/PartNumber>/.exec(m[1])?.[1] ?? NaN),
    etag: unescapeXml(/<ETag>([\s\S]*?)<\/ETag>/.exec(m[1])?.[1] ?? '').replace(/"/g, '').trim(),
  }));
  if (listed.length === 0 || listed.some((p) => !Number.isInteger(p.partNumber))) {
    return { code: 'MalformedXML', message: 'The XML you provided was not well-formed or did not validate against our published schema.' };
  }
  for (let i = 1; i < listed.length; i++) {
    if (listed[i].partNumber <= listed[i - 1].partNumber) {
      return { code: 'InvalidPartOrder', message: 'The list of parts was not in ascending order.' };
    }
  }
  const stored = new Map(scanParts(upload).map((p) => [p.partNumber, p]));
  for (const p of listed) {
    const s = stored.get(p.partNumber);
    if (!s || s.etag !== p.etag) {
      return { code: 'InvalidPart', message: `Part ${p.partNumber} could not be found or its ETag does not match.` };
    }
  }
  for (const p of listed.slice(0, -1)) {
    if (stored.get(p.partNumber)!.size < MIN_PART) {
      return { code: 'EntityTooSmall', message: `Part ${p.partNumber} is smaller than the minimum allowed size.` };
    }
  }
  return undefined;
}

/** Writes the tags an upload was started with (`x-amz-tagging`) where s3rver keeps an object's tags. */
function applyTagging(directory: string, bucket: string, upload: StoredUpload, tagging: string): void {
  const tags = [...new URLSearchParams(tagging)]
    .map(([k, v]) => `<Tag><Key>${escapeXml(k)}</Key><Value>${escapeXml(v)}</Value></Tag>`)
    .join('');
  const parts = upload.key.split('/');
  const last = parts.pop() ?? '';
  fs.writeFileSync(path.join(directory, bucket, ...parts, `${last}._S3rver_tagging.xml`), `<Tagging><TagSet>${tags}</TagSet></Tagging>`);
}

/**
 * The front: answers ListMultipartUploads, ListParts and AbortMultipartUpload from s3rver's
 * upload directories; refuses UploadPart and CompleteMultipartUpload for unknown uploads
 * (NoSuchUpload) and completions S3 would refuse; applies the upload's tags on completion;
 * forwards everything else to s3rver unchanged.
 */
async function startMultipartFront(upstream: string, directory: string): Promise<{ endpoint: string; close(): Promise<void> }> {
  const target = new URL(upstream);
  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://local');
    const segments = url.pathname.split('/').slice(1);
    const bucket = decodeURIComponent(segments[0] ?? '');
    const key = segments.slice(1).map(decodeURIComponent).join('/');
    const q = url.searchParams;
    const method = req.method ?? 'GET';
    const head = method === 'HEAD';
    const bucketExists = isSafeName(bucket) && fs.existsSync(path.join(directory, bucket));

    if (bucket && !key && method === 'GET' && q.has('uploads')) {
      if (!bucketExists) return sendError(res, 404, 'NoSuchBucket', 'The specified bucket does not exist');
      return listUploadsReply(directory, bucket, q, res);
    }
    if (!bucket || !key || !q.has('uploadId') || !['GET', 'DELETE', 'PUT', 'POST'].includes(method)) {
      return forwardTo(target, req, res);
    }
    req.on('error', () => undefined);
    if (!bucketExists) {
      req.resume();
      return sendError(res, 404, 'NoSuchBucket', 'The specified bucket does not exist', head);
    }
    const upload = readUpload(directory, bucket, q.get('uploadId') ?? '');
    if (!upload || upload.key !== key) {
      req.resume();
      return sendError(res, 404, 'NoSuchUpload', 'The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.');
    }
    switch (method) {
      case 'GET':
        return listPartsReply(bucket, upload, q, res);
      case 'DELETE':
        req.resume();
        fs.rmSync(upload.dir, { recursive: true, force: true });
        res.writeHead(204);
        res.end();
        return;
      case 'PUT': {
        const n = q.get('partNumber') ?? '';
        if (!/^[1-9][0-9]{0,4}$/.test(n) || Number(n) > 10_000) {
          req.resume();
          return sendError(res, 400, 'InvalidArgument', 'Part number must be an integer between 1 and 10000, inclusive');
        }
        return forwardTo(target, req, res);
      }
      default: {
        // POST: CompleteMultipartUpload
        const body = await readBody(req, 4 * 1024 * 1024);
        const refusal = checkCompletion(upload, body.toString('utf8'));
        if (refusal) return sendError(res, 400, refusal.code, refusal.message);
        let tagging: string | undefined;
        try {
          const metadata = JSON.parse(fs.readFileSync(path.join(upload.dir, 'metadata'), 'utf8')) as Record<string, string>;
          tagging = metadata['x-amz-tagging'];
        } catch {
          tagging = undefined;
        }
        return forwardTo(target, req, res, body, (status) => {
          if (status === 200 && tagging) applyTagging(directory, bucket, upload, tagging);
        });
      }
    }
  };
  const server = http.createServer((req, res) => {
    handle(req, res).catch((e: Error) => {
      if (!res.headersSent) sendError(res, 500, 'InternalError', e.message);
      else res.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
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
