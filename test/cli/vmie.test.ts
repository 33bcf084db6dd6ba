import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildSync } from 'esbuild';
import * as fc from 'fast-check';
import { parseArgs, UsageError } from '../../lambda/cli/args';
import { inspect } from '../../lambda/disk/inspect';
import { FileSource } from '../../lambda/disk/source';
import { qemuConvert, tempDir } from '../helpers/fixtures';
import { bootMbrDisk, zipOf } from '../helpers/inspect-fixtures';
import { startLocalS3, type LocalS3 } from '../helpers/local-s3';

const ROOT = path.join(__dirname, '..', '..');
let work: { dir: string; cleanup: () => void };
let bundle: string;
let s3: LocalS3;

beforeAll(async () => {
  // The same esbuild step as the project's bundle task, into a directory of this test's own.
  work = tempDir('vmie-cli-');
  bundle = path.join(work.dir, 'vmie', 'index.js');
  buildSync({
    entryPoints: [path.join(ROOT, 'lambda', 'cli', 'vmie.ts')],
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    minify: true,
    legalComments: 'none',
    outfile: bundle,
    banner: { js: '#!/usr/bin/env node' },
    logLevel: 'warning',
  });
  s3 = await startLocalS3(['cli-bucket']);
  await s3.upload('cli-bucket', 'images/web.vmdk', qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=streamOptimized']));
});

afterAll(async () => {
  await s3.close();
  work.cleanup();
});

/** Runs the bundled command as a child process. */
function vmie(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bundle, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('vmie (bundled)', () => {
  test('--version prints the package version', async () => {
    // GIVEN
    const { version } = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    // WHEN
    const r = await vmie(['--version']);
    // THEN
    expect(r).toEqual({ code: 0, stdout: `vmie ${version}\n`, stderr: '' });
  });

  test('--help lists the commands; inspect --help describes inspect', async () => {
    // GIVEN / WHEN
    const top = await vmie(['--help']);
    const sub = await vmie(['inspect', '--help']);
    // THEN
    expect(top.code).toBe(0);
    expect(top.stdout).toMatch(/^Usage: vmie <command>/);
    expect(top.stdout).toMatch(/^ {2}inspect {2}/m);
    expect(sub.code).toBe(0);
    expect(sub.stdout).toMatch(/^Usage: vmie inspect <file \| s3:\/\/bucket\/key> \[--json\]/);
    expect(sub.stdout).toContain('--region <region>');
  });

  test.each([
    [[], /^Usage: vmie <command>/m],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['--frobnicate'], /unknown option --frobnicate/],
    [['inspect'], /inspect needs a file or an s3:\/\/bucket\/key/],
    [['inspect', 'a.vmdk', 'b.vmdk'], /inspect takes one input, got 2/],
    [['inspect', '--json=yes', 'a.vmdk'], /option --json takes no value/],
    [['inspect', 'a.vmdk', '--region'], /option --region needs a value/],
    [['inspect', 'a.vmdk', '--bogus'], /unknown option --bogus/],
    [['inspect', 's3://bucket-without-key'], /not an S3 URL of an object/],
  ])('usage error %j exits 64 with the usage on stderr', async (args, message) => {
    // GIVEN / WHEN
    const r = await vmie(args);
    // THEN
    expect(r.code).toBe(64);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toMatch(/Usage: vmie /);
  });

  test('an importable image exits 0 with a readable report', async () => {
    // GIVEN
    const file = qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=streamOptimized']);
    // WHEN
    const r = await vmie(['inspect', file]);
    // THEN
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain(`${path.basename(file)}: VMDK (streamOptimized), 48 MiB virtual`);
    expect(r.stdout).toContain('Verdict: importable as it is (ImportImage Format VMDK)');
    expect(r.stdout).toMatch(/Partitions: MBR, boots with legacy-bios, root on partition 1 \(ext4\)/);
  });

  test('an image that needs conversion exits 2', async () => {
    // GIVEN
    const file = qemuConvert(bootMbrDisk(), 'qcow2');
    // WHEN
    const r = await vmie(['inspect', file]);
    // THEN
    expect(r.code).toBe(2);
    expect(r.stdout).toContain('[FORMAT_NEEDS_CONVERSION]');
  });

  test('a file that is not a disk exits 1', async () => {
    // GIVEN
    const file = zipOf(bootMbrDisk());
    // WHEN
    const r = await vmie(['inspect', file]);
    // THEN
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('Verdict: NOT importable (1 error)');
    expect(r.stdout).toContain('[NOT_A_DISK]');
  });

  test('--json prints one JSON object: the report inspect() gives', async () => {
    // GIVEN
    const file = qemuConvert(bootMbrDisk(), 'vdi');
    const src = await FileSource.open(file);
    const expected = await inspect(src);
    await src.close();
    // WHEN
    const r = await vmie(['inspect', '--json', file]);
    // THEN
    expect(r.code).toBe(2);
    const got = JSON.parse(r.stdout);
    expect({ ...got, durationMs: 0 }).toEqual({ ...expected, durationMs: 0 });
  });

  test('a missing file exits 66', async () => {
    // GIVEN / WHEN
    const r = await vmie(['inspect', path.join(work.dir, 'missing.vmdk')]);
    // THEN
    expect(r.code).toBe(66);
    expect(r.stderr).toMatch(/cannot open .*missing\.vmdk: no such file/);
  });

  test('an S3 object is inspected through ranged GETs; a missing one exits 66', async () => {
    // GIVEN: the SDK pointed at the local S3 server by the environment
    const env = { ...s3.env };
    // WHEN
    const found = await vmie(['inspect', '--json', 's3://cli-bucket/images/web.vmdk'], env);
    const missing = await vmie(['inspect', 's3://cli-bucket/images/none.vmdk'], env);
    // THEN
    expect(found.code).toBe(0);
    expect(JSON.parse(found.stdout)).toMatchObject({ name: 'images/web.vmdk', format: 'vmdk', subformat: 'streamOptimized', importable: true });
    expect(missing.code).toBe(66);
    expect(missing.stderr).toContain('s3://cli-bucket/images/none.vmdk does not exist');
  });
});

describe('parseArgs', () => {
  const specs = { json: { help: 'json' }, region: { value: true, help: 'region' }, help: { short: 'h', help: 'help' } };

  test('flags, values in both spellings, short aliases and -- are understood', () => {
    // GIVEN / WHEN
    const a = parseArgs(['--json', 'x.vmdk', '--region', 'eu-west-1'], specs);
    const b = parseArgs(['--region=us-east-2', '-h', '--', '--json'], specs);
    // THEN
    expect(a).toEqual({ flags: { json: true, region: 'eu-west-1' }, positionals: ['x.vmdk'] });
    expect(b).toEqual({ flags: { region: 'us-east-2', help: true }, positionals: ['--json'] });
  });

  test('any command line gives parsed arguments or a UsageError, nothing else', () => {
    const word = fc.oneof(fc.constantFrom('--json', '--region', '--region=', '-h', '--', '-x', '--nope', '-', '--json=1'), fc.string({ maxLength: 12 }));
    fc.assert(
      fc.property(fc.array(word, { maxLength: 8 }), (argv) => {
        // GIVEN / WHEN
        let parsed;
        try {
          parsed = parseArgs(argv, specs);
        } catch (e) {
          // THEN
          expect(e).toBeInstanceOf(UsageError);
          return;
        }
        expect(parsed.positionals.length).toBeLessThanOrEqual(argv.length);
        for (const k of Object.keys(parsed.flags)) expect(Object.keys(specs)).toContain(k);
      }),
      { numRuns: 500 },
    );
  });
});
