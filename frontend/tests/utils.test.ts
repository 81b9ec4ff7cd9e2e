import { describe, expect, it } from 'vitest'
import { parseAnsi, stripAnsi } from '../src/utils/ansi'
import { initialValues, payload, validate, type VariableSpec } from '../src/utils/variables'
import { toApiError } from '../src/api/errors'
import { errorsByLine } from '../src/utils/lines'
import { placementOf } from '../src/utils/targets'

const messages = {
  required: 'required',
  integer: 'integer',
  number: 'number',
  min: (n: number) => `min ${n}`,
  max: (n: number) => `max ${n}`,
  minLength: (n: number) => `minlen ${n}`,
  maxLength: (n: number) => `maxlen ${n}`,
  pattern: (p: string) => `pattern ${p}`,
}

describe('ANSI', () => {
  it('turns SGR colours into segments and keeps markup as text', () => {
    const segs = parseAnsi('\x1b[31m<b>red</b>\x1b[0m plain \x1b[1;38;5;46mgreen\x1b[m')
    expect(segs).toEqual([
      { text: '<b>red</b>', fg: '#e5534b' },
      { text: ' plain ' },
      { text: 'green', bold: true, fg: 'rgb(0, 255, 0)' },
    ])
  })
  it('drops other escape sequences and control characters', () => {
    expect(stripAnsi('\x1b]0;title\x07a\x1b[2Kb\x1b[10;5Hc\x00')).toBe('abc')
    expect(parseAnsi('\x1b[38;2;999;0;0mx').map((s) => s.fg)).toEqual([undefined])
  })
})

describe('variable form', () => {
  const specs: VariableSpec[] = [
    { name: 'port', type: 'integer', required: true, default: 8080, min: 1, max: 65535 },
    { name: 'password', type: 'secret', default: '{{ generate_password(24) }}' },
    { name: 'mode', type: 'enum', options: [{ value: 'a', label: 'A' }, 'b'], default: 'a' },
    { name: 'debug', type: 'boolean' },
    { name: 'db', type: 'group', variables: [{ name: 'user', type: 'string', required: true, pattern: '[a-z]+' }] },
  ]
  it('starts from defaults, leaves generators empty for the server', () => {
    expect(initialValues(specs)).toEqual({ port: 8080, password: null, mode: 'a', debug: false, db: { user: null } })
  })
  it('checks required, range, integer and pattern, keyed by dotted path', () => {
    const v = initialValues(specs)
    expect(validate(specs, v, messages)).toEqual({ 'db.user': 'required' })
    expect(validate(specs, { ...v, port: 70000, db: { user: 'ABC' } }, messages)).toEqual({
      port: 'max 65535',
      'db.user': 'pattern [a-z]+',
    })
    expect(validate(specs, { ...v, port: 1.5, db: { user: 'abc' } }, messages)).toEqual({ port: 'integer' })
  })
  it('sends only what is set', () => {
    expect(payload(specs, { port: 80, password: null, mode: 'b', debug: true, db: { user: 'x' } })).toEqual({
      port: 80,
      mode: 'b',
      debug: true,
      db: { user: 'x' },
    })
  })
})

describe('API errors', () => {
  it('keeps the detail and maps 422 problems to fields', () => {
    const e = toApiError(422, {
      detail: "invalid variables: port: must be an integer, got '80a'; db.user: does not match the pattern [a-z]+",
      code: 'invalid_variables',
    })
    expect(e.message).toContain('invalid variables')
    expect(e.fields).toEqual({ port: "must be an integer, got '80a'", 'db.user': 'does not match the pattern [a-z]+' })
    const f = toApiError(422, { detail: 'x', errors: [{ field: 'name', message: 'too long' }] })
    expect(f.fields).toEqual({ name: 'too long' })
  })
  it('finds the line of template errors', () => {
    expect(errorsByLine("template line 4: 'port' is undefined")).toEqual({ 4: "template line 4: 'port' is undefined" })
    expect(errorsByLine('invalid YAML: line 3, column 5: mapping values are not allowed here')[3]).toBeTruthy()
  })
})

describe('placementOf', () => {
  const target = { id: 't1', placed: true, host: 'host-b', served: false, workers: 0 }
  it('says a placed target that no live worker serves is unserved, with its host', () => {
    expect(placementOf(target)).toEqual({ kind: 'placed', unserved: true, workers: 0, host: 'host-b', names: [] })
  })
  it('names the live, healthy workers that declare a placed target (what superusers see)', () => {
    const seen = [
      { name: 'w1@b', alive: true, state: 'healthy', targets: ['t1', '*'] },
      { name: 'w2@b', alive: true, state: 'degraded', targets: ['t1'] },
      { name: 'w3@b', alive: false, state: 'healthy', targets: ['t1'] },
      { name: 'w4@c', alive: true, state: 'healthy', targets: ['t2'] },
      { name: null, alive: true, state: 'healthy', targets: null },
    ]
    const p = placementOf({ ...target, served: true, workers: 1 }, seen)
    expect(p).toEqual({ kind: 'placed', unserved: false, workers: 1, host: 'host-b', names: ['w1@b'] })
  })
  it('a target that is not placed is never unserved (the server runs it without workers)', () => {
    const p = placementOf({ id: 't3', placed: false, host: null, served: true, workers: 0 })
    expect(p).toEqual({ kind: 'shared', unserved: false, workers: 0, host: null, names: [] })
  })
})
