/**
 * `npm run demo`: synthesizes the example app to cdk.out, offline, and prints what it creates.
 */
import * as path from 'node:path';
import { exampleApp } from './example-app';

const outdir = path.join(process.cwd(), 'cdk.out');
const { app, stack } = exampleApp(outdir);
const assembly = app.synth();
const artifact = assembly.getStackByName(stack.stackName);
const resources = artifact.template.Resources as Record<string, { Type: string; Properties?: Record<string, unknown> }>;

const byType = new Map<string, string[]>();
for (const [logicalId, r] of Object.entries(resources)) {
  byType.set(r.Type, [...(byType.get(r.Type) ?? []), logicalId]);
}
console.log(`Synthesized ${stack.stackName} (${stack.region}, account ${stack.account}) to ${path.relative(process.cwd(), outdir)}/`);
console.log(`${Object.keys(resources).length} resources:`);
for (const [type, ids] of [...byType.entries()].sort()) {
  console.log(`  ${type.padEnd(34)} ${ids.join(', ')}`);
}
const role = Object.values(resources).find((r) => r.Type === 'AWS::IAM::Role' && JSON.stringify(r.Properties).includes('vmie.amazonaws.com'));
if (role) console.log(`Service role name: ${JSON.stringify(role.Properties?.RoleName)}`);
for (const [k, v] of Object.entries(artifact.template.Outputs ?? {})) {
  console.log(`Output ${k}: ${JSON.stringify((v as { Value: unknown }).Value)}`);
}
