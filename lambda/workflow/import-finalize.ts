/**
 * The steps after a completed import: register (snapshot mode: RegisterImage from the imported
 * snapshots) and finalize (tags, sharing, copies to other Regions, the Image Builder image).
 * Both are safe to retry: register finds an AMI it already registered by name, CopyImage and
 * ImportVmImage carry client tokens, and tagging and sharing are idempotent.
 */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import {
  CopyImageCommand,
  CreateTagsCommand,
  DescribeImagesCommand,
  ModifyImageAttributeCommand,
  ModifySnapshotAttributeCommand,
  RegisterImageCommand,
  type EC2Client,
  type Image,
  type LaunchPermission,
} from '@aws-sdk/client-ec2';
// eslint-disable-next-line import/no-extraneous-dependencies
import { ImportVmImageCommand, type ImagebuilderClient } from '@aws-sdk/client-imagebuilder';
import { InvalidImportOptionsError, InvalidInputError, awsErrorInfo, transientOf } from './errors';
import { derivedToken } from './import-options';
import { ec2Tags, importPayload, requestOf, secondsSince, statusOf } from './import-state';
import { log } from './log';
import { EXECUTION_TAG, SOURCE_TAG, type ImportResult, type ImportState, type Registered, type SharedWith } from './payload';

/** The root device of a registered image unless the options say otherwise. */
export const DEFAULT_ROOT_DEVICE = '/dev/xvda';

/**
 * The device names of `count` disks: the root device first, then `/dev/xvdb`, `/dev/xvdc`, …
 * (skipping the root's name).
 */
export function deviceNames(count: number, root: string = DEFAULT_ROOT_DEVICE): string[] {
  const names = [root];
  for (let i = 1; names.length < count; i++) {
    const letter = (n: number) => String.fromCharCode(97 + n);
    // xvdb..xvdz, then xvdba..xvdbz, xvdca.. (the names EC2 recommends for data volumes).
    const name = i < 26 ? `/dev/xvd${letter(i)}` : `/dev/xvd${letter(Math.floor(i / 26))}${letter(i % 26)}`;
    if (name !== root) names.push(name);
  }
  return names;
}

/** The register handler's work (snapshot mode), with a given EC2 client. */
export async function registerImage(ec2: EC2Client, event: unknown): Promise<Registered> {
  const { state, execution } = importPayload(event);
  const request = requestOf(state);
  const { snapshotIds } = statusOf(state);
  if (snapshotIds.length === 0) throw new InvalidInputError('"status" lists no snapshots to register');
  const options = request.options;
  const root = options.rootDeviceName ?? DEFAULT_ROOT_DEVICE;
  const existing = await findImage(ec2, request.name);
  if (existing) return adopt(existing, request.name, snapshotIds);
  const bootMode = options.bootMode ?? state.validation?.bootMode;
  const devices = deviceNames(snapshotIds.length, root);
  try {
    const out = await ec2.send(
      new RegisterImageCommand({
        Name: request.name,
        Description: options.description ?? `Imported by vmie from s3://${request.source.bucket}/${request.source.key}`,
        Architecture: options.architecture ?? 'x86_64',
        RootDeviceName: root,
        VirtualizationType: 'hvm',
        EnaSupport: options.enaSupport ?? true,
        ...(bootMode ? { BootMode: bootMode } : {}),
        BlockDeviceMappings: snapshotIds.map((id, i) => ({ DeviceName: devices[i], Ebs: { SnapshotId: id, DeleteOnTermination: true } })),
      }),
    );
    if (!out.ImageId) throw new Error('RegisterImage answered without an ImageId');
    log('info', 'image registered', { execution: execution.id, imageId: out.ImageId, name: request.name, snapshotIds });
    return { imageId: out.ImageId };
  } catch (e) {
    const info = awsErrorInfo(e);
    if (info.code === 'InvalidAMIName.Duplicate') {
      // Registered by an earlier attempt whose answer was lost.
      const again = await findImage(ec2, request.name);
      if (again) return adopt(again, request.name, snapshotIds);
    }
    throw finalizeError(e, 'RegisterImage');
  }
}

async function findImage(ec2: EC2Client, name: string): Promise<Image | undefined> {
  try {
    const out = await ec2.send(new DescribeImagesCommand({ Owners: ['self'], Filters: [{ Name: 'name', Values: [name] }] }));
    return (out.Images ?? []).find((i) => i.Name === name && i.State !== 'deregistered');
  } catch (e) {
    throw finalizeError(e, 'DescribeImages');
  }
}

/** An AMI of the same name counts as ours only when its root is our first snapshot. */
function adopt(image: Image, name: string, snapshotIds: readonly string[]): Registered {
  const snapshots = (image.BlockDeviceMappings ?? []).map((m) => m.Ebs?.SnapshotId).filter(Boolean);
  if (!image.ImageId || !snapshots.includes(snapshotIds[0])) {
    throw new InvalidImportOptionsError(`an AMI named "${name}" already exists (${image.ImageId}) with other snapshots: choose another amiName`);
  }
  log('info', 'image already registered', { imageId: image.ImageId, name });
  return { imageId: image.ImageId };
}

/** What finalize needs besides the payload. */
export interface FinalizeClients {
  /** The EC2 client of `region` (default: the current Region). */
  readonly ec2: (region?: string) => EC2Client;
  /** The Image Builder client (only when `options.imageBuilder` is set). */
  readonly imagebuilder: () => ImagebuilderClient;
  /** The Region of the import. */
  readonly region?: string;
}

/** The finalize handler's work. */
export async function finalizeImport(clients: FinalizeClients, event: unknown, now: () => number = Date.now): Promise<ImportResult> {
  const { state, execution } = importPayload(event);
  const request = requestOf(state);
  const status = statusOf(state);
  const imageId = state.registered?.imageId ?? status.imageId;
  if (!imageId) throw new InvalidInputError('the state has no AMI id ("registered.imageId" or "status.imageId")');
  const options = request.options;
  const snapshotIds = [...status.snapshotIds];
  const ec2 = clients.ec2();

  // Tags on the AMI and its snapshots.
  const source = `s3://${request.source.bucket}/${request.source.key}`;
  const tags = { Name: request.name, ...options.tags, [SOURCE_TAG]: clip(source, 256), [EXECUTION_TAG]: execution.id };
  await send('CreateTags', () => ec2.send(new CreateTagsCommand({ Resources: [imageId, ...snapshotIds], Tags: ec2Tags(tags) })));

  // Sharing.
  const sharedWith: SharedWith = {
    accounts: [...(options.shareWithAccounts ?? [])],
    organizationArns: [...(options.shareWithOrganizationArns ?? [])],
    organizationalUnitArns: [...(options.shareWithOrganizationalUnitArns ?? [])],
  };
  const add: LaunchPermission[] = [
    ...sharedWith.accounts.map((UserId) => ({ UserId })),
    ...sharedWith.organizationArns.map((OrganizationArn) => ({ OrganizationArn })),
    ...sharedWith.organizationalUnitArns.map((OrganizationalUnitArn) => ({ OrganizationalUnitArn })),
  ];
  if (add.length > 0) {
    await send('ModifyImageAttribute', () => ec2.send(new ModifyImageAttributeCommand({ ImageId: imageId, LaunchPermission: { Add: add } })));
  }
  if (sharedWith.accounts.length > 0) {
    for (const snapshotId of snapshotIds) {
      await send('ModifySnapshotAttribute', () =>
        ec2.send(new ModifySnapshotAttributeCommand({ SnapshotId: snapshotId, Attribute: 'createVolumePermission', OperationType: 'add', UserIds: [...sharedWith.accounts] })),
      );
    }
  }

  // Copies: started, not waited for.
  const copies: Array<{ region: string; imageId: string }> = [];
  const sourceRegion = clients.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION;
  for (const region of options.copyToRegions ?? []) {
    if (!sourceRegion) throw new InvalidInputError('the Region of the import is unknown (AWS_REGION), so the AMI cannot be copied');
    const out = await send(`CopyImage to ${region}`, () =>
      clients.ec2(region).send(
        new CopyImageCommand({
          SourceImageId: imageId,
          SourceRegion: sourceRegion,
          Name: request.name,
          Description: options.description ?? `Copy of ${imageId} (${request.name}) from ${sourceRegion}`,
          ClientToken: derivedToken(request.clientToken, `copy:${region}`),
          CopyImageTags: true,
        }),
      ),
    );
    if (!out.ImageId) throw new Error(`CopyImage to ${region} answered without an ImageId`);
    copies.push({ region, imageId: out.ImageId });
  }

  // The Image Builder image.
  let imageBuilderImageArn: string | undefined;
  if (options.imageBuilder) imageBuilderImageArn = await importToImageBuilder(clients, state, request.clientToken);

  const result: ImportResult = {
    execution: execution.id,
    source: request.source,
    imageId,
    name: request.name,
    snapshotIds,
    copies,
    sharedWith,
    ...(imageBuilderImageArn ? { imageBuilderImageArn } : {}),
    findings: findingCodesOf(state),
    durationSeconds: secondsSince(execution.startTime, now()),
  };
  log('info', 'import finalized', { ...result });
  return result;
}

/** The validate step's finding codes, when the state has them. */
function findingCodesOf(state: ImportState): string[] {
  const codes = (state as { validation?: { findingCodes?: unknown } }).validation?.findingCodes;
  return Array.isArray(codes) ? codes.filter((c): c is string => typeof c === 'string') : [];
}

async function importToImageBuilder(clients: FinalizeClients, state: ImportState, clientToken: string): Promise<string> {
  const request = requestOf(state);
  const ib = request.options.imageBuilder!;
  const taskId = state.import?.importTaskId;
  if (state.import?.mode !== 'image' || !taskId) {
    throw new InvalidImportOptionsError('imageBuilder needs image mode: Image Builder imports from the ImportImage task');
  }
  const platform = request.options.platform ?? state.status?.platform;
  if (platform !== 'Linux' && platform !== 'Windows') {
    throw new InvalidImportOptionsError('imageBuilder needs the platform (Linux or Windows): set the option platform, since the import task did not report one');
  }
  const out = await send('ImportVmImage', () =>
    clients.imagebuilder().send(
      new ImportVmImageCommand({
        name: ib.name,
        semanticVersion: ib.semanticVersion,
        platform,
        vmImportTaskId: taskId,
        ...(ib.description ? { description: ib.description } : {}),
        ...(ib.osVersion ? { osVersion: ib.osVersion } : {}),
        ...(request.options.tags && Object.keys(request.options.tags).length > 0 ? { tags: { ...request.options.tags } } : {}),
        clientToken: derivedToken(clientToken, 'imagebuilder', 36),
      }),
    ),
  );
  if (!out.imageArn) throw new Error('ImportVmImage answered without an imageArn');
  return out.imageArn;
}

function clip(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 3)}...`;
}

async function send<T>(action: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (e) {
    throw finalizeError(e, action);
  }
}

/** Transient failures are retried by the state machine; a refusal names the options involved. */
function finalizeError(e: unknown, action: string): Error {
  const info = awsErrorInfo(e);
  const transient = transientOf(e, action);
  if (transient) return transient;
  if (info.status !== undefined && info.status >= 400 && info.status < 500) {
    return new InvalidImportOptionsError(`${action} was refused: ${info.code}: ${info.message}`, { cause: e });
  }
  return e instanceof Error ? e : new Error(String(e));
}
