import * as fs from 'node:fs';
import * as path from 'node:path';

/** The directory of the esbuild bundles (`npx projen bundle`; `npm test` builds them first). */
export const ASSETS_DIR = path.join(__dirname, '..', '..', 'assets');

/** Loads the bundled handler `assets/<name>/index.js`, as Lambda would. */
export function loadBundle(name: string): any {
  const file = path.join(ASSETS_DIR, name, 'index.js');
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: run 'npx projen bundle' (npm test does) before this test.`);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(file);
}
