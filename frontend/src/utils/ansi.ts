/**
 * ANSI SGR sequences → styled segments. Log text is attacker-controlled: it is never treated as
 * HTML; the caller renders each segment's text as a text node inside a span. Colours come from a
 * fixed palette or validated numbers, never from the text itself. Other escape sequences are dropped.
 */

export interface AnsiSegment {
  text: string
  fg?: string
  bg?: string
  bold?: boolean
  italic?: boolean
  underline?: boolean
}

const BASIC = ['#4d4d4d', '#e5534b', '#57ab5a', '#c69026', '#539bf5', '#b083f0', '#39c5cf', '#d1d5da']
const BRIGHT = ['#768390', '#ff938a', '#6bc46d', '#daaa3f', '#6cb6ff', '#dcbdfb', '#56d4dd', '#ffffff']

function xterm256(n: number): string | undefined {
  if (!Number.isInteger(n) || n < 0 || n > 255) return undefined
  if (n < 8) return BASIC[n]
  if (n < 16) return BRIGHT[n - 8]
  if (n < 232) {
    const i = n - 16
    const c = (v: number) => (v === 0 ? 0 : 55 + v * 40)
    return rgb(c(Math.floor(i / 36)), c(Math.floor(i / 6) % 6), c(i % 6))
  }
  const g = 8 + (n - 232) * 10
  return rgb(g, g, g)
}

function rgb(r: number, g: number, b: number): string | undefined {
  if (![r, g, b].every((v) => Number.isInteger(v) && v >= 0 && v <= 255)) return undefined
  return `rgb(${r}, ${g}, ${b})`
}

// CSI sequences (ESC [ params final), OSC sequences (ESC ] ... BEL/ST) and lone two-byte escapes.
// eslint-disable-next-line no-control-regex
const ESCAPES = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?/g
// eslint-disable-next-line no-control-regex
const OTHER_CONTROLS = /[\x00-\x08\x0b-\x1f\x7f]/g

export function hasAnsi(text: string): boolean {
  return text.includes('\x1b')
}

/** Text without any escape sequence (copy, download, search). */
export function stripAnsi(text: string): string {
  return hasAnsi(text) ? text.replace(ESCAPES, '').replace(OTHER_CONTROLS, '') : text
}

export function parseAnsi(text: string): AnsiSegment[] {
  if (!hasAnsi(text)) return [{ text }]
  const out: AnsiSegment[] = []
  let style: Omit<AnsiSegment, 'text'> = {}
  let last = 0
  ESCAPES.lastIndex = 0
  for (let m = ESCAPES.exec(text); m; m = ESCAPES.exec(text)) {
    if (m.index > last) out.push({ text: text.slice(last, m.index).replace(OTHER_CONTROLS, ''), ...style })
    last = m.index + m[0].length
    if (m[2] === 'm') style = applySgr(style, m[1])
  }
  if (last < text.length) out.push({ text: text.slice(last).replace(OTHER_CONTROLS, ''), ...style })
  return out.filter((s) => s.text.length > 0)
}

function applySgr(current: Omit<AnsiSegment, 'text'>, params: string): Omit<AnsiSegment, 'text'> {
  const style = { ...current }
  const codes = params === '' ? [0] : params.split(/[;:]/).map((p) => (p === '' ? 0 : Number(p)))
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i]
    if (c === 0) {
      delete style.fg
      delete style.bg
      delete style.bold
      delete style.italic
      delete style.underline
    } else if (c === 1) style.bold = true
    else if (c === 3) style.italic = true
    else if (c === 4) style.underline = true
    else if (c === 22) delete style.bold
    else if (c === 23) delete style.italic
    else if (c === 24) delete style.underline
    else if (c >= 30 && c <= 37) style.fg = BASIC[c - 30]
    else if (c >= 90 && c <= 97) style.fg = BRIGHT[c - 90]
    else if (c === 39) delete style.fg
    else if (c >= 40 && c <= 47) style.bg = BASIC[c - 40]
    else if (c >= 100 && c <= 107) style.bg = BRIGHT[c - 100]
    else if (c === 49) delete style.bg
    else if (c === 38 || c === 48) {
      let colour: string | undefined
      if (codes[i + 1] === 5) {
        colour = xterm256(codes[i + 2])
        i += 2
      } else if (codes[i + 1] === 2) {
        colour = rgb(codes[i + 2], codes[i + 3], codes[i + 4])
        i += 4
      }
      if (colour) {
        if (c === 38) style.fg = colour
        else style.bg = colour
      }
    }
  }
  return style
}
