import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { ASSETS_DIR } from '../helpers/bundles';
import { qemuConvert, run, sampleGptDisk, sampleMbrDisk, tempDir } from '../helpers/fixtures';
import { startLocalS3, type LocalS3 } from '../helpers/local-s3';

const bundle = path.join(ASSETS_DIR, 'vmie', 'index.js');
let work: { dir: string; cleanup: () => void };

beforeAll(() => {
  if (!fs.existsSync(bundle)) throw new Error(`${bundle} is missing: run 'npx projen bundle' (npm test does) first.`);
  work = tempDir('vmie-convert-');
});
afterAll(() => work.cleanup());

/** Runs the bundled vmie as a child process, not on a terminal. */
function vmie(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bundle, ...args], { env: { PATH: process.env.PATH ?? '' }, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr });
    });
  });
}

describe('vmie convert (bundled)', () => {
  test.each([
    ['qcow2', () => qemuConvert(sampleMbrDisk(), 'qcow2')],
    ['vdi', () => qemuConvert(sampleGptDisk(), 'vdi')],
    ['monolithicSparse vmdk', () => qemuConvert(sampleMbrDisk(), 'vmdk', ['subformat=monolithicSparse'])],
  ])('%s to a stream-optimized VMDK that qemu-img calls identical and vmie inspect calls importable', async (_name, make) => {
    // GIVEN
    const input = make();
    const output = path.join(work.dir, `${path.basename(input)}.vmdk`);
    // WHEN
    const r = await vmie(['convert', input, output]);
    // THEN
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/vmdk of .* virtual from /);
    expect(r.stderr).toMatch(/progress: 100\.0%/);
    expect(run('qemu-img', ['compare', input, output])).toMatch(/Images are identical/);
    expect(run('qemu-img', ['check', output])).toMatch(/No errors were found/);
    expect(JSON.parse(run('qemu-img', ['info', '--output=json', output]))['format-specific'].data['create-type']).toBe('streamOptimized');
    const inspected = await vmie(['inspect', output, '--json']);
    expect(inspected.code).toBe(0);
    expect(JSON.parse(inspected.stdout)).toMatchObject({ format: 'vmdk', subformat: 'streamOptimized', importable: true });
  });

  test('--to raw and --to vhd-fixed give the same virtual bytes', async () => {
    // GIVEN
    const input = qemuConvert(sampleGptDisk(), 'qcow2');
    const raw = path.join(work.dir, 'gpt.raw');
    const vhd = path.join(work.dir, 'gpt.vhd');
    // WHEN
    const a = await vmie(['convert', input, raw, '--to', 'raw']);
    const b = await vmie(['convert', input, vhd, '--to', 'vhd-fixed']);
    // THEN
    expect([a.code, b.code]).toEqual([0, 0]);
    expect(run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', input, raw])).toMatch(/identical/);
    // qemu sizes VHDs from their CHS geometry unless told to trust the size field.
    expect(run('qemu-img', ['compare', '-f', 'raw', raw, `json:{"driver":"vpc","force_size_calc":"current_size","file":{"driver":"file","filename":"${vhd}"}}`])).toMatch(/identical/);
  });

  test('what cannot be converted exits 1 and leaves no output; usage errors exit 64; a missing input 66', async () => {
    // GIVEN
    const notADisk = path.join(work.dir, 'notes.zip'); // a zip archive's local file header, then filler
    fs.writeFileSync(notADisk, Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), Buffer.alloc(8192, 1)]));
    const out = path.join(work.dir, 'never.vmdk');
    // WHEN
    const results = await Promise.all([
      vmie(['convert', notADisk, out]),
      vmie(['convert', sampleMbrDisk(), out, '--to', 'qcow2']),
      vmie(['convert', sampleMbrDisk()]),
      vmie(['convert', path.join(work.dir, 'missing.img'), out]),
    ]);
    // THEN
    expect(results.map((r) => r.code)).toEqual([1, 64, 64, 66]);
    expect(results[0].stderr).toMatch(/cannot convert .*notes\.zip: .*not a disk image/);
    expect(results[1].stderr).toMatch(/--to qcow2 is not one of vmdk, vhd, vhd-fixed, raw/);
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.readdirSync(work.dir).filter((f) => f.includes('partial'))).toEqual([]);
  });
});

describe('vmie convert with S3 and compressed inputs (bundled, against the local S3)', () => {
  let s3: LocalS3;
  beforeAll(async () => {
    s3 = await startLocalS3(['images']);
  });
  afterAll(async () => s3?.close());

  /** Runs the bundle with the local S3's environment. */
  function vmieS3(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(process.execPath, [bundle, ...args], { env: { PATH: process.env.PATH ?? '', ...s3.env }, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
        resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr });
      });
    });
  }

  async function download(key: string, file: string): Promise<void> {
    const got = await s3.client.send(new GetObjectCommand({ Bucket: 'images', Key: key }));
    fs.writeFileSync(file, Buffer.from(await got.Body!.transformToByteArray()));
  }

  test('a gzip-compressed qcow2 in S3 to a stream-optimized VMDK in S3 (multipart), identical to the original', async () => {
    // GIVEN
    const qcow2 = qemuConvert(sampleGptDisk(), 'qcow2');
    const gz = path.join(work.dir, 'disk.qcow2.gz');
    fs.writeFileSync(gz, zlib.gzipSync(fs.readFileSync(qcow2)));
    await s3.upload('images', 'in/disk.qcow2.gz', gz);
    // WHEN
    const r = await vmieS3(['convert', 's3://images/in/disk.qcow2.gz', 's3://images/out/disk.vmdk']);
    // THEN
    expect(r.stderr).not.toMatch(/vmie:/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/from qcow2 \(v3\), gzip-compressed/);
    const local = path.join(work.dir, 'from-s3.vmdk');
    await download('out/disk.vmdk', local);
    expect(run('qemu-img', ['compare', qcow2, local])).toMatch(/Images are identical/);
    expect(run('qemu-img', ['check', local])).toMatch(/No errors were found/);
    expect(await s3.listUploads('images')).toEqual([]);
  });

  test('a local raw disk to S3 as a fixed VHD; an unconvertible input leaves no upload behind', async () => {
    // GIVEN
    const raw = sampleMbrDisk();
    // WHEN
    const ok = await vmieS3(['convert', raw, 's3://images/out/disk.vhd', '--to', 'vhd-fixed']);
    const junk = path.join(work.dir, 'junk.img.gz');
    fs.writeFileSync(junk, zlib.gzipSync(Buffer.from('not a disk image at all')).subarray(0, 20));
    const bad = await vmieS3(['convert', junk, 's3://images/out/junk.vmdk']);
    // THEN
    expect(ok.code).toBe(0);
    const local = path.join(work.dir, 'from-s3.vhd');
    await download('out/disk.vhd', local);
    // qemu sizes VHDs from their CHS geometry unless told to trust the size field.
    expect(run('qemu-img', ['compare', '-f', 'raw', raw, `json:{"driver":"vpc","force_size_calc":"current_size","file":{"driver":"file","filename":"${local}"}}`])).toMatch(/Images are identical/);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/cannot convert/);
    expect(await s3.listUploads('images')).toEqual([]);
    await expect(s3.client.send(new GetObjectCommand({ Bucket: 'images', Key: 'out/junk.vmdk' }))).rejects.toThrow();
  });
});
