import { afterEach, describe, expect, it } from 'vitest'
import { toApiError } from '../src/api/errors'
import { setLocale } from '../src/i18n'
import { variableReasonsEn, variableReasonsFr } from '../src/i18n/variableReasons'

/** Bodies of the shape the server sends (backend/tests/integration/test_variable_reasons.py checks it through the API). */
const badValues = {
  detail:
    "invalid variables: port: must be an integer, got 'abc'; pw: must be at least 12 characters long; x: unknown variable; known here: port, pw",
  code: 'invalid_variables',
  params: {
    variable: 'port',
    reason: 'not_integer',
    got: "'abc'",
    message: "must be an integer, got 'abc'",
    problems: [
      { variable: 'port', reason: 'not_integer', got: "'abc'", message: "must be an integer, got 'abc'" },
      { variable: 'pw', reason: 'min_length', min_length: 12, message: 'must be at least 12 characters long' },
      {
        variable: 'x',
        reason: 'unknown_variable',
        known: 'port, pw',
        message: 'unknown variable; known here: port, pw',
      },
    ],
  },
}
const badSchema = {
  detail:
    'invalid variable schema: variables[0].default: does not match the pattern [a-z]+; variables[1].min: greater than max (1)',
  code: 'invalid_variable_schema',
  params: {
    field: 'variables[0].default',
    reason: 'pattern',
    pattern: '[a-z]+',
    message: 'does not match the pattern [a-z]+',
    problems: [
      {
        field: 'variables[0].default',
        reason: 'pattern',
        pattern: '[a-z]+',
        message: 'does not match the pattern [a-z]+',
      },
      { field: 'variables[1].min', reason: 'min_above_max', max: 1, message: 'greater than max (1)' },
    ],
  },
}

describe('a stack variable’s refused value in the user’s language', () => {
  afterEach(() => setLocale('en'))

  it('reads in French, each problem from its reason and the values it quotes', () => {
    setLocale('fr')
    const e = toApiError(422, badValues)
    expect(e.text).toBe(
      "Valeurs invalides : port : doit être un entier (reçu 'abc'); pw : doit compter au moins 12 caractères; " +
        'x : variable inconnue ; variables connues ici : port, pw',
    )
    expect(e.fields).toMatchObject({
      port: "doit être un entier (reçu 'abc')",
      pw: 'doit compter au moins 12 caractères',
    })
    // a problem of the schema itself (not of a value) reads in French too
    expect(toApiError(422, badSchema).text).toBe(
      'Définition des variables invalide : variables[0].default : ne correspond pas au motif [a-z]+; variables[1].min : dépasse max (1)',
    )
    // a duplicate name, an unknown field, and one of Pydantic's own checks worded as a request field's type
    const more = toApiError(422, {
      detail: 'invalid variable schema: ...',
      code: 'invalid_variable_schema',
      params: {
        problems: [
          {
            field: 'variables[1].name',
            reason: 'duplicate_name',
            name: 'size',
            message: "duplicate variable name 'size'",
          },
          {
            field: 'variables[2].colour',
            reason: 'unknown_field',
            key: 'colour',
            allowed: 'label, name',
            message: '…',
          },
          {
            field: 'variables[3].label',
            reason: 'field_type',
            type: 'string_too_long',
            max_length: 9,
            message: 'String…',
          },
        ],
      },
    })
    expect(more.variableDetail).toBe(
      'variables[1].name: nom de variable en double : size; variables[2].colour: champ inconnu colour ; une variable prend label, name; ' +
        'variables[3].label: Au plus 9 caractères',
    )
  })

  it('reads in English as the server’s own detail, and per field as its message', () => {
    const e = toApiError(422, badValues)
    expect(e.text).toBe(badValues.detail)
    for (const p of badValues.params.problems) expect(e.fields[p.variable]).toBe(p.message)
    // a schema problem's English words read as the server's message
    expect(toApiError(422, badSchema).variableDetail).toBe(
      'variables[0].default: does not match the pattern [a-z]+; variables[1].min: greater than max (1)',
    )
  })

  it('a reason this UI does not know falls back to the server’s message; a secret has no quoted value', () => {
    setLocale('fr')
    const e = toApiError(422, {
      detail: 'invalid variables: pw: must be a string; v: something new',
      code: 'invalid_variables',
      params: {
        problems: [
          { variable: 'pw', reason: 'not_string', message: 'must be a string' },
          { variable: 'v', reason: 'brand_new', message: 'something new' },
        ],
      },
    })
    expect(e.text).toBe('Valeurs invalides : pw : doit être un texte; v : something new')
  })

  it('has the same reasons in both languages', () => {
    expect(Object.keys(variableReasonsFr).sort()).toEqual(Object.keys(variableReasonsEn).sort())
  })
})

describe('the stack editor’s variable errors', () => {
  afterEach(() => setLocale('en'))

  it('keep the server’s `path: problem` form, each problem in the user’s language', () => {
    setLocale('fr')
    expect(toApiError(422, badSchema).variableDetail).toBe(
      'variables[0].default: ne correspond pas au motif [a-z]+; variables[1].min: dépasse max (1)',
    )
    setLocale('en')
    expect(toApiError(422, badSchema).variableDetail).toBe(
      'variables[0].default: does not match the pattern [a-z]+; variables[1].min: greater than max (1)',
    )
  })
})
