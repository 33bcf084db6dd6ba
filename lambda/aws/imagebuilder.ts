/** Construction of the EC2 Image Builder client used by the import workflow's finalize step. */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import { ImagebuilderClient } from '@aws-sdk/client-imagebuilder';
import { clientSettings, type AwsClientOptions } from './ec2';
import { ClientCache } from '../workflow/client-cache';

/**
 * An EC2 Image Builder client with bounded retries and timeouts, like the EC2 client. The SDK
 * takes an endpoint override from `AWS_ENDPOINT_URL_IMAGEBUILDER` (or `AWS_ENDPOINT_URL`).
 */
export function createImagebuilderClient(options: AwsClientOptions = {}): ImagebuilderClient {
  return new ImagebuilderClient(clientSettings(options));
}

/** The Image Builder clients of this container. */
export const imagebuilderClients = /* @__PURE__ */ new ClientCache<ImagebuilderClient>(
  (region) => createImagebuilderClient(region ? { region } : {}),
  ['AWS_ENDPOINT_URL_IMAGEBUILDER', 'AWS_ENDPOINT_URL'],
);
