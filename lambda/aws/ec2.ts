/** Construction of the EC2 clients used by the workflow handlers. */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import { EC2Client } from '@aws-sdk/client-ec2';
import { ClientCache } from '../workflow/client-cache';

/** Options of {@link createEc2Client} (and of the other service clients of the workflows). */
export interface AwsClientOptions {
  /** The Region. @default - from the environment or the shared config */
  readonly region?: string;
  /** Attempts per request, retries on throttling and 5xx included. @default 5 */
  readonly maxAttempts?: number;
  /** Environment to read the Region from. @default process.env */
  readonly env?: NodeJS.ProcessEnv;
}

/** The client settings shared by the workflow's service clients: bounded retries and timeouts. */
export function clientSettings(options: AwsClientOptions) {
  const env = options.env ?? process.env;
  const region = options.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION;
  return {
    ...(region ? { region } : {}),
    maxAttempts: options.maxAttempts ?? 5,
    retryMode: 'standard',
    requestHandler: { connectionTimeout: 5_000, requestTimeout: 30_000, throwOnRequestTimeout: true },
  };
}

/**
 * An EC2 client with bounded retries (standard mode: throttling and 5xx answers are retried with
 * backoff) and timeouts, so that a stalled connection fails instead of hanging a Lambda.
 * The SDK takes an endpoint override from `AWS_ENDPOINT_URL_EC2` (or `AWS_ENDPOINT_URL`) by itself.
 */
export function createEc2Client(options: AwsClientOptions = {}): EC2Client {
  return new EC2Client(clientSettings(options));
}

/** The current Region from the environment, when set. */
export function currentRegion(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.AWS_REGION ?? env.AWS_DEFAULT_REGION;
}

/** The EC2 clients of this container, one per Region (CopyImage runs in the target Region). */
export const ec2Clients = /* @__PURE__ */ new ClientCache<EC2Client>(
  (region) => createEc2Client(region ? { region } : {}),
  ['AWS_ENDPOINT_URL_EC2', 'AWS_ENDPOINT_URL'],
);

