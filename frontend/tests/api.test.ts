import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { login, logout } from '../src/api/auth'
import { refreshSession } from '../src/api/client'
import { getWholeLog, listDeployments, normaliseLevel, toLogLine } from '../src/api/deployments'
import { ApiError } from '../src/api/errors'
import { fetchAll, type Page } from '../src/api/paging'
import { listStacks } from '../src/api/stacks'
import { getHealth } from '../src/api/system'
import { alwaysRefused } from '../src/api/targets'
import { line } from './frames'

interface Call {
  url: string
  method: string
  headers: Headers
  body: string
}
type Reply = { status?: number; body?: unknown } | ((call: Call) => { status?: number; body?: unknown })

/** fetch answered from a list of replies, in order; records every request. */
function mockFetch(...replies: Reply[]): Call[] {
  const calls: Call[] = []
  vi.stubGlobal(
    'fetch',
    vi.fn(async (req: Request) => {
      const call = { url: req.url, method: req.method, headers: req.headers, body: await req.clone().text() }
      calls.push(call)
      const next = replies.shift() ?? { status: 500, body: { detail: 'unexpected request' } }
      const reply = typeof next === 'function' ? next(call) : next
      const status = reply.status ?? 200
      return new Response(status === 204 ? null : JSON.stringify(reply.body ?? {}), {
        status,
        headers: { 'Content-Type': 'application/json' },
      })
    }),
  )
  return calls
}
const path = (call: Call) => {
  const u = new URL(call.url)
  return decodeURIComponent(u.pathname + u.search)
}
const page = <T>(items: T[], extra: Partial<Page<T>> = {}): Page<T> => ({
  items,
  total: items.length,
  total_is_exact: true,
  next_cursor: null,
  ...extra,
})

beforeEach(() => localStorage.clear())
afterEach(() => vi.unstubAllGlobals())

describe('deployments API', () => {
  it('lists with the filters that are set: status repeated, empty ones left out', async () => {
    const calls = mockFetch({ body: page([]) }, { body: page([]) })
    await listDeployments('o1', { status: ['failed', 'running'], stack_id: 's1', target_id: null }, { limit: 25 })
    await listDeployments(null, { status: [], stack_id: null, target_id: null }, { limit: 25, cursor: 'c2' })
    expect(path(calls[0])).toBe(
      '/api/v1/deployments?organization_id=o1&status=failed&status=running&stack_id=s1&limit=25',
    )
    expect(path(calls[1])).toBe('/api/v1/deployments?limit=25&cursor=c2')
  })

  it('maps free-text log levels to the four the UI shows, in place', () => {
    expect(['WARN', 'warning', 'Critical', 'fatal', 'error', 'debug', 'notice', undefined].map(normaliseLevel)).toEqual(
      ['warning', 'warning', 'error', 'error', 'error', 'debug', 'info', 'info'],
    )
    const raw = line(1, 'x', 'WARN')
    expect(toLogLine(raw)).toBe(raw) // the same object: no copy per line
    expect(raw.level).toBe('warning')
  })

  it('downloads the whole log page by page, from the last seq of each full page', async () => {
    const full = Array.from({ length: 5000 }, (_, i) => line(i + 1))
    const calls = mockFetch(
      { body: { items: full, last_seq: 5002, next_cursor: 'x' } },
      { body: { items: [line(5001), line(5002, 'end', 'ERROR')], last_seq: 5002, next_cursor: null } },
    )
    const all = await getWholeLog('d/1')
    expect(all.length).toBe(5002)
    expect(all.at(-1)).toMatchObject({ seq: 5002, level: 'error' })
    expect(calls.map(path)).toEqual([
      '/api/v1/deployments/d/1/logs?since_seq=0&limit=5000',
      '/api/v1/deployments/d/1/logs?since_seq=5000&limit=5000',
    ])
    expect(new URL(calls[0].url).pathname).toBe('/api/v1/deployments/d%2F1/logs') // the id is one path segment
  })

  it("an error answer becomes an ApiError with the server's detail and code", async () => {
    mockFetch({ status: 409, body: { detail: 'target "lab" is in use', code: 'target_in_use' } })
    const err = await listDeployments(null, { status: [], stack_id: null, target_id: null }, {}).catch((e) => e)
    expect(err).toBeInstanceOf(ApiError)
    expect(err).toMatchObject({ status: 409, code: 'target_in_use', message: 'target "lab" is in use' })
  })
})

describe('listings', () => {
  it('follow next_cursor to the end', async () => {
    const calls = mockFetch(
      { body: page([{ id: 'a' }], { next_cursor: 'c2', total: 2 }) },
      { body: page([{ id: 'b' }], { total: 2 }) },
    )
    const stacks = await listStacks('o1')
    expect(stacks.map((s) => s.id)).toEqual(['a', 'b'])
    expect(calls.map(path)).toEqual([
      '/api/v1/stacks?organization_id=o1&limit=100',
      '/api/v1/stacks?organization_id=o1&limit=100&cursor=c2',
    ])
  })

  it('without next_cursor, page by offset against total', async () => {
    const seen: unknown[] = []
    const answers = [
      { items: [1, 2], total: 3, total_is_exact: true },
      { items: [3], total: 3, total_is_exact: true },
    ]
    const all = await fetchAll(async (q) => {
      seen.push(q)
      return answers.shift()!
    }, 2)
    expect(all).toEqual([1, 2, 3])
    expect(seen).toEqual([{ limit: 2 }, { limit: 2, offset: 2 }])
  })
})

describe('auth API and the session', () => {
  it('logs in with the OAuth2 password form, without a stale access token', async () => {
    localStorage.setItem('windflow.access', 'stale')
    const calls = mockFetch({ body: { access_token: 'a', refresh_token: 'r', token_type: 'bearer', expires_in: 900 } })
    const pair = await login('ada@example.com', 'secret pass&word')
    expect(pair.access_token).toBe('a')
    expect(calls[0].headers.get('Content-Type')).toBe('application/x-www-form-urlencoded')
    expect(Object.fromEntries(new URLSearchParams(calls[0].body))).toEqual({
      username: 'ada@example.com',
      password: 'secret pass&word',
      scope: '',
    })
    expect(calls[0].headers.get('Authorization')).toBe(null)
  })

  it('logs out with the refresh token when there is one, with no body otherwise', async () => {
    localStorage.setItem('windflow.access', 'acc')
    const calls = mockFetch({ status: 204 }, { status: 204 })
    await logout('r1')
    await logout(null)
    expect(JSON.parse(calls[0].body)).toEqual({ refresh_token: 'r1' })
    expect(calls[0].headers.get('Authorization')).toBe('Bearer acc')
    expect(calls[1].body).toBe('')
  })

  it('a 401 refreshes the pair once for concurrent requests, then replays each with the new token', async () => {
    localStorage.setItem('windflow.access', 'old')
    localStorage.setItem('windflow.refresh', 'r-old')
    const calls = mockFetch(
      (c) => ({ status: c.headers.get('Authorization') === 'Bearer new' ? 200 : 401, body: page([]) }),
      (c) => ({ status: c.headers.get('Authorization') === 'Bearer new' ? 200 : 401, body: page([]) }),
      { body: { access_token: 'new', refresh_token: 'r-new', token_type: 'bearer', expires_in: 900 } },
      (c) => ({ status: c.headers.get('Authorization') === 'Bearer new' ? 200 : 401, body: page([]) }),
      (c) => ({ status: c.headers.get('Authorization') === 'Bearer new' ? 200 : 401, body: page([]) }),
    )
    const none = { status: [], stack_id: null, target_id: null }
    await Promise.all([listDeployments(null, none, {}), listDeployments(null, none, {})])
    const refreshes = calls.filter((c) => c.url.endsWith('/auth/refresh'))
    expect(refreshes.length).toBe(1)
    expect(JSON.parse(refreshes[0].body)).toEqual({ refresh_token: 'r-old' })
    expect(refreshes[0].headers.get('Authorization')).toBe(null)
    expect(localStorage.getItem('windflow.access')).toBe('new')
    expect(localStorage.getItem('windflow.refresh')).toBe('r-new')
  })

  it('a refresh refused after a new pair was set (a password change) keeps the new pair', async () => {
    localStorage.setItem('windflow.access', 'old')
    localStorage.setItem('windflow.refresh', 'r-old')
    mockFetch(() => {
      // the password change's answer lands while the refresh with the revoked token is on its way
      localStorage.setItem('windflow.access', 'new')
      localStorage.setItem('windflow.refresh', 'r-new')
      return { status: 401, body: { detail: 'refresh token revoked', code: 'token_revoked' } }
    })
    expect(await refreshSession()).toBe('new')
    expect(localStorage.getItem('windflow.refresh')).toBe('r-new')
  })

  it('a refused refresh ends the session: the tokens are cleared', async () => {
    localStorage.setItem('windflow.access', 'old')
    localStorage.setItem('windflow.refresh', 'r-old')
    mockFetch({ status: 401, body: { detail: 'refresh token revoked', code: 'token_revoked' } })
    expect(await refreshSession()).toBe(null)
    expect(localStorage.getItem('windflow.refresh')).toBe(null)
  })
})

describe('a request the network dropped', () => {
  /** fetch that throws (no answer) the first `drops` times, then answers 200. */
  function flaky(drops: number): string[] {
    const seen: string[] = []
    vi.stubGlobal(
      'fetch',
      vi.fn(async (req: Request) => {
        seen.push(`${req.method} ${new URL(req.url).pathname}`)
        if (seen.length <= drops) throw new TypeError('Failed to fetch')
        return new Response(JSON.stringify(page([])), { status: 200, headers: { 'Content-Type': 'application/json' } })
      }),
    )
    return seen
  }

  it('a GET is sent once more, and only once', async () => {
    const seen = flaky(1)
    await expect(listStacks('o1')).resolves.toEqual([])
    expect(seen).toEqual(['GET /api/v1/stacks', 'GET /api/v1/stacks'])
    const twice = flaky(2)
    await expect(listStacks('o1')).rejects.toMatchObject({ code: 'network' })
    expect(twice).toHaveLength(2)
  })

  it('a request that changes something is never sent again', async () => {
    const seen = flaky(1)
    await expect(login('a@example.com', 'pw')).rejects.toMatchObject({ code: 'network' })
    expect(seen).toEqual(['POST /api/v1/auth/login'])
  })
})

describe('targets and system', () => {
  it("lists the policy's always-refused keys", async () => {
    mockFetch({ body: { always_refused: [{ key: 'include', reason: 'it reads a file' }] } })
    expect(await alwaysRefused()).toEqual([{ key: 'include', reason: 'it reads a file' }])
  })

  it('/health is shown whatever its status (503 while the database is down)', async () => {
    mockFetch({ status: 503, body: { status: 'unavailable', database: { kind: 'sqlite', status: 'error' } } })
    expect(await getHealth()).toMatchObject({ status: 'unavailable', database: { status: 'error' } })
  })
})
