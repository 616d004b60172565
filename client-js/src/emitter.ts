// A tiny typed event emitter (no dependency, works in browsers and Node).

export type Listener<T> = (ev: T) => void;

export class Emitter<Events extends object> {
  private listeners: { [K in keyof Events]?: Set<Listener<Events[K]>> } = {};

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(type: K, fn: Listener<Events[K]>): () => void {
    const set = (this.listeners[type] ??= new Set());
    set.add(fn);
    return () => this.off(type, fn);
  }

  /** Like `on`, but removed after the first call. */
  once<K extends keyof Events>(type: K, fn: Listener<Events[K]>): () => void {
    const off = this.on(type, (ev) => {
      off();
      fn(ev);
    });
    return off;
  }

  off<K extends keyof Events>(type: K, fn: Listener<Events[K]>): void {
    this.listeners[type]?.delete(fn);
  }

  protected emit<K extends keyof Events>(type: K, ev: Events[K]): void {
    const set = this.listeners[type];
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(ev);
      } catch (e) {
        // A throwing listener must not break the client's state machine; rethrow
        // outside of it so the bug still shows up.
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }

  protected removeAllListeners(): void {
    this.listeners = {};
  }
}
