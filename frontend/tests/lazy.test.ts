import { afterEach, describe, expect, it, vi } from 'vitest'
import { isChunkLoadError, lazy } from '../src/router/lazy'

describe('lazy route components', () => {
  afterEach(() => vi.useRealTimers())

  it('resolves with the module when it arrives in time', async () => {
    const load = lazy(() => Promise.resolve({ default: 'view' }), 1000)
    await expect(load()).resolves.toEqual({ default: 'view' })
  })

  it('fails with the message the router reloads on when the chunk never arrives', async () => {
    vi.useFakeTimers()
    const load = lazy(() => new Promise<never>(() => {}), 20_000)
    const result = load()
    const settled = expect(result).rejects.toThrow(/error loading dynamically imported module/)
    await vi.advanceTimersByTimeAsync(19_999)
    let done = false
    void result.catch(() => {
      done = true
    })
    await Promise.resolve()
    expect(done).toBe(false)
    await vi.advanceTimersByTimeAsync(1)
    await settled
  })

  it('passes a loading error through untouched', async () => {
    const load = lazy(() => Promise.reject(new Error('Failed to fetch dynamically imported module: /x.js')), 1000)
    await expect(load()).rejects.toThrow('Failed to fetch dynamically imported module: /x.js')
  })

  it("the router's reload covers a route's module, its stylesheet and a chunk that never arrives, nothing else", () => {
    for (const message of [
      'Failed to fetch dynamically imported module: http://x/assets/LoginView-1.js',
      'Importing a module script failed.',
      'error loading dynamically imported module: no answer within 20 s',
      'Unable to preload CSS for /assets/AuthTopBar-2.css',
    ])
      expect(isChunkLoadError(new Error(message)), message).toBe(true)
    expect(isChunkLoadError(new Error('Cannot read properties of undefined'))).toBe(false)
    expect(isChunkLoadError('Unable to preload CSS for /assets/x.css')).toBe(true)
    expect(isChunkLoadError(null)).toBe(false)
  })
})
