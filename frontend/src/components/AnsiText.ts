/**
 * One log message: ANSI colours as styled spans, search matches as <mark>. Only text nodes are made
 * from the message (never HTML). A functional component: no instance per row, cheap to patch.
 */
import { h, type FunctionalComponent, type VNode } from 'vue'
import { hasAnsi, parseAnsi, stripAnsi } from '../utils/ansi'

interface Props {
  text: string
  highlight?: string
}

function styleOf(s: ReturnType<typeof parseAnsi>[number]): Record<string, string> | null {
  if (!s.fg && !s.bg && !s.bold && !s.italic && !s.underline) return null
  const style: Record<string, string> = {}
  if (s.fg) style.color = s.fg
  if (s.bg) style.backgroundColor = s.bg
  if (s.bold) style.fontWeight = '700'
  if (s.italic) style.fontStyle = 'italic'
  if (s.underline) style.textDecoration = 'underline'
  return style
}

const AnsiText: FunctionalComponent<Props> = (props) => {
  const text = props.text
  const term = props.highlight?.trim().toLowerCase()
  if (term) {
    const plain = stripAnsi(text)
    const lower = plain.toLowerCase()
    if (lower.includes(term)) {
      const parts: (VNode | string)[] = []
      let from = 0
      for (let i = lower.indexOf(term); i >= 0; i = lower.indexOf(term, from)) {
        if (i > from) parts.push(plain.slice(from, i))
        parts.push(h('mark', { class: 'match' }, plain.slice(i, i + term.length)))
        from = i + term.length
      }
      if (from < plain.length) parts.push(plain.slice(from))
      return h('span', { class: 'ansi' }, parts)
    }
  }
  if (!hasAnsi(text)) return h('span', { class: 'ansi' }, text)
  return h(
    'span',
    { class: 'ansi' },
    parseAnsi(text).map((s) => {
      const style = styleOf(s)
      return style ? h('span', { style }, s.text) : s.text
    }),
  )
}
AnsiText.props = { text: { type: String, required: true }, highlight: { type: String, required: false } }

export default AnsiText
