import { afterEach, describe, expect, it } from 'vitest'
import { wsUrl } from '../src/api/config'

function announce(content: string): void {
  const meta = document.createElement('meta')
  meta.name = 'windflow-websocket-url'
  meta.content = content
  document.head.appendChild(meta)
}

describe('wsUrl', () => {
  afterEach(() => {
    document.head.querySelectorAll('meta[name="windflow-websocket-url"]').forEach((m) => m.remove())
  })

  it('is /api/v1/ws of the page origin when the server names no URL', () => {
    expect(wsUrl()).toBe(`${window.location.origin.replace(/^http/, 'ws')}/api/v1/ws`)
  })

  it("is the server's WebSocket listener when the page names it (WS_PUBLIC_URL)", () => {
    announce('ws://127.0.0.1:8001/api/v1/ws')
    expect(wsUrl()).toBe('ws://127.0.0.1:8001/api/v1/ws')
  })

  it('ignores a named URL that is not ws:// or wss://', () => {
    announce('javascript:alert(1)')
    expect(wsUrl()).toBe(`${window.location.origin.replace(/^http/, 'ws')}/api/v1/ws`)
  })
})
