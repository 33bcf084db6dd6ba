import { Token } from 'aws-cdk-lib';
import * as kms from 'aws-cdk-lib/aws-kms';

/** How an image becomes an AMI. */
export class ImportMode {
  /** `ImportImage`: VM Import prepares the operating system (drivers, boot) and registers the AMI. */
  public static readonly IMAGE = new ImportMode('image');
  /**
   * `ImportSnapshot` for each disk, then `RegisterImage`: the disks are imported as they are, for
   * systems `ImportImage` does not recognise ("Unknown OS", "Unsupported kernel version").
   */
  public static readonly SNAPSHOT = new ImportMode('snapshot');
  private constructor(public readonly value: string) {}
}

/** The license type of an imported Windows image (`LicenseType`). */
export class LicenseType {
  /** License included: AWS provides the license. */
  public static readonly AWS = new LicenseType('AWS');
  /** Bring your own license (the only choice for Linux and Windows client systems). */
  public static readonly BYOL = new LicenseType('BYOL');
  private constructor(public readonly value: string) {}
}

/** The boot mode of the imported image. */
export class BootMode {
  /** Legacy BIOS boot from an MBR disk. */
  public static readonly LEGACY_BIOS = new BootMode('legacy-bios');
  /** UEFI boot (needed for arm64; Linux needs `/EFI/BOOT/BOOTX64.EFI` on the ESP). */
  public static readonly UEFI = new BootMode('uefi');
  private constructor(public readonly value: string) {}
}

/** The operating system family of the image. */
export class ImportPlatform {
  public static readonly LINUX = new ImportPlatform('Linux');
  public static readonly WINDOWS = new ImportPlatform('Windows');
  private constructor(public readonly value: string) {}
}

/** The architecture of the image. */
export class ImportArchitecture {
  public static readonly X86_64 = new ImportArchitecture('x86_64');
  public static readonly I386 = new ImportArchitecture('i386');
  /** 64-bit Arm (UEFI boot only). */
  public static readonly ARM64 = new ImportArchitecture('arm64');
  private constructor(public readonly value: string) {}
}

/** Creates an EC2 Image Builder image from each import (`ImportVmImage`), for image recipes. */
export interface ImageBuilderImportOptions {
  /**
   * The semantic version of the Image Builder image (`major.minor.patch`).
   */
  readonly semanticVersion: string;

  /**
   * The name of the Image Builder image.
   *
   * @default - the AMI's name
   */
  readonly name?: string;

  /**
   * The operating system version, for example `Amazon Linux 2023` or `Microsoft Windows Server 2022`.
   *
   * @default - not set
   */
  readonly osVersion?: string;
}

/**
 * How images are imported and what becomes of the AMI. Set on the workflow as defaults; each image
 * may override them with a sidecar object `<key>.vmie.json` (the same fields, as JSON) or with
 * object tags `vmie:<option-in-kebab-case>`.
 */
export interface ImportOptions {
  /**
   * `ImportImage`, or `ImportSnapshot` + `RegisterImage`.
   *
   * @default ImportMode.IMAGE
   */
  readonly mode?: ImportMode;

  /**
   * A description of the import task and the AMI.
   *
   * @default - 'Imported from s3://<bucket>/<key>'
   */
  readonly description?: string;

  /**
   * The license type. Mutually exclusive with `usageOperation`.
   *
   * @default - the service chooses (Auto)
   */
  readonly licenseType?: LicenseType;

  /**
   * The usage operation (billing code) of the AMI, for example `RunInstances:0800` (Windows BYOL).
   * Mutually exclusive with `licenseType`.
   *
   * @see https://docs.aws.amazon.com/vm-import/latest/userguide/import-vm-image.html
   * @default - not set
   */
  readonly usageOperation?: string;

  /**
   * The boot mode.
   *
   * @default - the one the validate step detects on the boot disk, else the service decides
   */
  readonly bootMode?: BootMode;

  /**
   * The operating system family.
   *
   * @default - the service detects it
   */
  readonly platform?: ImportPlatform;

  /**
   * The architecture.
   *
   * @default - the service detects it (snapshot mode: x86_64)
   */
  readonly architecture?: ImportArchitecture;

  /**
   * Encrypts the AMI's snapshots with this key (the service role is granted its use). Cannot be
   * combined with UEFI boot.
   *
   * @default - not encrypted unless the account encrypts EBS by default
   */
  readonly encryptionKey?: kms.IKey;

  /**
   * License Manager configurations to attach (`LicenseSpecifications`).
   *
   * @default - none
   */
  readonly licenseConfigurationArns?: string[];

  /**
   * Tags for the import task, the AMI and its snapshots.
   *
   * @default - only the workflow's own tags (`Name`, `vmie:source`, `vmie:execution`)
   */
  readonly tags?: Record<string, string>;

  /**
   * The name of the AMI (3 to 128 characters: letters, digits, `()[]./-'@_` and spaces).
   * Rarely useful as a default: usually given per image.
   *
   * @default - the object's base name and a short hash of its key and version
   */
  readonly amiName?: string;

  /**
   * The root device name (snapshot mode).
   *
   * @default '/dev/xvda'
   */
  readonly rootDeviceName?: string;

  /**
   * Whether the AMI supports ENA (snapshot mode).
   *
   * @default true
   */
  readonly enaSupport?: boolean;

  /**
   * Accounts to share the AMI (and its snapshots) with.
   *
   * @default - not shared
   */
  readonly shareWithAccounts?: string[];

  /**
   * Organizations (ARNs) to share the AMI with.
   *
   * @default - not shared
   */
  readonly shareWithOrganizationArns?: string[];

  /**
   * Organizational units (ARNs) to share the AMI with.
   *
   * @default - not shared
   */
  readonly shareWithOrganizationalUnitArns?: string[];

  /**
   * Regions to copy the AMI to.
   *
   * @default - none
   */
  readonly copyToRegions?: string[];

  /**
   * Creates an EC2 Image Builder image from the import (image mode only).
   *
   * @default - none
   */
  readonly imageBuilder?: ImageBuilderImportOptions;
}

/** What the import defaults become in the workflow's environment (the handlers' ImportOptions). */
export function renderImportOptions(o: ImportOptions): Record<string, unknown> {
  const out: Record<string, unknown> = {
    mode: o.mode?.value,
    description: o.description,
    licenseType: o.licenseType?.value,
    usageOperation: o.usageOperation,
    bootMode: o.bootMode?.value,
    platform: o.platform?.value,
    architecture: o.architecture?.value,
    encrypted: o.encryptionKey ? true : undefined,
    kmsKeyId: o.encryptionKey?.keyArn,
    licenseConfigurationArns: o.licenseConfigurationArns,
    tags: o.tags,
    amiName: o.amiName,
    rootDeviceName: o.rootDeviceName,
    enaSupport: o.enaSupport,
    shareWithAccounts: o.shareWithAccounts,
    shareWithOrganizationArns: o.shareWithOrganizationArns,
    shareWithOrganizationalUnitArns: o.shareWithOrganizationalUnitArns,
    copyToRegions: o.copyToRegions,
    imageBuilder: o.imageBuilder,
  };
  for (const k of Object.keys(out)) if (out[k] === undefined) delete out[k];
  return out;
}

/** Checks the defaults at synth time; returns the problems, each naming the prop and the fix. */
export function importOptionsProblems(o: ImportOptions, prop: string): string[] {
  const problems: string[] = [];
  if (o.licenseType && o.usageOperation !== undefined) {
    problems.push(`${prop}: licenseType and usageOperation are mutually exclusive for ImportImage; set one of them.`);
  }
  if (o.bootMode === BootMode.UEFI && o.encryptionKey) {
    problems.push(`${prop}: a UEFI import cannot also be encrypted with a KMS key (ImportImage rejects it); drop encryptionKey or bootMode.`);
  }
  if (o.bootMode === BootMode.UEFI && o.licenseConfigurationArns?.length) {
    problems.push(`${prop}: a UEFI import cannot carry license configurations; drop licenseConfigurationArns or bootMode.`);
  }
  if (o.architecture === ImportArchitecture.ARM64 && o.bootMode === BootMode.LEGACY_BIOS) {
    problems.push(`${prop}: arm64 images boot with UEFI only; set bootMode to BootMode.UEFI.`);
  }
  if (o.platform === ImportPlatform.LINUX && o.licenseType === LicenseType.AWS) {
    problems.push(`${prop}: Linux imports support BYOL only; set licenseType to LicenseType.BYOL or leave it unset.`);
  }
  if (o.imageBuilder && o.mode === ImportMode.SNAPSHOT) {
    problems.push(`${prop}: imageBuilder needs an ImportImage task; it cannot be used with ImportMode.SNAPSHOT.`);
  }
  if (o.imageBuilder && !Token.isUnresolved(o.imageBuilder.semanticVersion) && !/^\d+\.\d+\.\d+$/.test(o.imageBuilder.semanticVersion)) {
    problems.push(`${prop}: imageBuilder.semanticVersion must be major.minor.patch (for example 1.0.0), got '${o.imageBuilder.semanticVersion}'.`);
  }
  if (o.amiName !== undefined && !Token.isUnresolved(o.amiName) && !/^[A-Za-z0-9()[\]./\-'@_ ]{3,128}$/.test(o.amiName)) {
    problems.push(`${prop}: amiName must be 3 to 128 characters of letters, digits, spaces and ()[]./-'@_ , got '${o.amiName}'.`);
  }
  for (const r of o.copyToRegions ?? []) {
    if (!Token.isUnresolved(r) && !/^[a-z]{2}(-[a-z]+)+-\d$/.test(r)) problems.push(`${prop}: copyToRegions has '${r}', which is not a Region code (for example eu-west-1).`);
  }
  for (const a of o.shareWithAccounts ?? []) {
    if (!Token.isUnresolved(a) && !/^\d{12}$/.test(a)) problems.push(`${prop}: shareWithAccounts has '${a}', which is not a 12-digit account id.`);
  }
  return problems;
}
