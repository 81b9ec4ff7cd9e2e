import { afterEach, describe, expect, it } from 'vitest'
import { i18n } from '../src/i18n'
import { STEP_KEYS, frameErrorText, servicesEndText, stepText, testFailureText } from '../src/i18n/serverWords'

const CATEGORIES = ['unreachable', 'tls', 'authentication', 'not_docker', 'error']
const ENDINGS = ['stopped', 'no_container', 'deployment_left_running', 'containers_stopped', 'engine_failed']

describe("the server's fixed words in the user's language", () => {
  afterEach(() => {
    i18n.global.locale.value = 'en'
  })

  it("a deployment's steps, by their title; an unknown title as the server wrote it", () => {
    i18n.global.locale.value = 'fr'
    expect(stepText('Start services')).toBe('Démarrage des services')
    expect(stepText('Wait until services are running and healthy')).toBe('Attente des services en marche et sains')
    expect(stepText('A step of a newer server')).toBe('A step of a newer server')
    expect(stepText(null)).toBe('')
    i18n.global.locale.value = 'en'
    expect(stepText('Check images')).toBe('Check images')
  })

  it('why a connection test failed, by its category', () => {
    i18n.global.locale.value = 'fr'
    const refused = testFailureText({ category: 'unreachable', error: 'no Docker engine could be reached ...' })
    expect(refused).toMatch(/^aucun moteur Docker/)
    expect(testFailureText({ category: 'something_new', error: 'server text' })).toBe('server text')
    i18n.global.locale.value = 'en'
    expect(testFailureText({ category: 'tls', error: 'x' })).toMatch(/^the TLS handshake failed/)
  })

  it('a refused real-time frame, by its code (English: the server detail)', () => {
    i18n.global.locale.value = 'fr'
    expect(frameErrorText({ code: 'access_revoked', detail: 'you no longer have access' })).toBe(
      'Vous n’avez plus accès à ceci (rôle ou appartenance retirés).',
    )
    expect(frameErrorText({ code: 'deployment_not_found', detail: 'deployment not found' })).toBe(
      'Déploiement introuvable.',
    )
    i18n.global.locale.value = 'en'
    expect(frameErrorText({ code: 'access_revoked', detail: 'you no longer have access' })).toBe(
      'you no longer have access',
    )
  })

  it("why the services' output ended, by its code and the status it quotes", () => {
    i18n.global.locale.value = 'fr'
    const left = { reason: 'the deployment is stopped', code: 'deployment_left_running', params: { status: 'stopped' } }
    expect(servicesEndText(left)).toBe('le déploiement est arrêté')
    expect(servicesEndText({ reason: 'every container stopped', code: 'containers_stopped' })).toBe(
      'tous les conteneurs du déploiement se sont arrêtés',
    )
    expect(servicesEndText({ reason: 'older server' })).toBe('older server') // no code: its words
    i18n.global.locale.value = 'en'
    expect(servicesEndText(left)).toBe('the deployment is stopped')
  })

  it('every step and every failure category has its words in both languages', () => {
    for (const locale of ['en', 'fr'] as const) {
      for (const key of Object.values(STEP_KEYS)) expect(i18n.global.te(`steps.${key}`, locale), key).toBe(true)
      for (const c of CATEGORIES) expect(i18n.global.te(`targets.failure.${c}`, locale), c).toBe(true)
      for (const c of ENDINGS) expect(i18n.global.te(`logs.ended.${c}`, locale), c).toBe(true)
    }
  })
})
