import type { LogLine } from '../api/deployments'
import { stripAnsi } from './ansi'

export function formatLine(line: LogLine): string {
  return `${line.timestamp} [${line.level.toUpperCase()}] ${stripAnsi(line.message)}`
}

/** A line of container output as text: its time, its service, its message without colours. */
export function formatServiceLine(line: LogLine & { service: string }): string {
  return `${line.timestamp} ${line.service} | ${stripAnsi(line.message)}`
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
