/** How long a route's code may take to arrive before the navigation counts as failed. */
export const CHUNK_TIMEOUT_MS = 20_000

/**
 * A lazy route component whose loading cannot hang the navigation forever. Vite's loader waits for the
 * chunk's CSS preload to fire `load` or `error`; a request the browser never completes (seen on a loaded
 * machine: the page stayed on the previous route with no request in the server's log) would leave the
 * user stuck. Past `timeoutMs` the load fails with the message the router's error handler recognises,
 * which reloads the page once, for the route it was going to.
 */
export function lazy<T>(load: () => Promise<T>, timeoutMs: number = CHUNK_TIMEOUT_MS): () => Promise<T> {
  return () =>
    new Promise<T>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`error loading dynamically imported module: no answer within ${timeoutMs / 1000} s`)),
        timeoutMs,
      )
      load().then(
        (module) => {
          clearTimeout(timer)
          resolve(module)
        },
        (error) => {
          clearTimeout(timer)
          reject(error)
        },
      )
    })
}

/**
 * Whether a navigation failed because a route's code did not arrive: its module (a new build replaced it, the
 * network dropped it), its stylesheet (Vite's "Unable to preload CSS"; Chromium drops both when the machine's
 * network changes), or no answer in time (`lazy`). The router reloads the page once for these.
 */
export function isChunkLoadError(error: unknown): boolean {
  const message = String((error as { message?: unknown } | null)?.message ?? error)
  return /dynamically imported module|Importing a module script failed|error loading dynamically|Unable to preload CSS/i.test(
    message,
  )
}
