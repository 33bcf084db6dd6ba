/**
 * `vmie import` and `vmie export`: start an execution of the deployed import or export workflow,
 * and with `--follow`, show each state as it is entered and the task's progress until it ends.
 *
 * The state machine is named by `--state-machine <arn>` or the environment
 * (`VMIE_IMPORT_STATE_MACHINE`, `VMIE_EXPORT_STATE_MACHINE`: the stack's outputs).
 */
// The SDK is bundled into the vmie command by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import {
  DescribeExecutionCommand,
  GetExecutionHistoryCommand,
  SFNClient,
  StartExecutionCommand,
  type HistoryEvent,
} from '@aws-sdk/client-sfn';
import { UsageError, type ParsedArgs } from './args';
import { EXIT, type CliIo, type Command } from './command';
import { parseS3Url } from '../aws/s3-source';

/** How often `--follow` asks, unless `--interval` says otherwise. */
const DEFAULT_INTERVAL_S = 10;

/** Ends a follow: the execution's final status. */
type Final = 'SUCCEEDED' | 'FAILED' | 'TIMED_OUT' | 'ABORTED';

/** An SFN client; the SDK takes `AWS_ENDPOINT_URL_SFN` from the environment by itself. */
function sfnClient(io: CliIo): SFNClient {
  const region = io.env.AWS_REGION ?? io.env.AWS_DEFAULT_REGION;
  return new SFNClient({ ...(region ? { region } : {}), maxAttempts: 5 });
}

function stateMachineArn(args: ParsedArgs, io: CliIo, envName: string, what: string): string {
  const arn = typeof args.flags['state-machine'] === 'string' ? args.flags['state-machine'] : io.env[envName];
  if (!arn) throw new UsageError(`name the ${what} state machine with --state-machine <arn> or ${envName} (the stack's output)`);
  if (!/^arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:stateMachine:[A-Za-z0-9_-]+$/.test(arn)) {
    throw new UsageError(`${arn} is not a state machine ARN (arn:aws:states:<region>:<account>:stateMachine:<name>)`);
  }
  return arn;
}

function interval(args: ParsedArgs): number {
  const raw = args.flags.interval;
  if (raw === undefined) return DEFAULT_INTERVAL_S * 1000;
  const s = Number(raw);
  if (typeof raw !== 'string' || !Number.isFinite(s) || s <= 0 || s > 3600) throw new UsageError(`--interval ${String(raw)} is not a number of seconds from 0 to 3600`);
  return s * 1000;
}

/** Starts an execution; follows it when asked. */
async function startAndMaybeFollow(args: ParsedArgs, io: CliIo, arn: string, input: unknown, name?: string): Promise<number> {
  const client = sfnClient(io);
  try {
    const started = await client.send(new StartExecutionCommand({ stateMachineArn: arn, input: JSON.stringify(input), ...(name ? { name } : {}) }));
    const executionArn = started.executionArn!;
    if (!args.flags.follow) {
      io.stdout(`${args.flags.json ? JSON.stringify({ executionArn }) : `started ${executionArn}`}\n`);
      return EXIT.OK;
    }
    io.stderr(`started ${executionArn}\n`);
    const final = await follow(client, executionArn, io, interval(args), Boolean(args.flags.json));
    return final === 'SUCCEEDED' ? EXIT.OK : EXIT.NOT_IMPORTABLE;
  } finally {
    client.destroy();
  }
}

/**
 * Prints each state entered, each progress report of a running task (the check steps fail with
 * `ImportInProgress`/`ExportInProgress` and a JSON cause while the task runs), and the outcome.
 */
export async function follow(client: SFNClient, executionArn: string, io: CliIo, everyMs: number, json: boolean): Promise<Final> {
  let lastId = 0;
  let lastProgress = '';
  for (;;) {
    let token: string | undefined;
    do {
      const page = await client.send(new GetExecutionHistoryCommand({ executionArn, nextToken: token, maxResults: 1000 }));
      for (const e of page.events ?? []) {
        if ((e.id ?? 0) <= lastId) continue;
        lastId = e.id ?? lastId;
        const line = describeEvent(e);
        if (!line) continue;
        if (line.kind === 'progress') {
          if (line.text === lastProgress) continue;
          lastProgress = line.text;
        }
        io.stdout(json ? `${JSON.stringify({ type: e.type, timestamp: e.timestamp, ...line })}\n` : `${line.text}\n`);
      }
      token = page.nextToken;
    } while (token);
    const d = await client.send(new DescribeExecutionCommand({ executionArn }));
    if (d.status && d.status !== 'RUNNING' && d.status !== 'PENDING_REDRIVE') {
      const final = d.status as Final;
      if (final === 'SUCCEEDED') {
        io.stdout(json ? `${JSON.stringify({ status: final, output: d.output ? JSON.parse(d.output) : undefined })}\n` : `succeeded: ${summarize(d.output)}\n`);
      } else {
        io.stderr(`${final.toLowerCase().replace('_', ' ')}: ${d.error ?? ''}${d.cause ? ` ${d.cause}` : ''}\n`);
      }
      return final;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

function describeEvent(e: HistoryEvent): { kind: 'state' | 'progress'; text: string } | undefined {
  const entered = e.stateEnteredEventDetails;
  if (entered?.name && e.type?.endsWith('StateEntered')) return { kind: 'state', text: `> ${entered.name}` };
  const failed = e.lambdaFunctionFailedEventDetails ?? e.taskFailedEventDetails;
  if (failed && /^(Import|Export)InProgress$/.test(failed.error ?? '')) {
    const p = parseProgress(failed.cause);
    if (p) return { kind: 'progress', text: `  ${p.status}${p.statusMessage ? ` (${p.statusMessage})` : ''}${p.progress !== undefined ? ` ${p.progress}%` : ''}` };
  }
  return undefined;
}

/** The progress a check step reported: its cause is `{"errorMessage": "<JSON>"}` or the JSON itself. */
function parseProgress(cause: string | undefined): { status: string; progress?: number | string; statusMessage?: string } | undefined {
  if (!cause) return undefined;
  try {
    let v = JSON.parse(cause);
    if (typeof v?.errorMessage === 'string') v = JSON.parse(v.errorMessage);
    return typeof v?.status === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}

function summarize(output: string | undefined): string {
  if (!output) return '';
  try {
    const o = JSON.parse(output);
    const parts = [o.imageId && `AMI ${o.imageId}`, o.name && `named ${o.name}`, o.object && `s3://${o.object.bucket}/${o.object.key}`].filter(Boolean);
    return parts.length ? parts.join(', ') : output;
  } catch {
    return output;
  }
}

const COMMON_FLAGS = {
  'state-machine': { value: true, valueName: 'arn', help: 'the workflow\'s state machine (default: from the environment, see below)' },
  'follow': { short: 'f', help: 'show each state and the task\'s progress until the execution ends' },
  'interval': { value: true, valueName: 'seconds', help: `how often --follow asks (default: ${DEFAULT_INTERVAL_S})` },
  'json': { help: 'print JSON lines instead of text' },
} as const;

export const importCommand: Command = {
  name: 'import',
  summary: 'Start the import workflow for an image in S3 (and follow it)',
  synopsis: 'import <s3://bucket/key> [s3://bucket/key2 ...] [--mode image|snapshot] [--follow]',
  description: [
    'Starts an execution of the deployed import workflow for the image, or for the disks of one VM',
    '(boot disk first). The state machine comes from --state-machine or VMIE_IMPORT_STATE_MACHINE.',
    '',
    `Exit status: ${EXIT.OK} started (or, with --follow, imported), ${EXIT.NOT_IMPORTABLE} the import failed,`,
    `${EXIT.USAGE} usage error.`,
  ],
  flags: {
    ...COMMON_FLAGS,
    mode: { value: true, valueName: 'mode', help: 'image (ImportImage, default) or snapshot (ImportSnapshot + RegisterImage)' },
    name: { value: true, valueName: 'ami-name', help: 'the AMI\'s name' },
  },
  async run(args, io) {
    if (args.positionals.length === 0) throw new UsageError('import needs the s3:// URL of an image');
    const disks = args.positionals.map((url) => {
      const ref = parseS3Url(url);
      if (!ref) throw new UsageError(`${url} is not an s3://bucket/key URL`);
      return ref;
    });
    const mode = args.flags.mode;
    if (mode !== undefined && mode !== 'image' && mode !== 'snapshot') throw new UsageError(`--mode ${String(mode)} is not image or snapshot`);
    const options: Record<string, unknown> = {};
    if (typeof mode === 'string') options.mode = mode;
    if (typeof args.flags.name === 'string') options.amiName = args.flags.name;
    const input = {
      ...(disks.length === 1 ? disks[0] : { bucket: disks[0].bucket, key: disks[0].key, disks }),
      ...(Object.keys(options).length ? { options } : {}),
    };
    return startAndMaybeFollow(args, io, stateMachineArn(args, io, 'VMIE_IMPORT_STATE_MACHINE', 'import'), input);
  },
};

const EXPORT_FORMATS = ['vmdk', 'vhd', 'raw', 'ova'];

export const exportCommand: Command = {
  name: 'export',
  summary: 'Start the export workflow for an AMI or an instance (and follow it)',
  synopsis: 'export <ami-id | i-id> [--format vmdk|vhd|raw|ova] [--prefix p/] [--follow]',
  description: [
    'Starts an execution of the deployed export workflow. OVA is for instances only. The state',
    'machine comes from --state-machine or VMIE_EXPORT_STATE_MACHINE.',
    '',
    `Exit status: ${EXIT.OK} started (or, with --follow, exported), ${EXIT.NOT_IMPORTABLE} the export failed,`,
    `${EXIT.USAGE} usage error.`,
  ],
  flags: {
    ...COMMON_FLAGS,
    'format': { value: true, valueName: 'format', help: `${EXPORT_FORMATS.join(', ')} (default: the workflow's)` },
    'prefix': { value: true, valueName: 'prefix', help: 'key prefix in the export bucket (default: the workflow\'s)' },
    'target-environment': { value: true, valueName: 'env', help: 'instances: vmware (default), citrix or microsoft' },
  },
  async run(args, io) {
    if (args.positionals.length !== 1) throw new UsageError('export needs one AMI id (ami-...) or instance id (i-...)');
    const [id] = args.positionals;
    const format = args.flags.format;
    if (format !== undefined && (typeof format !== 'string' || !EXPORT_FORMATS.includes(format.toLowerCase()))) {
      throw new UsageError(`--format ${String(format)} is not one of ${EXPORT_FORMATS.join(', ')}`);
    }
    const input: Record<string, unknown> = {};
    if (/^ami-[0-9a-f]{8,17}$/.test(id)) {
      if (typeof format === 'string' && format.toLowerCase() === 'ova') throw new UsageError('OVA is for instance exports; an AMI exports to vmdk, vhd or raw');
      if (args.flags['target-environment'] !== undefined) throw new UsageError('--target-environment is for instance exports');
      input.imageId = id;
    } else if (/^i-[0-9a-f]{8,17}$/.test(id)) {
      input.instanceId = id;
      const env = args.flags['target-environment'];
      if (env !== undefined && !['vmware', 'citrix', 'microsoft'].includes(String(env))) throw new UsageError(`--target-environment ${String(env)} is not vmware, citrix or microsoft`);
      if (typeof env === 'string') input.targetEnvironment = env;
    } else {
      throw new UsageError(`${id} is neither an AMI id (ami-...) nor an instance id (i-...)`);
    }
    if (typeof format === 'string') input.format = format.toUpperCase();
    if (typeof args.flags.prefix === 'string') input.prefix = args.flags.prefix;
    return startAndMaybeFollow(args, io, stateMachineArn(args, io, 'VMIE_EXPORT_STATE_MACHINE', 'export'), input);
  },
};
