/**
 * A local Step Functions endpoint for workflows run by the local harness: an HTTP server on
 * 127.0.0.1 speaking the service's AWS JSON 1.0 protocol (`X-Amz-Target: AWSStepFunctions.<Op>`),
 * so that the real AWS SDK (and the `vmie` command) can start, watch and stop executions.
 *
 * Operations: StartExecution, DescribeExecution, StopExecution, GetExecutionHistory (events in
 * the service's shape, paginated), ListExecutions, DescribeStateMachine, ListStateMachines.
 * Times are the harness's simulated times.
 */
import { randomUUID } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { LocalExecution, LocalExecutionEvent, LocalWorkflow } from './local-sfn';

/** A running local Step Functions endpoint. */
export interface LocalSfnApi {
  /** `http://127.0.0.1:<port>`. */
  readonly endpoint: string;
  /** Environment that points SDK clients (handlers, the CLI, child processes) at the endpoint. */
  readonly env: Record<string, string>;
  /** The executions started through the endpoint, by ARN. */
  readonly executions: ReadonlyMap<string, LocalExecution>;
  /** Stops the server (running executions are aborted). */
  close(): Promise<void>;
}

interface Entry {
  readonly workflow: LocalWorkflow;
  readonly execution: LocalExecution;
  readonly inputText: string;
  stopError?: string;
  stopCause?: string;
}

class ApiError extends Error {
  public constructor(public readonly type: string, message: string) {
    super(message);
  }
}

const DEFAULT_PAGE = 100;
const MAX_PAGE = 1000;

/** Starts the endpoint for `workflows` (by state machine ARN). */
export async function startLocalSfnApi(workflows: Record<string, LocalWorkflow>): Promise<LocalSfnApi> {
  const entries = new Map<string, Entry>();
  const executions = new Map<string, LocalExecution>();
  const region = /^arn:[^:]+:states:([^:]+):/.exec(Object.keys(workflows)[0] ?? '')?.[1] ?? 'us-east-1';

  const operations: Record<string, (request: any) => Promise<any> | any> = {
    StartExecution(request) {
      const workflow = workflowOf(request.stateMachineArn);
      const inputText = request.input === undefined ? '{}' : String(request.input);
      let input: any;
      try {
        input = JSON.parse(inputText);
      } catch {
        throw new ApiError('InvalidExecutionInput', 'input is not valid JSON');
      }
      const name = request.name === undefined ? randomUUID() : String(request.name);
      const existing = [...entries.values()].find((e) => e.workflow === workflow && e.execution.name === name);
      if (existing) {
        if (existing.execution.status() === 'RUNNING' && existing.inputText === inputText) {
          return { executionArn: existing.execution.executionArn, startDate: seconds(existing.execution.startDate) };
        }
        throw new ApiError('ExecutionAlreadyExists', `Execution Already Exists: '${existing.execution.executionArn}'`);
      }
      let execution: LocalExecution;
      try {
        execution = workflow.start(input, { name });
      } catch (err: any) {
        throw new ApiError('InvalidName', String(err?.message ?? err));
      }
      entries.set(execution.executionArn, { workflow, execution, inputText });
      executions.set(execution.executionArn, execution);
      execution.result.catch(() => undefined);
      return { executionArn: execution.executionArn, startDate: seconds(execution.startDate) };
    },

    DescribeExecution(request) {
      return describe(entryOf(request.executionArn));
    },

    async StopExecution(request) {
      const entry = entryOf(request.executionArn);
      if (entry.execution.status() === 'RUNNING') {
        if (request.error !== undefined) entry.stopError = String(request.error);
        if (request.cause !== undefined) entry.stopCause = String(request.cause);
        entry.execution.abort();
        await entry.execution.result;
      }
      return { stopDate: seconds(entry.execution.stopDate() ?? new Date()) };
    },

    GetExecutionHistory(request) {
      const entry = entryOf(request.executionArn);
      const includeData = request.includeExecutionData !== false;
      let events = historyOf(entry, includeData);
      if (request.reverseOrder === true) events = events.reverse();
      return page(events, request, entry.execution.executionArn, 'events');
    },

    ListExecutions(request) {
      const workflow = workflowOf(request.stateMachineArn);
      const filter = request.statusFilter;
      const list = [...entries.values()]
        .filter((e) => e.workflow === workflow && (filter === undefined || e.execution.status() === filter))
        .map((e, order) => ({ e, order }))
        .sort((a, b) => b.e.execution.startDate.getTime() - a.e.execution.startDate.getTime() || b.order - a.order)
        .map(({ e }) => ({
          executionArn: e.execution.executionArn,
          stateMachineArn: e.execution.stateMachineArn,
          name: e.execution.name,
          status: e.execution.status(),
          startDate: seconds(e.execution.startDate),
          ...(e.execution.stopDate() ? { stopDate: seconds(e.execution.stopDate()!) } : {}),
        }));
      return page(list, request, `${request.stateMachineArn}|${filter ?? ''}`, 'executions');
    },

    DescribeStateMachine(request) {
      const workflow = workflowOf(request.stateMachineArn);
      return {
        stateMachineArn: workflow.stateMachineArn,
        name: workflow.stateMachineName,
        status: 'ACTIVE',
        definition: JSON.stringify(workflow.definition),
        roleArn: workflow.roleArn,
        type: 'STANDARD',
        creationDate: 0,
      };
    },

    ListStateMachines() {
      return {
        stateMachines: Object.values(workflows).map((w) => ({
          stateMachineArn: w.stateMachineArn,
          name: w.stateMachineName,
          type: 'STANDARD',
          creationDate: 0,
        })),
      };
    },
  };

  function workflowOf(arn: unknown): LocalWorkflow {
    if (typeof arn !== 'string' || !arn.startsWith('arn:')) throw new ApiError('InvalidArn', `Invalid Arn: '${String(arn)}'`);
    const workflow = workflows[arn];
    if (!workflow) throw new ApiError('StateMachineDoesNotExist', `State Machine Does Not Exist: '${arn}'`);
    return workflow;
  }

  function entryOf(arn: unknown): Entry {
    if (typeof arn !== 'string' || !arn.startsWith('arn:')) throw new ApiError('InvalidArn', `Invalid Arn: '${String(arn)}'`);
    const entry = entries.get(arn);
    if (!entry) throw new ApiError('ExecutionDoesNotExist', `Execution Does Not Exist: '${arn}'`);
    return entry;
  }

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      void respond(req, Buffer.concat(chunks).toString('utf8')).then(({ status, body }) => {
        const text = JSON.stringify(body);
        res.writeHead(status, {
          'Content-Type': 'application/x-amz-json-1.0',
          'Content-Length': Buffer.byteLength(text),
          'x-amzn-RequestId': randomUUID(),
        });
        res.end(text);
      });
    });
  });

  async function respond(req: http.IncomingMessage, text: string): Promise<{ status: number; body: any }> {
    try {
      const target = String(req.headers['x-amz-target'] ?? '');
      const op = target.startsWith('AWSStepFunctions.') ? target.slice('AWSStepFunctions.'.length) : '';
      const handler = Object.prototype.hasOwnProperty.call(operations, op) ? operations[op] : undefined;
      if (req.method !== 'POST' || !handler) throw new ApiError('UnknownOperationException', `unknown operation ${target || '(none)'}`);
      let request: any;
      try {
        request = text === '' ? {} : JSON.parse(text);
      } catch {
        throw new ApiError('SerializationException', 'the request body is not JSON');
      }
      if (request === null || typeof request !== 'object' || Array.isArray(request)) throw new ApiError('SerializationException', 'the request body is not a JSON object');
      return { status: 200, body: await handler(request) };
    } catch (err: any) {
      if (err instanceof ApiError) return { status: 400, body: { __type: err.type, message: err.message } };
      return { status: 500, body: { __type: 'InternalError', message: String(err?.message ?? err) } };
    }
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    endpoint,
    env: {
      AWS_ENDPOINT_URL_SFN: endpoint,
      AWS_REGION: region,
      AWS_ACCESS_KEY_ID: 'LOCALSFN',
      AWS_SECRET_ACCESS_KEY: 'LOCALSFN',
    },
    executions,
    async close() {
      for (const { execution } of entries.values()) execution.abort();
      await Promise.all([...entries.values()].map((e) => e.execution.result.catch(() => undefined)));
      server.closeAllConnections();
      await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
    },
  };
}

function seconds(date: Date): number {
  return date.getTime() / 1000;
}

function describe(entry: Entry): any {
  const { execution } = entry;
  const status = execution.status();
  const out: any = {
    executionArn: execution.executionArn,
    stateMachineArn: execution.stateMachineArn,
    name: execution.name,
    status,
    startDate: seconds(execution.startDate),
    input: entry.inputText,
    inputDetails: { included: true },
  };
  if (status === 'RUNNING') return out;
  out.stopDate = seconds(execution.stopDate()!);
  const outcome = execution.outcome()!;
  if (status === 'SUCCEEDED') {
    out.output = JSON.stringify(outcome.output ?? null);
    out.outputDetails = { included: true };
  } else if (status === 'FAILED') {
    if (outcome.error !== undefined) out.error = outcome.error;
    if (outcome.cause !== undefined) out.cause = outcome.cause;
  } else if (status === 'ABORTED') {
    if (entry.stopError !== undefined) out.error = entry.stopError;
    if (entry.stopCause !== undefined) out.cause = entry.stopCause;
  }
  return out;
}

function causeText(cause: unknown): string {
  if (typeof cause === 'string') return cause;
  if (cause instanceof Error || (cause !== null && typeof cause === 'object' && 'message' in cause)) return String((cause as Error).message);
  return JSON.stringify(cause);
}

function page(items: any[], request: any, scope: string, key: string): any {
  const max = request.maxResults === undefined || request.maxResults === 0 ? DEFAULT_PAGE : Number(request.maxResults);
  if (!Number.isInteger(max) || max < 0 || max > MAX_PAGE) throw new ApiError('ValidationException', `maxResults must be 0 to ${MAX_PAGE}`);
  let offset = 0;
  if (request.nextToken !== undefined) {
    let token: any;
    try {
      token = JSON.parse(Buffer.from(String(request.nextToken), 'base64url').toString('utf8'));
    } catch {
      throw new ApiError('InvalidToken', 'Invalid Token');
    }
    if (token?.scope !== scope || !Number.isInteger(token?.offset) || token.offset < 0 || token.offset > items.length) {
      throw new ApiError('InvalidToken', 'Invalid Token');
    }
    offset = token.offset;
  }
  const slice = items.slice(offset, offset + max);
  const next = offset + slice.length;
  return {
    [key]: slice,
    ...(next < items.length ? { nextToken: Buffer.from(JSON.stringify({ scope, offset: next })).toString('base64url') } : {}),
  };
}

/** The execution's history in the service's shape. */
function historyOf(entry: Entry, includeData: boolean): any[] {
  const { workflow, execution } = entry;
  const out: any[] = [];
  const data = (field: string, value: unknown) => (includeData ? { [field]: JSON.stringify(value ?? null), [`${field}Details`]: { truncated: false } } : {});
  const push = (event: LocalExecutionEvent, type: string, details?: Record<string, any>) => {
    const id = out.length + 1;
    out.push({ timestamp: event.simulatedTime / 1000, type, id, previousEventId: id - 1, ...(details ?? {}) });
  };
  /** The task a state runs, for the Task* and LambdaFunction* events. */
  const taskOf = (name: string) => {
    const target = workflow.taskTarget(name);
    const resource = workflow.taskResource(name) ?? '';
    if (target?.kind === 'function') return { lambda: true, resource };
    const integration = /^arn:[^:]+:states:::([^:]+):(.+)$/.exec(resource);
    const aws = /^aws-sdk:([^:]+)$/.exec(integration?.[1] ?? '');
    return { lambda: false, resourceType: aws ? `aws-sdk:${aws[1]}` : integration?.[1] ?? resource, resource: integration?.[2] ?? resource };
  };
  const scheduled = (event: LocalExecutionEvent, name: string) => {
    const task = taskOf(name);
    const input = execution.taskInputOf(event);
    if (task.lambda) {
      push(event, 'LambdaFunctionScheduled', {
        lambdaFunctionScheduledEventDetails: { resource: task.resource, ...(input === undefined ? {} : data('input', input)) },
      });
      push(event, 'LambdaFunctionStarted');
    } else {
      push(event, 'TaskScheduled', {
        taskScheduledEventDetails: {
          resourceType: task.resourceType,
          resource: task.resource,
          region: workflow.region,
          parameters: JSON.stringify(input ?? {}),
        },
      });
      push(event, 'TaskStarted', { taskStartedEventDetails: { resourceType: task.resourceType, resource: task.resource } });
    }
  };
  const caught = new Set<string>();
  for (const event of execution.events) {
    const name = event.state?.name ?? '';
    const type = event.state ? workflow.stateType(name) ?? event.state.type : '';
    switch (event.type) {
      case 'ExecutionStarted':
        push(event, 'ExecutionStarted', { executionStartedEventDetails: { ...data('input', event.input), roleArn: workflow.roleArn } });
        break;
      case 'StateEntered':
        caught.delete(name);
        push(event, `${type}StateEntered`, { stateEnteredEventDetails: { name, ...data('input', event.state!.input) } });
        if (type === 'Task') scheduled(event, name);
        break;
      case 'StateRetried':
        if (type === 'Task') scheduled(event, name);
        break;
      case 'StateFailed': {
        if (type !== 'Task') break;
        const task = taskOf(name);
        const failure = { error: event.Error, cause: causeText(event.Cause) };
        if (task.lambda) push(event, 'LambdaFunctionFailed', { lambdaFunctionFailedEventDetails: failure });
        else push(event, 'TaskFailed', { taskFailedEventDetails: { resourceType: task.resourceType, resource: task.resource, ...failure } });
        break;
      }
      case 'StateCaught':
        caught.add(name);
        break;
      case 'StateExited': {
        if (type === 'Task' && !caught.has(name)) {
          const task = taskOf(name);
          if (task.lambda) push(event, 'LambdaFunctionSucceeded', { lambdaFunctionSucceededEventDetails: data('output', event.state!.output) });
          else push(event, 'TaskSucceeded', { taskSucceededEventDetails: { resourceType: task.resourceType, resource: task.resource, ...data('output', event.state!.output) } });
        }
        caught.delete(name);
        push(event, `${type}StateExited`, { stateExitedEventDetails: { name, ...data('output', event.state!.output) } });
        break;
      }
      case 'MapIterationStarted':
      case 'MapIterationSucceeded':
      case 'MapIterationFailed': {
        const parent = (event as any).parentState?.name ?? '';
        const field = `mapIteration${event.type.slice('MapIteration'.length)}EventDetails`;
        push(event, event.type, { [field.charAt(0).toLowerCase() + field.slice(1)]: { name: parent, index: event.index } });
        break;
      }
      case 'ExecutionSucceeded':
        push(event, 'ExecutionSucceeded', { executionSucceededEventDetails: data('output', event.output) });
        break;
      case 'ExecutionFailed': {
        const outcome = execution.outcome();
        const failure = outcome ? { error: outcome.error, cause: outcome.cause } : { error: event.Error, cause: causeText(event.Cause) };
        push(event, 'ExecutionFailed', { executionFailedEventDetails: failure });
        break;
      }
      case 'ExecutionAborted':
        push(event, 'ExecutionAborted', {
          executionAbortedEventDetails: {
            ...(entry.stopError === undefined ? {} : { error: entry.stopError }),
            ...(entry.stopCause === undefined ? {} : { cause: entry.stopCause }),
          },
        });
        break;
      case 'ExecutionTimeout':
        push(event, 'ExecutionTimedOut', { executionTimedOutEventDetails: {} });
        break;
      default:
        break;
    }
  }
  return out;
}
