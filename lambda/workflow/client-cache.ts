/** SDK clients kept for the life of a Lambda container. */

/** Anything with a `destroy()`, as every SDK client has. */
export interface Destroyable {
  destroy(): void;
}

/**
 * Clients kept for the life of a Lambda container, one per Region and endpoint setting: a warm
 * invocation reuses the client (and its connections); a changed endpoint or Region in the
 * environment (as in tests) makes a new one.
 */
export class ClientCache<C extends Destroyable> {
  private readonly clients = new Map<string, C>();

  /**
   * @param make makes the client for a Region (undefined: the SDK's default)
   * @param endpointVariables the environment variables that override the service's endpoint
   */
  public constructor(
    private readonly make: (region: string | undefined) => C,
    private readonly endpointVariables: readonly string[],
  ) {}

  /** The client for `region` (default: the Region in the environment). */
  public get(region?: string): C {
    const r = region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION;
    const key = [r ?? '', ...this.endpointVariables.map((v) => process.env[v] ?? '')].join('|');
    let client = this.clients.get(key);
    if (!client) {
      client = this.make(r);
      this.clients.set(key, client);
    }
    return client;
  }

  /** Destroys every client (their sockets) and forgets them. */
  public clear(): void {
    for (const c of this.clients.values()) c.destroy();
    this.clients.clear();
  }
}
