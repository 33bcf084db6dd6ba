import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ASSETS_DIR } from '../helpers/bundles';
import { qemuConvert, run, sampleGptDisk, sampleMbrDisk, tempDir } from '../helpers/fixtures';

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
