import { describe, expect, it } from 'vitest'
import { workerState, type Worker } from '../src/api/system'

const base: Worker = {
  name: 'w1@host',
  kind: 'external',
  hostname: 'host',
  pid: 1,
  concurrency: 2,
  last_seen: '2026-01-01T00:00:00Z',
  alive: true,
}

describe('workerState', () => {
  it('reads a healthy worker as alive', () => {
    expect(workerState({ ...base, state: 'healthy' })).toEqual({ label: 'alive', type: 'success', problem: null })
    expect(workerState(base)).toEqual({ label: 'alive', type: 'success', problem: null }) // an older server
  })

  it('never reads a degraded worker as healthy, and says why', () => {
    const problem = 'the pool has 0/2 live processes and has not refilled for 6s'
    expect(workerState({ ...base, state: 'degraded', problem })).toEqual({ label: 'degraded', type: 'error', problem })
  })

  it('reads a worker without a fresh heartbeat as gone, whatever its last state', () => {
    expect(workerState({ ...base, alive: false, state: 'degraded', problem: 'x' })).toEqual({
      label: 'gone',
      type: 'default',
      problem: null,
    })
  })
})
