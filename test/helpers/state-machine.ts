import type { Template } from 'aws-cdk-lib/assertions';

/**
 * The definition of a state machine of `template` as JSON, its intrinsics rendered as
 * placeholders (`<LogicalId>` for Ref, `<LogicalId.Attr>` for GetAtt, `<AWS::Region>` for pseudo
 * parameters), for assertions on states, retries and catches.
 */
export function definitionOf(template: Template, logicalIdContains = ''): any {
  const machines = Object.entries(template.findResources('AWS::StepFunctions::StateMachine'))
    .filter(([id]) => id.includes(logicalIdContains));
  if (machines.length !== 1) throw new Error(`expected one state machine matching '${logicalIdContains}', found ${machines.length}`);
  const [, sm] = machines[0] as [string, any];
  const body = sm.Properties.DefinitionString ?? sm.Properties.Definition;
  return JSON.parse(typeof body === 'string' ? body : render(body));
}

function render(value: any): string {
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) return value.map(render).join('');
  if (value && typeof value === 'object') {
    if ('Fn::Join' in value) {
      const [sep, parts] = value['Fn::Join'];
      return parts.map(render).join(sep);
    }
    if ('Ref' in value) return `<${value.Ref}>`;
    if ('Fn::GetAtt' in value) return `<${[].concat(value['Fn::GetAtt']).join('.')}>`;
    if ('Fn::FindInMap' in value) return '<FindInMap>';
  }
  throw new Error(`cannot render ${JSON.stringify(value)}`);
}

/** Every state of a definition, nested ones included, by name. */
export function statesOf(definition: any): Record<string, any> {
  const out: Record<string, any> = {};
  const walk = (states: Record<string, any>) => {
    for (const [name, state] of Object.entries(states)) {
      out[name] = state;
      if (state.Iterator?.States) walk(state.Iterator.States);
      if (state.ItemProcessor?.States) walk(state.ItemProcessor.States);
      for (const b of state.Branches ?? []) walk(b.States);
    }
  };
  walk(definition.States);
  return out;
}
