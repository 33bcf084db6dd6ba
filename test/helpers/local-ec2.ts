/**
 * A local simulator of the EC2 VM Import/Export API, for tests. It is not an emulation of AWS: it
 * keeps a small model of import and export tasks, images, snapshots, instances and volumes, and
 * answers the real AWS SDK clients over HTTP in the EC2 Query protocol (form-encoded requests, XML
 * answers) and, for Image Builder's `ImportVmImage`, in REST-JSON.
 *
 * What it models follows the VM Import/Export facts this project rests on: the validation rules of
 * the requests, the status values and messages of the tasks, the quotas, and the constraints on
 * exports. Where the service's exact wording is not published the messages are plausible ones,
 * and say so in the comments next to them.
 *
 * Time is simulated: tasks advance with a {@link VirtualClock}, never with real time. A task's
 * state is computed from the clock whenever it is asked for; side effects (the AMI and snapshots
 * of a completed import, the file of a completed export) happen the first time a request or
 * {@link LocalEc2.settle} sees the clock past the moment they are due.
 *
 * Imported objects are read from the local S3 server; exported files are written to it, made by
 * the project's own writers (stream-optimized VMDK, dynamic VHD, raw; OVA as a tar of an OVF
 * descriptor and the VMDK), so the engine can judge them.
 *
 * The XML element names of the answers are taken from the output schemas the EC2 client itself
 * ships, so a member the client does not know is an error here rather than a silently dropped
 * field.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ec2 from '@aws-sdk/client-ec2';
import { HeadBucketCommand, HeadObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ovaEntries, writeTar } from './ova-builder';
import { VirtualClock } from './virtual-clock';
import { S3Source, parseS3Url } from '../../lambda/aws/s3-source';
import { convert, FileSink } from '../../lambda/disk/convert';
import { detect } from '../../lambda/disk/detect';
import type { DiskImage } from '../../lambda/disk/image';
import { inspect as inspectImage, openDiskImage } from '../../lambda/disk/inspect';
import { openOva } from '../../lambda/disk/ova';
import { openRaw } from '../../lambda/disk/raw';
import { FileSource, type ByteSource } from '../../lambda/disk/source';

type EC2Client = ec2.EC2Client;
type Image = ec2.Image;
type ImportImageTask = ec2.ImportImageTask;
type ImportSnapshotTask = ec2.ImportSnapshotTask;
type LaunchPermission = ec2.LaunchPermission;
type Snapshot = ec2.Snapshot;
type Tag = ec2.Tag;

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/** The account every resource of the simulator belongs to. */
export const ACCOUNT_ID = '123456789012';
/** The XML namespace of EC2 Query answers. */
export const EC2_NAMESPACE = 'http://ec2.amazonaws.com/doc/2016-11-15/';
/** StatusMessage of an import task whose role cannot read the disk object (guide, troubleshooting). */
export const ACCESS_DENIED_MESSAGE =
  'ClientError: Disk validation failed [We do not have access to the given resource. Reason 403 Forbidden]';
/** StatusMessage of an import task whose disk is not in a format VM Import reads. */
export const UNSUPPORTED_FORMAT_MESSAGE = 'ClientError: Disk validation failed [Unsupported specified file format]';
/** StatusMessage of an ImportImage task with more than 21 disks. */
export const TOO_MANY_VOLUMES_MESSAGE = 'ClientError: Too many volumes';
/**
 * StatusMessage of a cancelled import or export task. The service's exact wording is not
 * published; this is the simulator's.
 */
export const CANCELED_MESSAGE = 'canceled by user';

/** What the optional inspection of an imported disk answers. */
export interface InspectResult {
  /** VM Import would take the disk. */
  readonly importable: boolean;
  /** The StatusMessage the task ends with when the disk is not importable (an AWS message). */
  readonly reason?: string;
  /** The size of the virtual disk, when known (it sizes the snapshot). */
  readonly virtualSize?: number;
  /** The operating system found, when known (ImportImage's Platform when the request sets none). */
  readonly platform?: 'Windows' | 'Linux';
}

/** What the inspection is told about the disk besides where it is. */
export interface InspectContext {
  /** ImportImage (`image`) checks boot and OS; ImportSnapshot (`snapshot`) only the container. */
  readonly kind: 'image' | 'snapshot';
  /** The Format of the disk container (`VMDK`, `VHD`, `VHDX`, `RAW`, `OVA`). */
  readonly format: string;
}

/** Options of {@link startLocalEc2}. */
export interface LocalEc2Options {
  /** The local S3: imported objects are read from it, exports written to it. */
  s3: S3Client;
  /** Simulated time; tasks advance with it, never with real time. @default a new VirtualClock */
  clock?: VirtualClock;
  /** The Region requests signed without one fall into, and of the fixtures. @default 'us-east-1' */
  region?: string;
  /**
   * Simulated time from start to completed of an import task. Disks holding more than 8 GiB of
   * data stretch it in proportion (a 16 GiB object takes twice as long). @default 40 minutes
   */
  importDurationMs?: number;
  /** Simulated time of an export task, stretched like imports. @default 20 minutes */
  exportDurationMs?: number;
  /** Simulated time from cancel to deleted (`deleting`, `cancelling` meanwhile). @default 1 minute */
  cancelDurationMs?: number;
  /** Simulated time a copied image stays `pending`. @default 0 (available at once) */
  copyDurationMs?: number;
  /** Export conversion tasks in progress at most, per Region. @default 5 */
  maxActiveExportTasks?: number;
  /** Import tasks (image and snapshot) in progress at most, per Region. @default 20 */
  maxActiveImportTasks?: number;
  /**
   * Checks each imported disk (tests pass {@link engineInspect}); a disk that is not importable
   * makes the task end `deleted` with `reason` as its StatusMessage.
   */
  inspect?: (bucket: string, key: string, context?: InspectContext) => Promise<InspectResult>;
}

/** A task of an export, as {@link LocalEc2.exportTasks} lists it. */
export interface ExportTaskRecord {
  id: string;
  kind: 'image' | 'instance';
  state: string;
  bucket: string;
  key: string;
}

/** An Image Builder import, as {@link LocalEc2.imageBuilderImports} lists it. */
export interface ImageBuilderImport {
  arn: string;
  region: string;
  name: string;
  semanticVersion: string;
  platform: string;
  vmImportTaskId: string;
  description?: string;
  osVersion?: string;
  tags: Record<string, string>;
  clientToken?: string;
}

/** An image as the simulator holds it: the SDK's shape, its Region and its launch permissions. */
export type LocalImage = Image & { Region: string; LaunchPermissions: LaunchPermission[] };
/** A snapshot as the simulator holds it: the SDK's shape, its Region and who may create volumes. */
export type LocalSnapshot = Snapshot & { Region: string; CreateVolumePermissions: Array<{ UserId?: string; Group?: string }> };

/** A running simulator. */
export interface LocalEc2 {
  /** `http://127.0.0.1:<port>`: EC2 and Image Builder. */
  readonly endpoint: string;
  readonly clock: VirtualClock;
  /** AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL_IMAGEBUILDER, AWS_REGION and test credentials. */
  readonly env: Record<string, string>;
  /** A client of the real SDK pointed at the simulator. */
  readonly client: EC2Client;
  /** Every request, in order (Action and Version left out of the params). */
  readonly calls: ReadonlyArray<{ action: string; params: Record<string, string> }>;
  /**
   * The next `times` calls of `action` answer this error (status 400 unless `status` says
   * otherwise; `RequestLimitExceeded` and `Unavailable` answer 503, `InternalError` 500, and the
   * SDK retries those, each retry taking one of the `times`).
   */
  failNext(action: string, error: { code: string; message: string; status?: number }, times?: number): void;
  /**
   * The next import task (or the next one importing `key`) ends `deleted` with this StatusMessage,
   * `afterMs` after it starts (default: when validation ends). A time past the task's end has no
   * effect: the task completes first.
   */
  failTask(statusMessage: string, when?: { afterMs?: number; key?: string }): void;
  importImageTasks(): ImportImageTask[];
  importSnapshotTasks(): ImportSnapshotTask[];
  images(): LocalImage[];
  snapshots(): LocalSnapshot[];
  exportTasks(): ExportTaskRecord[];
  /** Imports through Image Builder's ImportVmImage. */
  imageBuilderImports(): ImageBuilderImport[];
  /** Adds an AMI (with one snapshot) backed by a raw disk image file; returns its id. */
  addImage(image: {
    imageId?: string;
    name?: string;
    encrypted?: boolean;
    sizeGiB?: number;
    productCodes?: string[];
    platform?: 'windows';
    usageOperation?: string;
    rawFile: string;
  }): string;
  /** Adds an instance whose volumes are backed by raw disk image files; returns its id. */
  addInstance(instance: {
    instanceId?: string;
    volumes: Array<{ sizeGiB: number; rawFile: string; encrypted?: boolean }>;
    platform?: 'windows';
  }): string;
  /** Brings every task up to the clock (validations, completions, export files), as a request does. */
  settle(): Promise<void>;
  /** Stops the server and removes its temporary files. */
  close(): Promise<void>;
}

/** Starts the simulator on 127.0.0.1 at a random port. */
export async function startLocalEc2(options: LocalEc2Options): Promise<LocalEc2> {
  const sim = new Simulator(options);
  await sim.listen();
  return sim;
}

/**
 * An `inspect` for {@link LocalEc2Options} backed by the engine: it inspects the object in the
 * local S3 and answers not importable, with the AWS message of the worst finding, when an error
 * (or a finding that needs conversion) stands in the way. For ImportSnapshot, findings about boot
 * and the operating system do not count, as ImportSnapshot does not look at them.
 */
export function engineInspect(s3: S3Client): NonNullable<LocalEc2Options['inspect']> {
  return async (bucket, key, context) => {
    const source = await S3Source.open(s3, bucket, key);
    try {
      const report = await inspectImage(source, { name: key });
      const blocking = report.findings.filter(
        (f) => (f.severity === 'error' || f.severity === 'convertible') && !(context?.kind === 'snapshot' && BOOT_FINDINGS.has(f.code)),
      );
      const root = report.disks[0]?.root?.filesystem;
      const platform = root === undefined ? undefined : root === 'ntfs' ? ('Windows' as const) : ('Linux' as const);
      const base = { virtualSize: report.virtualSize, platform };
      if (blocking.length > 0) {
        const worst = blocking.find((f) => f.awsError) ?? blocking[0];
        return { ...base, importable: false, reason: awsMessage(worst.awsError) };
      }
      if (context && report.importFormat && context.format.toUpperCase() !== report.importFormat) {
        return { ...base, importable: false, reason: UNSUPPORTED_FORMAT_MESSAGE };
      }
      return { ...base, importable: true };
    } finally {
      await source.close();
    }
  };
}

/** Findings about boot and the operating system, which ImportSnapshot does not check. */
const BOOT_FINDINGS = new Set([
  'TOO_MANY_DISKS',
  'MBR_BOOT_TOO_LARGE',
  'NO_PARTITION_TABLE',
  'NO_BOOTABLE_PARTITION',
  'GPT_CHECKSUM_MISMATCH',
  'GPT_BOOT_WITHOUT_UEFI',
  'UEFI_WITHOUT_ESP',
  'ROOT_FS_UNSUPPORTED',
  'ROOT_FS_ENCRYPTED',
  'EFI_FALLBACK_LOADER_MISSING',
  'PARTITION_TABLE_DAMAGED',
  'GPT_BACKUP_INVALID',
]);

/** The StatusMessage for a finding's AWS error: the first of its alternatives, as a ClientError. */
function awsMessage(awsError: string | undefined): string {
  if (!awsError) return UNSUPPORTED_FORMAT_MESSAGE;
  const first = awsError.split(' / ')[0].trim();
  return first.startsWith('ClientError: ') ? first : `ClientError: ${first}`;
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

const GiB = 1024 ** 3;
const MINUTE = 60_000;
/** Data of this size or less takes the base duration; more stretches it in proportion. */
const STRETCH_BYTES = 8 * GiB;
/** How long ended import tasks stay listed. */
const TASK_RETENTION_MS = 7 * 24 * 60 * MINUTE;
/** ImportImage takes at most this many disks. */
const MAX_VOLUMES = 21;
/** Exported volumes are limited to 1 TiB. */
const EXPORT_LIMIT_GIB = 1024;
const DEVICE_NAMES = ['/dev/sda1', ...'bcdefghijklmnopqrstuv'.split('').map((c) => `/dev/sd${c}`)];
const USAGE_OPERATIONS = new Set([
  'RunInstances',
  'RunInstances:0002',
  'RunInstances:0006',
  'RunInstances:0102',
  'RunInstances:0202',
  'RunInstances:0800',
  'RunInstances:0100',
  'RunInstances:0004',
  'RunInstances:0200',
]);
/** Usage operations of images that carry an AWS-provided license (Windows or SQL Server): not exportable. */
const LICENSED_USAGE = new Set(['RunInstances:0002', 'RunInstances:0006', 'RunInstances:0102', 'RunInstances:0202', 'RunInstances:0100', 'RunInstances:0004', 'RunInstances:0200']);
const IMPORT_FORMATS = ['OVA', 'VHD', 'VHDX', 'VMDK', 'RAW'];
const SNAPSHOT_FORMATS = ['VHD', 'VHDX', 'VMDK', 'RAW'];

/** Where a disk's bytes are. */
type DiskSource = { readonly file: string } | { readonly bucket: string; readonly key: string };

interface ImportDisk {
  format: string;
  description?: string;
  deviceName?: string;
  bucket?: string;
  key?: string;
  url?: string;
  snapshotId?: string;
  /** Size of the object, when it exists. */
  objectSize?: number;
  virtualSize?: number;
  source?: DiskSource;
}

interface TaskEnd {
  status: 'completed' | 'deleted';
  at: number;
  message?: string;
}

interface ImportTask {
  kind: 'image' | 'snapshot';
  id: string;
  region: string;
  clientToken?: string;
  fingerprint: string;
  description?: string;
  encrypted: boolean;
  kmsKeyId?: string;
  roleName: string;
  architecture?: string;
  bootMode?: string;
  hypervisor?: string;
  licenseType?: string;
  usageOperation?: string;
  platform?: string;
  licenseSpecifications: string[];
  disks: ImportDisk[];
  tags: Tag[];
  createdAt: number;
  durationMs: number;
  validateAt: number;
  validation: { promise: Promise<void>; done: boolean; failure?: string; platform?: string };
  scripted?: { at: number; message: string };
  cancelledAt?: number;
  cancelReason?: string;
  end?: TaskEnd;
  imageId?: string;
  snapshotIds: string[];
}

interface ImageRecord {
  id: string;
  region: string;
  name: string;
  description?: string;
  architecture: string;
  platform?: 'windows';
  usageOperation: string;
  bootMode?: string;
  enaSupport?: boolean;
  virtualizationType: string;
  tpmSupport?: string;
  imdsSupport?: string;
  rootDeviceName: string;
  mappings: Array<{ deviceName: string; snapshotId: string; volumeSize: number; volumeType: string; deleteOnTermination: boolean }>;
  productCodes: string[];
  createdAt: number;
  availableAt: number;
  tags: Tag[];
  launchPermissions: LaunchPermission[];
  sourceImageId?: string;
  sourceRegion?: string;
  clientToken?: string;
  fingerprint?: string;
}

interface SnapshotRecord {
  id: string;
  region: string;
  volumeSize: number;
  encrypted: boolean;
  kmsKeyId?: string;
  description?: string;
  createdAt: number;
  tags: Tag[];
  createVolumePermissions: Array<{ UserId?: string; Group?: string }>;
  source: DiskSource;
  virtualSize: number;
}

interface VolumeRecord {
  id: string;
  sizeGiB: number;
  encrypted: boolean;
  source: DiskSource;
  device: string;
  tags: Tag[];
}

interface InstanceRecord {
  id: string;
  region: string;
  imageId: string;
  platform?: 'windows';
  volumes: VolumeRecord[];
  launchedAt: number;
  tags: Tag[];
}

interface ExportTask {
  kind: 'image' | 'instance';
  id: string;
  region: string;
  clientToken?: string;
  fingerprint?: string;
  description?: string;
  imageId?: string;
  instanceId?: string;
  targetEnvironment?: string;
  containerFormat?: string;
  /** VMDK | VHD | RAW for images; vmdk | vhd | raw for instances, as the service echoes them. */
  diskImageFormat: string;
  roleName?: string;
  bucket: string;
  prefix: string;
  key: string;
  source: DiskSource;
  tags: Tag[];
  createdAt: number;
  durationMs: number;
  cancelledAt?: number;
  end?: TaskEnd;
  finishing?: Promise<void>;
}

/** An error answered to the client. */
class ApiError extends Error {
  public constructor(
    public readonly code: string,
    message: string,
    public readonly status = 400,
  ) {
    super(message);
  }
}

/** A phase of a task's progress: until which fraction of its duration, its message, its progress range. */
interface Phase {
  readonly until: number;
  readonly message: string;
  readonly from: number;
  readonly to: number;
}

const IMAGE_PHASES: readonly Phase[] = [
  { until: 0.05, message: 'pending', from: 1, to: 2 },
  { until: 0.15, message: 'validating', from: 3, to: 10 },
  { until: 0.2, message: 'validated', from: 19, to: 19 },
  { until: 0.7, message: 'converting', from: 28, to: 70 },
  { until: 0.8, message: 'updating', from: 74, to: 79 },
  { until: 1, message: 'booting', from: 85, to: 95 },
];
const SNAPSHOT_PHASES: readonly Phase[] = [
  { until: 0.05, message: 'pending', from: 1, to: 3 },
  { until: 0.15, message: 'validating', from: 5, to: 10 },
  { until: 1, message: 'downloading/converting', from: 15, to: 95 },
];
const EXPORT_PHASES: readonly Phase[] = [
  { until: 0.1, message: 'validating', from: 0, to: 5 },
  { until: 1, message: 'converting', from: 10, to: 95 },
];
/** Validation ends (and a disk that fails it ends the task) at this fraction of an import. */
const VALIDATED_AT = 0.15;

function phaseAt(phases: readonly Phase[], fraction: number): { message: string; progress: number } {
  let start = 0;
  for (const p of phases) {
    if (fraction < p.until) {
      const within = (fraction - start) / (p.until - start);
      return { message: p.message, progress: Math.round(p.from + (p.to - p.from) * Math.max(0, within)) };
    }
    start = p.until;
  }
  const last = phases[phases.length - 1];
  return { message: last.message, progress: last.to };
}

// ---------------------------------------------------------------------------------------------
// Request parameters
// ---------------------------------------------------------------------------------------------

/** The form parameters of one request, with the Query protocol's list and struct encodings. */
class Params {
  public constructor(public readonly raw: Record<string, string>) {}

  public str(name: string): string | undefined {
    const v = this.raw[name];
    return v === undefined || v === '' ? undefined : v;
  }

  public required(name: string): string {
    const v = this.str(name);
    if (v === undefined) throw new ApiError('MissingParameter', `The request must contain the parameter ${name}`);
    return v;
  }

  public bool(name: string): boolean | undefined {
    const v = this.str(name);
    if (v === undefined) return undefined;
    if (v === 'true') return true;
    if (v === 'false') return false;
    throw new ApiError('InvalidParameterValue', `Value (${v}) for parameter ${name} is invalid. Expected a boolean.`);
  }

  public int(name: string): number | undefined {
    const v = this.str(name);
    if (v === undefined) return undefined;
    if (!/^\d{1,9}$/.test(v)) throw new ApiError('InvalidParameterValue', `Value (${v}) for parameter ${name} is invalid. Expected an integer.`);
    return Number(v);
  }

  /** `prefix.1`, `prefix.2`, … in index order. */
  public list(prefix: string): string[] {
    const out: Array<[number, string]> = [];
    const re = new RegExp(`^${escapeRegExp(prefix)}\\.(\\d+)$`);
    for (const [k, v] of Object.entries(this.raw)) {
      const m = re.exec(k);
      if (m) out.push([Number(m[1]), v]);
    }
    return out.sort((a, b) => a[0] - b[0]).map(([, v]) => v);
  }

  /** `prefix.N.*` as one Params per N, in index order. */
  public structs(prefix: string): Params[] {
    const groups = new Map<number, Record<string, string>>();
    const re = new RegExp(`^${escapeRegExp(prefix)}\\.(\\d+)\\.(.+)$`);
    for (const [k, v] of Object.entries(this.raw)) {
      const m = re.exec(k);
      if (!m) continue;
      const n = Number(m[1]);
      const g = groups.get(n) ?? {};
      g[m[2]] = v;
      groups.set(n, g);
    }
    return [...groups.entries()].sort((a, b) => a[0] - b[0]).map(([, g]) => new Params(g));
  }

  /** `prefix.*` as Params. */
  public sub(prefix: string): Params {
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(this.raw)) {
      if (k.startsWith(`${prefix}.`)) out[k.slice(prefix.length + 1)] = v;
    }
    return new Params(out);
  }

  public has(prefix: string): boolean {
    return Object.keys(this.raw).some((k) => k === prefix || k.startsWith(`${prefix}.`));
  }
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** A glob of the EC2 filters (`*` and `?`) as a matcher. */
function globMatch(pattern: string, value: string | undefined): boolean {
  if (value === undefined) return false;
  const re = new RegExp(`^${pattern.split('').map((c) => (c === '*' ? '.*' : c === '?' ? '.' : escapeRegExp(c))).join('')}$`, 's');
  return re.test(value);
}

interface Filter {
  name: string;
  values: string[];
}

function filtersOf(p: Params): Filter[] {
  const structs = [...p.structs('Filter'), ...p.structs('Filters')];
  return structs.map((f) => ({ name: f.required('Name'), values: f.list('Value') }));
}

/**
 * Applies `filters` to `items`; `fields` gives each filter name's values of an item. Tag filters
 * (`tag:<key>`, `tag-key`, `tag-value`) are built in; an unknown filter name is an error.
 */
function applyFilters<T>(
  items: T[],
  filters: Filter[],
  tagsOf: (item: T) => Tag[],
  fields: Record<string, (item: T) => Array<string | undefined>>,
): T[] {
  for (const f of filters) {
    if (!f.name.startsWith('tag:') && f.name !== 'tag-key' && f.name !== 'tag-value' && !fields[f.name]) {
      throw new ApiError('InvalidParameterValue', `The filter '${f.name}' is invalid`);
    }
  }
  return items.filter((item) =>
    filters.every((f) => {
      let values: Array<string | undefined>;
      if (f.name.startsWith('tag:')) {
        const key = f.name.slice(4);
        values = tagsOf(item).filter((t) => t.Key === key).map((t) => t.Value);
      } else if (f.name === 'tag-key') {
        values = tagsOf(item).map((t) => t.Key);
      } else if (f.name === 'tag-value') {
        values = tagsOf(item).map((t) => t.Value);
      } else {
        values = fields[f.name](item);
      }
      return f.values.some((pattern) => values.some((v) => globMatch(pattern, v)));
    }),
  );
}

/** Tags of the TagSpecification entries for `allowed` resource types, keyed by resource type. */
function tagSpecifications(p: Params, allowed: readonly string[]): Map<string, Tag[]> {
  const out = new Map<string, Tag[]>();
  for (const spec of p.structs('TagSpecification')) {
    const type = spec.required('ResourceType');
    if (!allowed.includes(type)) {
      throw new ApiError('InvalidParameterValue', `'${type}' is not a valid taggable resource type for this operation.`);
    }
    const tags = out.get(type) ?? [];
    for (const t of spec.structs('Tag')) tags.push(checkTag({ Key: t.raw.Key, Value: t.raw.Value ?? '' }));
    out.set(type, tags);
  }
  return out;
}

function checkTag(tag: Tag): Tag {
  if (!tag.Key) throw new ApiError('InvalidParameterValue', 'Tag keys must not be empty.');
  if (tag.Key.length > 128 || (tag.Value ?? '').length > 256) throw new ApiError('InvalidParameterValue', `Tag '${tag.Key}' is too long.`);
  if (tag.Key.toLowerCase().startsWith('aws:')) throw new ApiError('InvalidParameterValue', 'Tag keys starting with \'aws:\' are reserved for internal use');
  return tag;
}

function mergeTags(into: Tag[], tags: readonly Tag[]): void {
  for (const t of tags) {
    const existing = into.find((x) => x.Key === t.Key);
    if (existing) existing.Value = t.Value;
    else into.push({ Key: t.Key, Value: t.Value });
  }
}

/** The parameters of an idempotent request, without the token and the request's envelope. */
function fingerprintOf(p: Params): string {
  const entries = Object.entries(p.raw).filter(([k]) => !['ClientToken', 'DryRun'].includes(k));
  return JSON.stringify(entries.sort(([a], [b]) => a.localeCompare(b)));
}

function newId(prefix: string): string {
  return `${prefix}-${randomBytes(9).toString('hex').slice(0, 17)}`;
}

/** Parses a disk container `Url` that names an object of the local S3 (s3://, path- or virtual-hosted https). */
function parseObjectUrl(url: string): { bucket: string; key: string } | undefined {
  const s3 = parseS3Url(url);
  if (s3) return s3;
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return undefined;
  }
  const pathPart = decodeURIComponent(u.pathname.replace(/^\//, ''));
  const hosted = /^([a-z0-9][a-z0-9.-]+)\.s3[.-]/.exec(u.hostname);
  if (hosted && pathPart) return { bucket: hosted[1], key: pathPart };
  const slash = pathPart.indexOf('/');
  if (slash > 0) return { bucket: pathPart.slice(0, slash), key: pathPart.slice(slash + 1) };
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// XML answers, named by the client's own output schemas
// ---------------------------------------------------------------------------------------------

type SchemaRef = unknown;

function resolveSchema(s: SchemaRef): unknown {
  return typeof s === 'function' ? (s as () => unknown)() : s;
}

/** A struct member entry: `[schema, traits]` or a bare schema. */
function memberEntry(entry: unknown): { schema: unknown; traits: Record<string, unknown> } {
  if (Array.isArray(entry) && entry.length === 2) {
    return { schema: entry[0], traits: (entry[1] as Record<string, unknown> | undefined) ?? {} };
  }
  return { schema: entry, traits: {} };
}

function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Serializes `value` as the element `name` of schema `schema` (EC2 Query XML). */
function toXml(value: unknown, schemaRef: SchemaRef, name: string, where: string): string {
  if (value === undefined || value === null) return '';
  const schema = resolveSchema(schemaRef);
  if (Array.isArray(schema) && schema[0] === 3) {
    const names = schema[4] as string[];
    const members = schema[5] as unknown[];
    let inner = '';
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      const i = names.indexOf(k);
      if (i < 0) throw new Error(`${where}: ${String(schema[2])} has no member ${k}`);
      const m = memberEntry(members[i]);
      inner += toXml(v, m.schema, (m.traits.xmlName as string | undefined) ?? k, `${where}.${k}`);
    }
    return `<${name}>${inner}</${name}>`;
  }
  if (Array.isArray(schema) && schema[0] === 1) {
    if (!Array.isArray(value)) throw new Error(`${where}: a list was expected`);
    const m = memberEntry(schema[4]);
    const item = (m.traits.xmlName as string | undefined) ?? 'item';
    return `<${name}>${value.map((v, i) => toXml(v, m.schema, item, `${where}[${i}]`)).join('')}</${name}>`;
  }
  let text: string;
  if (value instanceof Date) text = value.toISOString();
  else if (typeof value === 'boolean' || typeof value === 'number' || typeof value === 'string') text = String(value);
  else throw new Error(`${where}: a scalar was expected, not ${typeof value}`);
  return `<${name}>${xmlEscape(text)}</${name}>`;
}

/** The XML answer of `action` with `output` in the SDK's shape. */
function responseXml(action: string, output: Record<string, unknown>, requestId: string): string {
  const op = (ec2 as unknown as Record<string, unknown>)[`${action}$`];
  if (!Array.isArray(op)) throw new Error(`no schema for ${action}`);
  const schema = resolveSchema(op[5]);
  let inner = `<requestId>${requestId}</requestId>`;
  if (Array.isArray(schema) && schema[0] === 3) {
    const body = toXml(output, schema, 'x', action);
    inner += body.slice(3, -4);
  } else {
    inner += '<return>true</return>';
  }
  return `<?xml version="1.0" encoding="UTF-8"?>\n<${action}Response xmlns="${EC2_NAMESPACE}">${inner}</${action}Response>`;
}

function errorXml(code: string, message: string, requestId: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${xmlEscape(code)}</Code><Message>${xmlEscape(message)}</Message></Error></Errors><RequestID>${requestId}</RequestID></Response>`;
}

/** The status of an error code the service answers with something other than 400. */
function statusOf(code: string): number {
  if (code === 'InternalError' || code === 'InternalFailure') return 500;
  if (code === 'RequestLimitExceeded' || code === 'Unavailable' || code === 'ServiceUnavailable') return 503;
  if (code === 'DryRunOperation') return 412;
  return 400;
}

// ---------------------------------------------------------------------------------------------
// The simulator
// ---------------------------------------------------------------------------------------------

type Handler = (p: Params, region: string) => Promise<Record<string, unknown>> | Record<string, unknown>;

class Simulator implements LocalEc2 {
  public endpoint = '';
  public readonly clock: VirtualClock;
  public env: Record<string, string> = {};
  public client!: EC2Client;
  public readonly calls: Array<{ action: string; params: Record<string, string> }> = [];

  private readonly s3: S3Client;
  private readonly region: string;
  private readonly importDurationMs: number;
  private readonly exportDurationMs: number;
  private readonly cancelDurationMs: number;
  private readonly copyDurationMs: number;
  private readonly maxExports: number;
  private readonly maxImports: number;
  private readonly inspect?: LocalEc2Options['inspect'];
  private readonly server: http.Server;
  private readonly tmp: string;

  private readonly failures = new Map<string, Array<{ code: string; message: string; status?: number; remaining: number }>>();
  private readonly taskFailures: Array<{ message: string; afterMs?: number; key?: string }> = [];
  private readonly imports: ImportTask[] = [];
  private readonly exports: ExportTask[] = [];
  private readonly imageRecords: ImageRecord[] = [];
  private readonly snapshotRecords: SnapshotRecord[] = [];
  private readonly instances: InstanceRecord[] = [];
  private readonly vmImports: ImageBuilderImport[] = [];
  private readonly vmImportFingerprints = new Map<string, string>();
  private readonly pending = new Set<Promise<unknown>>();
  private readonly handlers: Record<string, Handler>;

  public constructor(options: LocalEc2Options) {
    this.s3 = options.s3;
    this.clock = options.clock ?? new VirtualClock();
    this.region = options.region ?? 'us-east-1';
    this.importDurationMs = options.importDurationMs ?? 40 * MINUTE;
    this.exportDurationMs = options.exportDurationMs ?? 20 * MINUTE;
    this.cancelDurationMs = options.cancelDurationMs ?? MINUTE;
    this.copyDurationMs = options.copyDurationMs ?? 0;
    this.maxExports = options.maxActiveExportTasks ?? 5;
    this.maxImports = options.maxActiveImportTasks ?? 20;
    this.inspect = options.inspect;
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmie-local-ec2-'));
    this.server = http.createServer((req, res) => {
      void this.track(this.serve(req, res));
    });
    this.handlers = {
      ImportImage: (p, r) => this.importImage(p, r),
      ImportSnapshot: (p, r) => this.importSnapshot(p, r),
      DescribeImportImageTasks: (p, r) => this.describeImportTasks(p, r, 'image'),
      DescribeImportSnapshotTasks: (p, r) => this.describeImportTasks(p, r, 'snapshot'),
      CancelImportTask: (p, r) => this.cancelImportTask(p, r),
      RegisterImage: (p, r) => this.registerImage(p, r),
      DescribeImages: (p, r) => this.describeImages(p, r),
      DescribeImageAttribute: (p, r) => this.describeImageAttribute(p, r),
      DeregisterImage: (p, r) => this.deregisterImage(p, r),
      DescribeSnapshots: (p, r) => this.describeSnapshots(p, r),
      DescribeSnapshotAttribute: (p, r) => this.describeSnapshotAttribute(p, r),
      DeleteSnapshot: (p, r) => this.deleteSnapshot(p, r),
      CopyImage: (p, r) => this.copyImage(p, r),
      CreateTags: (p, r) => this.createTags(p, r),
      ModifyImageAttribute: (p, r) => this.modifyImageAttribute(p, r),
      ModifySnapshotAttribute: (p, r) => this.modifySnapshotAttribute(p, r),
      ExportImage: (p, r) => this.exportImage(p, r),
      DescribeExportImageTasks: (p, r) => this.describeExportImageTasks(p, r),
      CreateInstanceExportTask: (p, r) => this.createInstanceExportTask(p, r),
      DescribeExportTasks: (p, r) => this.describeExportTasks(p, r),
      CancelExportTask: (p, r) => this.cancelExportTask(p, r),
      DescribeInstances: (p, r) => this.describeInstances(p, r),
      DescribeVolumes: (p, r) => this.describeVolumes(p, r),
    };
  }

  public async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    const port = (this.server.address() as AddressInfo).port;
    this.endpoint = `http://127.0.0.1:${port}`;
    this.env = {
      AWS_ENDPOINT_URL_EC2: this.endpoint,
      AWS_ENDPOINT_URL_IMAGEBUILDER: this.endpoint,
      AWS_REGION: this.region,
      // The local S3 server accepts only these credentials; the same pair serves both.
      AWS_ACCESS_KEY_ID: 'S3RVER',
      AWS_SECRET_ACCESS_KEY: 'S3RVER',
    };
    this.client = new ec2.EC2Client({
      endpoint: this.endpoint,
      region: this.region,
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    });
  }

  // --- scripted failures and fixtures ---

  public failNext(action: string, error: { code: string; message: string; status?: number }, times = 1): void {
    if (!Number.isSafeInteger(times) || times < 1) throw new RangeError(`times must be a positive integer, not ${times}`);
    const queue = this.failures.get(action) ?? [];
    queue.push({ ...error, remaining: times });
    this.failures.set(action, queue);
  }

  public failTask(statusMessage: string, when: { afterMs?: number; key?: string } = {}): void {
    if (when.afterMs !== undefined && (!Number.isFinite(when.afterMs) || when.afterMs < 0)) {
      throw new RangeError(`afterMs must be a non-negative number, not ${when.afterMs}`);
    }
    this.taskFailures.push({ message: statusMessage, afterMs: when.afterMs, key: when.key });
  }

  public addImage(image: Parameters<LocalEc2['addImage']>[0]): string {
    const size = fs.statSync(image.rawFile).size;
    const sizeGiB = image.sizeGiB ?? Math.max(1, Math.ceil(size / GiB));
    const now = this.clock.now();
    const snapshot = this.newSnapshot({
      region: this.region,
      volumeSize: sizeGiB,
      encrypted: image.encrypted ?? false,
      description: `Snapshot of ${path.basename(image.rawFile)}`,
      source: { file: image.rawFile },
      virtualSize: size,
    });
    const id = image.imageId ?? newId('ami');
    if (this.imageRecords.some((i) => i.id === id)) throw new Error(`image ${id} exists already`);
    this.imageRecords.push({
      id,
      region: this.region,
      name: image.name ?? `fixture-${id}`,
      architecture: 'x86_64',
      platform: image.platform,
      usageOperation: image.usageOperation ?? (image.platform === 'windows' ? 'RunInstances:0002' : 'RunInstances'),
      virtualizationType: 'hvm',
      enaSupport: true,
      rootDeviceName: '/dev/sda1',
      mappings: [{ deviceName: '/dev/sda1', snapshotId: snapshot.id, volumeSize: sizeGiB, volumeType: 'gp3', deleteOnTermination: true }],
      productCodes: image.productCodes ?? [],
      createdAt: now,
      availableAt: now,
      tags: [],
      launchPermissions: [],
    });
    return id;
  }

  public addInstance(instance: Parameters<LocalEc2['addInstance']>[0]): string {
    if (instance.volumes.length === 0) throw new Error('an instance needs at least one volume');
    const id = instance.instanceId ?? newId('i');
    if (this.instances.some((i) => i.id === id)) throw new Error(`instance ${id} exists already`);
    for (const v of instance.volumes) fs.statSync(v.rawFile);
    this.instances.push({
      id,
      region: this.region,
      imageId: newId('ami'),
      platform: instance.platform,
      launchedAt: this.clock.now(),
      tags: [],
      volumes: instance.volumes.map((v, i) => ({
        id: newId('vol'),
        sizeGiB: v.sizeGiB,
        encrypted: v.encrypted ?? false,
        source: { file: v.rawFile },
        device: i === 0 ? '/dev/xvda' : `/dev/xvd${'bcdefghijklmnop'[i - 1]}`,
        tags: [],
      })),
    });
    return id;
  }

  // --- state for assertions ---

  public importImageTasks(): ImportImageTask[] {
    const now = this.clock.now();
    this.settleSync(now);
    return this.imports.filter((t) => t.kind === 'image').map((t) => ({ ...this.importImageView(t, now), Region: t.region }) as ImportImageTask);
  }

  public importSnapshotTasks(): ImportSnapshotTask[] {
    const now = this.clock.now();
    this.settleSync(now);
    return this.imports.filter((t) => t.kind === 'snapshot').map((t) => ({ ...this.importSnapshotView(t, now), Region: t.region }) as ImportSnapshotTask);
  }

  public images(): LocalImage[] {
    const now = this.clock.now();
    this.settleSync(now);
    return this.imageRecords.map((i) => ({
      ...this.imageView(i, now),
      Region: i.region,
      LaunchPermissions: i.launchPermissions.map((l) => ({ ...l })),
    }));
  }

  public snapshots(): LocalSnapshot[] {
    const now = this.clock.now();
    this.settleSync(now);
    return this.snapshotRecords.map((s) => ({
      ...this.snapshotView(s),
      Region: s.region,
      CreateVolumePermissions: s.createVolumePermissions.map((c) => ({ ...c })),
    }));
  }

  public exportTasks(): ExportTaskRecord[] {
    const now = this.clock.now();
    this.settleSync(now);
    return this.exports.map((e) => ({ id: e.id, kind: e.kind, state: this.exportState(e, now).state, bucket: e.bucket, key: e.key }));
  }

  public imageBuilderImports(): ImageBuilderImport[] {
    return this.vmImports.map((v) => ({ ...v, tags: { ...v.tags } }));
  }

  public async settle(): Promise<void> {
    await this.settleAsync();
  }

  public async close(): Promise<void> {
    this.client.destroy();
    await new Promise<void>((resolve) => {
      this.server.closeAllConnections();
      this.server.close(() => resolve());
    });
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }

  // --- HTTP ---

  private track<T>(p: Promise<T>): Promise<T> {
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p)).catch(() => undefined);
    return p;
  }

  private async serve(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const requestId = randomUUID();
    try {
      const body = await readBody(req);
      const region = regionOf(req.headers.authorization) ?? this.region;
      if (req.method === 'PUT' && (req.url ?? '').split('?')[0] === '/ImportVmImage') {
        await this.serveImageBuilder(body, region, requestId, res);
        return;
      }
      if (req.method !== 'POST') {
        send(res, 404, 'text/plain', 'not found');
        return;
      }
      const raw: Record<string, string> = {};
      for (const [k, v] of new URLSearchParams(body.toString('utf8'))) raw[k] = v;
      const action = raw.Action ?? '';
      const params = { ...raw };
      delete params.Action;
      delete params.Version;
      this.calls.push({ action, params });
      try {
        this.scriptedFailure(action);
        const handler = this.handlers[action];
        if (!handler) throw new ApiError('InvalidAction', `The action ${action} is not valid for this web service.`);
        await this.settleAsync();
        const output = await handler(new Params(params), region);
        send(res, 200, 'text/xml;charset=UTF-8', responseXml(action, output, requestId));
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        send(res, e.status, 'text/xml;charset=UTF-8', errorXml(e.code, e.message, requestId));
      }
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      process.stderr.write(`local EC2 simulator: internal error: ${e instanceof Error ? e.stack : message}\n`);
      if (!res.headersSent) send(res, 500, 'text/xml;charset=UTF-8', errorXml('InternalError', message, requestId));
    }
  }

  private scriptedFailure(action: string): void {
    const queue = this.failures.get(action);
    const next = queue?.[0];
    if (!queue || !next) return;
    next.remaining--;
    if (next.remaining <= 0) queue.shift();
    throw new ApiError(next.code, next.message, next.status ?? statusOf(next.code));
  }

  // --- time ---

  /** Brings tasks up to the clock, waiting for what is due: validations, export files. */
  private async settleAsync(): Promise<void> {
    const now = this.clock.now();
    for (const t of this.imports) {
      if (!t.end && t.cancelledAt === undefined && t.validateAt <= now && !t.validation.done) await t.validation.promise;
    }
    this.settleSync(now);
    for (const e of this.exports) {
      if (!e.end && e.cancelledAt === undefined && e.createdAt + e.durationMs <= now) await this.finishExport(e);
    }
    this.settleSync(now);
  }

  /** Applies every transition due by `now` whose outcome is already known. */
  private settleSync(now: number): void {
    for (const t of this.imports) this.settleImport(t, now);
    for (const e of this.exports) {
      if (!e.end && e.cancelledAt !== undefined && now >= e.cancelledAt + this.cancelDurationMs) {
        e.end = { status: 'deleted', at: e.cancelledAt + this.cancelDurationMs, message: CANCELED_MESSAGE };
      }
    }
  }

  private settleImport(t: ImportTask, now: number): void {
    if (t.end) return;
    if (t.cancelledAt !== undefined) {
      const at = t.cancelledAt + this.cancelDurationMs;
      if (now >= at) t.end = { status: 'deleted', at, message: CANCELED_MESSAGE };
      return;
    }
    const events: Array<{ at: number; fail?: string }> = [{ at: t.createdAt + t.durationMs }];
    if (t.scripted) events.push({ at: t.scripted.at, fail: t.scripted.message });
    if (t.validation.done && t.validation.failure) events.push({ at: t.validateAt, fail: t.validation.failure });
    events.sort((a, b) => a.at - b.at || (a.fail ? -1 : 1));
    const first = events[0];
    if (first.at > now) return;
    // An outcome at or after the end of validation waits for the validation's result.
    if (!t.validation.done && first.at >= t.validateAt) return;
    if (first.fail !== undefined) {
      t.end = { status: 'deleted', at: first.at, message: first.fail };
    } else {
      this.completeImport(t, first.at);
      t.end = { status: 'completed', at: first.at };
    }
  }

  /** The AMI and snapshots of a completed import. */
  private completeImport(t: ImportTask, at: number): void {
    t.snapshotIds = t.disks.map((d) => {
      const size = d.virtualSize ?? d.objectSize ?? GiB;
      return this.newSnapshot({
        region: t.region,
        volumeSize: Math.max(1, Math.ceil(size / GiB)),
        encrypted: t.encrypted,
        kmsKeyId: t.encrypted ? t.kmsKeyId ?? `arn:aws:kms:${t.region}:${ACCOUNT_ID}:alias/aws/ebs` : undefined,
        description: `Created by AWS-VMImport service for ${t.id}`,
        source: d.source ?? { bucket: d.bucket ?? '', key: d.key ?? '' },
        virtualSize: size,
        createdAt: at,
      }).id;
    });
    if (t.kind !== 'image') return;
    const platform = this.platformOf(t);
    const id = newId('ami');
    this.imageRecords.push({
      id,
      region: t.region,
      name: t.id,
      description: t.description,
      architecture: t.architecture ?? 'x86_64',
      platform: platform === 'Windows' ? 'windows' : undefined,
      usageOperation: this.usageOperationOf(t),
      bootMode: t.bootMode,
      enaSupport: true,
      virtualizationType: 'hvm',
      rootDeviceName: DEVICE_NAMES[0],
      mappings: t.snapshotIds.map((snapshotId, i) => ({
        deviceName: DEVICE_NAMES[i],
        snapshotId,
        volumeSize: this.snapshot(snapshotId, t.region).volumeSize,
        volumeType: 'gp2',
        deleteOnTermination: true,
      })),
      productCodes: [],
      createdAt: at,
      availableAt: at,
      tags: [],
      launchPermissions: [],
    });
    t.imageId = id;
  }

  private platformOf(t: ImportTask): string {
    return t.platform ?? t.validation.platform ?? 'Linux';
  }

  private licenseTypeOf(t: ImportTask): string | undefined {
    if (t.usageOperation) return undefined;
    return t.licenseType ?? (this.platformOf(t) === 'Windows' ? 'AWS' : 'BYOL');
  }

  private usageOperationOf(t: ImportTask): string {
    if (t.usageOperation) return t.usageOperation;
    if (this.platformOf(t) !== 'Windows') return 'RunInstances';
    return this.licenseTypeOf(t) === 'BYOL' ? 'RunInstances:0800' : 'RunInstances:0002';
  }

  // --- import ---

  private activeImports(region: string): number {
    return this.imports.filter((t) => t.region === region && !t.end && t.cancelledAt === undefined).length;
  }

  private activeExports(region: string): number {
    return this.exports.filter((e) => e.region === region && !e.end && e.cancelledAt === undefined).length;
  }

  /** The task already started with this client token, if any; a different request under it is an error. */
  private idempotent<T extends { clientToken?: string; fingerprint?: string; region: string }>(list: T[], p: Params, region: string): T | undefined {
    const token = p.str('ClientToken');
    if (!token) return undefined;
    const found = list.find((t) => t.region === region && t.clientToken === token);
    if (found && found.fingerprint !== fingerprintOf(p)) {
      throw new ApiError('IdempotentParameterMismatch', `The client token ${token} was used before with different parameters.`);
    }
    return found;
  }

  private parseDiskContainer(c: Params, formats: readonly string[], index: number): ImportDisk {
    const rawFormat = c.str('Format');
    const format = rawFormat?.toUpperCase();
    const snapshotId = c.str('SnapshotId');
    const url = c.str('Url');
    const bucket = c.str('UserBucket.S3Bucket');
    const key = c.str('UserBucket.S3Key');
    const sources = [snapshotId, url, c.has('UserBucket') ? 'bucket' : undefined].filter((x) => x !== undefined);
    if (sources.length !== 1) {
      throw new ApiError('InvalidParameter', `Disk container ${index + 1} must specify exactly one of Url, UserBucket and SnapshotId.`);
    }
    if (c.has('UserBucket') && (!bucket || !key)) {
      throw new ApiError('MissingParameter', `Disk container ${index + 1}: UserBucket needs S3Bucket and S3Key.`);
    }
    if (!snapshotId) {
      if (!format) throw new ApiError('MissingParameter', `Disk container ${index + 1}: the request must contain the parameter Format.`);
      if (!formats.includes(format)) {
        throw new ApiError('InvalidParameterValue', `Invalid value '${rawFormat}' for Format. Valid values: ${formats.join(', ')}.`);
      }
    }
    const disk: ImportDisk = { format: format ?? 'RAW', description: c.str('Description'), deviceName: c.str('DeviceName'), snapshotId, url };
    if (bucket && key) Object.assign(disk, { bucket, key });
    if (url) {
      const parsed = parseObjectUrl(url);
      if (parsed) Object.assign(disk, parsed);
    }
    return disk;
  }

  /** HEADs each disk's object; a missing object (or bucket) is left without a size. */
  private async locateDisks(disks: ImportDisk[], region: string): Promise<void> {
    for (const d of disks) {
      if (d.snapshotId) {
        const snap = this.snapshotRecords.find((s) => s.id === d.snapshotId && s.region === region);
        if (!snap) throw new ApiError('InvalidSnapshot.NotFound', `The snapshot '${d.snapshotId}' does not exist.`);
        d.source = snap.source;
        d.virtualSize = snap.virtualSize;
        d.objectSize = snap.virtualSize;
        continue;
      }
      if (!d.bucket || !d.key) continue;
      try {
        const head = await this.s3.send(new HeadObjectCommand({ Bucket: d.bucket, Key: d.key }));
        d.objectSize = head.ContentLength ?? 0;
        d.source = { bucket: d.bucket, key: d.key };
      } catch {
        // Not found or not readable: the task fails validation as the service's does.
      }
    }
  }

  private startImport(t: Omit<ImportTask, 'createdAt' | 'durationMs' | 'validateAt' | 'validation' | 'snapshotIds'>): ImportTask {
    const now = this.clock.now();
    const bytes = t.disks.reduce((n, d) => n + (d.objectSize ?? 0), 0);
    const durationMs = Math.round(this.importDurationMs * Math.max(1, bytes / STRETCH_BYTES));
    const task: ImportTask = {
      ...t,
      createdAt: now,
      durationMs,
      validateAt: now + Math.round(durationMs * VALIDATED_AT),
      validation: { promise: Promise.resolve(), done: false },
      snapshotIds: [],
    };
    const rule = this.taskFailures.findIndex((f) => f.key === undefined || task.disks.some((d) => d.key === f.key));
    if (rule >= 0) {
      const [f] = this.taskFailures.splice(rule, 1);
      task.scripted = { at: now + (f.afterMs ?? Math.round(durationMs * VALIDATED_AT)), message: f.message };
    }
    task.validation.promise = this.track(
      this.validate(task).then(
        (failure) => {
          task.validation.failure = failure;
          task.validation.done = true;
        },
        (e: unknown) => {
          task.validation.failure = `ClientError: ${e instanceof Error ? e.message : String(e)}`;
          task.validation.done = true;
        },
      ),
    );
    this.imports.push(task);
    return task;
  }

  /** Why the task's disks fail validation, or undefined when they pass. */
  private async validate(task: ImportTask): Promise<string | undefined> {
    if (task.kind === 'image' && task.disks.length > MAX_VOLUMES) return TOO_MANY_VOLUMES_MESSAGE;
    for (const d of task.disks) {
      if (d.snapshotId) continue;
      if (d.objectSize === undefined || !d.bucket || !d.key) return ACCESS_DENIED_MESSAGE;
      if (!this.inspect) continue;
      const result = await this.inspect(d.bucket, d.key, { kind: task.kind, format: d.format });
      if (result.virtualSize !== undefined) d.virtualSize = result.virtualSize;
      if (result.platform && task.validation.platform === undefined) task.validation.platform = result.platform;
      if (!result.importable) return result.reason ?? UNSUPPORTED_FORMAT_MESSAGE;
    }
    return undefined;
  }

  private checkEncryption(p: Params): { encrypted: boolean; kmsKeyId?: string } {
    const encrypted = p.bool('Encrypted') ?? false;
    const kmsKeyId = p.str('KmsKeyId');
    if (kmsKeyId && !encrypted) {
      throw new ApiError('InvalidParameterCombination', 'KmsKeyId can be specified only when Encrypted is true.');
    }
    return { encrypted, kmsKeyId };
  }

  private async importImage(p: Params, region: string): Promise<Record<string, unknown>> {
    const existing = this.idempotent(this.imports.filter((t) => t.kind === 'image'), p, region);
    if (existing) return this.importImageView(existing, this.clock.now(), true);
    const containers = p.structs('DiskContainer');
    if (containers.length === 0) throw new ApiError('MissingParameter', 'The request must contain the parameter DiskContainer');
    const disks = containers.map((c, i) => this.parseDiskContainer(c, IMPORT_FORMATS, i));
    if (disks.length > 1 && disks.some((d) => d.format === 'OVA')) {
      throw new ApiError('InvalidParameter', 'An OVA must be the only disk container of an import.');
    }
    const licenseType = p.str('LicenseType');
    const usageOperation = p.str('UsageOperation');
    if (licenseType && usageOperation) {
      throw new ApiError('InvalidParameterCombination', 'LicenseType and UsageOperation cannot be specified together.');
    }
    if (licenseType && !['AWS', 'BYOL'].includes(licenseType)) {
      throw new ApiError('InvalidParameterValue', `Invalid value '${licenseType}' for LicenseType. Valid values: AWS, BYOL.`);
    }
    if (usageOperation && !USAGE_OPERATIONS.has(usageOperation)) {
      throw new ApiError('InvalidParameterValue', `Invalid value '${usageOperation}' for UsageOperation.`);
    }
    const platform = p.str('Platform');
    if (platform && !['Windows', 'Linux'].includes(platform)) {
      throw new ApiError('InvalidParameterValue', `Invalid value '${platform}' for Platform. Valid values: Windows, Linux.`);
    }
    if (platform === 'Linux' && licenseType === 'AWS') {
      throw new ApiError('InvalidParameterCombination', 'Linux imports support the BYOL license type only.');
    }
    const bootMode = p.str('BootMode');
    if (bootMode === 'uefi-preferred') {
      throw new ApiError('InvalidParameterValue', 'The uefi-preferred boot mode is not supported for importing images.');
    }
    if (bootMode && !['legacy-bios', 'uefi'].includes(bootMode)) {
      throw new ApiError('InvalidParameterValue', `Invalid value '${bootMode}' for BootMode. Valid values: legacy-bios, uefi.`);
    }
    const architecture = p.str('Architecture');
    if (architecture && !['i386', 'x86_64', 'arm64'].includes(architecture)) {
      throw new ApiError('InvalidParameterValue', `Invalid value '${architecture}' for Architecture. Valid values: i386, x86_64.`);
    }
    if (architecture === 'arm64' && bootMode !== 'uefi') {
      throw new ApiError('InvalidParameterCombination', 'arm64 images must be imported with the uefi boot mode.');
    }
    const hypervisor = p.str('Hypervisor');
    if (hypervisor && hypervisor !== 'xen') throw new ApiError('InvalidParameterValue', `Invalid value '${hypervisor}' for Hypervisor. Valid values: xen.`);
    const { encrypted, kmsKeyId } = this.checkEncryption(p);
    const licenseSpecifications = p.structs('LicenseSpecifications').map((l) => l.required('LicenseConfigurationArn'));
    if (bootMode === 'uefi') {
      if (encrypted) throw new ApiError('InvalidParameter', 'A UEFI import cannot be encrypted: import it unencrypted, then copy the image with encryption.');
      if (licenseSpecifications.length > 0) throw new ApiError('InvalidParameter', 'A UEFI import cannot specify a license configuration.');
      if (disks.some((d) => d.snapshotId) && !platform) {
        throw new ApiError('InvalidParameter', 'A UEFI import from an EBS snapshot must specify the Platform.');
      }
    }
    const tags = tagSpecifications(p, ['import-image-task']).get('import-image-task') ?? [];
    if (this.activeImports(region) >= this.maxImports) {
      throw new ApiError('ResourceLimitExceeded', `Too many import tasks in progress. The limit is ${this.maxImports} for this Region.`);
    }
    if (p.bool('DryRun')) throw new ApiError('DryRunOperation', 'Request would have succeeded, but DryRun flag is set.', 412);
    await this.locateDisks(disks, region);
    const task = this.startImport({
      kind: 'image',
      id: newId('import-ami'),
      region,
      clientToken: p.str('ClientToken'),
      fingerprint: fingerprintOf(p),
      description: p.str('Description'),
      encrypted,
      kmsKeyId,
      roleName: p.str('RoleName') ?? 'vmimport',
      architecture,
      bootMode,
      hypervisor,
      licenseType,
      usageOperation,
      platform,
      licenseSpecifications,
      disks,
      tags,
    });
    return this.importImageView(task, this.clock.now(), true);
  }

  private async importSnapshot(p: Params, region: string): Promise<Record<string, unknown>> {
    const existing = this.idempotent(this.imports.filter((t) => t.kind === 'snapshot'), p, region);
    if (existing) return this.importSnapshotView(existing, this.clock.now());
    if (!p.has('DiskContainer')) throw new ApiError('MissingParameter', 'The request must contain the parameter DiskContainer');
    const container = p.sub('DiskContainer');
    if (container.str('Format')?.toUpperCase() === 'OVA') {
      throw new ApiError('InvalidParameterValue', 'ImportSnapshot does not take OVA: import the disks inside it, or the OVA with ImportImage.');
    }
    if (container.str('SnapshotId')) throw new ApiError('InvalidParameter', 'ImportSnapshot takes a Url or a UserBucket.');
    const disk = this.parseDiskContainer(container, SNAPSHOT_FORMATS, 0);
    const { encrypted, kmsKeyId } = this.checkEncryption(p);
    const tags = tagSpecifications(p, ['import-snapshot-task']).get('import-snapshot-task') ?? [];
    if (this.activeImports(region) >= this.maxImports) {
      throw new ApiError('ResourceLimitExceeded', `Too many import tasks in progress. The limit is ${this.maxImports} for this Region.`);
    }
    if (p.bool('DryRun')) throw new ApiError('DryRunOperation', 'Request would have succeeded, but DryRun flag is set.', 412);
    await this.locateDisks([disk], region);
    const task = this.startImport({
      kind: 'snapshot',
      id: newId('import-snap'),
      region,
      clientToken: p.str('ClientToken'),
      fingerprint: fingerprintOf(p),
      description: p.str('Description'),
      encrypted,
      kmsKeyId,
      roleName: p.str('RoleName') ?? 'vmimport',
      licenseSpecifications: [],
      disks: [disk],
      tags,
    });
    return this.importSnapshotView(task, this.clock.now());
  }

  /** Status, message and progress of an import task at `now`. */
  private importStatus(t: ImportTask, now: number): { status: string; message?: string; progress?: string } {
    if (t.end) return { status: t.end.status, message: t.end.message };
    if (t.cancelledAt !== undefined) return { status: 'deleting', message: CANCELED_MESSAGE };
    const effective = t.validation.done ? now : Math.min(now, t.validateAt - 1);
    const fraction = (effective - t.createdAt) / t.durationMs;
    const { message, progress } = phaseAt(t.kind === 'image' ? IMAGE_PHASES : SNAPSHOT_PHASES, fraction);
    return { status: 'active', message, progress: String(progress) };
  }

  private userBucket(d: ImportDisk): Record<string, unknown> | undefined {
    return d.bucket && d.key && !d.url ? { S3Bucket: d.bucket, S3Key: d.key } : undefined;
  }

  private importImageView(t: ImportTask, now: number, asStarted = false): Record<string, unknown> {
    const s = this.importStatus(t, now);
    const completed = s.status === 'completed';
    const validated = t.validation.done && !t.validation.failure && now >= t.validateAt;
    const view: Record<string, unknown> = {
      Architecture: t.architecture ?? (validated ? 'x86_64' : undefined),
      Description: t.description,
      Encrypted: t.encrypted,
      Hypervisor: t.hypervisor,
      ImageId: completed ? t.imageId : undefined,
      ImportTaskId: t.id,
      KmsKeyId: t.kmsKeyId,
      LicenseType: validated ? this.licenseTypeOf(t) : t.licenseType,
      Platform: validated ? this.platformOf(t) : t.platform,
      Progress: s.progress,
      SnapshotDetails: t.disks.map((d, i) => ({
        Description: d.description,
        DeviceName: completed ? DEVICE_NAMES[i] : d.deviceName,
        DiskImageSize: validated || completed ? d.objectSize ?? 0 : 0,
        Format: d.format,
        SnapshotId: completed ? t.snapshotIds[i] : d.snapshotId,
        Status: completed ? 'completed' : s.status,
        Url: d.url,
        UserBucket: this.userBucket(d),
      })),
      Status: s.status,
      StatusMessage: s.message,
      LicenseSpecifications: t.licenseSpecifications.map((arn) => ({ LicenseConfigurationArn: arn })),
      Tags: t.tags.map((x) => ({ ...x })),
      UsageOperation: validated ? this.usageOperationOf(t) : t.usageOperation,
    };
    if (!asStarted) view.BootMode = t.bootMode;
    return prune(view);
  }

  private importSnapshotView(t: ImportTask, now: number): Record<string, unknown> {
    const s = this.importStatus(t, now);
    const d = t.disks[0];
    const completed = s.status === 'completed';
    const validated = t.validation.done && !t.validation.failure && now >= t.validateAt;
    return prune({
      Description: t.description,
      ImportTaskId: t.id,
      SnapshotTaskDetail: {
        Description: d.description,
        DiskImageSize: validated || completed ? d.objectSize ?? 0 : 0,
        Encrypted: t.encrypted,
        Format: d.format,
        KmsKeyId: t.kmsKeyId,
        Progress: s.progress,
        SnapshotId: completed ? t.snapshotIds[0] : undefined,
        Status: s.status,
        StatusMessage: s.message,
        Url: d.url,
        UserBucket: this.userBucket(d),
      },
      Tags: t.tags.map((x) => ({ ...x })),
    });
  }

  private findImportTasks(p: Params, region: string, kind: 'image' | 'snapshot'): ImportTask[] {
    const ids = p.list('ImportTaskId');
    const prefix = kind === 'image' ? 'import-ami-' : 'import-snap-';
    const now = this.clock.now();
    // Ended tasks are listed for 7 days after they end.
    let tasks = this.imports.filter((t) => t.kind === kind && t.region === region && !(t.end && now - t.end.at > TASK_RETENTION_MS));
    if (ids.length > 0) {
      for (const id of ids) {
        if (!id.startsWith(prefix)) throw new ApiError('InvalidConversionTaskId.Malformed', `The import task ID '${id}' is malformed.`);
        if (!tasks.some((t) => t.id === id)) throw new ApiError('InvalidConversionTaskId', `The import task ID '${id}' does not exist.`);
      }
      tasks = tasks.filter((t) => ids.includes(t.id));
    }
    return applyFilters(tasks, filtersOf(p), (t) => t.tags, { 'task-state': (t) => [this.importStatus(t, now).status] });
  }

  private describeImportTasks(p: Params, region: string, kind: 'image' | 'snapshot'): Record<string, unknown> {
    const now = this.clock.now();
    const { items, nextToken } = paginate(this.findImportTasks(p, region, kind), p);
    if (kind === 'image') return prune({ ImportImageTasks: items.map((t) => this.importImageView(t, now)), NextToken: nextToken });
    return prune({ ImportSnapshotTasks: items.map((t) => this.importSnapshotView(t, now)), NextToken: nextToken });
  }

  private cancelImportTask(p: Params, region: string): Record<string, unknown> {
    const id = p.required('ImportTaskId');
    const task = this.imports.find((t) => t.id === id && t.region === region);
    if (!task) throw new ApiError('InvalidConversionTaskId', `The import task ID '${id}' does not exist.`);
    const now = this.clock.now();
    const before = this.importStatus(task, now).status;
    if (before !== 'active') {
      // The service's code for this case is not published; IncorrectState is the simulator's.
      throw new ApiError('IncorrectState', `The import task '${id}' is ${before} and cannot be canceled.`);
    }
    if (p.bool('DryRun')) throw new ApiError('DryRunOperation', 'Request would have succeeded, but DryRun flag is set.', 412);
    task.cancelledAt = now;
    task.cancelReason = p.str('CancelReason');
    return { ImportTaskId: id, PreviousState: before, State: 'deleting' };
  }

  // --- images and snapshots ---

  private newSnapshot(s: {
    region: string;
    volumeSize: number;
    encrypted: boolean;
    kmsKeyId?: string;
    description?: string;
    source: DiskSource;
    virtualSize: number;
    createdAt?: number;
    tags?: Tag[];
  }): SnapshotRecord {
    const record: SnapshotRecord = {
      id: newId('snap'),
      region: s.region,
      volumeSize: s.volumeSize,
      encrypted: s.encrypted,
      kmsKeyId: s.kmsKeyId ?? (s.encrypted ? `arn:aws:kms:${s.region}:${ACCOUNT_ID}:alias/aws/ebs` : undefined),
      description: s.description,
      createdAt: s.createdAt ?? this.clock.now(),
      tags: s.tags ?? [],
      createVolumePermissions: [],
      source: s.source,
      virtualSize: s.virtualSize,
    };
    this.snapshotRecords.push(record);
    return record;
  }

  private image(id: string, region: string): ImageRecord {
    if (!/^ami-[0-9a-f]{8,17}$/.test(id)) throw new ApiError('InvalidAMIID.Malformed', `Invalid id: "${id}" (expecting "ami-...")`);
    const found = this.imageRecords.find((i) => i.id === id && i.region === region);
    if (!found) throw new ApiError('InvalidAMIID.NotFound', `The image id '[${id}]' does not exist`);
    return found;
  }

  private snapshot(id: string, region: string): SnapshotRecord {
    if (!/^snap-[0-9a-f]{8,17}$/.test(id)) throw new ApiError('InvalidSnapshotID.Malformed', `Invalid id: "${id}" (expecting "snap-...")`);
    const found = this.snapshotRecords.find((s) => s.id === id && s.region === region);
    if (!found) throw new ApiError('InvalidSnapshot.NotFound', `The snapshot '${id}' does not exist.`);
    return found;
  }

  private checkImageName(name: string, region: string): void {
    if (name.length < 3 || name.length > 128 || !/^[a-zA-Z0-9()[\] ./\-'@_]+$/.test(name)) {
      throw new ApiError(
        'InvalidAMIName.Malformed',
        'AMI names must be between 3 and 128 characters long, and may contain letters, numbers, \'(\', \')\', \'.\', \'-\', \'/\' and \'_\'',
      );
    }
    const taken = this.imageRecords.find((i) => i.region === region && i.name === name);
    if (taken) throw new ApiError('InvalidAMIName.Duplicate', `AMI name ${name} is already in use by AMI ${taken.id}`);
  }

  private registerImage(p: Params, region: string): Record<string, unknown> {
    const name = p.required('Name');
    if (p.str('ImageLocation')) throw new ApiError('InvalidParameter', 'The simulator registers EBS-backed images only (no ImageLocation).');
    this.checkImageName(name, region);
    const architecture = p.str('Architecture') ?? 'x86_64';
    if (!['i386', 'x86_64', 'arm64', 'x86_64_mac', 'arm64_mac'].includes(architecture)) {
      throw new ApiError('InvalidParameterValue', `Invalid value '${architecture}' for Architecture.`);
    }
    const bootMode = p.str('BootMode');
    if (bootMode && !['legacy-bios', 'uefi', 'uefi-preferred'].includes(bootMode)) {
      throw new ApiError('InvalidParameterValue', `Invalid value '${bootMode}' for BootMode.`);
    }
    if (architecture === 'arm64' && bootMode === 'legacy-bios') {
      throw new ApiError('InvalidParameterCombination', 'arm64 images boot with UEFI only.');
    }
    const virtualizationType = p.str('VirtualizationType') ?? 'paravirtual';
    if (!['hvm', 'paravirtual'].includes(virtualizationType)) {
      throw new ApiError('InvalidParameterValue', `Invalid value '${virtualizationType}' for VirtualizationType.`);
    }
    const bdms = p.structs('BlockDeviceMapping');
    if (bdms.length === 0) throw new ApiError('InvalidBlockDeviceMapping', 'At least one block device mapping with an EBS snapshot is needed.');
    const mappings = bdms.map((b) => {
      const deviceName = b.required('DeviceName');
      const snapshotId = b.str('Ebs.SnapshotId');
      if (!snapshotId) throw new ApiError('InvalidBlockDeviceMapping', `The block device mapping of ${deviceName} needs an EBS snapshot.`);
      const snap = this.snapshot(snapshotId, region);
      const volumeSize = b.int('Ebs.VolumeSize') ?? snap.volumeSize;
      if (volumeSize < snap.volumeSize) {
        throw new ApiError(
          'InvalidBlockDeviceMapping',
          `Volume of size ${volumeSize}GB is smaller than snapshot '${snapshotId}', expect size >= ${snap.volumeSize}GB`,
        );
      }
      return {
        deviceName,
        snapshotId,
        volumeSize,
        volumeType: b.str('Ebs.VolumeType') ?? 'gp2',
        deleteOnTermination: b.bool('Ebs.DeleteOnTermination') ?? true,
      };
    });
    const rootDeviceName = p.str('RootDeviceName') ?? mappings[0].deviceName;
    if (!mappings.some((m) => m.deviceName === rootDeviceName)) {
      throw new ApiError('InvalidBlockDeviceMapping', `The root device ${rootDeviceName} has no block device mapping.`);
    }
    const tagged = tagSpecifications(p, ['image', 'snapshot']);
    if (p.bool('DryRun')) throw new ApiError('DryRunOperation', 'Request would have succeeded, but DryRun flag is set.', 412);
    const now = this.clock.now();
    const id = newId('ami');
    this.imageRecords.push({
      id,
      region,
      name,
      description: p.str('Description'),
      architecture,
      usageOperation: 'RunInstances',
      bootMode,
      enaSupport: p.bool('EnaSupport'),
      virtualizationType,
      tpmSupport: p.str('TpmSupport'),
      imdsSupport: p.str('ImdsSupport'),
      rootDeviceName,
      mappings,
      productCodes: [],
      createdAt: now,
      availableAt: now,
      tags: [...(tagged.get('image') ?? [])],
      launchPermissions: [],
    });
    for (const m of mappings) mergeTags(this.snapshot(m.snapshotId, region).tags, tagged.get('snapshot') ?? []);
    return { ImageId: id };
  }

  private imageView(i: ImageRecord, now: number): Image {
    const snapshots = i.mappings.map((m) => this.snapshotRecords.find((s) => s.id === m.snapshotId));
    return prune({
      ImageId: i.id,
      ImageLocation: `${ACCOUNT_ID}/${i.name}`,
      State: now >= i.availableAt ? 'available' : 'pending',
      OwnerId: ACCOUNT_ID,
      CreationDate: new Date(i.createdAt).toISOString(),
      Public: i.launchPermissions.some((l) => l.Group === 'all'),
      ProductCodes: i.productCodes.map((c) => ({ ProductCodeId: c, ProductCodeType: 'marketplace' })),
      Architecture: i.architecture,
      ImageType: 'machine',
      Platform: i.platform,
      PlatformDetails: i.platform === 'windows' ? 'Windows' : 'Linux/UNIX',
      UsageOperation: i.usageOperation,
      BlockDeviceMappings: i.mappings.map((m, n) => ({
        DeviceName: m.deviceName,
        Ebs: {
          DeleteOnTermination: m.deleteOnTermination,
          SnapshotId: m.snapshotId,
          VolumeSize: m.volumeSize,
          VolumeType: m.volumeType,
          Encrypted: snapshots[n]?.encrypted ?? false,
        },
      })),
      Description: i.description,
      EnaSupport: i.enaSupport,
      Hypervisor: 'xen',
      Name: i.name,
      RootDeviceName: i.rootDeviceName,
      RootDeviceType: 'ebs',
      Tags: i.tags.map((t) => ({ ...t })),
      VirtualizationType: i.virtualizationType,
      BootMode: i.bootMode,
      TpmSupport: i.tpmSupport,
      ImdsSupport: i.imdsSupport,
      SourceImageId: i.sourceImageId,
      SourceImageRegion: i.sourceRegion,
    }) as Image;
  }

  private describeImages(p: Params, region: string): Record<string, unknown> {
    const now = this.clock.now();
    const ids = p.list('ImageId');
    let images = this.imageRecords.filter((i) => i.region === region);
    for (const id of ids) this.image(id, region);
    if (ids.length > 0) images = images.filter((i) => ids.includes(i.id));
    const owners = p.list('Owner');
    if (owners.length > 0) images = images.filter(() => owners.some((o) => o === 'self' || o === ACCOUNT_ID));
    images = applyFilters(images, filtersOf(p), (i) => i.tags, {
      'name': (i) => [i.name],
      'image-id': (i) => [i.id],
      'state': (i) => [now >= i.availableAt ? 'available' : 'pending'],
      'owner-id': () => [ACCOUNT_ID],
      'architecture': (i) => [i.architecture],
      'platform': (i) => [i.platform],
      'description': (i) => [i.description],
      'is-public': (i) => [String(i.launchPermissions.some((l) => l.Group === 'all'))],
      'block-device-mapping.snapshot-id': (i) => i.mappings.map((m) => m.snapshotId),
      'product-code': (i) => i.productCodes,
    });
    const { items, nextToken } = paginate(images, p);
    return prune({ Images: items.map((i) => this.imageView(i, now)), NextToken: nextToken });
  }

  private describeImageAttribute(p: Params, region: string): Record<string, unknown> {
    const image = this.image(p.required('ImageId'), region);
    const attribute = p.required('Attribute');
    switch (attribute) {
      case 'launchPermission':
        return { ImageId: image.id, LaunchPermissions: image.launchPermissions.map((l) => ({ ...l })) };
      case 'description':
        return { ImageId: image.id, Description: { Value: image.description } };
      case 'productCodes':
        return { ImageId: image.id, ProductCodes: image.productCodes.map((c) => ({ ProductCodeId: c, ProductCodeType: 'marketplace' })) };
      case 'bootMode':
        return prune({ ImageId: image.id, BootMode: { Value: image.bootMode } });
      default:
        throw new ApiError('InvalidParameterValue', `The attribute '${attribute}' is not supported by the simulator.`);
    }
  }

  private deregisterImage(p: Params, region: string): Record<string, unknown> {
    const image = this.image(p.required('ImageId'), region);
    this.imageRecords.splice(this.imageRecords.indexOf(image), 1);
    const results: Array<{ SnapshotId: string; ReturnCode: string }> = [];
    if (p.bool('DeleteAssociatedSnapshots')) {
      for (const m of image.mappings) {
        const i = this.snapshotRecords.findIndex((s) => s.id === m.snapshotId);
        if (i >= 0) this.snapshotRecords.splice(i, 1);
        results.push({ SnapshotId: m.snapshotId, ReturnCode: 'success' });
      }
    }
    return prune({ Return: true, DeleteSnapshotResults: results.length ? results : undefined });
  }

  private snapshotView(s: SnapshotRecord): Snapshot {
    return prune({
      SnapshotId: s.id,
      State: 'completed',
      StartTime: new Date(s.createdAt),
      Progress: '100%',
      OwnerId: ACCOUNT_ID,
      Description: s.description,
      VolumeSize: s.volumeSize,
      Encrypted: s.encrypted,
      KmsKeyId: s.kmsKeyId,
      VolumeId: 'vol-ffffffff',
      StorageTier: 'standard',
      Tags: s.tags.map((t) => ({ ...t })),
    }) as Snapshot;
  }

  private describeSnapshots(p: Params, region: string): Record<string, unknown> {
    const ids = p.list('SnapshotId');
    let snaps = this.snapshotRecords.filter((s) => s.region === region);
    for (const id of ids) this.snapshot(id, region);
    if (ids.length > 0) snaps = snaps.filter((s) => ids.includes(s.id));
    const owners = p.list('Owner');
    if (owners.length > 0) snaps = snaps.filter(() => owners.some((o) => o === 'self' || o === ACCOUNT_ID));
    snaps = applyFilters(snaps, filtersOf(p), (s) => s.tags, {
      'snapshot-id': (s) => [s.id],
      'status': () => ['completed'],
      'owner-id': () => [ACCOUNT_ID],
      'description': (s) => [s.description],
      'volume-size': (s) => [String(s.volumeSize)],
      'encrypted': (s) => [String(s.encrypted)],
    });
    const { items, nextToken } = paginate(snaps, p);
    return prune({ Snapshots: items.map((s) => this.snapshotView(s)), NextToken: nextToken });
  }

  private describeSnapshotAttribute(p: Params, region: string): Record<string, unknown> {
    const snap = this.snapshot(p.required('SnapshotId'), region);
    const attribute = p.required('Attribute');
    if (attribute !== 'createVolumePermission') {
      throw new ApiError('InvalidParameterValue', `The attribute '${attribute}' is not supported by the simulator.`);
    }
    return { SnapshotId: snap.id, CreateVolumePermissions: snap.createVolumePermissions.map((c) => ({ ...c })) };
  }

  private deleteSnapshot(p: Params, region: string): Record<string, unknown> {
    const snap = this.snapshot(p.required('SnapshotId'), region);
    const user = this.imageRecords.find((i) => i.mappings.some((m) => m.snapshotId === snap.id));
    if (user) {
      throw new ApiError('InvalidSnapshot.InUse', `The snapshot ${snap.id} is currently in use by ${user.id}`);
    }
    this.snapshotRecords.splice(this.snapshotRecords.indexOf(snap), 1);
    return {};
  }

  private copyImage(p: Params, region: string): Record<string, unknown> {
    const existing = this.idempotent(this.imageRecords, p, region);
    if (existing) return { ImageId: existing.id };
    const sourceRegion = p.required('SourceRegion');
    const source = this.image(p.required('SourceImageId'), sourceRegion);
    const name = p.required('Name');
    this.checkImageName(name, region);
    const { encrypted, kmsKeyId } = this.checkEncryption(p);
    const tagged = tagSpecifications(p, ['image', 'snapshot']);
    if (p.bool('DryRun')) throw new ApiError('DryRunOperation', 'Request would have succeeded, but DryRun flag is set.', 412);
    const now = this.clock.now();
    const mappings = source.mappings.map((m) => {
      const snap = this.snapshot(m.snapshotId, sourceRegion);
      const copy = this.newSnapshot({
        region,
        volumeSize: snap.volumeSize,
        encrypted: snap.encrypted || encrypted,
        kmsKeyId: kmsKeyId ?? (snap.encrypted && region === sourceRegion ? snap.kmsKeyId : undefined),
        description: `Copied for DestinationAmi from SourceAmi ${source.id} from SourceSnapshot ${snap.id}.`,
        source: snap.source,
        virtualSize: snap.virtualSize,
        tags: [...(tagged.get('snapshot') ?? [])],
      });
      return { ...m, snapshotId: copy.id };
    });
    const id = newId('ami');
    const tags: Tag[] = p.bool('CopyImageTags') ? source.tags.map((t) => ({ ...t })) : [];
    mergeTags(tags, tagged.get('image') ?? []);
    this.imageRecords.push({
      ...source,
      id,
      region,
      name,
      description: p.str('Description') ?? source.description,
      mappings,
      createdAt: now,
      availableAt: now + this.copyDurationMs,
      tags,
      launchPermissions: [],
      sourceImageId: source.id,
      sourceRegion,
      clientToken: p.str('ClientToken'),
      fingerprint: fingerprintOf(p),
    });
    return { ImageId: id };
  }

  private createTags(p: Params, region: string): Record<string, unknown> {
    const ids = p.list('ResourceId');
    if (ids.length === 0) throw new ApiError('MissingParameter', 'The request must contain the parameter ResourceId');
    const tags = p.structs('Tag').map((t) => checkTag({ Key: t.raw.Key, Value: t.raw.Value ?? '' }));
    const targets = ids.map((id) => this.taggable(id, region));
    if (p.bool('DryRun')) throw new ApiError('DryRunOperation', 'Request would have succeeded, but DryRun flag is set.', 412);
    for (const t of targets) mergeTags(t, tags);
    return {};
  }

  /** The tag list of resource `id`. */
  private taggable(id: string, region: string): Tag[] {
    if (id.startsWith('ami-')) return this.image(id, region).tags;
    if (id.startsWith('snap-')) return this.snapshot(id, region).tags;
    if (id.startsWith('import-')) {
      const task = this.imports.find((t) => t.id === id && t.region === region);
      if (!task) throw new ApiError('InvalidConversionTaskId', `The import task ID '${id}' does not exist.`);
      return task.tags;
    }
    if (id.startsWith('export-')) {
      const task = this.exports.find((t) => t.id === id && t.region === region);
      if (!task) throw new ApiError('InvalidExportTaskID.NotFound', `The export task ID '${id}' does not exist.`);
      return task.tags;
    }
    if (id.startsWith('i-')) return this.instance(id, region).tags;
    if (id.startsWith('vol-')) {
      const vol = this.instances.filter((i) => i.region === region).flatMap((i) => i.volumes).find((v) => v.id === id);
      if (!vol) throw new ApiError('InvalidVolume.NotFound', `The volume '${id}' does not exist.`);
      return vol.tags;
    }
    throw new ApiError('InvalidID', `The ID '${id}' is not valid`);
  }

  private modifyImageAttribute(p: Params, region: string): Record<string, unknown> {
    const image = this.image(p.required('ImageId'), region);
    const add: LaunchPermission[] = p.structs('LaunchPermission.Add').map((l) => launchPermissionOf(l));
    const remove: LaunchPermission[] = p.structs('LaunchPermission.Remove').map((l) => launchPermissionOf(l));
    const attribute = p.str('Attribute');
    const legacy: LaunchPermission[] = [
      ...p.list('UserId').map((UserId) => ({ UserId })),
      ...p.list('UserGroup').map((Group) => ({ Group }) as LaunchPermission),
      ...p.list('OrganizationArn').map((OrganizationArn) => ({ OrganizationArn })),
      ...p.list('OrganizationalUnitArn').map((OrganizationalUnitArn) => ({ OrganizationalUnitArn })),
    ];
    if (legacy.length > 0) {
      if (attribute && attribute !== 'launchPermission') {
        throw new ApiError('InvalidParameterCombination', `UserId, UserGroup and organization ARNs go with the launchPermission attribute, not ${attribute}.`);
      }
      const op = p.str('OperationType');
      if (op === 'add') add.push(...legacy);
      else if (op === 'remove') remove.push(...legacy);
      else throw new ApiError('MissingParameter', 'The request must contain the parameter OperationType (add or remove)');
    }
    for (const l of [...add, ...remove]) checkLaunchPermission(l);
    const description = p.str('Description.Value');
    if (add.length === 0 && remove.length === 0 && description === undefined) {
      throw new ApiError('MissingParameter', 'The request must change an attribute (LaunchPermission or Description).');
    }
    if (p.bool('DryRun')) throw new ApiError('DryRunOperation', 'Request would have succeeded, but DryRun flag is set.', 412);
    const same = (a: LaunchPermission, b: LaunchPermission) =>
      a.UserId === b.UserId && a.Group === b.Group && a.OrganizationArn === b.OrganizationArn && a.OrganizationalUnitArn === b.OrganizationalUnitArn;
    for (const l of add) if (!image.launchPermissions.some((x) => same(x, l))) image.launchPermissions.push(l);
    image.launchPermissions = image.launchPermissions.filter((x) => !remove.some((r) => same(x, r)));
    if (description !== undefined) image.description = description;
    return {};
  }

  private modifySnapshotAttribute(p: Params, region: string): Record<string, unknown> {
    const snap = this.snapshot(p.required('SnapshotId'), region);
    const entry = (c: Params) => prune({ UserId: c.str('UserId'), Group: c.str('Group') }) as { UserId?: string; Group?: string };
    const add = p.structs('CreateVolumePermission.Add').map(entry);
    const remove = p.structs('CreateVolumePermission.Remove').map(entry);
    const legacy = [...p.list('UserId').map((UserId) => ({ UserId })), ...p.list('UserGroup').map((Group) => ({ Group }))];
    const attribute = p.str('Attribute');
    if (attribute && attribute !== 'createVolumePermission') {
      throw new ApiError('InvalidParameterValue', `The attribute '${attribute}' is not supported by the simulator.`);
    }
    if (legacy.length > 0) {
      const op = p.str('OperationType');
      if (op === 'add') add.push(...legacy);
      else if (op === 'remove') remove.push(...legacy);
      else throw new ApiError('MissingParameter', 'The request must contain the parameter OperationType (add or remove)');
    }
    if (add.length === 0 && remove.length === 0) throw new ApiError('MissingParameter', 'The request must contain a CreateVolumePermission change.');
    for (const c of [...add, ...remove]) {
      if (c.UserId !== undefined && !/^\d{12}$/.test(c.UserId)) {
        throw new ApiError('InvalidParameterValue', `Invalid value '${c.UserId}' for userId: an account id has 12 digits.`);
      }
      if (c.Group !== undefined && c.Group !== 'all') throw new ApiError('InvalidParameterValue', `Invalid value '${c.Group}' for group.`);
      if (c.UserId === undefined && c.Group === undefined) throw new ApiError('InvalidParameterValue', 'A permission names a UserId or a Group.');
    }
    if (snap.encrypted && add.some((c) => c.Group === 'all')) {
      throw new ApiError('InvalidParameter', 'Encrypted snapshots cannot be made public.');
    }
    if (snap.encrypted && (snap.kmsKeyId ?? '').endsWith('alias/aws/ebs') && add.length > 0) {
      // Wording seen in the service's answers.
      throw new ApiError('InvalidParameter', "Snapshots encrypted with the AWS Managed CMK can't be shared. Specify another snapshot.");
    }
    if (p.bool('DryRun')) throw new ApiError('DryRunOperation', 'Request would have succeeded, but DryRun flag is set.', 412);
    for (const c of add) {
      if (!snap.createVolumePermissions.some((x) => x.UserId === c.UserId && x.Group === c.Group)) snap.createVolumePermissions.push(c);
    }
    snap.createVolumePermissions = snap.createVolumePermissions.filter((x) => !remove.some((r) => r.UserId === x.UserId && r.Group === x.Group));
    return {};
  }

  // --- exports ---

  private async checkExportBucket(bucket: string, role: string | undefined): Promise<void> {
    try {
      await this.s3.send(new HeadBucketCommand({ Bucket: bucket }));
    } catch {
      // The service's exact answer is not published; this one names the cause.
      throw new ApiError(
        'InvalidParameter',
        role
          ? `The S3 bucket '${bucket}' does not exist, or the service role ${role} cannot write to it.`
          : `The S3 bucket '${bucket}' does not exist, or VM Export has no WRITE and READ_ACP grant on it.`,
      );
    }
  }

  /**
   * Why an image or an instance cannot be exported (NotExportable), per the guide's export
   * limitations. The marketplace wording is the service's; the others follow it.
   */
  private exportBlocker(
    what: string,
    volumes: Array<{ sizeGiB: number; encrypted: boolean }>,
    productCodes: string[],
    platform: 'windows' | undefined,
    usageOperation: string | undefined,
  ): string | undefined {
    if (productCodes.length > 0) return `The ${what} is a marketplace AMI and is not exportable.`;
    if (volumes.some((v) => v.encrypted)) return `The ${what} has encrypted EBS snapshots in its block device mapping, which cannot be exported.`;
    if (LICENSED_USAGE.has(usageOperation ?? '') || (platform === 'windows' && usageOperation === undefined)) {
      return `The ${what} contains third-party software provided by AWS (a Windows or SQL Server license) and is not exportable.`;
    }
    const large = volumes.find((v) => v.sizeGiB > EXPORT_LIMIT_GIB);
    if (large) return `The ${what} has a volume of ${large.sizeGiB} GiB; volumes larger than 1 TiB cannot be exported.`;
    return undefined;
  }

  private exportDuration(source: DiskSource): number {
    const bytes = 'file' in source ? fs.statSync(source.file).size : 0;
    return Math.round(this.exportDurationMs * Math.max(1, bytes / STRETCH_BYTES));
  }

  private async exportImage(p: Params, region: string): Promise<Record<string, unknown>> {
    const existing = this.idempotent(this.exports.filter((e) => e.kind === 'image'), p, region);
    if (existing) return this.exportImageView(existing, this.clock.now(), true);
    const image = this.image(p.required('ImageId'), region);
    const rawFormat = p.required('DiskImageFormat');
    const format = rawFormat.toUpperCase();
    if (!['VMDK', 'VHD', 'RAW'].includes(format)) {
      throw new ApiError('InvalidParameterValue', `Invalid value '${rawFormat}' for DiskImageFormat. Valid values: VMDK, RAW, VHD.`);
    }
    const bucket = p.required('S3ExportLocation.S3Bucket');
    const prefix = p.str('S3ExportLocation.S3Prefix') ?? '';
    const roleName = p.str('RoleName') ?? 'vmimport';
    const volumes = image.mappings.map((m) => {
      const snap = this.snapshot(m.snapshotId, region);
      return { sizeGiB: m.volumeSize, encrypted: snap.encrypted };
    });
    const blocker = this.exportBlocker(`image ID provided (${image.id})`, volumes, image.productCodes, image.platform, image.usageOperation);
    if (blocker) throw new ApiError('NotExportable', blocker);
    const tags = tagSpecifications(p, ['export-image-task']).get('export-image-task') ?? [];
    await this.checkExportBucket(bucket, roleName);
    if (this.activeExports(region) >= this.maxExports) {
      throw new ApiError('ResourceLimitExceeded', `Too many export tasks in progress. The limit is ${this.maxExports} for this Region.`);
    }
    if (p.bool('DryRun')) throw new ApiError('DryRunOperation', 'Request would have succeeded, but DryRun flag is set.', 412);
    const root = image.mappings.find((m) => m.deviceName === image.rootDeviceName) ?? image.mappings[0];
    const source = this.snapshot(root.snapshotId, region).source;
    const id = newId('export-ami');
    const task: ExportTask = {
      kind: 'image',
      id,
      region,
      clientToken: p.str('ClientToken'),
      fingerprint: fingerprintOf(p),
      description: p.str('Description'),
      imageId: image.id,
      diskImageFormat: format,
      roleName,
      bucket,
      prefix,
      key: `${prefix}${id}.${format.toLowerCase()}`,
      source,
      tags,
      createdAt: this.clock.now(),
      durationMs: this.exportDuration(source),
    };
    this.exports.push(task);
    return this.exportImageView(task, this.clock.now(), true);
  }

  private async createInstanceExportTask(p: Params, region: string): Promise<Record<string, unknown>> {
    const instance = this.instance(p.required('InstanceId'), region);
    const target = p.required('TargetEnvironment');
    if (!['citrix', 'vmware', 'microsoft'].includes(target)) {
      throw new ApiError('InvalidParameterValue', `Invalid value '${target}' for TargetEnvironment. Valid values: citrix, vmware, microsoft.`);
    }
    const s3 = p.sub('ExportToS3');
    const format = s3.required('DiskImageFormat').toLowerCase();
    if (!['vmdk', 'vhd', 'raw'].includes(format)) {
      throw new ApiError('InvalidParameterValue', `Invalid value '${format}' for DiskImageFormat. Valid values: VMDK, RAW, VHD.`);
    }
    const container = s3.str('ContainerFormat');
    if (container !== undefined && container !== 'ova') {
      throw new ApiError('InvalidParameterValue', `Invalid value '${container}' for ContainerFormat. Valid values: ova.`);
    }
    // Formats each environment takes, as the service answers (code Unsupported).
    const allowed: Record<string, string[]> = { citrix: ['vhd'], microsoft: ['vhd'], vmware: ['vmdk'] };
    if (!allowed[target].includes(format)) {
      throw new ApiError(
        'Unsupported',
        `diskImageFormat '${format}' not supported for targetEnvironment '${target}'. Valid value(s): [${allowed[target].map((f) => `'${f}'`).join(', ')}].`,
      );
    }
    if (container === 'ova' && format !== 'vmdk') {
      throw new ApiError('Unsupported', `containerFormat 'ova' not supported for diskImageFormat '${format}'. Valid value(s): ['vmdk'].`);
    }
    const bucket = s3.required('S3Bucket');
    const prefix = s3.str('S3Prefix') ?? '';
    if (instance.volumes.length > 1) {
      throw new ApiError('NotExportable', `The instance ID provided (${instance.id}) has ${instance.volumes.length} volumes; only instances with one volume can be exported.`);
    }
    const blocker = this.exportBlocker(
      `instance ID provided (${instance.id})`,
      instance.volumes.map((v) => ({ sizeGiB: v.sizeGiB, encrypted: v.encrypted })),
      [],
      instance.platform,
      undefined,
    );
    if (blocker) throw new ApiError('NotExportable', blocker);
    const tags = tagSpecifications(p, ['export-instance-task']).get('export-instance-task') ?? [];
    await this.checkExportBucket(bucket, undefined);
    if (this.activeExports(region) >= this.maxExports) {
      throw new ApiError('ResourceLimitExceeded', `Too many export tasks in progress. The limit is ${this.maxExports} for this Region.`);
    }
    if (p.bool('DryRun')) throw new ApiError('DryRunOperation', 'Request would have succeeded, but DryRun flag is set.', 412);
    const id = newId('export-i');
    const source = instance.volumes[0].source;
    const task: ExportTask = {
      kind: 'instance',
      id,
      region,
      description: p.str('Description'),
      instanceId: instance.id,
      targetEnvironment: target,
      containerFormat: container,
      diskImageFormat: format,
      bucket,
      prefix,
      key: `${prefix}${id}.${container ?? format}`,
      source,
      tags,
      createdAt: this.clock.now(),
      durationMs: this.exportDuration(source),
    };
    this.exports.push(task);
    return { ExportTask: this.exportTaskView(task, this.clock.now()) };
  }

  /** State, message and progress of an export at `now`, in the vocabulary of its kind. */
  private exportState(e: ExportTask, now: number): { state: string; message?: string; progress?: string } {
    const image = e.kind === 'image';
    if (e.end) {
      const state = e.end.status === 'completed' ? 'completed' : image ? 'deleted' : 'cancelled';
      return { state, message: e.end.message, progress: e.end.status === 'completed' && image ? '100' : undefined };
    }
    if (e.cancelledAt !== undefined) return { state: image ? 'deleting' : 'cancelling', message: CANCELED_MESSAGE };
    // Until its file is written, a due export still shows its last phase.
    const fraction = Math.min((now - e.createdAt) / e.durationMs, 0.999);
    const { message, progress } = phaseAt(EXPORT_PHASES, fraction);
    return { state: 'active', message, progress: String(progress) };
  }

  private exportImageView(e: ExportTask, now: number, asStarted = false): Record<string, unknown> {
    const s = this.exportState(e, now);
    const view: Record<string, unknown> = {
      Description: e.description,
      ExportImageTaskId: e.id,
      ImageId: e.imageId,
      Progress: s.progress,
      S3ExportLocation: prune({ S3Bucket: e.bucket, S3Prefix: e.prefix || undefined }),
      Status: s.state,
      StatusMessage: s.message,
      Tags: e.tags.map((t) => ({ ...t })),
    };
    if (asStarted) Object.assign(view, { DiskImageFormat: e.diskImageFormat, RoleName: e.roleName });
    return prune(view);
  }

  private exportTaskView(e: ExportTask, now: number): Record<string, unknown> {
    const s = this.exportState(e, now);
    return prune({
      Description: e.description,
      ExportTaskId: e.id,
      ExportToS3Task: prune({ ContainerFormat: e.containerFormat, DiskImageFormat: e.diskImageFormat, S3Bucket: e.bucket, S3Key: e.key }),
      InstanceExportDetails: { InstanceId: e.instanceId, TargetEnvironment: e.targetEnvironment },
      State: s.state,
      StatusMessage: s.message,
      Tags: e.tags.map((t) => ({ ...t })),
    });
  }

  private findExports(p: Params, region: string, kind: 'image' | 'instance', idParam: string): ExportTask[] {
    const ids = p.list(idParam);
    let tasks = this.exports.filter((e) => e.kind === kind && e.region === region);
    for (const id of ids) {
      if (!tasks.some((t) => t.id === id)) throw new ApiError('InvalidExportTaskID.NotFound', `The export task ID '${id}' does not exist.`);
    }
    if (ids.length > 0) tasks = tasks.filter((t) => ids.includes(t.id));
    const now = this.clock.now();
    return applyFilters(tasks, filtersOf(p), (t) => t.tags, { 'export-task-id': (t) => [t.id], 'state': (t) => [this.exportState(t, now).state] });
  }

  private describeExportImageTasks(p: Params, region: string): Record<string, unknown> {
    const now = this.clock.now();
    const { items, nextToken } = paginate(this.findExports(p, region, 'image', 'ExportImageTaskId'), p);
    return prune({ ExportImageTasks: items.map((e) => this.exportImageView(e, now)), NextToken: nextToken });
  }

  private describeExportTasks(p: Params, region: string): Record<string, unknown> {
    const now = this.clock.now();
    return { ExportTasks: this.findExports(p, region, 'instance', 'ExportTaskId').map((e) => this.exportTaskView(e, now)) };
  }

  private cancelExportTask(p: Params, region: string): Record<string, unknown> {
    const id = p.required('ExportTaskId');
    const task = this.exports.find((e) => e.id === id && e.region === region);
    if (!task) throw new ApiError('InvalidExportTaskID.NotFound', `The export task ID '${id}' does not exist.`);
    const state = this.exportState(task, this.clock.now()).state;
    if (state !== 'active') {
      // The service's code for this case is not published; IncorrectState is the simulator's.
      throw new ApiError('IncorrectState', `The export task '${id}' is ${state} and cannot be canceled.`);
    }
    task.cancelledAt = this.clock.now();
    return {};
  }

  /** Writes the export's file and uploads it, once; the task completes, or ends deleted with the error. */
  private finishExport(e: ExportTask): Promise<void> {
    if (!e.finishing) {
      e.finishing = this.track(
        this.writeExport(e).then(
          () => {
            if (!e.end) e.end = { status: 'completed', at: e.createdAt + e.durationMs };
          },
          (err: unknown) => {
            if (!e.end) e.end = { status: 'deleted', at: e.createdAt + e.durationMs, message: `ClientError: ${err instanceof Error ? err.message : String(err)}` };
          },
        ),
      );
    }
    return e.finishing;
  }

  private async writeExport(e: ExportTask): Promise<void> {
    const dir = fs.mkdtempSync(path.join(this.tmp, `${e.id}-`));
    try {
      const out = path.join(dir, path.basename(e.key));
      const { image, close } = await this.openSource(e.source);
      try {
        if (e.containerFormat === 'ova') {
          const diskName = `${e.id}-disk-1.vmdk`;
          const vmdk = path.join(dir, diskName);
          await convert(image, 'vmdk', await FileSink.create(vmdk));
          const entries = ovaEntries(
            { base: e.id, disks: [{ name: diskName, file: vmdk }], vm: { name: e.instanceId }, manifest: 'SHA256' },
            () => image.virtualSize,
          );
          writeTar(out, entries);
        } else {
          const target = e.diskImageFormat.toLowerCase() as 'vmdk' | 'vhd' | 'raw';
          await convert(image, target, await FileSink.create(out));
        }
      } finally {
        await close();
      }
      const size = fs.statSync(out).size;
      await this.s3.send(new PutObjectCommand({ Bucket: e.bucket, Key: e.key, Body: fs.createReadStream(out), ContentLength: size }));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  /** Opens the disk behind a snapshot or volume: a raw file, or an imported object of any format the engine reads. */
  private async openSource(source: DiskSource): Promise<{ image: DiskImage; close: () => Promise<void> }> {
    let src: ByteSource;
    if ('file' in source) {
      src = await FileSource.open(source.file);
      return { image: await openRaw(src), close: () => src.close() };
    }
    src = await S3Source.open(this.s3, source.bucket, source.key);
    try {
      const found = await detect(src);
      if (found.kind === 'ova') {
        const pkg = await openOva(src);
        const disk = pkg.disks.find((d) => d.source);
        if (!disk?.source) throw new Error(`${source.key}: the OVA holds no readable disk`);
        return { image: await openDiskImage(disk.source), close: () => src.close() };
      }
      return { image: await openDiskImage(src), close: () => src.close() };
    } catch (err) {
      await src.close();
      throw err;
    }
  }

  // --- instances and volumes ---

  private instance(id: string, region: string): InstanceRecord {
    if (!/^i-[0-9a-f]{8,17}$/.test(id)) throw new ApiError('InvalidInstanceID.Malformed', `Invalid id: "${id}"`);
    const found = this.instances.find((i) => i.id === id && i.region === region);
    if (!found) throw new ApiError('InvalidInstanceID.NotFound', `The instance ID '${id}' does not exist`);
    return found;
  }

  private describeInstances(p: Params, region: string): Record<string, unknown> {
    const ids = p.list('InstanceId');
    let list = this.instances.filter((i) => i.region === region);
    for (const id of ids) this.instance(id, region);
    if (ids.length > 0) list = list.filter((i) => ids.includes(i.id));
    list = applyFilters(list, filtersOf(p), (i) => i.tags, {
      'instance-id': (i) => [i.id],
      'instance-state-name': () => ['stopped'],
      'platform': (i) => [i.platform],
      'image-id': (i) => [i.imageId],
    });
    return {
      Reservations: list.map((i) => ({
        ReservationId: `r-${i.id.slice(2)}`,
        OwnerId: ACCOUNT_ID,
        Instances: [
          prune({
            InstanceId: i.id,
            ImageId: i.imageId,
            State: { Code: 80, Name: 'stopped' },
            InstanceType: 't3.micro',
            Architecture: 'x86_64',
            Platform: i.platform,
            PlatformDetails: i.platform === 'windows' ? 'Windows' : 'Linux/UNIX',
            Hypervisor: 'xen',
            VirtualizationType: 'hvm',
            RootDeviceType: 'ebs',
            RootDeviceName: i.volumes[0].device,
            LaunchTime: new Date(i.launchedAt),
            Placement: { AvailabilityZone: `${region}a` },
            BlockDeviceMappings: i.volumes.map((v) => ({
              DeviceName: v.device,
              Ebs: { AttachTime: new Date(i.launchedAt), DeleteOnTermination: true, Status: 'attached', VolumeId: v.id },
            })),
            Tags: i.tags.map((t) => ({ ...t })),
          }),
        ],
      })),
    };
  }

  private describeVolumes(p: Params, region: string): Record<string, unknown> {
    const all = this.instances.filter((i) => i.region === region).flatMap((i) => i.volumes.map((v) => ({ v, i })));
    const ids = p.list('VolumeId');
    for (const id of ids) {
      if (!all.some(({ v }) => v.id === id)) throw new ApiError('InvalidVolume.NotFound', `The volume '${id}' does not exist.`);
    }
    let list = ids.length > 0 ? all.filter(({ v }) => ids.includes(v.id)) : all;
    list = applyFilters(list, filtersOf(p), ({ v }) => v.tags, {
      'volume-id': ({ v }) => [v.id],
      'attachment.instance-id': ({ i }) => [i.id],
      'status': () => ['in-use'],
      'encrypted': ({ v }) => [String(v.encrypted)],
      'size': ({ v }) => [String(v.sizeGiB)],
    });
    return {
      Volumes: list.map(({ v, i }) =>
        prune({
          VolumeId: v.id,
          Size: v.sizeGiB,
          AvailabilityZone: `${region}a`,
          State: 'in-use',
          CreateTime: new Date(i.launchedAt),
          VolumeType: 'gp3',
          Encrypted: v.encrypted,
          Attachments: [{ VolumeId: v.id, InstanceId: i.id, Device: v.device, State: 'attached', AttachTime: new Date(i.launchedAt), DeleteOnTermination: true }],
          Tags: v.tags.map((t) => ({ ...t })),
        }),
      ),
    };
  }

  // --- Image Builder ---

  private async serveImageBuilder(body: Buffer, region: string, requestId: string, res: http.ServerResponse): Promise<void> {
    let input: Record<string, unknown> = {};
    try {
      input = body.length ? (JSON.parse(body.toString('utf8')) as Record<string, unknown>) : {};
    } catch {
      input = {};
    }
    const params: Record<string, string> = {};
    for (const [k, v] of Object.entries(input)) {
      if (v !== null && typeof v === 'object') for (const [k2, v2] of Object.entries(v as Record<string, unknown>)) params[`${k}.${k2}`] = String(v2);
      else if (v !== undefined) params[k] = String(v);
    }
    this.calls.push({ action: 'ImportVmImage', params });
    const reply = (status: number, json: unknown, errorType?: string) => {
      const text = JSON.stringify(json);
      res.writeHead(status, {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(text),
        'x-amzn-requestid': requestId,
        ...(errorType ? { 'x-amzn-errortype': errorType } : {}),
      });
      res.end(text);
    };
    try {
      this.scriptedFailure('ImportVmImage');
      await this.settleAsync();
      const result = this.importVmImage(input, region);
      reply(200, { requestId, ...result });
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      reply(e.status, { message: e.message }, e.code);
    }
  }

  private importVmImage(input: Record<string, unknown>, region: string): { imageArn: string; clientToken?: string } {
    const str = (k: string) => (typeof input[k] === 'string' && input[k] !== '' ? (input[k] as string) : undefined);
    const need = (k: string) => {
      const v = str(k);
      if (v === undefined) throw new ApiError('InvalidParameterValueException', `The value supplied for parameter '${k}' is not valid: it is required.`);
      return v;
    };
    const clientToken = str('clientToken');
    const fingerprint = JSON.stringify(Object.entries(input).filter(([k]) => k !== 'clientToken').sort(([a], [b]) => a.localeCompare(b)));
    if (clientToken) {
      const seen = this.vmImports.find((v) => v.region === region && v.clientToken === clientToken);
      if (seen) {
        if (this.vmImportFingerprints.get(seen.arn) !== fingerprint) {
          throw new ApiError('IdempotentParameterMismatchException', `The client token ${clientToken} was used before with different parameters.`);
        }
        return { imageArn: seen.arn, clientToken };
      }
    }
    const name = need('name');
    if (!/^[-_A-Za-z0-9][-_A-Za-z0-9 ]{1,126}[-_A-Za-z0-9]$/.test(name)) {
      throw new ApiError('InvalidParameterValueException', `The value supplied for parameter 'name' is not valid: ${name}`);
    }
    const semanticVersion = need('semanticVersion');
    if (!/^\d+\.\d+\.\d+$/.test(semanticVersion)) {
      throw new ApiError('InvalidParameterValueException', `The value supplied for parameter 'semanticVersion' is not valid: ${semanticVersion}`);
    }
    const platform = need('platform');
    if (!['Windows', 'Linux', 'macOS'].includes(platform)) {
      throw new ApiError('InvalidParameterValueException', `The value supplied for parameter 'platform' is not valid: ${platform}`);
    }
    const vmImportTaskId = need('vmImportTaskId');
    if (!this.imports.some((t) => t.kind === 'image' && t.id === vmImportTaskId && t.region === region)) {
      throw new ApiError('InvalidParameterValueException', `The import task '${vmImportTaskId}' does not exist.`);
    }
    const lower = name.toLowerCase().replace(/ /g, '-');
    const builds = this.vmImports.filter((v) => v.region === region && v.name.toLowerCase().replace(/ /g, '-') === lower && v.semanticVersion === semanticVersion).length;
    const arn = `arn:aws:imagebuilder:${region}:${ACCOUNT_ID}:image/${lower}/${semanticVersion}/${builds + 1}`;
    const tags: Record<string, string> = {};
    if (input.tags && typeof input.tags === 'object') for (const [k, v] of Object.entries(input.tags as Record<string, unknown>)) tags[k] = String(v);
    this.vmImports.push(prune({ arn, region, name, semanticVersion, platform, vmImportTaskId, description: str('description'), osVersion: str('osVersion'), tags, clientToken }) as ImageBuilderImport);
    this.vmImportFingerprints.set(arn, fingerprint);
    return { imageArn: arn, clientToken };
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

function launchPermissionOf(l: Params): LaunchPermission {
  return prune({
    UserId: l.str('UserId'),
    Group: l.str('Group'),
    OrganizationArn: l.str('OrganizationArn'),
    OrganizationalUnitArn: l.str('OrganizationalUnitArn'),
  }) as LaunchPermission;
}

function checkLaunchPermission(l: LaunchPermission): void {
  const set = [l.UserId, l.Group, l.OrganizationArn, l.OrganizationalUnitArn].filter((x) => x !== undefined);
  if (set.length !== 1) throw new ApiError('InvalidParameterValue', 'Each launch permission names one of UserId, Group, OrganizationArn and OrganizationalUnitArn.');
  if (l.UserId !== undefined && !/^\d{12}$/.test(l.UserId)) {
    throw new ApiError('InvalidAMIAttributeItemValue', `Invalid attribute item value "${l.UserId}" for userId item type.`);
  }
  if (l.Group !== undefined && l.Group !== 'all') throw new ApiError('InvalidAMIAttributeItemValue', `Invalid attribute item value "${l.Group}" for group item type.`);
  if (l.OrganizationArn !== undefined && !/^arn:aws[\w-]*:organizations::\d{12}:organization\/o-[a-z0-9]+$/.test(l.OrganizationArn)) {
    throw new ApiError('InvalidParameterValue', `Invalid organization ARN '${l.OrganizationArn}'.`);
  }
  if (l.OrganizationalUnitArn !== undefined && !/^arn:aws[\w-]*:organizations::\d{12}:ou\/o-[a-z0-9]+\/ou-[a-z0-9-]+$/.test(l.OrganizationalUnitArn)) {
    throw new ApiError('InvalidParameterValue', `Invalid organizational unit ARN '${l.OrganizationalUnitArn}'.`);
  }
}

/** `items` cut by MaxResults from NextToken (an offset). */
function paginate<T>(items: T[], p: Params): { items: T[]; nextToken?: string } {
  const token = p.str('NextToken');
  const start = token === undefined ? 0 : Number(token);
  if (!Number.isSafeInteger(start) || start < 0 || start > items.length) throw new ApiError('InvalidNextToken', 'The token is not valid.');
  const max = p.int('MaxResults');
  if (max === undefined) return { items: items.slice(start) };
  if (max < 1 || max > 1000) throw new ApiError('InvalidParameterValue', `Value (${max}) for parameter MaxResults is invalid.`);
  const end = start + max;
  return { items: items.slice(start, end), nextToken: end < items.length ? String(end) : undefined };
}

/** Drops undefined members (and empty lists of optional members) so the XML leaves them out. */
function prune<T extends Record<string, unknown>>(o: T): T {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out as T;
}

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > 16 * 1024 * 1024) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function send(res: http.ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

/** The Region of a SigV4 Authorization header's credential scope. */
function regionOf(authorization: string | undefined): string | undefined {
  const m = /Credential=[^/]+\/\d{8}\/([^/]+)\/[^/]+\/aws4_request/.exec(authorization ?? '');
  return m?.[1];
}
