/**
 * The typed API client (openapi-fetch over the generated schema). Every request carries the access
 * token; a 401 triggers one silent refresh (shared by concurrent requests) and a single retry.
 */
import createClient, { type Middleware } from 'openapi-fetch'
import type { paths } from './schema'
import { apiBaseUrl } from './config'
import { ApiError, toApiError } from './errors'
import { tokens } from './tokens'

const RETRIED = 'x-windflow-retried'
/** A 401 from these means bad credentials, not an expired access token. */
const NO_REFRESH = /\/auth\/(login|refresh|setup)$/

const auth: Middleware = {
  onRequest({ request }) {
    const access = tokens.access()
    if (access && !request.headers.has('Authorization')) request.headers.set('Authorization', `Bearer ${access}`)
    return request
  },
}

export const api = createClient<paths>({ baseUrl: apiBaseUrl(), fetch: fetchWithRefresh })
api.use(auth)

/** fetch that refreshes the token pair once on a 401 and replays the request. */
async function fetchWithRefresh(input: Request): Promise<Response> {
  const replay = input.clone()
  const response = await fetch(input)
  if (response.status !== 401 || input.headers.has(RETRIED) || NO_REFRESH.test(new URL(input.url).pathname))
    return response
  const fresh = await tokens.refresh()
  if (!fresh) return response
  const again = new Request(replay, { headers: new Headers(replay.headers) })
  again.headers.set('Authorization', `Bearer ${fresh}`)
  again.headers.set(RETRIED, '1')
  return fetch(again)
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

/** A raw JSON request for routes outside the typed schema (or with a body openapi-fetch cannot build). */
export async function rawJson<T>(method: string, path: string, body?: unknown): Promise<T> {
  const request = new Request(`${apiBaseUrl()}${path}`, {
    method,
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const access = tokens.access()
  if (access) request.headers.set('Authorization', `Bearer ${access}`)
  let response: Response
  try {
    response = await fetchWithRefresh(request)
  } catch (err) {
    throw new ApiError(
      0,
      `the server cannot be reached (${err instanceof Error ? err.message : String(err)})`,
      'network',
    )
  }
  const text = await response.text()
  const data = text ? JSON.parse(text) : undefined
  if (!response.ok) throw toApiError(response.status, data)
  return data as T
}
