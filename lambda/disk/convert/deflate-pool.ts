/**
 * Compression on every core, in order. zlib's asynchronous API runs each job on the libuv thread
 * pool, so keeping several jobs in flight spreads them over the cores, while the results are
 * handed on in the order the inputs came. Memory is bounded by the jobs in flight (their inputs
 * and outputs), whatever the length of the stream. The pool has 4 threads unless the process's
 * entry point sets `UV_THREADPOOL_SIZE` (before any pool work) to the number of cores.
 */
import * as os from 'node:os';
import { deflate, constants as zlibConstants } from 'node:zlib';

/** Options of {@link deflateOrdered}. */
export interface DeflateOptions {
  /**
   * Jobs in flight at most.
   * @default - twice the number of cores
   */
  readonly concurrency?: number;
  /**
   * zlib compression level, 0 to 9.
   * @default - zlib's default (6)
   */
  readonly level?: number;
}

/** The default number of compression jobs in flight: twice the cores. */
export function defaultConcurrency(): number {
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.max(2, 2 * cores);
}

function deflateAsync(data: Buffer, level: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    deflate(data, { level }, (err, out) => (err ? reject(err) : resolve(out)));
  });
}

/**
 * Maps `items` through `fn` with at most `concurrency` calls in flight, yielding the results in
 * the order of the items. A failure is raised when its turn comes; the jobs still in flight are
 * awaited (and their failures ignored) so that none is left running unobserved.
 */
export async function* mapOrdered<T, R>(
  items: AsyncIterable<T>,
  fn: (item: T) => Promise<R>,
  concurrency: number,
): AsyncIterable<{ item: T; result: R }> {
  const limit = Math.max(1, Math.floor(concurrency));
  const queue: Array<{ item: T; result: Promise<R> }> = [];
  try {
    for await (const item of items) {
      const result = fn(item);
      // Mark the promise handled now; its failure is re-raised when it is awaited in turn.
      result.catch(() => undefined);
      queue.push({ item, result });
      if (queue.length >= limit) {
        const head = queue.shift()!;
        yield { item: head.item, result: await head.result };
      }
    }
    while (queue.length > 0) {
      const head = queue.shift()!;
      yield { item: head.item, result: await head.result };
    }
  } finally {
    await Promise.allSettled(queue.map((q) => q.result));
  }
}

/**
 * Deflates (zlib format) each item's `data`, with several items in flight, and yields each item
 * with its compressed bytes in the original order.
 */
export function deflateOrdered<T extends { readonly data: Buffer }>(
  items: AsyncIterable<T>,
  options: DeflateOptions = {},
): AsyncIterable<{ item: T; result: Buffer }> {
  const level = options.level ?? zlibConstants.Z_DEFAULT_COMPRESSION;
  if (!Number.isInteger(level) || level < -1 || level > 9) throw new RangeError(`invalid zlib level ${level}`);
  return mapOrdered(items, (item) => deflateAsync(item.data, level), options.concurrency ?? defaultConcurrency());
}
