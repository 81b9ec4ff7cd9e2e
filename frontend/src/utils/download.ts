import { rawJson } from '../api/client'
import type { LogLine } from '../composables/useDeploymentWebSocket'
import { stripAnsi } from './ansi'

export function formatLine(line: LogLine): string {
  return `${line.timestamp} [${line.level.toUpperCase()}] ${stripAnsi(line.message)}`
}

/** Every persisted line of a deployment, not only those loaded in the drawer. */
export async function fetchWholeLog(deploymentId: string): Promise<LogLine[]> {
  const all: LogLine[] = []
  let since = 0
  for (let page = 0; page < 10_000; page++) {
    const res = await rawJson<{ items: LogLine[] }>(
      'GET',
      `/api/v1/deployments/${encodeURIComponent(deploymentId)}/logs?since_seq=${since}&limit=5000`,
    )
    all.push(...res.items)
    if (res.items.length < 5000) break
    since = res.items[res.items.length - 1].seq
  }
  return all
}

export function saveText(filename: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/plain;charset=utf-8' }))
  const a = document.createElement('a')
  a.href = url
  a.download = filename
  document.body.appendChild(a)
  a.click()
  a.remove()
  setTimeout(() => URL.revokeObjectURL(url), 10_000)
}

export async function copyText(text: string): Promise<void> {
  try {
    await navigator.clipboard.writeText(text)
    return
  } catch {
    // No clipboard permission (plain http, or a browser that asks): the selection fallback.
  }
  const area = document.createElement('textarea')
  area.value = text
  area.setAttribute('readonly', '')
  area.style.position = 'fixed'
  area.style.opacity = '0'
  document.body.appendChild(area)
  area.select()
  document.execCommand('copy')
  area.remove()
}
