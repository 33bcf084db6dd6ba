import { CfnMapping, Stack, Token } from 'aws-cdk-lib';
import { RegionInfo } from 'aws-cdk-lib/region-info';
import { Construct } from 'constructs';

/**
 * The canonical user ids of the VM Export service account, by Region, from the VM Import/Export
 * User Guide ("Export an instance": Region-specific canonical account IDs). Internal: not exported.
 */
export const VM_EXPORT_CANONICAL_IDS: Readonly<Record<string, string>> = {
  'af-south-1': '3f7744aeebaf91dd60ab135eb1cf908700c8d2bc9133e61261e6c582be6e33ee',
  'ap-east-1': '97ee7ab57cc9b5034f31e107741a968e595c0d7a19ec23330eae8d045a46edfb',
  'ap-south-2': '77ab5ec9eac9ade710b7defed37fe0640f93c5eb76ea65a64da49930965f18ca',
  'ap-southeast-3': 'de34aaa6b2875fa3d5086459cb4e03147cf1a9f7d03d82f02bedb991ff3d1df5',
  'ap-southeast-5': 'ed006f67543afcfe0779e356e52d5ed53fa45f95bcd7d277147dfc027aaca0e7',
  'ap-southeast-4': '8b8ea36ab97c280aa8558c57a380353ac7712f01f82c21598afbb17e188b9ad5',
  'ap-southeast-6': '2dc8fa4ca1c59da5c6a4c5b0e397eea130ec62e49f18cff179034665fd20e8a2',
  'ap-northeast-3': '40f22ffd22d6db3b71544ed6cd00c8952d8b0a63a87d58d5b074ec60397db8c9',
  'ap-east-2': 'a9fa0eb7c8483f9558cd14b24d16e9c4d1555261a320b586a3a06908ff0047ce',
  'ap-southeast-7': 'd011fe83abcc227a7ac0f914ce411d3630c4ef735e92e88ce0aa796dcfecfbdd',
  'ca-west-1': '78e12f8d798f89502177975c4ccdac686c583765cea2bf06e9b34224e2953c83',
  'eu-south-1': '04636d9a349e458b0c1cbf1421858b9788b4ec28b066148d4907bb15c52b5b9c',
  'eu-south-2': '6e81c4c52a37a7f59e103625162ed97bcd0e646593adb107d21310d093151518',
  'eu-central-2': '5d9fcea77b2fb3df05fc15c893f212ae1d02adb4b24c13e18586db728a48da67',
  'il-central-1': '328a78de7561501444823ebeb59152eca7cb58fee2fe2e4223c2cdd9f93ae931',
  'mx-central-1': 'edaff67fe25d544b855bd0ba9a74a99a2584ab89ceda0a9661bdbeca530d0fca',
  'me-south-1': 'aa763f2cf70006650562c62a09433f04353db3cba6ba6aeb3550fdc8065d3d9f',
  'me-central-1': '7d3018832562b7b6c126f5832211fae90bd3eee3ed3afde192d990690267e475',
  'us-gov-west-1': 'af913ca13efe7a94b88392711f6cfc8aa07c9d1454d4f190a624b126733a5602',
  'us-gov-east-1': 'af913ca13efe7a94b88392711f6cfc8aa07c9d1454d4f190a624b126733a5602',
  'cn-north-1': '834bafd86b15b6ca71074df0fd1f93d234b9d5e848a2cb31f880c149003ce36f',
  'cn-northwest-1': '834bafd86b15b6ca71074df0fd1f93d234b9d5e848a2cb31f880c149003ce36f',
};

/** The id the guide gives for "all other Regions" of the commercial partition. */
export const VM_EXPORT_DEFAULT_CANONICAL_ID = 'c4d8eabf8db69dbe46bfe0e517100c554f01200b104d59cd408e777ba442a322';

/** Partitions for which the guide documents VM Export accounts. */
const DOCUMENTED_PARTITIONS = new Set(['aws', 'aws-cn', 'aws-us-gov']);

/**
 * The canonical id for a Region known at synth time, or `undefined` when the guide documents none
 * for it (isolated and sovereign partitions).
 */
export function canonicalIdForRegion(region: string): string | undefined {
  const explicit = VM_EXPORT_CANONICAL_IDS[region];
  if (explicit) return explicit;
  const partition = RegionInfo.get(region).partition;
  if (partition !== undefined && !DOCUMENTED_PARTITIONS.has(partition)) return undefined;
  if (region.startsWith('us-iso') || region.startsWith('eusc-') || region.startsWith('eu-iso')) return undefined;
  return VM_EXPORT_DEFAULT_CANONICAL_ID;
}

/** Every Region the mapping of an environment-agnostic stack covers, sorted. */
export function mappedRegions(): string[] {
  const regions = new Set<string>(Object.keys(VM_EXPORT_CANONICAL_IDS));
  for (const r of RegionInfo.regions) {
    if (canonicalIdForRegion(r.name) !== undefined) regions.add(r.name);
  }
  return [...regions].sort();
}

const MAPPING_ID = 'VmExportCanonicalIds';

/**
 * The canonical id of the VM Export account for the stack of `scope`: a literal when the stack's
 * Region is known at synth time, otherwise a `Fn::FindInMap` over every documented Region, chosen
 * at deploy time. Throws when the Region is known and the guide documents no account for it.
 */
export function vmExportCanonicalId(scope: Construct): string {
  const stack = Stack.of(scope);
  if (!Token.isUnresolved(stack.region)) {
    const id = canonicalIdForRegion(stack.region);
    if (!id) {
      throw new Error(
        `The VM Import/Export User Guide documents no VM Export account for Region ${stack.region}: ` +
          'set vmExportCanonicalId to the id AWS gives for this Region, or choose exportGrant VmExportGrant.NONE.',
      );
    }
    return id;
  }
  let mapping = stack.node.tryFindChild(MAPPING_ID) as CfnMapping | undefined;
  if (!mapping) {
    const map: Record<string, Record<string, string>> = {};
    for (const region of mappedRegions()) map[region] = { CanonicalId: canonicalIdForRegion(region)! };
    mapping = new CfnMapping(stack, MAPPING_ID, { mapping: map });
  }
  return mapping.findInMap(stack.region, 'CanonicalId');
}
