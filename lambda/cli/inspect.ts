/** `vmie inspect`: what an image is and whether VM Import/Export takes it, from its headers. */
import { UsageError } from './args';
import { EXIT, type Command } from './command';
import { createS3Client } from '../aws/s3';
import { parseS3Url, S3ObjectError, S3Source } from '../aws/s3-source';
import { inspect } from '../disk/inspect';
import { renderReport } from '../disk/report';
import { FileSource, type ByteSource } from '../disk/source';

/** Opens a local file or an S3 object, with what releases it. */
async function openInput(input: string, region: string | undefined): Promise<{ source: ByteSource; done: () => Promise<void> }> {
  if (input.startsWith('s3://')) {
    const where = parseS3Url(input);
    if (!where) throw new UsageError(`${input} is not an S3 URL of an object (s3://bucket/key)`);
    const client = createS3Client(region ? { region } : {});
    try {
      const source = await S3Source.open(client, where.bucket, where.key);
      return { source, done: async () => client.destroy() };
    } catch (e) {
      client.destroy();
      throw e;
    }
  }
  const source = await FileSource.open(input);
  return { source, done: () => source.close() };
}

export const inspectCommand: Command = {
  name: 'inspect',
  summary: 'Tell whether VM Import/Export takes an image as it is, after conversion, or not at all',
  synopsis: 'inspect <file | s3://bucket/key> [--json] [--region <region>]',
  description: [
    'Reads only the headers and tables of the image (a few requests for an S3 object), detects its',
    'format by content, looks at its partitions and boot layout, and lists what VM Import would reject,',
    'with the remedy for each finding.',
    '',
    `Exit status: ${EXIT.OK} importable as it is, ${EXIT.NEEDS_CONVERSION} importable after conversion, ${EXIT.NOT_IMPORTABLE} not importable,`,
    `${EXIT.USAGE} usage error, ${EXIT.NO_INPUT} input cannot be opened.`,
  ],
  flags: {
    json: { help: 'print the report as one JSON object' },
    region: { value: true, valueName: 'region', help: 'the Region of the S3 bucket (default: from the AWS environment)' },
  },
  async run(args, io) {
    if (args.positionals.length === 0) throw new UsageError('inspect needs a file or an s3://bucket/key');
    if (args.positionals.length > 1) throw new UsageError(`inspect takes one input, got ${args.positionals.length}`);
    const input = args.positionals[0];
    const region = typeof args.flags.region === 'string' ? args.flags.region : undefined;
    let opened;
    try {
      opened = await openInput(input, region);
    } catch (e) {
      if (e instanceof UsageError) throw e;
      const err = e as NodeJS.ErrnoException;
      if (e instanceof S3ObjectError || err.code === 'ENOENT' || err.code === 'EACCES' || err.code === 'EISDIR' || err.name === 'ImageReadError') {
        io.stderr(`vmie: cannot open ${input}: ${err.code === 'ENOENT' ? 'no such file' : err.message}\n`);
        return EXIT.NO_INPUT;
      }
      throw e;
    }
    try {
      const report = await inspect(opened.source, { name: input.startsWith('s3://') ? input.replace(/^s3:\/\/[^/]+\//, '') : undefined });
      io.stdout(args.flags.json ? `${JSON.stringify(report, null, 2)}\n` : renderReport(report));
      if (report.importable) return EXIT.OK;
      return report.needsConversion ? EXIT.NEEDS_CONVERSION : EXIT.NOT_IMPORTABLE;
    } finally {
      await opened.done();
    }
  },
};
