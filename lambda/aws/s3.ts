/** Construction of the S3 client shared by the handlers and the vmie command. */
// The SDK is bundled into the Lambda assets and the vmie command by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import { S3Client } from '@aws-sdk/client-s3';

/** Options of {@link createS3Client}. */
export interface S3ClientOptions {
  /** The Region. @default - from the environment or the shared config, else us-east-1 */
  readonly region?: string;
  /** Attempts per request, retries on throttling and 5xx included. @default 5 */
  readonly maxAttempts?: number;
  /** Environment to read the endpoint override from. @default process.env */
  readonly env?: NodeJS.ProcessEnv;
}

/**
 * An S3 client with bounded retries (standard mode: throttling and 5xx answers are retried with
 * backoff) and timeouts, so that a stalled connection fails instead of hanging a Lambda.
 *
 * The SDK takes an endpoint override from `AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`) by itself;
 * when one is set, path-style addressing is turned on, since local S3 servers need it.
 */
export function createS3Client(options: S3ClientOptions = {}): S3Client {
  const env = options.env ?? process.env;
  const endpointOverride = Boolean(env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL);
  const region = options.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION;
  return new S3Client({
    ...(region ? { region } : {}),
    maxAttempts: options.maxAttempts ?? 5,
    retryMode: 'standard',
    forcePathStyle: endpointOverride,
    followRegionRedirects: true,
    requestHandler: { connectionTimeout: 5_000, requestTimeout: 60_000, throwOnRequestTimeout: true },
  });
}
