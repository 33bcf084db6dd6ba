import { App, Stack, StackProps } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';

/** A stack in a fixed account and Region, unless `env` says otherwise. */
export function newStack(props: StackProps = { env: { account: '111111111111', region: 'eu-west-1' } }): Stack {
  return new Stack(new App(), 'TestStack', props);
}

/** The statements of every IAM policy resource attached to a role whose logical id is `roleId`. */
export function policyStatementsOfRole(template: Template, roleId: string): any[] {
  const policies = template.findResources('AWS::IAM::Policy');
  return Object.values(policies)
    .filter((p: any) => (p.Properties.Roles ?? []).some((r: any) => r.Ref === roleId))
    .flatMap((p: any) => p.Properties.PolicyDocument.Statement);
}

/** The logical id of the only resource of `type` whose properties match `pred`. */
export function logicalIdOf(template: Template, type: string, pred: (props: any) => boolean = () => true): string {
  const ids = Object.entries(template.findResources(type))
    .filter(([, r]: [string, any]) => pred(r.Properties ?? {}))
    .map(([id]) => id);
  if (ids.length !== 1) throw new Error(`expected one ${type}, found ${ids.length}: ${ids.join(', ')}`);
  return ids[0];
}

/** The actions of a statement as a sorted array. */
export function actionsOf(statement: any): string[] {
  return [].concat(statement.Action).sort();
}
