/**
 * Network and visibility signals, so a client in a browser reconnects as
 * soon as it can instead of waiting out its backoff, and checks its link
 * when the network may have changed under it.
 */

/** What the client is told about its surroundings. */
export interface Environment {
  /** False when the device is known to be offline (`navigator.onLine`). */
  isOnline(): boolean;
  /**
   * Calls `listener` with `"online"`, `"offline"` or `"visible"` (the page
   * became visible again); returns a function that stops it.
   */
  subscribe(listener: (change: "online" | "offline" | "visible") => void): () => void;
}

/**
 * The browser's signals (`online`/`offline` on `window`,
 * `visibilitychange` on `document`), or null outside a browser (Node has
 * neither `window` nor `document`, so nothing is touched there).
 */
export function browserEnvironment(): Environment | null {
  const g = globalThis as any;
  if (
    typeof g.window !== "object" ||
    typeof g.window?.addEventListener !== "function" ||
    typeof g.document !== "object" ||
    typeof g.document?.addEventListener !== "function"
  ) {
    return null;
  }
  const win = g.window as Window;
  const doc = g.document as Document;
  return {
    isOnline: () => (typeof win.navigator?.onLine === "boolean" ? win.navigator.onLine : true),
    subscribe(listener) {
      const online = () => listener("online");
      const offline = () => listener("offline");
      const visibility = () => {
        if (doc.visibilityState === "visible") listener("visible");
      };
      win.addEventListener("online", online);
      win.addEventListener("offline", offline);
      doc.addEventListener("visibilitychange", visibility);
      return () => {
        win.removeEventListener("online", online);
        win.removeEventListener("offline", offline);
        doc.removeEventListener("visibilitychange", visibility);
      };
    },
  };
}
