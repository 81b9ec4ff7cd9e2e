/**
 * The typed API client (openapi-fetch over `schema.d.ts`, generated from the backend's OpenAPI document by
 * `npm run gen:api`). Every request goes through it, from the API modules next to this file (one per
 * resource). Each request carries the access token; a 401 triggers one silent refresh (shared by
 * concurrent requests) and a single retry. A GET that fails before any answer (the browser drops requests
 * in flight when the machine's network changes: Chromium's ERR_NETWORK_CHANGED) is sent once more; a
 * request that changes something never is (the server may have acted on it).
 */
import createClient, { type Middleware } from 'openapi-fetch'
import type { paths } from './schema'
import { apiBaseUrl } from './config'
import { ApiError, toApiError } from './errors'
import { tokens } from './tokens'

const RETRIED = 'x-windflow-retried'
/** These authenticate by their body: a 401 means bad credentials, not an expired access token. */
const BY_BODY = /\/auth\/(login|refresh|setup)$/

const auth: Middleware = {
  onRequest({ request }) {
    const access = tokens.access()
    if (access && !request.headers.has('Authorization') && !BY_BODY.test(new URL(request.url).pathname))
      request.headers.set('Authorization', `Bearer ${access}`)
    return request
  },
}

export const api = createClient<paths>({ baseUrl: apiBaseUrl(), fetch: fetchWithRefresh })
api.use(auth)

/** fetch, and for a GET that got no answer at all, once more. */
async function fetchRead(input: Request): Promise<Response> {
  if (input.method !== 'GET') return fetch(input)
  const again = input.clone()
  try {
    return await fetch(input)
  } catch (err) {
    if (input.signal?.aborted) throw err
    return fetch(again)
  }
}

/** fetch that refreshes the token pair once on a 401 and replays the request. */
async function fetchWithRefresh(input: Request): Promise<Response> {
  const replay = input.clone()
  const response = await fetchRead(input)
  if (response.status !== 401 || input.headers.has(RETRIED) || BY_BODY.test(new URL(input.url).pathname))
    return response
  const fresh = await refreshSession()
  if (!fresh) return response
  const again = new Request(replay, { headers: new Headers(replay.headers) })
  again.headers.set('Authorization', `Bearer ${fresh}`)
  again.headers.set(RETRIED, '1')
  return fetchRead(again)
}

let inflight: Promise<string | null> | null = null

/**
 * A new access token, or null (then the session is over: refused tokens are cleared). Rotates the pair
 * once for every caller waiting at the same time (the server revokes a refresh token replayed twice).
 */
export function refreshSession(): Promise<string | null> {
  if (inflight) return inflight
  const refreshToken = tokens.refreshToken()
  if (!refreshToken) return Promise.resolve(null)
  inflight = (async () => {
    try {
      const { data, response } = await api.POST('/api/v1/auth/refresh', { body: { refresh_token: refreshToken } })
      if (!data) {
        // A pair set meanwhile (a password change, which revokes the old refresh token, or a new login) is
        // the session now: the refusal was of the pair it replaced.
        if (tokens.refreshToken() !== refreshToken) return tokens.access()
        if (response.status === 401 || response.status === 403) tokens.clear()
        return null
      }
      tokens.set(data)
      return data.access_token
    } catch {
      return null
    } finally {
      inflight = null
    }
  })()
  return inflight
}

/** Unwraps an openapi-fetch result: the data, or an ApiError carrying the server's detail. */
export async function unwrap<T>(promise: Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T> {
  let result
  try {
    result = await promise
  } catch (err) {
    throw new ApiError(
      0,
      `the server cannot be reached (${err instanceof Error ? err.message : String(err)})`,
      'network',
    )
  }
  if (!result.response.ok) throw toApiError(result.response.status, result.error)
  return result.data as T
}
