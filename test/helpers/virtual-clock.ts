/**
 * A virtual clock for tests: simulated time that moves only when a test (or a harness acting for
 * one) advances it. The local EC2 simulator and the local workflow harness read it instead of the
 * real time, so an import that would take hours finishes in milliseconds of test time.
 */

/** The default start of simulated time: 2025-01-01T00:00:00Z, in ms since the Unix epoch. */
export const VIRTUAL_EPOCH = Date.UTC(2025, 0, 1);

/** Simulated time in milliseconds. */
export class VirtualClock {
  private current: number;
  private readonly listeners = new Set<(now: number, previous: number) => void>();

  /** @param start the simulated time to begin at, in ms since the Unix epoch. */
  public constructor(start: number = VIRTUAL_EPOCH) {
    if (!Number.isFinite(start)) throw new RangeError(`invalid clock start ${start}`);
    this.current = start;
  }

  /** The simulated time, in ms since the Unix epoch. */
  public now(): number {
    return this.current;
  }

  /** The simulated time as a Date. */
  public date(): Date {
    return new Date(this.current);
  }

  /** Moves simulated time forward by `ms` (a finite, non-negative number); listeners are told. */
  public advance(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`a virtual clock advances by a finite, non-negative time, not ${ms}`);
    const previous = this.current;
    this.current += ms;
    for (const listener of [...this.listeners]) listener(this.current, previous);
  }

  /** Calls `listener` after each advance; returns a function that removes it. */
  public onAdvance(listener: (now: number, previous: number) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
