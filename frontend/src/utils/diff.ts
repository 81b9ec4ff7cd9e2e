/**
 * A unified diff (`GET /deployments/{id}/revisions/{a}/diff/{b}`: the rendered compose, then the values) read
 * into files, hunks and numbered lines, and laid out side by side (a removed line next to the line that
 * replaced it). The text stays text: the view renders it with `{{ }}`, never as HTML.
 */

export type DiffKind = 'context' | 'add' | 'del'

export interface DiffLine {
  kind: DiffKind
  text: string
  /** Its number in the old text (null for an added line). */
  oldNo: number | null
  /** Its number in the new text (null for a removed line). */
  newNo: number | null
}

export interface DiffHunk {
  /** The `@@ -a,b +c,d @@` line, with what follows it (a section name, if any). */
  header: string
  lines: DiffLine[]
}

export interface DiffFile {
  /** The `---` name ("revision 1/compose"), or '' when the diff has none. */
  oldName: string
  /** The `+++` name. */
  newName: string
  hunks: DiffHunk[]
  added: number
  removed: number
}

/** One cell of a side-by-side row: a line, or nothing on that side. */
export interface SideCell {
  no: number
  text: string
  kind: DiffKind
}

export interface SideRow {
  left: SideCell | null
  right: SideCell | null
}

const HUNK = /^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@/

/**
 * The files of a unified diff, in order: each hunk reads as many lines as its header announces. Text outside
 * hunks and "\ No newline at end of file" markers are left out; a hunk without file headers belongs to a file
 * with empty names.
 */
export function parseUnifiedDiff(text: string | null | undefined): DiffFile[] {
  const files: DiffFile[] = []
  let file: DiffFile | null = null
  let hunk: DiffHunk | null = null
  let oldNo = 0
  let newNo = 0
  // Lines the current hunk's header announces and that have not been read yet: while some are left, a line is
  // the hunk's (even one that reads "--- x", a removed line "-- x").
  let oldLeft = 0
  let newLeft = 0
  const lines = (text ?? '').replace(/\r\n?/g, '\n').split('\n')
  if (lines.length && lines[lines.length - 1] === '') lines.pop()
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]
    if (hunk && file && (oldLeft > 0 || newLeft > 0)) {
      const mark = line[0]
      const body = line.slice(1)
      if (mark === '+' && newLeft > 0) {
        hunk.lines.push({ kind: 'add', text: body, oldNo: null, newNo: newNo++ })
        file.added++
        newLeft--
        continue
      }
      if (mark === '-' && oldLeft > 0) {
        hunk.lines.push({ kind: 'del', text: body, oldNo: oldNo++, newNo: null })
        file.removed++
        oldLeft--
        continue
      }
      if ((mark === ' ' || line === '') && oldLeft > 0 && newLeft > 0) {
        hunk.lines.push({ kind: 'context', text: body, oldNo: oldNo++, newNo: newNo++ })
        oldLeft--
        newLeft--
        continue
      }
      if (mark === '\\') continue // "\ No newline at end of file": not a line of either text
    }
    if (line.startsWith('--- ') && lines[i + 1]?.startsWith('+++ ')) {
      file = { oldName: line.slice(4).trim(), newName: lines[i + 1].slice(4).trim(), hunks: [], added: 0, removed: 0 }
      files.push(file)
      hunk = null
      i++
      continue
    }
    const m = HUNK.exec(line)
    if (m) {
      if (!file) {
        file = { oldName: '', newName: '', hunks: [], added: 0, removed: 0 }
        files.push(file)
      }
      hunk = { header: line, lines: [] }
      file.hunks.push(hunk)
      oldNo = Number(m[1])
      newNo = Number(m[3])
      oldLeft = m[2] === undefined ? 1 : Number(m[2])
      newLeft = m[4] === undefined ? 1 : Number(m[4])
    }
    // anything else (a "\ No newline" marker, text outside a hunk): not a line of either text
  }
  return files
}

/**
 * A hunk as rows of two columns: context on both sides; a run of removed lines next to the run of added
 * lines that follows it, pair by pair (the longer run's extra lines face an empty cell).
 */
export function sideBySide(hunk: DiffHunk): SideRow[] {
  const rows: SideRow[] = []
  const lines = hunk.lines
  let i = 0
  while (i < lines.length) {
    const line = lines[i]
    if (line.kind === 'context') {
      rows.push({
        left: { no: line.oldNo ?? 0, text: line.text, kind: 'context' },
        right: { no: line.newNo ?? 0, text: line.text, kind: 'context' },
      })
      i++
      continue
    }
    const removed: DiffLine[] = []
    const added: DiffLine[] = []
    while (i < lines.length && lines[i].kind === 'del') removed.push(lines[i++])
    while (i < lines.length && lines[i].kind === 'add') added.push(lines[i++])
    for (let k = 0; k < Math.max(removed.length, added.length); k++) {
      const r = removed[k]
      const a = added[k]
      rows.push({
        left: r ? { no: r.oldNo ?? 0, text: r.text, kind: 'del' } : null,
        right: a ? { no: a.newNo ?? 0, text: a.text, kind: 'add' } : null,
      })
    }
  }
  return rows
}

/** A file's name for a heading: what follows the revision in "revision 1/compose" ("compose"), else as given. */
export function fileTitle(file: DiffFile): string {
  const name = file.newName || file.oldName
  const slash = name.lastIndexOf('/')
  return slash >= 0 ? name.slice(slash + 1) : name
}
