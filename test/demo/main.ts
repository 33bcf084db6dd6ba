/**
 * `npm run demo`: a local end-to-end import, offline. It synthesizes the example app to cdk.out,
 * starts the local AWS (an S3 server, the EC2 VM Import simulator and the synthesized import state
 * machine, all on one simulated clock), uploads a sample image made in JavaScript by the project's
 * own writer, starts the import with the event the trigger rule sends, and prints each state, the
 * import's progress and the resulting AMI.
 *
 * The sample: a sparse raw disk built byte by byte (an MBR with one active Linux partition whose
 * ext4 superblock carries what the probes read), written as a dynamic VHD by the project's VHD
 * writer, then gzipped. VM Import does not take gzip, so the workflow converts it to a
 * stream-optimized VMDK (the project's VMDK writer, in the convert step) before importing it.
 *
 * Lambda tasks run the bundles in `assets/` as staged in the cloud assembly; waits and retry
 * back-offs take simulated time only, so an import of forty simulated minutes ends in seconds.
 */
import { randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import { HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { CfnResource, Stack } from 'aws-cdk-lib';
import { exampleApp, type VmImportExportExampleStack } from './example-app';
import { convert, FileSink } from '../../lambda/disk/convert';
import type { DiskImage, Extent } from '../../lambda/disk/image';
import { openRaw } from '../../lambda/disk/raw';
import { FileSource } from '../../lambda/disk/source';
import { startLocalAws, type LocalAws } from '../helpers/local-aws';
import { ACCOUNT_ID, engineInspect, type InspectContext } from '../helpers/local-ec2';
import { LocalWorkflow, retryDelayMs, type LocalExecution, type LocalExecutionEvent, type LocalExecutionResult } from '../helpers/local-sfn';
import { VirtualClock } from '../helpers/virtual-clock';

const SECTOR = 512;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** Options of {@link runDemo}. */
export interface DemoOptions {
  /** Where the cloud assembly goes. @default `<cwd>/cdk.out` */
  readonly outdir?: string;
  /** Where the sample image is made (a temporary directory, removed at the end). @default - under the OS temporary directory */
  readonly tempRoot?: string;
  /** Receives each line the demo prints. @default - standard output */
  readonly print?: (line: string) => void;
  /** The Region of the example stack and of the local AWS. @default 'eu-west-1' */
  readonly region?: string;
  /** Virtual size of the sample disk. @default 2 GiB */
  readonly sampleSize?: number;
  /** Where the import bucket's objects live in the local S3 (its physical name). @default 'vmie-demo-imports' */
  readonly bucketName?: string;
}

/** What one demo run did. */
export interface DemoResult {
  readonly status: LocalExecutionResult['status'];
  /** The execution's output (the import's result: the AMI and how it was made). */
  readonly output?: any;
  readonly error?: string;
  readonly cause?: string;
  readonly imageId?: string;
  readonly imageName?: string;
  /** The AMI as the EC2 simulator holds it at the end. */
  readonly ami?: { readonly state: string; readonly bootMode?: string; readonly tags: Record<string, string> };
  /** The states entered, in order. */
  readonly statesEntered: string[];
  /** The events the workflow put on the default bus. */
  readonly events: ReadonlyArray<{ source: string; detailType: string; detail: any }>;
  /** The progress the check step reported while the import ran, in percent. */
  readonly progress: number[];
  readonly simulatedMs: number;
  readonly transitions: number;
  readonly lambdaInvocations: number;
  readonly realMs: number;
  /** The sample image as uploaded. */
  readonly sample: { readonly key: string; readonly size: number; readonly virtualSize: number };
  /** The lines printed. */
  readonly lines: string[];
}

/** Where the sample disk holds data: the MBR, and the ext4 superblock of its partition. */
export interface SampleLayout {
  /** The partition's first sector. */
  readonly partitionStart: number;
  readonly partitionSectors: number;
  /** The ranges written, in increasing order; the rest of the disk is a hole. */
  readonly written: Extent[];
}

/**
 * Writes a sparse raw disk of `size` bytes (a multiple of 1 MiB, from 2 MiB to 2 TiB) to `file`:
 * an MBR (disk signature, one active partition of type 0x83 from sector 2048 to the end, 55 AA)
 * and, 1024 bytes into the partition, an ext4 superblock with what the filesystem probes read
 * (magic, block size and counts, ext4 feature flags, UUID and label; no metadata checksums, so
 * there is no checksum to get wrong).
 * Everything else is a hole.
 */
export async function writeSampleRawDisk(file: string, size: number): Promise<SampleLayout> {
  if (!Number.isSafeInteger(size) || size < 2 * MiB || size % MiB !== 0 || size / SECTOR > 0xffffffff) {
    throw new RangeError(`a sample disk is a whole number of MiB, from 2 MiB to 2 TiB, not ${size}`);
  }
  const partitionStart = 2048;
  const partitionSectors = size / SECTOR - partitionStart;

  const mbr = Buffer.alloc(SECTOR);
  mbr.writeUInt32LE(0x766d6965, 440); // disk signature
  const entry = 446;
  mbr[entry] = 0x80; // active
  mbr.set([0xfe, 0xff, 0xff], entry + 1); // CHS start: past the CHS range, as on any modern disk
  mbr[entry + 4] = 0x83; // Linux
  mbr.set([0xfe, 0xff, 0xff], entry + 5); // CHS end
  mbr.writeUInt32LE(partitionStart, entry + 8);
  mbr.writeUInt32LE(partitionSectors, entry + 12);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;

  const blockSize = 4096;
  const blocks = Math.floor((partitionSectors * SECTOR) / blockSize);
  const groups = Math.ceil(blocks / 32768);
  const inodes = groups * 8192;
  const sb = Buffer.alloc(1024);
  sb.writeUInt32LE(inodes, 0); // s_inodes_count
  sb.writeUInt32LE(blocks, 4); // s_blocks_count_lo
  sb.writeUInt32LE(Math.floor(blocks / 20), 8); // s_r_blocks_count_lo: 5 %
  sb.writeUInt32LE(Math.max(0, blocks - 2 * groups - 1024), 12); // s_free_blocks_count_lo
  sb.writeUInt32LE(inodes - 11, 16); // s_free_inodes_count
  sb.writeUInt32LE(0, 20); // s_first_data_block: 0 with 4 KiB blocks
  sb.writeUInt32LE(2, 24); // s_log_block_size: 1024 << 2
  sb.writeUInt32LE(2, 28); // s_log_cluster_size
  sb.writeUInt32LE(32768, 32); // s_blocks_per_group
  sb.writeUInt32LE(32768, 36); // s_clusters_per_group
  sb.writeUInt32LE(8192, 40); // s_inodes_per_group
  sb.writeUInt16LE(0xffff, 54); // s_max_mnt_count: -1
  sb.writeUInt16LE(0xef53, 56); // s_magic
  sb.writeUInt16LE(1, 58); // s_state: clean
  sb.writeUInt16LE(1, 60); // s_errors: continue
  sb.writeUInt32LE(1, 76); // s_rev_level: dynamic inode sizes
  sb.writeUInt32LE(11, 84); // s_first_ino
  sb.writeUInt16LE(256, 88); // s_inode_size
  sb.writeUInt32LE(0x4 | 0x8 | 0x10 | 0x20, 92); // compat: has_journal, ext_attr, resize_inode, dir_index
  sb.writeUInt32LE(0x2 | 0x40 | 0x80 | 0x200, 96); // incompat: filetype, extents, 64bit, flex_bg
  sb.writeUInt32LE(0x1 | 0x2 | 0x8 | 0x20 | 0x40, 100); // ro_compat: sparse_super, large_file, huge_file, dir_nlink, extra_isize
  Buffer.from('766d69652d64656d6f2d726f6f742d31', 'hex').copy(sb, 104); // s_uuid
  sb.write('demo-root', 120, 'latin1'); // s_volume_name

  const superblockAt = partitionStart * SECTOR + 1024;
  const handle = await fs.open(file, 'w');
  try {
    await handle.truncate(size);
    await handle.write(mbr, 0, mbr.length, 0);
    await handle.write(sb, 0, sb.length, superblockAt);
  } finally {
    await handle.close();
  }
  return { partitionStart, partitionSectors, written: [{ offset: 0, length: mbr.length }, { offset: superblockAt, length: sb.length }] };
}

/**
 * A raw disk image whose allocation map is the ranges known to hold data (a sparse file's data),
 * so that the writers read and write only those and leave the rest as holes.
 */
function withExtents(image: DiskImage, written: readonly Extent[]): DiskImage {
  return {
    format: image.format,
    subformat: image.subformat,
    virtualSize: image.virtualSize,
    findings: image.findings,
    details: image.details,
    read: (offset, length) => image.read(offset, length),
    extents: async function* () {
      yield* written;
    },
  };
}

/** The sample upload and the sizes along the way. */
export interface SampleImage {
  /** The gzip file. */
  readonly file: string;
  /** The raw disk's (virtual) size. */
  readonly rawSize: number;
  readonly vhdSize: number;
  readonly gzipSize: number;
}

/**
 * Makes the sample upload in `dir`: the raw disk of {@link writeSampleRawDisk}, written as a
 * dynamic VHD by the project's writer (only the blocks that hold data), then gzipped. Returns the
 * gzip file and the sizes along the way.
 */
export async function makeSampleImage(dir: string, virtualSize: number): Promise<SampleImage> {
  const raw = path.join(dir, 'sample.img');
  const vhd = path.join(dir, 'sample.vhd');
  const gz = path.join(dir, 'sample.vhd.gz');
  const layout = await writeSampleRawDisk(raw, virtualSize);
  const source = await FileSource.open(raw);
  try {
    await convert(withExtents(await openRaw(source), layout.written), 'vhd', await FileSink.create(vhd));
  } finally {
    await source.close();
  }
  await pipeline(createReadStream(vhd), zlib.createGzip({ level: 6 }), createWriteStream(gz));
  const [vhdStat, gzStat] = await Promise.all([fs.stat(vhd), fs.stat(gz)]);
  return { file: gz, rawSize: virtualSize, vhdSize: vhdStat.size, gzipSize: gzStat.size };
}

/** The S3 `Object Created` event as EventBridge delivers it for an upload (what the trigger rule passes on). */
export function objectCreatedEvent(o: {
  bucket: string;
  key: string;
  size: number;
  etag: string;
  region: string;
  account: string;
  time: Date;
}): any {
  return {
    'version': '0',
    'id': randomUUID(),
    'detail-type': 'Object Created',
    'source': 'aws.s3',
    'account': o.account,
    'time': o.time.toISOString().replace(/\.\d{3}Z$/, 'Z'),
    'region': o.region,
    'resources': [`arn:aws:s3:::${o.bucket}`],
    'detail': {
      'version': '0',
      'bucket': { name: o.bucket },
      'object': { key: o.key, size: o.size, etag: o.etag, sequencer: '0062E99A88DC407460' },
      'request-id': 'N4N7GDK58NMKJ12R',
      'requester': o.account,
      'source-ip-address': '198.51.100.7',
      'reason': 'PutObject',
    },
  };
}

/**
 * Whether `event` matches an EventBridge event pattern, for the pattern features the trigger rule
 * uses: lists of exact values, `{ wildcard }` and `{ prefix }` matchers, nested objects. Any other
 * matcher is refused, rather than guessed.
 */
export function matchesEventPattern(pattern: any, event: any): boolean {
  for (const [field, expected] of Object.entries<any>(pattern)) {
    const actual = event?.[field];
    if (Array.isArray(expected)) {
      if (!expected.some((m) => matchValue(m, actual))) return false;
    } else if (expected !== null && typeof expected === 'object') {
      if (actual === null || typeof actual !== 'object' || !matchesEventPattern(expected, actual)) return false;
    } else {
      throw new Error(`invalid event pattern at ${field}: ${JSON.stringify(expected)}`);
    }
  }
  return true;
}

function matchValue(matcher: any, actual: any): boolean {
  if (matcher === null || typeof matcher !== 'object') return matcher === actual;
  if (typeof matcher.wildcard === 'string') return typeof actual === 'string' && wildcardRegExp(matcher.wildcard).test(actual);
  if (typeof matcher.prefix === 'string') return typeof actual === 'string' && actual.startsWith(matcher.prefix);
  throw new Error(`event pattern matcher ${JSON.stringify(matcher)} is not supported here`);
}

/** An EventBridge wildcard (`*` any run of characters, `\*` and `\\` literal) as a regular expression. */
function wildcardRegExp(wildcard: string): RegExp {
  let re = '';
  for (let i = 0; i < wildcard.length; i++) {
    const c = wildcard[i];
    if (c === '\\' && i + 1 < wildcard.length) re += escapeRegExp(wildcard[++i]);
    else if (c === '*') re += '.*';
    else re += escapeRegExp(c);
  }
  return new RegExp(`^${re}$`, 's');
}

function escapeRegExp(c: string): string {
  return c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

/** `ms` as `+hh:mm:ss`. */
function elapsed(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  const pad = (n: number) => String(n).padStart(2, '0');
  return `+${pad(Math.floor(s / 3600))}:${pad(Math.floor((s % 3600) / 60))}:${pad(s % 60)}`;
}

function human(bytes: number): string {
  if (bytes >= GiB) return `${(bytes / GiB).toFixed(bytes % GiB === 0 ? 0 : 1)} GiB`;
  if (bytes >= MiB) return `${(bytes / MiB).toFixed(1)} MiB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${bytes} B`;
}

function logicalIdOf(stack: Stack, construct: { node: { defaultChild?: unknown } }): string {
  const child = construct.node.defaultChild;
  if (!CfnResource.isCfnResource(child as any)) throw new Error('the construct has no CloudFormation resource');
  return stack.resolve((child as CfnResource).logicalId);
}

/** The Lambda error payload's message, or the cause as it is. */
function causeMessage(cause: unknown): string {
  if (typeof cause !== 'string') return JSON.stringify(cause);
  try {
    const parsed = JSON.parse(cause);
    if (typeof parsed?.errorMessage === 'string') return parsed.errorMessage;
  } catch {
    // not JSON: the cause as it is
  }
  return cause;
}

/** The import's progress, from the cause of an ImportInProgress error (the JSON of the task's progress). */
function progressOf(cause: unknown): { status: string; progress: number; statusMessage?: string } | undefined {
  try {
    const p = JSON.parse(causeMessage(cause));
    return typeof p?.progress === 'number' && typeof p?.status === 'string' ? p : undefined;
  } catch {
    return undefined;
  }
}

/** Runs the demo; resolves when the import has ended, whatever its end. */
export async function runDemo(options: DemoOptions = {}): Promise<DemoResult> {
  const realStart = Date.now();
  const lines: string[] = [];
  const out = options.print ?? ((line: string) => process.stdout.write(`${line}\n`));
  const print = (line = '') => {
    lines.push(line);
    out(line);
  };
  const region = options.region ?? 'eu-west-1';
  const bucketName = options.bucketName ?? 'vmie-demo-imports';
  const virtualSize = options.sampleSize ?? 2 * GiB;

  // 1. Synthesize the example app.
  const outdir = options.outdir ?? path.join(process.cwd(), 'cdk.out');
  const { app, stack } = exampleApp(outdir, { account: ACCOUNT_ID, region });
  const assembly = app.synth();
  const template = assembly.getStackByName(stack.stackName).template;
  printSynthesis(print, stack, template, outdir);

  const work = await fs.mkdtemp(path.join(options.tempRoot ?? os.tmpdir(), 'vmie-demo-'));
  let aws: LocalAws | undefined;
  const restoreConsole = captureConsole();
  try {
    // 2. The sample image.
    const sample = await makeSampleImage(work, virtualSize);
    const key = 'uploads/sample.vhd.gz';
    print('');
    print(`Sample image: a ${human(sample.rawSize)} raw disk built in JavaScript (MBR, one active Linux partition, ext4 superblock),`);
    print(`  written as a dynamic VHD by the project's VHD writer (${human(sample.vhdSize)}), gzipped: ${human(sample.gzipSize)}.`);

    // 3. The local AWS, on one simulated clock that starts now (so that the dates the run leaves
    // behind are today's). The EC2 simulator judges each disk it imports with the engine.
    const clock = new VirtualClock(Math.floor(Date.now() / 1000) * 1000);
    const judge = (bucket: string, k: string, context?: InspectContext) => engineInspect(aws!.s3.client)(bucket, k, context);
    aws = await startLocalAws({
      stack,
      stateMachine: stack.vmie.importWorkflow.stateMachine.node.path,
      buckets: { [bucketName]: stack.vmie.importBucket },
      clock,
      ec2: { region, inspect: judge },
    });
    const { s3, ec2, workflow } = aws;
    print(`Local AWS: S3 at ${s3.endpoint}, the EC2 VM Import simulator at ${ec2.endpoint} (it judges each imported disk with the engine),`);
    print(`  the state machine ${workflow.stateMachineName}`);
    print(`  with ${Object.keys(workflow.functions).length} Lambda functions running their bundles as staged in ${path.relative(process.cwd(), outdir) || '.'}/.`);

    // 4. Upload, and the event the trigger rule passes on.
    const body = await fs.readFile(sample.file);
    await s3.client.send(new PutObjectCommand({ Bucket: bucketName, Key: key, Body: body, ContentType: 'application/gzip' }));
    const head = await s3.client.send(new HeadObjectCommand({ Bucket: bucketName, Key: key }));
    const event = objectCreatedEvent({
      bucket: bucketName,
      key,
      size: head.ContentLength ?? body.length,
      etag: (head.ETag ?? '').replace(/"/g, ''),
      region: workflow.region,
      account: workflow.accountId,
      time: clock.date(),
    });
    const bucketRef = { [logicalIdOf(stack, stack.vmie.importBucket)]: bucketName };
    const rule = triggerPattern(template, logicalIdOf(stack, stack.vmie.importWorkflow.triggerRule!), bucketRef);
    if (!matchesEventPattern(rule, event)) throw new Error('the trigger rule does not match the upload event');
    print(`Uploaded s3://${bucketName}/${key}; the trigger rule matches its Object Created event: starting the import.`);
    print('');

    // 5. Run the state machine, printing as it goes.
    const exec = workflow.start(event, { name: `demo-${randomUUID().slice(0, 8)}` });
    const follower = new Follower(exec, workflow, print);
    const result = await follower.run();

    // 6. The outcome.
    print('');
    const output = result.output;
    const imageId: string | undefined = output?.imageId;
    const image = imageId ? ec2.images().find((i) => i.ImageId === imageId) : undefined;
    const imageName: string | undefined = output?.name ?? image?.Name;
    if (result.status === 'SUCCEEDED' && imageId) {
      print(`AMI ${imageId} (${imageName ?? 'no name'}), ${image?.State ?? 'state unknown'}, boot mode ${image?.BootMode ?? 'unset'}`);
      const tags = (image?.Tags ?? []).map((t) => `${t.Key}=${t.Value}`).join(', ');
      if (tags) print(`  tags: ${tags}`);
    } else {
      print(`The import ended ${result.status}${result.error ? `: ${result.error}` : ''}${result.cause ? ` (${causeMessage(result.cause)})` : ''}`);
    }
    for (const e of workflow.events) {
      print(`Event on the default bus: source ${e.source}, detail-type "${e.detailType}", detail:`);
      for (const line of JSON.stringify(e.detail, null, 2).split('\n')) print(`  ${line}`);
    }
    if (workflow.events.some((e) => typeof e.detail?.durationSeconds === 'number')) {
      print('  (durationSeconds is measured on the clock of the Lambda handlers, which is the real one here:');
      print('  the waits took simulated time only.)');
    }
    const realMs = Date.now() - realStart;
    const lambdaInvocations = follower.lambdaInvocations();
    print('');
    print(`Simulated duration ${elapsed(exec.simulatedMs()).slice(1)}, ${exec.transitions()} state transitions, ${lambdaInvocations} Lambda invocations, real time ${(realMs / 1000).toFixed(1)} s.`);
    return {
      status: result.status,
      output,
      ...(result.error ? { error: result.error } : {}),
      ...(result.cause ? { cause: result.cause } : {}),
      ...(imageId ? { imageId } : {}),
      ...(imageName ? { imageName } : {}),
      ...(image ? { ami: { state: image.State ?? '', bootMode: image.BootMode, tags: Object.fromEntries((image.Tags ?? []).map((t) => [t.Key ?? '', t.Value ?? ''])) } } : {}),
      statesEntered: exec.statesEntered(),
      events: workflow.events.map((e) => ({ source: e.source, detailType: e.detailType, detail: e.detail })),
      progress: follower.progress,
      simulatedMs: exec.simulatedMs(),
      transitions: exec.transitions(),
      lambdaInvocations,
      realMs,
      sample: { key, size: sample.gzipSize, virtualSize },
      lines,
    };
  } finally {
    restoreConsole();
    await aws?.close();
    await fs.rm(work, { recursive: true, force: true });
  }
}

/** The short summary of what the example app synthesizes. */
function printSynthesis(print: (line?: string) => void, stack: VmImportExportExampleStack, template: any, outdir: string): void {
  const resources = Object.values<any>(template.Resources ?? {});
  const byType = new Map<string, number>();
  for (const r of resources) byType.set(r.Type, (byType.get(r.Type) ?? 0) + 1);
  print(`Synthesized ${stack.stackName} (${stack.region}, account ${stack.account}) to ${path.relative(process.cwd(), outdir) || '.'}/: ${resources.length} resources`);
  const entries = [...byType.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const parts = entries.map(([type, n]) => `${n} ${type.replace(/^AWS::/, '')}`);
  for (let i = 0; i < parts.length; i += 5) print(`  ${parts.slice(i, i + 5).join(', ')}`);
  print(`Outputs: ${Object.keys(template.Outputs ?? {}).join(', ')}`);
}

/**
 * The event pattern of the rule `logicalId` of `template`, with each `Ref` replaced by the name
 * `names` gives for it (the import bucket's). Any other intrinsic function is refused.
 */
export function triggerPattern(template: any, logicalId: string, names: Record<string, string>): any {
  const pattern = template.Resources?.[logicalId]?.Properties?.EventPattern;
  if (!pattern) throw new Error(`the rule ${logicalId} has no event pattern`);
  const resolve = (v: any): any => {
    if (Array.isArray(v)) return v.map(resolve);
    if (v === null || typeof v !== 'object') return v;
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === 'Ref') {
      const name = names[v.Ref];
      if (name === undefined) throw new Error(`the rule ${logicalId} refers to ${v.Ref}, whose name is not given`);
      return name;
    }
    if (keys.length === 1 && keys[0].startsWith('Fn::')) throw new Error(`the rule ${logicalId} uses ${keys[0]}, which is not resolved here`);
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, resolve(x)]));
  };
  return resolve(pattern);
}

/**
 * Handlers write structured log lines with console.log; while the demo runs they are kept out of
 * its output (set VMIE_DEMO_VERBOSE=1 to see them).
 */
function captureConsole(): () => void {
  if (process.env.VMIE_DEMO_VERBOSE) return () => undefined;
  const saved = { log: console.log, info: console.info, warn: console.warn, error: console.error, debug: console.debug };
  const quiet = () => undefined;
  console.log = quiet;
  console.info = quiet;
  console.warn = quiet;
  console.error = quiet;
  console.debug = quiet;
  return () => Object.assign(console, saved);
}

/** Follows an execution's event log and prints the states and the import's progress as they come. */
class Follower {
  /** The progress the check step reported, in percent, in order. */
  public readonly progress: number[] = [];
  private seen = 0;
  private invocations = 0;
  /** A failure waiting for what follows it (a retry, a catch, or nothing). */
  private pending?: { at: string; text: string };

  public constructor(
    private readonly exec: LocalExecution,
    private readonly workflow: LocalWorkflow,
    private readonly print: (line?: string) => void,
  ) {}

  public async run(): Promise<LocalExecutionResult> {
    let done = false;
    const result = this.exec.result.finally(() => {
      done = true;
    });
    while (!done) {
      this.drain();
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const outcome = await result;
    this.drain();
    this.flush('');
    return outcome;
  }

  /** Lambda invocations: each entry into, and each retry of, a state that invokes a function. */
  public lambdaInvocations(): number {
    return this.invocations;
  }

  private drain(): void {
    const events = this.exec.events;
    for (; this.seen < events.length; this.seen++) this.show(events[this.seen]);
  }

  private isLambda(state: string): boolean {
    const target = this.workflow.taskTarget(state);
    return target?.kind === 'function' || target?.kind === 'lambda:invoke';
  }

  private flush(suffix: string): void {
    if (!this.pending) return;
    this.print(`${this.pending.at}    ${this.pending.text}${suffix}`);
    this.pending = undefined;
  }

  private show(e: LocalExecutionEvent): void {
    const at = elapsed(e.simulatedTime - this.exec.startDate.getTime());
    const name = e.state?.name ?? '';
    switch (e.type) {
      case 'StateEntered':
        this.flush('');
        if (this.isLambda(name)) this.invocations++;
        this.print(`${at}  ${name}${e.state?.type === 'Wait' ? ` (wait ${this.waitOf(name)})` : ''}`);
        break;
      case 'StateExited': {
        const summary = this.summaryOf(name, e.state?.output);
        if (summary) this.print(`${at}    ${summary}`);
        break;
      }
      case 'StateFailed': {
        this.flush('');
        const p = e.Error === 'ImportInProgress' ? progressOf(e.Cause) : undefined;
        if (p) {
          this.progress.push(p.progress);
          this.pending = { at, text: `import ${p.status}, ${p.progress}%${p.statusMessage ? ` (${p.statusMessage})` : ''}` };
        } else {
          this.pending = { at, text: `${name} failed: ${e.Error ?? 'error'}${e.Cause ? `: ${causeMessage(e.Cause)}` : ''}` };
        }
        break;
      }
      case 'StateRetried':
        if (this.isLambda(name)) this.invocations++;
        this.flush(`; ${name.toLowerCase()} again in ${this.retryDelay(e)}`);
        this.print(`${at}  ${name} (retry ${e.retry?.attempt ?? '?'})`);
        break;
      case 'StateCaught':
        this.flush('; caught');
        break;
      case 'ExecutionSucceeded':
        this.flush('');
        this.print(`${at}  execution succeeded`);
        break;
      case 'ExecutionFailed':
      case 'ExecutionAborted':
      case 'ExecutionTimeout':
        this.flush('');
        this.print(`${at}  ${e.type.replace(/^Execution/, 'execution ').toLowerCase()}`);
        break;
      default:
        break;
    }
  }

  /** What a state added to the execution's state, in a line: by the slot its ResultPath names. */
  private summaryOf(name: string, output: any): string | undefined {
    const resultPath = this.workflow.stateDefinition(name)?.ResultPath;
    const slot = typeof resultPath === 'string' && /^\$\.[A-Za-z]+$/.test(resultPath) ? resultPath.slice(2) : undefined;
    const value = slot ? output?.[slot] : undefined;
    if (value === undefined || value === null) return undefined;
    switch (slot) {
      case 'request': {
        const o = value.options ?? {};
        const opts = Object.entries<any>(o).map(([k, v]) => (k === 'tags' ? `tags ${Object.entries(v).map(([t, x]) => `${t}=${x}`).join(', ')}` : `${k} ${JSON.stringify(v)}`));
        return `AMI name ${value.name}${opts.length ? `; ${opts.join('; ')}` : ''}`;
      }
      case 'validation': {
        const disk = value.report?.disks?.[0];
        const inner = disk && disk.format !== value.format ? ` of a ${disk.subformat ? `${disk.subformat} ` : ''}${disk.format.toUpperCase()}` : '';
        const root = disk?.root ? `, root ${disk.root.filesystem} on partition ${disk.root.partition}` : '';
        const verdict = value.importable ? 'importable as it is' : value.needsConversion ? `to be converted to ${value.importFormat ?? 'VMDK'}` : 'not importable';
        const read = value.report ? ` (read ${human(value.report.bytesRead)} in ${value.report.requests} request${value.report.requests === 1 ? '' : 's'})` : '';
        const findings = value.findingCodes?.length ? `; findings: ${value.findingCodes.join(', ')}` : '';
        return `${value.format}${inner}, ${human(value.virtualSize ?? 0)}, ${value.bootMode ?? 'boot mode unknown'}${root}${findings}: ${verdict}${read}`;
      }
      case 'conversion':
        if (value.done && Array.isArray(value.outputs)) {
          return `converted to ${value.outputs.map((d: any) => `${d.format} s3://${d.bucket}/${d.key}`).join(', ')}`;
        }
        return value.progress ? `paused at ${human(value.progress.bytesDone)} of ${human(value.progress.total)}` : undefined;
      case 'import':
        return value.mode === 'snapshot' ? `ImportSnapshot started: ${(value.snapshotTaskIds ?? []).join(', ')}` : `ImportImage started: ${value.importTaskId}`;
      case 'status':
        return `import completed: ${value.imageId ?? 'snapshots'} ${(value.snapshotIds ?? []).join(', ')}${value.platform ? ` (${value.platform})` : ''}`;
      case 'registered':
        return `registered ${value.imageId}`;
      case 'result':
        return `${value.imageId} named ${value.name}, tagged${value.copies?.length ? `, copied to ${value.copies.map((c: any) => c.region).join(', ')}` : ''}`;
      default:
        return undefined;
    }
  }

  private waitOf(name: string): string {
    const seconds = this.workflow.stateDefinition(name)?.Seconds;
    return typeof seconds === 'number' ? duration(seconds) : 'until a time';
  }

  private retryDelay(e: LocalExecutionEvent): string {
    const r = e.retry;
    if (!r) return 'a while';
    return duration(retryDelayMs(r.retrier, r.attempt) / 1000);
  }
}

/** `30 s`, `5 min`, `1.5 h`. */
function duration(seconds: number): string {
  if (seconds >= 3600) return `${+(seconds / 3600).toFixed(1)} h`;
  if (seconds >= 60) return `${+(seconds / 60).toFixed(1)} min`;
  return `${seconds} s`;
}

if (require.main === module) {
  // VMIE_DEMO_OUTDIR: where the cloud assembly goes (default cdk.out); VMIE_DEMO_RESULT: a file
  // that receives the run's DemoResult as JSON.
  const resultFile = process.env.VMIE_DEMO_RESULT;
  runDemo({ outdir: process.env.VMIE_DEMO_OUTDIR || undefined }).then(
    async (result) => {
      if (resultFile) await fs.writeFile(resultFile, JSON.stringify(result, null, 2));
      if (result.status !== 'SUCCEEDED') process.exitCode = 1;
    },
    (err) => {
      process.stderr.write(`demo failed: ${err?.stack ?? err}\n`);
      process.exitCode = 1;
    },
  );
}
