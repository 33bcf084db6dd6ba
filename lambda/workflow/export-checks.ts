/**
 * The documented limits of VM Export, checked against what EC2 describes before a task is started,
 * so that an export that cannot work fails at once with the reason and the fix instead of an hour
 * later:
 * - encrypted snapshots and volumes cannot be exported;
 * - exported volumes are limited to 1 TiB;
 * - AWS Marketplace images (product codes) cannot be exported;
 * - license-included Windows and SQL Server images cannot be exported (Windows must be BYOL,
 *   usage operation RunInstances:0800);
 * - an instance export takes an instance with one volume, running or stopped.
 */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import type { Image, Instance, Snapshot, Volume } from '@aws-sdk/client-ec2';

/** One constraint the export breaks. */
export interface ExportProblem {
  /** Why (a clause, without a final period). */
  readonly reason: string;
  /** What helps (a sentence). */
  readonly remedy: string;
}

/** The largest volume VM Export exports, in GiB (1 TiB). */
export const MAX_EXPORT_VOLUME_GIB = 1024;

/** The usage operation of Windows images that bring their own license. */
export const WINDOWS_BYOL = 'RunInstances:0800';

/** Usage operations of license-included SQL Server on Linux. */
const LINUX_SQL_LICENSE_INCLUDED = new Set(['RunInstances:0100', 'RunInstances:0004', 'RunInstances:0200']);

/** What the checks found about the volumes. */
export interface VolumeSummary {
  /** The sum of the volume sizes, in GiB. */
  readonly sizeGiB: number;
  /** How many EBS volumes. */
  readonly volumes: number;
}

/** The problems of exporting `image`, whose EBS snapshots (when they could be described) are `snapshots`. */
export function imageProblems(image: Image, snapshots: readonly Snapshot[]): { problems: ExportProblem[]; summary: VolumeSummary } {
  const id = image.ImageId ?? 'the image';
  const problems: ExportProblem[] = [];
  if (image.State && image.State !== 'available') {
    problems.push({
      reason: `${id} is ${image.State}, not available`,
      remedy: image.State === 'pending' ? 'Wait until the AMI is available, then start the export again.' : 'Export an available AMI.',
    });
  }
  if (image.RootDeviceType === 'instance-store') {
    problems.push({ reason: `${id} is backed by instance store, and only EBS-backed AMIs can be exported`, remedy: 'Create an EBS-backed AMI of the instance and export that.' });
  }
  problems.push(...licenseProblems(id, 'AMI', image));

  const byId = new Map(snapshots.map((s) => [s.SnapshotId, s]));
  const encrypted: string[] = [];
  const tooBig: string[] = [];
  let sizeGiB = 0;
  let volumes = 0;
  for (const mapping of image.BlockDeviceMappings ?? []) {
    const ebs = mapping.Ebs;
    if (!ebs) continue;
    volumes++;
    const snapshot = ebs.SnapshotId ? byId.get(ebs.SnapshotId) : undefined;
    const size = ebs.VolumeSize ?? snapshot?.VolumeSize ?? 0;
    sizeGiB += size;
    const what = `${mapping.DeviceName ?? 'a volume'}${ebs.SnapshotId ? ` (${ebs.SnapshotId})` : ''}`;
    if (ebs.Encrypted || snapshot?.Encrypted) encrypted.push(what);
    if (size > MAX_EXPORT_VOLUME_GIB || (snapshot?.VolumeSize ?? 0) > MAX_EXPORT_VOLUME_GIB) tooBig.push(`${what} is ${Math.max(size, snapshot?.VolumeSize ?? 0)} GiB`);
  }
  if (encrypted.length > 0) {
    problems.push({
      reason: `${id} has encrypted snapshots (${encrypted.join(', ')}), and VM Export cannot export encrypted snapshots`,
      remedy: 'Copy the AMI without encryption (CopyImage with Encrypted false, possible only where you may hold the data unencrypted) or export an unencrypted AMI of the same system.',
    });
  }
  if (tooBig.length > 0) {
    problems.push({
      reason: `${id} has volumes over 1 TiB (${tooBig.join(', ')}), and VM Export exports volumes of at most 1 TiB`,
      remedy: 'Shrink the file systems and volumes below 1 TiB and create a new AMI, or copy the data out another way.',
    });
  }
  if (volumes === 0 && image.RootDeviceType !== 'instance-store') {
    problems.push({ reason: `${id} has no EBS volume to export`, remedy: 'Export an EBS-backed AMI.' });
  }
  return { problems, summary: { sizeGiB, volumes } };
}

/** The problems of exporting `instance`, whose EBS volumes (as described) are `volumes`. */
export function instanceProblems(instance: Instance, volumes: readonly Volume[]): { problems: ExportProblem[]; summary: VolumeSummary } {
  const id = instance.InstanceId ?? 'the instance';
  const problems: ExportProblem[] = [];
  const state = instance.State?.Name;
  if (state && state !== 'running' && state !== 'stopped') {
    problems.push({
      reason: `${id} is ${state}, and only a running or stopped instance can be exported`,
      remedy: state === 'pending' || state === 'stopping' ? 'Wait until the instance is running or stopped, then start the export again.' : 'Export a running or stopped instance.',
    });
  }
  if (instance.RootDeviceType === 'instance-store') {
    problems.push({ reason: `${id} has an instance-store root volume, and only EBS-backed instances can be exported`, remedy: 'Create an EBS-backed AMI of the system and export that.' });
  }
  problems.push(...licenseProblems(id, 'instance', instance));

  const ebs = (instance.BlockDeviceMappings ?? []).filter((m) => m.Ebs?.VolumeId);
  const byId = new Map(volumes.map((v) => [v.VolumeId, v]));
  if (ebs.length > 1) {
    problems.push({
      reason: `${id} has ${ebs.length} EBS volumes (${ebs.map((m) => `${m.DeviceName ?? '?'} ${m.Ebs?.VolumeId}`).join(', ')}), and VM Export exports an instance with one volume only`,
      remedy: 'Detach the data volumes before the export (keep only the root volume), or create an AMI of the instance and export that.',
    });
  }
  if (ebs.length === 0 && instance.RootDeviceType !== 'instance-store') {
    problems.push({ reason: `${id} has no EBS volume to export`, remedy: 'Export an EBS-backed instance.' });
  }
  const encrypted: string[] = [];
  const tooBig: string[] = [];
  let sizeGiB = 0;
  for (const mapping of ebs) {
    const volume = byId.get(mapping.Ebs?.VolumeId);
    const what = `${mapping.DeviceName ?? 'a volume'} (${mapping.Ebs?.VolumeId})`;
    const size = volume?.Size ?? 0;
    sizeGiB += size;
    if (volume?.Encrypted) encrypted.push(what);
    if (size > MAX_EXPORT_VOLUME_GIB) tooBig.push(`${what} is ${size} GiB`);
  }
  if (encrypted.length > 0) {
    problems.push({
      reason: `${id} has encrypted volumes (${encrypted.join(', ')}), and VM Export cannot export encrypted volumes`,
      remedy: 'Create an unencrypted copy of the system (for example an AMI copied without encryption, where you may hold the data unencrypted) and export that.',
    });
  }
  if (tooBig.length > 0) {
    problems.push({
      reason: `${id} has volumes over 1 TiB (${tooBig.join(', ')}), and VM Export exports volumes of at most 1 TiB`,
      remedy: 'Shrink the file system and volume below 1 TiB before the export.',
    });
  }
  return { problems, summary: { sizeGiB, volumes: ebs.length } };
}

/** Marketplace product codes and license-included billing, shared by AMIs and instances. */
function licenseProblems(
  id: string,
  what: 'AMI' | 'instance',
  source: {
    Platform?: string;
    PlatformDetails?: string;
    UsageOperation?: string;
    ProductCodes?: Array<{ ProductCodeId?: string; ProductCodeType?: string }>;
  },
): ExportProblem[] {
  const problems: ExportProblem[] = [];
  const codes = (source.ProductCodes ?? []).filter((c) => c.ProductCodeId);
  if (codes.length > 0) {
    problems.push({
      reason: `${id} carries AWS Marketplace product codes (${codes.map((c) => c.ProductCodeId).join(', ')}), and Marketplace ${what === 'AMI' ? 'AMIs' : 'instances'} cannot be exported`,
      remedy: 'Export a system you built yourself (for example from an image you imported), not one from AWS Marketplace.',
    });
  }
  const windows = source.Platform?.toLowerCase() === 'windows' || /^windows/i.test(source.PlatformDetails ?? '');
  // A Windows system without a usage operation is billed with the Windows license (RunInstances:0002).
  const usage = source.UsageOperation ?? (windows ? 'RunInstances:0002' : undefined);
  if (windows && usage !== WINDOWS_BYOL) {
    problems.push({
      reason: `${id} is Windows with license-included billing (usage operation ${usage}${source.PlatformDetails ? `, ${source.PlatformDetails}` : ''}), and license-included Windows ${what === 'AMI' ? 'AMIs' : 'instances'} cannot be exported`,
      remedy: `Export a Windows system imported with your own license (BYOL, usage operation ${WINDOWS_BYOL}).`,
    });
  } else if (!windows && usage !== undefined && LINUX_SQL_LICENSE_INCLUDED.has(usage)) {
    problems.push({
      reason: `${id} includes a SQL Server license (usage operation ${usage}), and license-included SQL Server ${what === 'AMI' ? 'AMIs' : 'instances'} cannot be exported`,
      remedy: 'Export a system without license-included SQL Server (bring your own license).',
    });
  }
  return problems;
}

/** One ExportNotPossible message for several problems: "<reasons>. Fix: <remedies>". */
export function combineProblems(problems: readonly ExportProblem[]): ExportProblem {
  return {
    reason: problems.map((p) => p.reason).join('; '),
    remedy: [...new Set(problems.map((p) => p.remedy))].join(' '),
  };
}

/** The remedy for an export task that ended without a file, by its StatusMessage. */
export function exportTaskRemedy(statusMessage: string): string {
  const m = statusMessage.toLowerCase();
  if (/cancel/.test(m)) return 'The export task was cancelled; start the export again if it is still wanted.';
  if (/acl|grant|canonical/.test(m)) return 'Give the Region\'s VM Export account its grant on the export bucket (READ_ACP and WRITE, or the bucket policy route); the export bucket construct of this library does it.';
  if (/kms|encrypt/.test(m)) return 'Export an unencrypted image to an export bucket with SSE-S3 or no default encryption.';
  if (/role|permission|access|forbidden|denied/.test(m)) return 'Check that the service role can write to the export bucket (s3:PutObject, s3:GetBucketAcl, s3:GetBucketLocation) and that the bucket policy allows it.';
  if (/bucket/.test(m)) return 'Check that the export bucket exists, is in the Region of the export, and is not encrypted with SSE-KMS.';
  if (/market|product code|licen[cs]e/.test(m)) return 'Export a system without AWS Marketplace product codes or license-included billing.';
  return 'Check that the image or instance meets the export requirements of VM Import/Export, then start the export again.';
}

/** Splits an error message "<reason>. Fix: <remedy>" into its parts. */
export function splitRemedy(message: string): { reason: string; remedy?: string } {
  const at = message.indexOf('. Fix: ');
  if (at < 0) return { reason: message };
  return { reason: message.slice(0, at), remedy: message.slice(at + '. Fix: '.length) };
}
