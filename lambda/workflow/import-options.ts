/**
 * The options of one import: their type, where they come from, how the layers merge, and the
 * documented rules of ImportImage, ImportSnapshot and RegisterImage that they must obey.
 *
 * Layers, lowest first: the construct's defaults (`VMIE_IMPORT_DEFAULTS`), the sidecar object
 * `<key>.vmie.json`, the object's tags `vmie:<kebab-name>`, and the `options` of a manual start.
 * A field set in a higher layer replaces the lower one (`tags` merge key by key); setting one of
 * `licenseType` / `usageOperation` drops the other from the lower layers, since they are mutually
 * exclusive and a per-image choice must be able to override a default.
 */
import { createHash } from 'node:crypto';
import { InvalidImportOptionsError } from './errors';

/** The Image Builder image made from the import (image mode only). */
export interface ImageBuilderOptions {
  /** The image name in Image Builder. */
  readonly name: string;
  /** `<major>.<minor>.<patch>`. */
  readonly semanticVersion: string;
  readonly description?: string;
  /** The OS version, e.g. `Ubuntu 22`. */
  readonly osVersion?: string;
}

/** Everything a user can choose about one import. Every field is optional. */
export interface ImportOptions {
  /** `image`: ImportImage; `snapshot`: ImportSnapshot per disk + RegisterImage. @default 'image' */
  readonly mode?: 'image' | 'snapshot';
  readonly description?: string;
  /** ImportImage LicenseType; exclusive with `usageOperation`. */
  readonly licenseType?: 'AWS' | 'BYOL';
  /** ImportImage UsageOperation (`RunInstances:0800`, …); exclusive with `licenseType`. */
  readonly usageOperation?: string;
  /** @default - the boot mode the validation detected */
  readonly bootMode?: 'legacy-bios' | 'uefi';
  readonly platform?: 'Windows' | 'Linux';
  readonly architecture?: 'i386' | 'x86_64' | 'arm64';
  readonly encrypted?: boolean;
  /** Needs `encrypted`. */
  readonly kmsKeyId?: string;
  readonly licenseConfigurationArns?: readonly string[];
  /** Tags of the import task, the AMI and its snapshots. */
  readonly tags?: Readonly<Record<string, string>>;
  /** @default - the object's base name and a short hash */
  readonly amiName?: string;
  /** Snapshot mode. @default '/dev/xvda' */
  readonly rootDeviceName?: string;
  /** Snapshot mode. @default true */
  readonly enaSupport?: boolean;
  readonly shareWithAccounts?: readonly string[];
  readonly shareWithOrganizationArns?: readonly string[];
  readonly shareWithOrganizationalUnitArns?: readonly string[];
  readonly copyToRegions?: readonly string[];
  /** Image mode only. */
  readonly imageBuilder?: ImageBuilderOptions;
}

type Kind = 'string' | 'boolean' | 'list' | 'tags' | 'imageBuilder';

/** Every option, its kind, and the values it takes when they are few. */
const FIELDS: Readonly<Record<keyof ImportOptions, { kind: Kind; values?: readonly string[] }>> = {
  mode: { kind: 'string', values: ['image', 'snapshot'] },
  description: { kind: 'string' },
  licenseType: { kind: 'string', values: ['AWS', 'BYOL'] },
  usageOperation: { kind: 'string' },
  bootMode: { kind: 'string', values: ['legacy-bios', 'uefi'] },
  platform: { kind: 'string', values: ['Windows', 'Linux'] },
  architecture: { kind: 'string', values: ['i386', 'x86_64', 'arm64'] },
  encrypted: { kind: 'boolean' },
  kmsKeyId: { kind: 'string' },
  licenseConfigurationArns: { kind: 'list' },
  tags: { kind: 'tags' },
  amiName: { kind: 'string' },
  rootDeviceName: { kind: 'string' },
  enaSupport: { kind: 'boolean' },
  shareWithAccounts: { kind: 'list' },
  shareWithOrganizationArns: { kind: 'list' },
  shareWithOrganizationalUnitArns: { kind: 'list' },
  copyToRegions: { kind: 'list' },
  imageBuilder: { kind: 'imageBuilder' },
};

/** The names of every option. */
export const OPTION_NAMES = Object.keys(FIELDS) as ReadonlyArray<keyof ImportOptions>;

/** The prefix of the object tags that carry options (`vmie:license-type`, …). */
export const OPTION_TAG_PREFIX = 'vmie:';
/** The prefix of the object tags that carry user tags (`vmie:tag:Team` = `web`). */
export const USER_TAG_PREFIX = 'vmie:tag:';

/** Tags reserved for the workflow itself. */
const RESERVED_TAGS = new Set(['vmie:execution', 'vmie:source']);
/** Object tags the workflow writes itself (`vmie:processed` marks an imported image); not options. */
export const WORKFLOW_OBJECT_TAGS: ReadonlySet<string> = new Set(['vmie:processed', 'vmie:execution', 'vmie:source']);
/** At most this many user tags: EC2 allows 50 per resource, the workflow adds Name, vmie:source and vmie:execution. */
export const MAX_USER_TAGS = 47;

/** `licenseType` -> `license-type`. */
export function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

const BY_KEBAB = new Map(OPTION_NAMES.map((n) => [kebab(n), n]));

/**
 * Checks the shape of one layer of options (`where` names it in messages): known fields only,
 * each of its type. Returns a copy with lists and tags copied.
 */
export function parseOptions(value: unknown, where: string): ImportOptions {
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new InvalidImportOptionsError(`${where}: the options must be a JSON object, got ${describe(value)}`);
  }
  const out: Record<string, unknown> = {};
  for (const [name, v] of Object.entries(value)) {
    const field = Object.hasOwn(FIELDS, name) ? (FIELDS as Record<string, { kind: Kind; values?: readonly string[] }>)[name] : undefined;
    if (!field) {
      throw new InvalidImportOptionsError(`${where}: unknown option "${name}"; the options are ${OPTION_NAMES.join(', ')}`);
    }
    if (v === undefined || v === null) continue;
    out[name] = checkKind(v, field.kind, `${where}: "${name}"`, field.values);
  }
  return out as ImportOptions;
}

function checkKind(v: unknown, kind: Kind, what: string, values?: readonly string[]): unknown {
  switch (kind) {
    case 'string':
      if (typeof v !== 'string') throw new InvalidImportOptionsError(`${what} must be a string, got ${describe(v)}`);
      if (values && !values.includes(v)) throw new InvalidImportOptionsError(`${what} must be one of ${values.join(', ')}, got "${v}"`);
      return v;
    case 'boolean':
      if (typeof v !== 'boolean') throw new InvalidImportOptionsError(`${what} must be true or false, got ${describe(v)}`);
      return v;
    case 'list':
      if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
        throw new InvalidImportOptionsError(`${what} must be a list of strings, got ${describe(v)}`);
      }
      return [...v];
    case 'tags': {
      if (typeof v !== 'object' || Array.isArray(v) || v === null) {
        throw new InvalidImportOptionsError(`${what} must be an object of tag names to values, got ${describe(v)}`);
      }
      for (const [k, t] of Object.entries(v)) {
        if (typeof t !== 'string') throw new InvalidImportOptionsError(`${what}: the value of tag "${k}" must be a string, got ${describe(t)}`);
      }
      return Object.fromEntries(Object.entries(v));
    }
    case 'imageBuilder': {
      if (typeof v !== 'object' || Array.isArray(v) || v === null) {
        throw new InvalidImportOptionsError(`${what} must be an object { name, semanticVersion, description?, osVersion? }, got ${describe(v)}`);
      }
      const ib = v as Record<string, unknown>;
      for (const k of Object.keys(ib)) {
        if (!['name', 'semanticVersion', 'description', 'osVersion'].includes(k)) {
          throw new InvalidImportOptionsError(`${what}: unknown field "${k}" (name, semanticVersion, description, osVersion)`);
        }
        if (ib[k] !== undefined && typeof ib[k] !== 'string') throw new InvalidImportOptionsError(`${what}.${k} must be a string, got ${describe(ib[k])}`);
      }
      if (typeof ib.name !== 'string' || typeof ib.semanticVersion !== 'string') {
        throw new InvalidImportOptionsError(`${what} needs "name" and "semanticVersion"`);
      }
      return { ...ib };
    }
  }
}

function describe(v: unknown): string {
  const s = JSON.stringify(v);
  if (s === undefined) return typeof v;
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** Parses JSON text of options (a sidecar object, or `VMIE_IMPORT_DEFAULTS`). */
export function parseOptionsJson(text: string, where: string): ImportOptions {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new InvalidImportOptionsError(`${where} is not valid JSON: ${(e as Error).message}`);
  }
  return parseOptions(value, where);
}

/**
 * Reads options from object tags: `vmie:<kebab-name>` = value (lists separated by spaces or
 * commas, booleans `true`/`false`), and `vmie:tag:<Key>` = value for user tags. Other tags, and
 * the tags the workflow writes itself (`vmie:processed`), are ignored; any other `vmie:` tag is an
 * error, so that a misspelt option is not silently lost.
 */
export function optionsFromTags(tags: ReadonlyArray<{ Key?: string; Value?: string }>, where: string): ImportOptions {
  const out: Record<string, unknown> = {};
  const userTags = new Map<string, string>();
  for (const { Key: key, Value: value = '' } of tags) {
    if (!key || !key.startsWith(OPTION_TAG_PREFIX) || WORKFLOW_OBJECT_TAGS.has(key)) continue;
    if (key.startsWith(USER_TAG_PREFIX)) {
      const name = key.slice(USER_TAG_PREFIX.length);
      if (name === '') throw new InvalidImportOptionsError(`${where}: tag "${key}" names no tag`);
      userTags.set(name, value);
      continue;
    }
    const kebabName = key.slice(OPTION_TAG_PREFIX.length);
    if (kebabName.startsWith('image-builder-')) {
      const ib = (out.imageBuilder ?? {}) as Record<string, string>;
      const subs: Record<string, string> = { 'image-builder-name': 'name', 'image-builder-semantic-version': 'semanticVersion', 'image-builder-description': 'description', 'image-builder-os-version': 'osVersion' };
      if (!Object.hasOwn(subs, kebabName)) throw unknownTag(key, where);
      const sub = subs[kebabName];
      ib[sub] = value;
      out.imageBuilder = ib;
      continue;
    }
    const name = BY_KEBAB.get(kebabName);
    if (!name || name === 'tags' || name === 'imageBuilder') throw unknownTag(key, where);
    const kind = FIELDS[name].kind;
    if (kind === 'list') {out[name] = value.split(/[\s,]+/).filter((s) => s !== '');} else if (kind === 'boolean') {
      if (!/^(true|false)$/i.test(value)) throw new InvalidImportOptionsError(`${where}: tag "${key}" must be true or false, got "${value}"`);
      out[name] = value.toLowerCase() === 'true';
    } else {out[name] = value;}
  }
  if (userTags.size > 0) out.tags = Object.fromEntries(userTags);
  return parseOptions(out, where);
}

function unknownTag(key: string, where: string): InvalidImportOptionsError {
  const known = OPTION_NAMES.filter((n) => n !== 'tags' && n !== 'imageBuilder').map((n) => `${OPTION_TAG_PREFIX}${kebab(n)}`);
  return new InvalidImportOptionsError(
    `${where}: unknown tag "${key}"; option tags are ${known.join(', ')}, ${OPTION_TAG_PREFIX}image-builder-{name,semantic-version,description,os-version} and ${USER_TAG_PREFIX}<Key>`,
  );
}

/** Merges layers, lowest first (see the module comment). */
export function mergeOptions(...layers: ReadonlyArray<ImportOptions | undefined>): ImportOptions {
  const out: Record<string, unknown> = {};
  for (const layer of layers) {
    if (!layer) continue;
    // A layer that sets one of the exclusive pair (and not the other) drops the other from below.
    if (layer.licenseType !== undefined && layer.usageOperation === undefined) delete out.usageOperation;
    if (layer.usageOperation !== undefined && layer.licenseType === undefined) delete out.licenseType;
    for (const [name, v] of Object.entries(layer)) {
      if (v === undefined) continue;
      if (name === 'tags') out.tags = { ...(out.tags as object | undefined), ...(v as object) };
      else out[name] = v;
    }
  }
  return out as ImportOptions;
}

/** What the validation of the merged options needs to know beyond them. */
export interface ValidateOptionsContext {
  /** The Region of the import (copies to it are refused). */
  readonly region?: string;
}

const AMI_NAME = /^[A-Za-z0-9()[\]. /\-'@_]{3,128}$/;
const ACCOUNT = /^\d{12}$/;
const ORG_ARN = /^arn:aws[a-z-]*:organizations::\d{12}:organization\/o-[a-z0-9]{10,32}$/;
const OU_ARN = /^arn:aws[a-z-]*:organizations::\d{12}:ou\/o-[a-z0-9]{10,32}\/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}$/;
const LICENSE_ARN = /^arn:aws[a-z-]*:license-manager:[a-z0-9-]+:\d{12}:license-configuration[:/]lic-[0-9a-f]+$/;
const REGION = /^[a-z]{2}(-[a-z]+)+-\d{1,2}$/;
const USAGE_OPERATION = /^RunInstances(:[0-9]{4})?$/;
const DEVICE = /^\/dev\/(xvd[a-z]{1,2}|sd[a-z]{1,2}\d*|nvme\d+n\d+)$/;
const IMAGE_BUILDER_NAME = /^[-_A-Za-z0-9][-_A-Za-z0-9 ]{1,126}[-_A-Za-z0-9]$/;
const SEMVER = /^\d+\.\d+\.\d+$/;

/**
 * Checks the merged options against the documented rules, and returns them completed where a
 * rule fixes a value (arm64 boots with UEFI). Every problem found is named in one
 * {@link InvalidImportOptionsError}.
 */
export function validateOptions(options: ImportOptions, context: ValidateOptionsContext = {}): ImportOptions {
  const problems: string[] = [];
  const o: Record<string, unknown> = { ...options };
  const mode = options.mode ?? 'image';
  if (options.licenseType && options.usageOperation) problems.push('licenseType and usageOperation are mutually exclusive: set one');
  if (options.usageOperation !== undefined && !USAGE_OPERATION.test(options.usageOperation)) {
    problems.push(`usageOperation "${options.usageOperation}" is not a usage operation code (RunInstances or RunInstances:NNNN)`);
  }
  if (options.platform === 'Linux' && options.licenseType === 'AWS') problems.push('Linux imports support licenseType BYOL only');
  if (options.architecture === 'arm64') {
    if (options.bootMode === 'legacy-bios') problems.push('arm64 needs bootMode uefi');
    else o.bootMode = 'uefi';
  }
  if (o.bootMode === 'uefi') {
    if (options.encrypted) problems.push('a UEFI import cannot also be encrypted (encrypted/kmsKeyId)');
    if (options.licenseConfigurationArns?.length) problems.push('a UEFI import cannot also specify licenseConfigurationArns');
  }
  if (options.kmsKeyId !== undefined && options.encrypted !== true) problems.push('kmsKeyId needs encrypted: true');
  if (options.kmsKeyId !== undefined && !/^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)\/[A-Za-z0-9/_-]+|alias\/[A-Za-z0-9/_-]+|[0-9a-f-]{36}|mrk-[0-9a-f]{32})$/.test(options.kmsKeyId)) {
    problems.push(`kmsKeyId "${options.kmsKeyId}" is not a KMS key id, alias or ARN`);
  }
  for (const arn of options.licenseConfigurationArns ?? []) {
    if (!LICENSE_ARN.test(arn)) problems.push(`licenseConfigurationArns: "${arn}" is not a License Manager license configuration ARN`);
  }
  if (mode === 'snapshot') {
    if (options.licenseType === 'AWS' || options.usageOperation !== undefined || options.licenseConfigurationArns?.length) {
      problems.push('licenseType AWS, usageOperation and licenseConfigurationArns apply to image mode only (ImportSnapshot + RegisterImage cannot carry them)');
    }
    if (options.imageBuilder) problems.push('imageBuilder needs image mode (Image Builder imports from an ImportImage task)');
  }
  if (options.description !== undefined && options.description.length > 255) problems.push(`description is ${options.description.length} characters; at most 255`);
  checkTags(options.tags, problems);
  if (options.amiName !== undefined && !AMI_NAME.test(options.amiName)) {
    problems.push(`amiName "${options.amiName}" is not a valid AMI name: 3-128 characters of letters, digits, spaces and ( ) [ ] . / - ' @ _`);
  }
  if (options.rootDeviceName !== undefined && !DEVICE.test(options.rootDeviceName)) {
    problems.push(`rootDeviceName "${options.rootDeviceName}" is not a device name such as /dev/xvda or /dev/sda1`);
  }
  for (const a of options.shareWithAccounts ?? []) if (!ACCOUNT.test(a)) problems.push(`shareWithAccounts: "${a}" is not a 12-digit account id`);
  for (const a of options.shareWithOrganizationArns ?? []) if (!ORG_ARN.test(a)) problems.push(`shareWithOrganizationArns: "${a}" is not an organization ARN`);
  for (const a of options.shareWithOrganizationalUnitArns ?? []) if (!OU_ARN.test(a)) problems.push(`shareWithOrganizationalUnitArns: "${a}" is not an organizational unit ARN`);
  for (const r of options.copyToRegions ?? []) {
    if (!REGION.test(r)) problems.push(`copyToRegions: "${r}" is not a Region code`);
    else if (r === context.region) problems.push(`copyToRegions: "${r}" is the Region of the import`);
  }
  if (options.copyToRegions) o.copyToRegions = [...new Set(options.copyToRegions)];
  if (options.imageBuilder) {
    const ib = options.imageBuilder;
    if (!IMAGE_BUILDER_NAME.test(ib.name)) problems.push(`imageBuilder.name "${ib.name}" must be 3-128 characters of letters, digits, spaces, - and _`);
    if (!SEMVER.test(ib.semanticVersion)) problems.push(`imageBuilder.semanticVersion "${ib.semanticVersion}" must be <major>.<minor>.<patch>`);
  }
  if (problems.length > 0) throw new InvalidImportOptionsError(`Invalid import options: ${problems.join('; ')}`);
  return o as ImportOptions;
}

function checkTags(tags: Readonly<Record<string, string>> | undefined, problems: string[]): void {
  if (!tags) return;
  const keys = Object.keys(tags);
  if (keys.length > MAX_USER_TAGS) problems.push(`${keys.length} tags; at most ${MAX_USER_TAGS} (EC2 allows 50 per resource, the workflow adds 3)`);
  for (const k of keys) {
    if (k.length < 1 || k.length > 128) problems.push(`tag key "${k.slice(0, 40)}" must be 1-128 characters`);
    if (/^aws:/i.test(k)) problems.push(`tag key "${k}" uses the reserved prefix aws:`);
    if (RESERVED_TAGS.has(k)) problems.push(`tag key "${k}" is set by the workflow`);
    if (tags[k].length > 256) problems.push(`the value of tag "${k}" is ${tags[k].length} characters; at most 256`);
  }
}

/**
 * The ClientToken of an import: the SHA-256 (64 hex digits) of every disk's
 * `bucket/key@versionId|etag`, in order. The same objects give the same token, so that a
 * duplicated event or a retried start never begins a second import.
 */
export function importClientToken(disks: ReadonlyArray<{ bucket: string; key: string; versionId?: string; etag?: string }>): string {
  const h = createHash('sha256');
  for (const d of disks) h.update(`${d.bucket}/${d.key}@${d.versionId ?? d.etag ?? ''}\n`);
  return h.digest('hex');
}

/** A token derived from `token` for one sub-request (`snapshot:0`, `copy:eu-west-1`, …), `length` hex digits. */
export function derivedToken(token: string, purpose: string, length = 64): string {
  return createHash('sha256').update(`${token}:${purpose}`).digest('hex').slice(0, length);
}

/**
 * The default AMI name: the object's base name without its extensions, made valid (other
 * characters become `-`), then `-` and the first 8 hex digits of the client token.
 */
export function defaultAmiName(key: string, clientToken: string): string {
  const base = key.slice(key.lastIndexOf('/') + 1);
  let stem = base.replace(/(\.(vmdk|vhdx?|ova|ovf|raw|img|qcow2|vdi|gz|xz|zst|bz2|zip|tar|iso))+$/i, '');
  stem = stem.replace(/[^A-Za-z0-9()[\]./\-'@_]+/g, '-').replace(/^-+|-+$/g, '');
  if (stem === '') stem = 'vmie-import';
  const suffix = `-${clientToken.slice(0, 8)}`;
  return `${stem.slice(0, 128 - suffix.length)}${suffix}`;
}
