/**
 * The pieces of a conversion checkpoint that writers share: binary state packed into JSON
 * strings, and checks of the fields read back from one.
 *
 * A packed buffer is `b:` and its base64, or, when it is larger than {@link PACK_INFLATE_OVER}
 * bytes, `z:` and the base64 of its raw deflate: tables that are mostly zeros (a grain directory,
 * a map of written blocks) shrink to a few bytes per KiB. Unpacking is told the exact length to
 * expect and never allocates more than that, whatever the string says.
 */
import { createHash } from 'node:crypto';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import type { Sink, WriteResult, WriterChunk } from './sink';

/** Buffers longer than this are deflated before base64. */
export const PACK_INFLATE_OVER = 256;

/** A buffer as a JSON string: base64, deflated first when large. */
export function packBytes(buf: Buffer): string {
  return buf.length > PACK_INFLATE_OVER ? `z:${deflateRawSync(buf).toString('base64')}` : `b:${buf.toString('base64')}`;
}

/** The buffer {@link packBytes} made, which must be exactly `length` bytes; a RangeError names `what` otherwise. */
export function unpackBytes(packed: unknown, length: number, what: string): Buffer {
  if (typeof packed !== 'string' || !/^[bz]:[A-Za-z0-9+/]*={0,2}$/.test(packed)) {
    throw new RangeError(`checkpoint: ${what} is not a packed byte string`);
  }
  const body = Buffer.from(packed.slice(2), 'base64');
  let out: Buffer;
  if (packed[0] === 'b') {
    out = body;
  } else {
    try {
      // One byte more than expected is enough to tell "too long" without inflating the rest.
      out = inflateRawSync(body, { maxOutputLength: Math.max(1, length + 1) });
    } catch {
      throw new RangeError(`checkpoint: ${what} does not inflate to ${length} bytes`);
    }
  }
  if (out.length !== length) throw new RangeError(`checkpoint: ${what} holds ${out.length} bytes where ${length} were expected`);
  return out;
}

/** `value` as an object, or a RangeError naming `what`. */
export function objectField(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new RangeError(`checkpoint: ${what} is not an object`);
  return value as Record<string, unknown>;
}

/** `value` as a safe integer in [min, max], or a RangeError naming `what`. */
export function intField(value: unknown, what: string, min: number, max: number = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new RangeError(`checkpoint: ${what} is ${JSON.stringify(value)}, not an integer from ${min} to ${max}`);
  }
  return value;
}

/** `value` as one of `allowed`, or a RangeError naming `what`. */
export function oneOf<T extends string>(value: unknown, allowed: readonly T[], what: string): T {
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw new RangeError(`checkpoint: ${what} is ${JSON.stringify(value)}, not one of ${allowed.join(', ')}`);
  }
  return value as T;
}

/** `value` as a string of at most `max` characters, or a RangeError naming `what`. */
export function stringField(value: unknown, what: string, max = 4096): string {
  if (typeof value !== 'string' || value.length > max) throw new RangeError(`checkpoint: ${what} is not a string of at most ${max} characters`);
  return value;
}

/** A RangeError when an option given on resume contradicts what the checkpoint fixed. */
export function sameOption<T>(given: T | undefined, fixed: T, what: string): void {
  if (given !== undefined && given !== fixed) {
    throw new RangeError(`checkpoint: the output was started with ${what} ${JSON.stringify(fixed)}; the options ask for ${JSON.stringify(given)}`);
  }
}

/** A writer driven in segments: the part of a conversion a checkpoint can cut. */
export interface WriterSession {
  /**
   * Writes the chunks (ordered, all at or above `from`, all below the point the segment stops at).
   * When it returns, every chunk has gone out to the sink or into the writer's own state, and no
   * job of the writer is still running.
   */
  consume(chunks: AsyncIterable<WriterChunk>, from: number): Promise<void>;
  /**
   * Brings the output up to virtual offset `resumeAt` (nothing below it is left to write), hands
   * every byte held back to the sink, and returns the writer's state as plain JSON data.
   */
  suspend(resumeAt: number): Promise<object>;
  /** Writes the rest of the output (tables, footer). Does not close the sink. */
  finish(): Promise<WriteResult>;
}

/** What a writer restoring its state is told of the conversion it continues. */
export interface ResumeContext {
  /** Size of the input's virtual disk. */
  readonly virtualSize: number;
  /** Virtual offset the reading resumes at. */
  readonly resumeAt: number;
  /** The sink, already checked to be at the checkpoint's output position. */
  readonly sink: Sink;
}

/** A RangeError unless the writer state `s` was taken where the checkpoint resumes. */
export function checkResumePoint(s: Record<string, unknown>, ctx: ResumeContext): void {
  if (s.resumeAt !== ctx.resumeAt) {
    throw new RangeError(`checkpoint: the writer state was taken at ${JSON.stringify(s.resumeAt)}, the checkpoint resumes at ${ctx.resumeAt}`);
  }
}

/** JSON with object keys in sorted order, so that equal data gives equal text whatever the key order. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    const o = value as Record<string, unknown>;
    return `{${Object.keys(o).filter((k) => o[k] !== undefined).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/**
 * The seal of a checkpoint: a SHA-256 of its fields (the writer state without its seal), so that a
 * checkpoint damaged in storage is refused rather than continued into a wrong output. Not a
 * protection against anyone who means to forge one.
 */
export function sealOf(checkpoint: { readonly writer: unknown }): string {
  const writer = { ...(checkpoint.writer as Record<string, unknown>) };
  delete writer.seal;
  return createHash('sha256').update(canonicalJson({ ...checkpoint, writer })).digest('hex');
}
