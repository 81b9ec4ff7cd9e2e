import { describe, expect, it } from 'vitest'
import { errorsByLine, lineOfPath, variableErrorsByLine } from '../src/utils/lines'

const SOURCE = `# the port
- name: port
  type: integer
  min: a
- {name: mode, type: nope}
- name: db
  type: group
  variables:
    - name: user
      pattern: "["
`

describe('error lines', () => {
  it('finds the line of a template or YAML error in its message', () => {
    expect(errorsByLine('template line 4: unexpected }; invalid YAML: line 7, column 2: oops')).toEqual({
      4: 'template line 4: unexpected }',
      7: 'invalid YAML: line 7, column 2: oops',
    })
  })

  it('finds the line of a variable path in the text as written (comments, flow style, nesting)', () => {
    expect(lineOfPath(SOURCE, 'variables[0]')).toBe(2)
    expect(lineOfPath(SOURCE, 'variables[0].min')).toBe(4)
    expect(lineOfPath(SOURCE, 'variables[1].type')).toBe(5)
    expect(lineOfPath(SOURCE, 'variables[2].variables[0].pattern')).toBe(10)
    expect(lineOfPath(SOURCE, 'variables[2].nothing')).toBe(6) // the deepest part found: the item
    expect(lineOfPath(SOURCE, 'variables[9]')).toBe(0)
    expect(lineOfPath('- [', 'variables[0]')).toBe(0) // does not parse
  })

  it("puts each of a 422's problems at its line", () => {
    const detail =
      'invalid variable schema: variables[0].min: must be a number; variables[1].type: must be one of string, integer'
    expect(variableErrorsByLine(SOURCE, detail)).toEqual({
      4: 'variables[0].min: must be a number',
      5: 'variables[1].type: must be one of string, integer',
    })
  })
})
