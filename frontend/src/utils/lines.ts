/** Where an API error points in a text the user wrote: its line. */
import { LineCounter, isMap, isSeq, parseDocument, type Node } from 'yaml'

/** "template line 4: ..." / "invalid YAML: line 3, column 5: ..." → {4: message}. */
export function errorsByLine(detail: string): Record<number, string> {
  const out: Record<number, string> = {}
  for (const part of detail.split(/;\s+(?=\S)/)) {
    const m = /line (\d+)/i.exec(part)
    if (m) out[Number(m[1])] = part
  }
  return out
}

/**
 * The line (1-based) of a path such as `variables[1].options` or `[2].default` in a YAML (or JSON) text
 * holding a list of variables: the line of its deepest part found (the item's key, else the item); 0 when
 * the text does not parse or has no such item.
 */
export function lineOfPath(source: string, path: string): number {
  const counter = new LineCounter()
  const doc = parseDocument(source, { lineCounter: counter })
  if (doc.errors.length) return 0
  const parts = [...path.replace(/^variables/, '').matchAll(/\[(\d+)\]|\.?([A-Za-z_][\w-]*)/g)].map((m) =>
    m[1] !== undefined ? Number(m[1]) : m[2],
  )
  let node: Node | null = doc.contents as Node | null
  let at: number | null = null
  for (const part of parts) {
    if (typeof part === 'number' && isSeq(node)) {
      const item = node.items[part] as Node | undefined
      if (!item) break
      node = item
      at = item.range?.[0] ?? at
    } else if (typeof part === 'string' && isMap(node)) {
      const pair = node.items.find((p) => String((p.key as { value?: unknown } | null)?.value ?? p.key) === part)
      if (!pair) break
      at = (pair.key as Node | null)?.range?.[0] ?? at
      node = pair.value as Node | null
    } else break
  }
  return at === null ? 0 : counter.linePos(at).line
}

/** A 422 about the variables ("variables[0].min: must be a number; variables[1].type: ...") as {line: message}. */
export function variableErrorsByLine(source: string, detail: string): Record<number, string> {
  const out: Record<number, string> = {}
  const text = detail.replace(/^[^:]*variable schema:\s*/, '')
  for (const part of text.split(/;\s+(?=variables\[)/)) {
    const m = /^(variables\[\d+\][\w.[\]]*):\s*(.+)$/.exec(part.trim())
    if (!m) continue
    const line = lineOfPath(source, m[1]) || 1
    out[line] = out[line] ? `${out[line]}; ${m[2]}` : `${m[1]}: ${m[2]}`
  }
  return out
}
