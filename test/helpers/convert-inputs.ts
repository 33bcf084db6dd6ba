/**
 * Fixtures and helpers for the conversion-input tests: disks compressed by the real tools (gzip,
 * xz, zstd, bzip2), concatenations, cut and patched copies, the pipeline a conversion runs (open,
 * sink, convert, close), and `qemu-img compare` of its output.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cached, rawDisk, tool } from './fixtures';
import { BufferSink, convert, FileSink, type ConvertTarget } from '../../lambda/disk/convert';
import { openForConversion, type ConversionInput, type OpenForConversionOptions } from '../../lambda/disk/convert-source';
import { FileSource } from '../../lambda/disk/source';

export const KiB = 1024;
export const MiB = 1024 * KiB;

export type Kind = 'gzip' | 'xz' | 'zstd' | 'bzip2';
export const KINDS: readonly Kind[] = ['gzip', 'xz', 'zstd', 'bzip2'];
export const EXT: Record<Kind, string> = { gzip: 'gz', xz: 'xz', zstd: 'zst', bzip2: 'bz2' };

/**
 * The disk most tests convert: 24 MiB, GPT (with its backup at the end), one ext4 partition, and
 * runs of pseudo-random bytes scattered over it.
 */
export function sampleDisk(): string {
  return rawDisk({
    sizeMiB: 24,
    table: 'gpt',
    partitions: [{ type: '0FC63DAF-8483-4772-8E79-3D69D8477DE4', fs: 'ext4' }],
    scatter: [2, 6, 13, 20],
  });
}

/** A 1 MiB MBR disk with 64 KiB of pseudo-random data: small enough to mutate at random. */
export function tinyDisk(): string {
  return rawDisk({ sizeMiB: 1, table: 'mbr', partitions: [{ type: '83' }], scatter: [0.5] });
}

/** How a file is compressed: as the tool does by default, from a pipe (no size in the header), or in many blocks. */
export type Variant = 'default' | 'piped' | 'blocks';

/** Runs `sh -c script`, failing loudly. */
function shell(script: string): void {
  const r = spawnSync('sh', ['-c', script], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${script} failed: ${r.stderr}`);
}

/** `file` compressed with the real tool, cached. */
export function compressedCopy(file: string, kind: Kind, variant: Variant = 'default'): string {
  const tag = variant === 'default' ? '' : `.${variant}`;
  return cached(`${path.basename(file)}${tag}.${EXT[kind]}`, (out) => {
    const exe = tool(kind);
    const args = variant === 'blocks' && kind === 'xz' ? '-T2 --block-size=1MiB -c' : kind === 'zstd' ? '-q -c' : '-c';
    if (variant === 'piped') shell(`cat "${file}" | "${exe}" ${args} > "${out}"`);
    else shell(`"${exe}" ${args} "${file}" > "${out}"`);
  });
}

/** The files in `parts` one after the other (concatenated streams), cached under a name made of theirs. */
export function concatenated(parts: readonly string[], ext: string): string {
  return cached(`${parts.map((p) => path.basename(p)).join('+')}.${ext}`, (out) => {
    fs.writeFileSync(out, Buffer.concat(parts.map((p) => fs.readFileSync(p))));
  });
}

/** Bytes `[start, end)` of `file` as a file of their own, cached. */
export function sliceOf(file: string, start: number, end: number): string {
  return cached(`${path.basename(file)}.${start}-${end}.raw`, (out) => {
    fs.writeFileSync(out, fs.readFileSync(file).subarray(start, end));
  });
}

/** A copy of `file` in `dir` under `name`, changed by `edit` (which may return a shorter buffer). */
export function patchedCopy(file: string, dir: string, name: string, edit: (data: Buffer) => Buffer | void): string {
  const data = fs.readFileSync(file);
  const out = path.join(dir, name);
  fs.writeFileSync(out, edit(data) ?? data);
  return out;
}

/** Runs qemu-img and returns its exit status and output. */
export function qemu(args: string[]): { status: number; out: string } {
  const r = spawnSync(tool('qemu-img'), args, { encoding: 'utf8' });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

/** `qemu-img compare` of a raw disk with a converted output (vmdk or raw). */
export function qemuCompare(original: string, output: string, target: 'vmdk' | 'raw'): { status: number; out: string } {
  return qemu(['compare', '-f', 'raw', '-F', target, original, output]);
}

/** Where a conversion failed, and how. */
export interface PipelineOutcome {
  readonly stage: 'open' | 'convert' | 'done';
  readonly error?: unknown;
  readonly input?: ConversionInput;
  readonly sink?: FileSink | BufferSink;
  /** Bytes read from the input file. */
  readonly bytesRead: number;
}

/**
 * What a conversion does, end to end: open the input for conversion, create the sink (a file
 * `out` in `outDir`, or a buffer), convert, and close the input whatever happened.
 */
export async function runPipeline(
  input: string,
  target: ConvertTarget,
  sinkKind: 'file' | 'buffer',
  outDir: string,
  options: OpenForConversionOptions = {},
): Promise<PipelineOutcome> {
  const src = await FileSource.open(input);
  let stage: PipelineOutcome['stage'] = 'open';
  let opened: ConversionInput | undefined;
  let sink: FileSink | BufferSink | undefined;
  try {
    opened = await openForConversion(src, options);
    stage = 'convert';
    sink = sinkKind === 'file' ? await FileSink.create(path.join(outDir, `out.${target}`)) : new BufferSink();
    await convert(opened.image, target, sink);
    stage = 'done';
    return { stage, input: opened, sink, bytesRead: src.stats.bytesRead };
  } catch (error) {
    return { stage, error, input: opened, sink, bytesRead: src.stats.bytesRead };
  } finally {
    await opened?.close();
    await src.close();
  }
}
