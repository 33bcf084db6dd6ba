/**
 * What to do about the errors VM Import reports: the StatusMessage of a failed (`deleted`) task,
 * or the message of a refused request, matched against the documented error table.
 *
 * The service's messages are not a published, closed list: patterns match on the distinctive
 * words of each documented message, and anything else gets the general remedy.
 */

/** One row of the error table. */
export interface Remedy {
  /** A stable id of the row. */
  readonly id: string;
  /** Matches the service's message. */
  readonly pattern: RegExp;
  /** What the message means. */
  readonly cause: string;
  /** What helps. */
  readonly remedy: string;
}

/** The documented errors of VM Import and what helps, most specific first. */
export const REMEDIES: readonly Remedy[] = [
  {
    id: 'ROLE',
    pattern: /does not exist or does not have sufficient permissions/i,
    cause: 'the VM Import service role is missing, does not trust vmie.amazonaws.com, lacks S3 or KMS permissions, or was created moments ago',
    remedy:
      'Use the service role this library creates (or give yours the documented trust and policy), grant it kms:Decrypt on the key of an SSE-KMS import bucket, and retry once IAM has propagated',
  },
  {
    id: 'BUCKET_REGION',
    pattern: /not local to the region/i,
    cause: 'the import bucket is in another Region',
    remedy: 'Upload the image to a bucket in the Region of the import',
  },
  {
    id: 'VHD_FOOTERS',
    pattern: /footers not identical/i,
    cause: 'a differencing or damaged VHD',
    remedy: 'Export the VM again as a fixed or dynamic VHD (not differencing), or convert it with vmie convert',
  },
  {
    id: 'VMDK_NOT_STREAM_OPTIMIZED',
    pattern: /unsupported compression algorithm 0|unsupported vmdk file format/i,
    cause: 'a VMDK that is not stream-optimized',
    remedy: 'Convert the disk to a stream-optimized VMDK (vmie convert, or upload it to the import bucket so the workflow converts it)',
  },
  {
    id: 'VMDK_DAMAGED',
    pattern: /uncompressed data has invalid length/i,
    cause: 'a damaged VMDK',
    remedy: 'Export the VM again and upload the new VMDK; check the upload completed (compare sizes and checksums)',
  },
  {
    id: 'OVA_PACKAGING',
    pattern: /unsupported ova format|chunked disk files/i,
    cause: 'an OVA packaging VM Import does not read (chunked disk files)',
    remedy: 'Export the OVA again without chunking, or upload its disk files and import them as disks',
  },
  {
    id: 'S3_ACCESS',
    pattern: /do not have access to the given resource|403 forbidden/i,
    cause: 'the service role cannot read the image object',
    remedy: 'Let the service role read the object: the bucket policy, kms:Decrypt on the bucket key, and object ownership (objects owned by another account are not readable)',
  },
  {
    id: 'KMS_KEY',
    pattern: /kms key is not accessible|kms.*(disabled|pending deletion|not accessible)/i,
    cause: 'the KMS key for the encrypted import is not usable by the service role, or is disabled',
    remedy: 'Grant the service role the key (key policy or grant) and keep the key enabled for the whole import',
  },
  {
    id: 'NO_BOOT_PARTITION',
    pattern: /no bootable partition|no valid partition|not a valid volume/i,
    cause: 'the boot disk has no bootable partition, or a layout VM Import does not support',
    remedy: 'Check the partition table of the boot disk (MBR up to 2 TiB, or GPT with UEFI), that the boot disk is the first disk, and that it holds a supported file system',
  },
  {
    id: 'UNKNOWN_OS',
    pattern: /unknown os|missing os files/i,
    cause: 'ImportImage does not recognise the operating system',
    remedy: 'Import with ImportSnapshot + RegisterImage instead: set the option mode to "snapshot" (object tag vmie:mode=snapshot)',
  },
  {
    id: 'KERNEL',
    pattern: /unsupported kernel/i,
    cause: 'the kernel is not on the list ImportImage supports',
    remedy: 'Set the option mode to "snapshot" (ImportSnapshot + RegisterImage), or install a supported kernel before exporting the VM',
  },
  {
    id: 'FIRST_BOOT',
    pattern: /firstbootfailure|first boot failure/i,
    cause: 'Windows failed to boot or to reach the network during the import',
    remedy: 'Prepare the VM before export: DHCP on the network adapter, the storage drivers installed, no hardening that blocks first boot, then export it again',
  },
  {
    id: 'LIMIT',
    pattern: /limit exceeded|resourcelimitexceeded|maximum number of/i,
    cause: 'too many import tasks are running in the Region',
    remedy: 'Wait for running imports to finish, or ask for a higher VM Import quota',
  },
  {
    id: 'CANCELLED',
    pattern: /cancel+ed/i,
    cause: 'the import task was cancelled',
    remedy: 'Start the import again; find who cancelled it in CloudTrail (CancelImportTask)',
  },
];

/** The remedy when no row matches. */
export const GENERAL_REMEDY =
  'Check the image against the VM Import/Export requirements (formats, boot mode, partitions, operating system), inspect it with vmie inspect, and see the VM Import/Export troubleshooting guide';

/** The row of the error table that matches `message`; undefined when none does. */
export function findRemedy(message: string): Remedy | undefined {
  return REMEDIES.find((r) => r.pattern.test(message));
}

/** The remedy for `message`: the matching row's, else the general one. */
export function remedyFor(message: string): string {
  return findRemedy(message)?.remedy ?? GENERAL_REMEDY;
}

/** `<message>. Fix: <remedy>`, the message of a failed task. */
export function withRemedy(message: string): string {
  const m = message.trim().replace(/\.+$/, '');
  return `${m}. Fix: ${remedyFor(message)}`;
}
