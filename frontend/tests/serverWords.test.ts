import { afterEach, describe, expect, it } from 'vitest'
import { i18n } from '../src/i18n'
import {
  STEP_KEYS,
  frameErrorText,
  modeReasonText,
  servicesEndText,
  stepText,
  testFailureText,
  workerProblemText,
} from '../src/i18n/serverWords'
import { workerState, type Worker } from '../src/api/system'

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

  it("why deployments run where they do, by the execution mode's reason code, with its params", () => {
    const broker = {
      reason: 'broker redis unreachable: ConnectionError: refused',
      reason_code: 'broker_unreachable',
      reason_params: { broker: 'redis', error: 'ConnectionError: refused' },
    }
    i18n.global.locale.value = 'fr'
    expect(modeReasonText(broker)).toBe('Le broker redis ne répond pas : ConnectionError: refused')
    expect(
      modeReasonText({ reason: '3 external worker(s)', reason_code: 'external_workers', reason_params: { count: 3 } }),
    ).toBe('3 worker(s) externe(s) servent la file.')
    expect(modeReasonText({ reason: 'CELERY_ENABLED=false', reason_code: 'celery_disabled' })).toBe(
      'Celery est désactivé (CELERY_ENABLED=false).',
    )
    // an older server (no code), or a code this UI does not know: the server's words
    expect(modeReasonText({ reason: 'embedded worker running' })).toBe('embedded worker running')
    expect(modeReasonText({ reason: 'newer', reason_code: 'something_new' })).toBe('newer')
    i18n.global.locale.value = 'en'
    expect(modeReasonText(broker)).toBe('The broker redis does not answer: ConnectionError: refused')
  })

  it("why a worker is degraded, by its problems' codes (the server's text when one is unknown)", () => {
    const worker: Worker = {
      name: 'w',
      kind: 'external',
      hostname: 'h',
      pid: 1,
      concurrency: 2,
      last_seen: '2026-01-01T00:00:00Z',
      alive: true,
      state: 'degraded',
      problem: 'the pool has 0/2 live processes and has not refilled for 12s; the consumer has not fetched ...',
      problems: [
        { code: 'pool_not_refilled', params: { live: 0, concurrency: 2, seconds: 12 } },
        { code: 'consumer_stalled', params: { seconds: 30 } },
      ],
    }
    i18n.global.locale.value = 'fr'
    expect(workerState(worker).problem).toBe(
      'Son pool a 0/2 processus vivants et ne s’est pas regarni depuis 12 s. ' +
        'Il n’a rien lu du broker depuis 30 s alors que des messages attendent.',
    )
    const unknown = { ...worker, problems: [...worker.problems!, { code: 'something_new' }] }
    expect(workerProblemText(unknown)).toBe(worker.problem)
    expect(workerProblemText({ problem: 'old server text' })).toBe('old server text')
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
