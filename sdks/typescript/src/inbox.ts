/**
 * What {@link Client.messages} reads: a FIFO of delivered items.
 *
 * Bounded at `max` items: when it holds that many, `full()` is true and the
 * client stops reading from the socket (Node) or drops the connection and
 * resumes it with `since` once the consumer has caught up (browsers, which
 * cannot pause a socket). A few items may go over the bound: frames the
 * socket had already parsed, and the SDK's own notices. `space` is called
 * once the queue has drained to half.
 */

import { ClientClosed, RequestTimeout, copyError, type ArqonError } from "./errors.js";
import type { Incoming } from "./models.js";

export class Inbox {
  private items: Incoming[] = [];
  private head = 0;
  private readers: Array<{ resolve: (item: Incoming) => void; reject: (e: Error) => void }> = [];
  private ended: { error: ArqonError | null } | null = null;
  private spaceWaiters: Array<() => void> = [];

  constructor(
    readonly max: number,
    private readonly onSpace: () => void,
  ) {}

  get size(): number {
    return this.items.length - this.head;
  }

  full(): boolean {
    return this.size >= this.max;
  }

  /** Queues an item (or hands it to a waiting reader). */
  push(item: Incoming): void {
    if (this.ended !== null) return;
    const reader = this.readers.shift();
    if (reader !== undefined) {
      reader.resolve(item);
      return;
    }
    this.items.push(item);
  }

  /** No more items; readers get `error` (or ClientClosed) once the queue is empty. */
  end(error: ArqonError | null): void {
    if (this.ended !== null) return;
    this.ended = { error };
    for (const reader of this.readers.splice(0)) reader.reject(this.endError());
    this.signalSpace();
  }

  /** The next item; waits for one (rejects with RequestTimeout after `timeoutMs`, if given). */
  get(timeoutMs?: number): Promise<Incoming> {
    if (this.size > 0) {
      const item = this.items[this.head]!;
      this.items[this.head] = undefined as unknown as Incoming;
      this.head++;
      if (this.head > 1024 && this.head * 2 > this.items.length) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
      if (this.size <= this.max / 2) this.signalSpace();
      return Promise.resolve(item);
    }
    if (this.ended !== null) return Promise.reject(this.endError());
    return new Promise((resolve, reject) => {
      if (timeoutMs === undefined) {
        this.readers.push({ resolve, reject });
        return;
      }
      const reader = {
        resolve: (item: Incoming) => {
          clearTimeout(timer);
          resolve(item);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        this.readers = this.readers.filter((r) => r !== reader);
        reject(new RequestTimeout(`nothing received within ${timeoutMs} ms`));
      }, timeoutMs);
      this.readers.push(reader);
    });
  }

  /** Resolves once the queue has drained to half (at once if it has). */
  waitForSpace(): Promise<void> {
    if (this.size <= this.max / 2 || this.ended !== null) return Promise.resolve();
    return new Promise((resolve) => this.spaceWaiters.push(resolve));
  }

  private signalSpace(): void {
    for (const waiter of this.spaceWaiters.splice(0)) waiter();
    this.onSpace();
  }

  private endError(): ArqonError {
    const error = this.ended?.error;
    return error ? copyError(error) : new ClientClosed("the client is closed");
  }
}
