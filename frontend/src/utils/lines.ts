/** "template line 4: ..." / "invalid YAML: line 3, column 5: ..." → {4: message}. */
export function errorsByLine(detail: string): Record<number, string> {
  const out: Record<number, string> = {}
  for (const part of detail.split(/;\s+(?=\S)/)) {
    const m = /line (\d+)/i.exec(part)
    if (m) out[Number(m[1])] = part
  }
  return out
}
