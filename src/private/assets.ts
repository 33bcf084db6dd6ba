import * as fs from 'node:fs';
import * as path from 'node:path';
import * as lambda from 'aws-cdk-lib/aws-lambda';

/** The Node.js runtime of every Lambda function of the library, pinned (never chosen per Region). */
export const LAMBDA_RUNTIME = lambda.Runtime.NODEJS_24_X;

/**
 * The code of a bundled handler, `assets/<name>/index.js`, built by esbuild and shipped in the
 * package, so that synthesis needs neither esbuild nor Docker.
 */
export function handlerCode(name: string): lambda.Code {
  const dir = path.join(__dirname, '..', '..', 'assets', name);
  if (!fs.existsSync(path.join(dir, 'index.js'))) {
    throw new Error(`The bundled handler ${dir}/index.js is missing: run 'npx projen bundle' (or 'npm run build') first.`);
  }
  return lambda.Code.fromAsset(dir);
}
