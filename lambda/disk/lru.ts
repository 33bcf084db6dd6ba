/** Small bounded caches shared by the readers. */

/**
 * A least-recently-used map of promises: concurrent readers of one key share one fetch, failed
 * fetches are forgotten, and at most `max` entries are kept.
 */
export function remember<K>(cache: Map<K, Promise<Buffer>>, key: K, max: number, load: () => Promise<Buffer>): Promise<Buffer> {
  const hit = cache.get(key);
  if (hit) {
    cache.delete(key);
    cache.set(key, hit);
    return hit;
  }
  const p = load();
  cache.set(key, p);
  p.catch(() => {
    if (cache.get(key) === p) cache.delete(key);
  });
  while (cache.size > max) cache.delete(cache.keys().next().value as K);
  return p;
}
