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
