/**
 * The import requirements of VM Import/Export, kept as data. Every finding the engine reports has
 * a stable code from this catalogue, a severity, the AWS error it prevents, and the remedy.
 *
 * Severities: `error`: AWS will reject the image and conversion cannot help; `convertible`: AWS
 * would reject it as it is, and conversion fixes it; `warning`: AWS may reject it; `info`: worth
 * knowing, no action needed.
 */

/** How bad a finding is. */
export type Severity = 'error' | 'convertible' | 'warning' | 'info';

/** One thing the engine found about an image. */
export interface Finding {
  /** Stable code, e.g. `VMDK_NOT_STREAM_OPTIMIZED`. */
  readonly code: string;
  readonly severity: Severity;
  /** What was found, and the AWS error it prevents. */
  readonly message: string;
  /** What to do about it. */
  readonly remedy: string;
  /** The error message VM Import/Export would give, where one is known. */
  readonly awsError?: string;
  /** Which disk of a multi-disk input this is about (0-based), when there are several. */
  readonly disk?: number;
}

/** A catalogue entry: everything about a finding but the specific detail. */
export interface Rule {
  readonly severity: Severity;
  readonly awsError?: string;
  readonly remedy: string;
}

/** The catalogue. Codes are stable: add new ones, never rename. */
export const RULES = {
  // --- what the file is ---
  NOT_A_DISK: {
    severity: 'error',
    awsError: 'Disk validation failed [Unsupported specified file format]',
    remedy: 'Upload a disk image (VMDK, VHD, VHDX, raw or OVA; qcow2 and VDI are converted). ISO files, archives and documents cannot be imported.',
  },
  EMPTY_IMAGE: {
    severity: 'error',
    awsError: 'Disk validation failed [Unsupported specified file format]',
    remedy: 'The object is empty or too small to hold a disk; upload the image again.',
  },
  EXTENSION_MISMATCH: {
    severity: 'warning',
    remedy: 'Rename the object so that its extension matches its content; the Format sent to ImportImage is taken from the content.',
  },
  FORMAT_NEEDS_CONVERSION: {
    severity: 'convertible',
    awsError: 'Disk validation failed [Unsupported specified file format]',
    remedy: 'Let the workflow convert it to a stream-optimized VMDK, or run `vmie convert` before uploading.',
  },
  COMPRESSED_WRAPPER: {
    severity: 'convertible',
    awsError: 'Disk validation failed [Unsupported specified file format]',
    remedy: 'VM Import does not decompress: let the workflow decompress and convert it, or decompress it before uploading.',
  },
  COMPRESSED_NOT_INSPECTABLE: {
    severity: 'warning',
    remedy: 'The compressed stream could not be inspected beyond its first bytes; decompress it locally and run `vmie inspect` on the result.',
  },
  COMPRESSED_TOO_LARGE: {
    severity: 'error',
    remedy: 'The compressed file holds a disk container (qcow2, VDI, VMDK, VHD or VHDX) that can only be read once decompressed in full, and it needs more space than is set aside for that. Decompress it before uploading and upload the image inside, or convert it locally with `vmie convert`.',
  },
  // --- differencing and snapshots ---
  DIFFERENCING_DISK: {
    severity: 'error',
    awsError: 'ClientError: Footers not identical',
    remedy: 'This disk holds only the changes against a parent disk. Merge the snapshot chain (or export the VM again) into a single fixed or dynamic disk, then upload that.',
  },
  // --- VMDK ---
  VMDK_NOT_STREAM_OPTIMIZED: {
    severity: 'convertible',
    awsError: 'ClientError: Disk validation failed [Unsupported VMDK File Format] / File uses unsupported compression algorithm 0',
    remedy: 'Convert it to a stream-optimized VMDK (the workflow does this, or `vmie convert`), or export the VM as OVF/OVA from VMware.',
  },
  VMDK_SESPARSE: {
    severity: 'error',
    awsError: 'ClientError: Disk validation failed [Unsupported VMDK File Format]',
    remedy: 'SEsparse disks are not supported. Consolidate the snapshots and export the VM as OVF/OVA from vSphere.',
  },
  VMDK_DESCRIPTOR_ONLY: {
    severity: 'error',
    awsError: 'ClientError: Disk validation failed [Unsupported VMDK File Format]',
    remedy: 'This is only the descriptor of a disk whose data lives in other files. Export the VM as OVF/OVA, or convert the whole disk to a single stream-optimized VMDK locally (`vmie convert`).',
  },
  VMDK_SPLIT_EXTENTS: {
    severity: 'error',
    awsError: 'ClientError: Disk validation failed [Unsupported VMDK File Format]',
    remedy: 'The disk is split over several extent files. Convert it locally to a single stream-optimized VMDK (`vmie convert`) and upload that.',
  },
  VMDK_COWD: {
    severity: 'error',
    awsError: 'ClientError: Disk validation failed [Unsupported VMDK File Format]',
    remedy: 'ESX COWD (redo log) disks are not supported. Consolidate the snapshots and export the VM as OVF/OVA.',
  },
  VMDK_UNSUPPORTED_COMPRESSION: {
    severity: 'error',
    awsError: 'ClientError: File uses unsupported compression algorithm',
    remedy: 'Only deflate-compressed grains are supported; export the VM again.',
  },
  // --- damage ---
  TRUNCATED: {
    severity: 'error',
    awsError: 'ClientError: Uncompressed data has invalid length',
    remedy: 'The file ends before its structures do: the upload or the export was cut short. Upload the complete file again.',
  },
  CHECKSUM_MISMATCH: {
    severity: 'error',
    awsError: 'ClientError: Disk validation failed',
    remedy: 'A header checksum does not match: the image is damaged. Export the VM again.',
  },
  VHD_FOOTER_MISMATCH: {
    severity: 'error',
    awsError: 'ClientError: Footers not identical',
    remedy: 'The copy of the VHD footer at the start does not match the one at the end: the file is damaged or was cut. Export the VM again as a fixed or dynamic VHD.',
  },
  MALFORMED_IMAGE: {
    severity: 'error',
    awsError: 'ClientError: Disk validation failed',
    remedy: 'The image structure is inconsistent (tables out of range, impossible sizes). Export the VM again.',
  },
  VHDX_LOG_NOT_REPLAYED: {
    severity: 'error',
    awsError: 'ClientError: Disk validation failed',
    remedy: 'The VHDX has a log that must be replayed: attach the disk once in Hyper-V (or mount it on Windows) and detach it cleanly, then upload it again.',
  },
  QCOW2_ENCRYPTED: {
    severity: 'error',
    remedy: 'Encrypted qcow2 images cannot be read without the key. Decrypt it with `qemu-img convert --object secret,...` and upload the result.',
  },
  QCOW2_DIRTY: {
    severity: 'warning',
    remedy: 'The qcow2 image was not closed cleanly (dirty or corrupt bit). Run `qemu-img check -r all` on it before uploading.',
  },
  QCOW2_EXTERNAL_DATA: {
    severity: 'error',
    remedy: 'The qcow2 image keeps its data in an external file. Convert it to a self-contained image first.',
  },
  QCOW2_UNSUPPORTED_FEATURE: {
    severity: 'error',
    remedy: 'The qcow2 image uses an incompatible feature or compression type this tool cannot read. Convert it with a current `qemu-img convert -O raw` (or to a stream-optimized VMDK) and upload the result.',
  },
  // --- OVA ---
  OVA_CHUNKED: {
    severity: 'error',
    awsError: 'ClientError: OVA with chunked disk files is not supported',
    remedy: 'Export the VM again without chunking (no ovf:chunkSize), or import its disks one by one.',
  },
  OVA_MALFORMED: {
    severity: 'error',
    awsError: 'ClientError: Unsupported OVA format',
    remedy: 'The OVA package is not as OVF requires (descriptor first, referenced files present). Export the VM again as OVA, or import its disks directly.',
  },
  OVA_UNSAFE_PATH: {
    severity: 'error',
    awsError: 'ClientError: Unsupported OVA format',
    remedy: 'A member of the archive has an absolute path or `..` in its name. Repackage the OVA with plain file names.',
  },
  OVA_MANIFEST_MISSING_ENTRY: {
    severity: 'warning',
    remedy: 'The manifest does not list every file of the package; export the VM again.',
  },
  OVA_COMPRESSED_DISK: {
    severity: 'convertible',
    awsError: 'ClientError: Unsupported OVA format',
    remedy: 'A disk in the OVA is gzip-compressed (ovf:compression). Let the workflow unpack and convert it, or export the VM again without compression.',
  },
  OVA_MANIFEST_MISMATCH: {
    severity: 'warning',
    remedy: 'The OVF descriptor does not match its digest in the manifest (.mf): the package was edited or damaged after export. Export the VM again, or regenerate the manifest after editing the descriptor.',
  },
  // --- size and count ---
  TOO_MANY_DISKS: {
    severity: 'error',
    awsError: 'ClientError: Too many volumes',
    remedy: 'ImportImage takes at most 21 volumes. Import the extra disks with ImportSnapshot (snapshot mode) and attach them after launch.',
  },
  DISK_TOO_LARGE: {
    severity: 'error',
    awsError: 'ClientError: Disk validation failed [disk size exceeds the maximum]',
    remedy: 'Disk images must be smaller than 16 TiB. Shrink the disk or move data off it before export.',
  },
  DISK_NEEDS_MANIFEST: {
    severity: 'warning',
    remedy: 'Disks of 8 TiB and more need a volume manifest with ImportImage. Shrink the disk below 8 TiB, or import it with ImportSnapshot.',
  },
  // --- partitions and boot ---
  MBR_BOOT_TOO_LARGE: {
    severity: 'error',
    awsError: 'ClientError: No bootable partition found',
    remedy: 'An MBR boot volume cannot exceed 2 TiB. Shrink the boot disk below 2 TiB or convert it to GPT with UEFI boot.',
  },
  NO_PARTITION_TABLE: {
    severity: 'error',
    awsError: 'ClientError: No valid partition. Not a valid volume.',
    remedy: 'The disk has no MBR or GPT partition table. Upload the whole disk (not a single partition or filesystem), or use snapshot mode for a data volume.',
  },
  NO_BOOTABLE_PARTITION: {
    severity: 'warning',
    awsError: 'ClientError: No bootable partition found',
    remedy: 'No partition is marked active and there is no EFI System Partition. Mark the boot partition active (MBR) or add an ESP (UEFI).',
  },
  GPT_CHECKSUM_MISMATCH: {
    severity: 'error',
    awsError: 'ClientError: No valid partition. Not a valid volume.',
    remedy: 'The GPT header or partition entries fail their CRC32 check. Repair the table (gdisk, sgdisk -v) and export again.',
  },
  GPT_BOOT_WITHOUT_UEFI: {
    severity: 'warning',
    awsError: 'ClientError: No bootable partition found',
    remedy: 'A GPT boot disk boots only with UEFI on EC2. Add an EFI System Partition and import with boot mode uefi, or convert the disk to MBR for legacy BIOS.',
  },
  UEFI_WITHOUT_ESP: {
    severity: 'error',
    awsError: 'ClientError: No bootable partition found',
    remedy: 'The VM boots with UEFI but the disk has no EFI System Partition. Check the firmware setting, or add an ESP with /EFI/BOOT/BOOTX64.EFI.',
  },
  ROOT_FS_UNSUPPORTED: {
    severity: 'warning',
    awsError: 'ClientError: Unknown OS / Missing OS files',
    remedy: 'No supported root filesystem (ext2/3/4, XFS, Btrfs, JFS, NTFS) was found. Use snapshot mode (ImportSnapshot + RegisterImage), or move the root to a supported filesystem.',
  },
  ROOT_FS_ENCRYPTED: {
    severity: 'error',
    awsError: 'ClientError: Unknown OS / Missing OS files',
    remedy: 'The root filesystem is LUKS-encrypted, which VM Import cannot read. Decrypt the volume before export, and use EBS encryption instead.',
  },
  LVM_ROOT: {
    severity: 'info',
    remedy: 'The root is probably on LVM, which VM Import supports for Linux; nothing to do.',
  },
  PARTITION_TABLE_DAMAGED: {
    severity: 'warning',
    remedy: 'The partition table is inconsistent (partitions past the end of the disk or overlapping, a broken chain of logical partitions). Check it with `sfdisk --verify` or `gdisk`, repair it, and export the disk again; a partition past the end usually means the image was cut short.',
  },
  GPT_BACKUP_INVALID: {
    severity: 'warning',
    remedy: 'The backup GPT header at the last sector is missing or does not match the primary, usually because the disk was resized after partitioning. Move the backup table to the end of the disk (`sgdisk -e`, or write the table again with gdisk) and export again.',
  },
  EFI_FALLBACK_LOADER_MISSING: {
    severity: 'warning',
    remedy: 'Linux UEFI images need the fallback loader /EFI/BOOT/BOOTX64.EFI on the EFI System Partition. Install it (for GRUB: `grub-install --removable`, or copy shimx64.efi/grubx64.efi to /EFI/BOOT/BOOTX64.EFI) before export.',
  },
  // --- inspection ---
  UNSUPPORTED_IMAGE: {
    severity: 'error',
    awsError: 'Disk validation failed [Unsupported specified file format]',
    remedy: 'This variant of the format cannot be read here or imported. Convert the disk with the tool that made it (or `qemu-img convert`) to a stream-optimized VMDK, VHD or raw image, and upload that.',
  },
  OVA_IN_DISK_LIST: {
    severity: 'error',
    remedy: 'An OVA is a whole VM: import it alone, as the only disk container. To import several disk files as one VM, upload the disks themselves (VMDK, VHD, VHDX or raw).',
  },
} as const satisfies Record<string, Rule>;

/** The stable finding codes. */
export type FindingCode = keyof typeof RULES;

/**
 * Makes a finding: `detail` says what was found in this image; the catalogue adds the severity,
 * the AWS error it prevents and the remedy.
 */
export function finding(code: FindingCode, detail: string, disk?: number): Finding {
  const rule: Rule = RULES[code];
  const message = rule.awsError ? `${detail} VM Import would fail with "${rule.awsError}".` : detail;
  return {
    code,
    severity: rule.severity,
    message,
    remedy: rule.remedy,
    ...(rule.awsError ? { awsError: rule.awsError } : {}),
    ...(disk !== undefined ? { disk } : {}),
  };
}

/** Orders severities from worst to mildest. */
export const SEVERITY_ORDER: readonly Severity[] = ['error', 'convertible', 'warning', 'info'];
