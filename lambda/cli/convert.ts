/** `vmie convert`: any disk image the engine reads into one VM Import/Export takes. */
import * as path from 'node:path';
import { UsageError } from './args';
import { EXIT, type Command, type CliIo } from './command';
import { createS3Client } from '../aws/s3';
import { choosePartSize, maxOutputSize, S3MultipartSink, S3UploadError } from '../aws/s3-sink';
import { parseS3Url, S3ObjectError, S3Source } from '../aws/s3-source';
import { formatBytes } from '../disk/bytes';
import { convert, FileSink, type Sink } from '../disk/convert';
import { openForConversion } from '../disk/convert-source';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from '../disk/errors';
import { CachedSource, FileSource, type ByteSource } from '../disk/source';

const TARGETS = ['vmdk', 'vhd', 'vhd-fixed', 'raw'] as const;
type Target = (typeof TARGETS)[number];

/** Reports progress: a bar redrawn in place on a terminal, a line every 10% otherwise. */
export class Progress {
  private readonly started = Date.now();
  private lastDecile = -1;
  private lastDraw = 0;

  public constructor(private readonly io: CliIo, private readonly tty: boolean) {}

  public update(done: number, total: number): void {
    const now = Date.now();
    const fraction = total > 0 ? Math.min(1, done / total) : 1;
    const seconds = (now - this.started) / 1000;
    const rate = seconds > 0 ? done / seconds : 0;
    const left = rate > 0 ? (total - done) / rate : 0;
    const text = `${(fraction * 100).toFixed(1).padStart(5)}%  ${formatBytes(done)} of ${formatBytes(total)}  ${formatBytes(rate)}/s  ${formatDuration(left)} left`;
    if (this.tty) {
      if (now - this.lastDraw < 100 && fraction < 1) return;
      this.lastDraw = now;
      const width = 30;
      const filled = Math.round(fraction * width);
      this.io.stderr(`\r[${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${text}\u001b[K`);
      if (fraction >= 1) this.io.stderr('\n');
    } else {
      const decile = Math.floor(fraction * 10);
      if (decile === this.lastDecile) return;
      this.lastDecile = decile;
      this.io.stderr(`progress: ${text}\n`);
    }
  }
}

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 1) return '0s';
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m${s % 60}s` : `${s}s`;
}

export const convertCommand: Command = {
  name: 'convert',
  summary: 'Convert a disk image into one VM Import/Export takes (stream-optimized VMDK by default)',
  synopsis: 'convert <input file | s3://bucket/key> <output file | s3://bucket/key> [--to vmdk|vhd|vhd-fixed|raw]',
  description: [
    'Reads any disk image vmie inspect recognises (raw, VHD, VHDX, VMDK of any single-file kind, qcow2,',
    'VDI), also gzip-, xz-, zstd- or bzip2-compressed, and writes a stream-optimized VMDK (VMware layout,',
    'zero grains omitted), a dynamic or fixed VHD (size rounded up to 1 MiB), or raw. Input and output',
    'may be local files or S3 objects (an S3 output is a multipart upload). The output appears only',
    'when complete: a failed conversion leaves nothing behind (no file, no upload). Progress goes to stderr.',
    '',
    `Exit status: ${EXIT.OK} converted, ${EXIT.NOT_IMPORTABLE} the input cannot be converted, ${EXIT.USAGE} usage error,`,
    `${EXIT.NO_INPUT} input cannot be opened.`,
  ],
  flags: {
    to: { value: true, valueName: 'format', help: `the output format: ${TARGETS.join(', ')} (default: vmdk)` },
  },
  async run(args, io) {
    if (args.positionals.length !== 2) throw new UsageError('convert needs an input and an output');
    const [input, output] = args.positionals;
    const to = (typeof args.flags.to === 'string' ? args.flags.to : 'vmdk') as Target;
    if (!TARGETS.includes(to)) throw new UsageError(`--to ${to} is not one of ${TARGETS.join(', ')}`);
    const inS3 = input.startsWith('s3://') ? parseS3Url(input) : undefined;
    const outS3 = output.startsWith('s3://') ? parseS3Url(output) : undefined;
    if (input.startsWith('s3://') && !inS3) throw new UsageError(`${input} is not an s3://bucket/key URL`);
    if (output.startsWith('s3://') && !outS3) throw new UsageError(`${output} is not an s3://bucket/key URL`);
    if (inS3 && outS3 ? input === output : !inS3 && !outS3 && path.resolve(input) === path.resolve(output)) {
      throw new UsageError('the output must not be the input');
    }
    const s3 = inS3 || outS3 ? createS3Client({ env: io.env }) : undefined;

    let source: ByteSource;
    try {
      source = inS3 ? await S3Source.open(s3!, inS3.bucket, inS3.key) : await FileSource.open(input);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const why = e instanceof S3ObjectError ? e.message : err.code === 'ENOENT' ? 'no such file' : err.message;
      io.stderr(`vmie: cannot open ${input}: ${why}\n`);
      s3?.destroy();
      return EXIT.NO_INPUT;
    }
    try {
      const opened = await openForConversion(new CachedSource(source, { blockSize: 1024 * 1024, maxBlocks: 16 }));
      try {
        const image = opened.image;
        const sink: Sink = outS3
          ? await S3MultipartSink.create(s3!, {
            bucket: outS3.bucket,
            key: outS3.key,
            partSize: choosePartSize(maxOutputSize(image.virtualSize, to)),
          })
          : await FileSink.create(output);
        const progress = new Progress(io, Boolean(process.stderr.isTTY) && !io.env.CI);
        const started = Date.now();
        const result = await convert(image, to, sink, {
          onProgress: (done, total) => progress.update(done, total),
          ...(outS3 ? { vmdk: { fileName: path.posix.basename(outS3.key) } } : {}),
        });
        const seconds = (Date.now() - started) / 1000;
        const from = `${image.format} (${image.subformat})${opened.compression ? `, ${opened.compression}-compressed` : ''}`;
        io.stdout(
          `${output}: ${to} of ${formatBytes(image.virtualSize)} virtual from ${from}, ` +
            `${formatBytes(result.bytesWritten)} written in ${seconds.toFixed(1)} s (${formatBytes(image.virtualSize / Math.max(seconds, 0.001))}/s)\n`,
        );
        return EXIT.OK;
      } finally {
        await opened.close();
      }
    } catch (e) {
      if (e instanceof UnsupportedImageError || e instanceof ImageFormatError || e instanceof ImageReadError) {
        io.stderr(`vmie: cannot convert ${input}: ${e.message}\n`);
        return EXIT.NOT_IMPORTABLE;
      }
      if (e instanceof S3UploadError || e instanceof S3ObjectError) {
        io.stderr(`vmie: ${e.message}\n`);
        return EXIT.NO_INPUT;
      }
      throw e;
    } finally {
      await source.close?.();
      s3?.destroy();
    }
  },
};
