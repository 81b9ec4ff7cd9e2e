import { afterEach, describe, expect, it, vi } from 'vitest'
import { lazy } from '../src/router/lazy'

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
})
