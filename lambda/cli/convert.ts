/** `vmie convert`: any disk image the engine reads into one VM Import/Export takes. */
import * as path from 'node:path';
import { UsageError } from './args';
import { EXIT, type Command, type CliIo } from './command';
import { formatBytes } from '../disk/bytes';
import { convert, FileSink } from '../disk/convert';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from '../disk/errors';
import { openDiskImage } from '../disk/inspect';
import { CachedSource, FileSource } from '../disk/source';

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
  synopsis: 'convert <input file> <output file> [--to vmdk|vhd|vhd-fixed|raw]',
  description: [
    'Reads any disk image vmie inspect recognises (raw, VHD, VHDX, VMDK of any single-file kind, qcow2,',
    'VDI) and writes a stream-optimized VMDK (VMware layout, zero grains omitted), a dynamic or fixed VHD',
    '(size rounded up to 1 MiB), or raw. The output appears only when complete: a failed conversion',
    'leaves nothing behind. Progress goes to stderr.',
    '',
    `Exit status: ${EXIT.OK} converted, ${EXIT.NOT_IMPORTABLE} the input cannot be converted, ${EXIT.USAGE} usage error,`,
    `${EXIT.NO_INPUT} input cannot be opened.`,
  ],
  flags: {
    to: { value: true, valueName: 'format', help: `the output format: ${TARGETS.join(', ')} (default: vmdk)` },
  },
  async run(args, io) {
    if (args.positionals.length !== 2) throw new UsageError('convert needs an input file and an output file');
    const [input, output] = args.positionals;
    const to = (typeof args.flags.to === 'string' ? args.flags.to : 'vmdk') as Target;
    if (!TARGETS.includes(to)) throw new UsageError(`--to ${to} is not one of ${TARGETS.join(', ')}`);
    if (input.startsWith('s3://') || output.startsWith('s3://')) {
      throw new UsageError('convert works on local files; the import workflow converts objects in S3');
    }
    if (path.resolve(input) === path.resolve(output)) throw new UsageError('the output must not be the input');

    let source: FileSource;
    try {
      source = await FileSource.open(input);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      io.stderr(`vmie: cannot open ${input}: ${err.code === 'ENOENT' ? 'no such file' : err.message}\n`);
      return EXIT.NO_INPUT;
    }
    try {
      const image = await openDiskImage(new CachedSource(source, { blockSize: 1024 * 1024, maxBlocks: 16 }));
      const sink = await FileSink.create(output);
      const progress = new Progress(io, Boolean(process.stderr.isTTY) && !io.env.CI);
      const started = Date.now();
      const result = await convert(image, to, sink, { onProgress: (done, total) => progress.update(done, total) });
      const seconds = (Date.now() - started) / 1000;
      io.stdout(
        `${output}: ${to} of ${formatBytes(image.virtualSize)} virtual from ${image.format} (${image.subformat}), ` +
          `${formatBytes(result.bytesWritten)} written in ${seconds.toFixed(1)} s (${formatBytes(image.virtualSize / Math.max(seconds, 0.001))}/s)\n`,
      );
      return EXIT.OK;
    } catch (e) {
      if (e instanceof UnsupportedImageError || e instanceof ImageFormatError || e instanceof ImageReadError) {
        io.stderr(`vmie: cannot convert ${input}: ${e.message}\n`);
        return EXIT.NOT_IMPORTABLE;
      }
      throw e;
    } finally {
      await source.close();
    }
  },
};
