import { afterEach, describe, expect, it } from 'vitest'
import { setLocale } from '../src/i18n'
import { deploymentErrorOutput, deploymentErrorText, logLineText, serviceReasonText } from '../src/i18n/deploymentWords'

/** As the API gives them (backend/tests/browser/test_deployment_words.py checks it on a real failure). */
const failed = {
  error_message: 'service app exited with code 3; last log lines:\nboom: bad configuration',
  error_code: 'service_exited',
  error_params: { service: 'app', exit_code: '3' },
}

describe('a deployment’s error and WindFlow’s log lines in the user’s language', () => {
  afterEach(() => setLocale('en'))

  it('words a coded error in French, its output apart and untouched', () => {
    setLocale('fr')
    expect(deploymentErrorText(failed)).toBe('le service app s’est arrêté avec le code 3')
    expect(deploymentErrorOutput(failed.error_message)).toBe('boom: bad configuration')
  })

  it('shows the server’s first line in English, and any uncoded text as it is', () => {
    expect(deploymentErrorText(failed)).toBe('service app exited with code 3')
    setLocale('fr')
    expect(deploymentErrorText({ error_message: 'something new', error_code: null })).toBe('something new')
    expect(deploymentErrorOutput('one line')).toBeNull()
  })

  it('quotes other programs’ words, never translating them', () => {
    setLocale('fr')
    const text = deploymentErrorText({
      error_message: 'compose up failed: Error response from daemon: pull access denied',
      error_code: 'compose_up_failed',
      error_params: { output: 'Error response from daemon: pull access denied' },
    })
    expect(text).toBe('compose up a échoué ; docker compose a dit : « Error response from daemon: pull access denied »')
  })

  it('words WindFlow’s log lines (steps and statuses named in French); a container’s line stays as written', () => {
    setLocale('fr')
    expect(logLineText({ message: 'Deployment is running', code: 'running', params: {} })).toBe(
      'Le déploiement est en service',
    )
    expect(
      logLineText({
        message: '[1/6] Validate configuration',
        code: 'step',
        params: { number: '1', total: '6', title: 'Validate configuration' },
      }),
    ).not.toContain('Validate configuration')
    expect(logLineText({ message: 'x', code: 'lease_lost', params: { status: 'cancelled' } })).toMatch(
      /^Cet exécuteur a perdu son bail \(le déploiement est maintenant annulé/,
    )
    expect(logLineText({ message: 'app | Deployment is running' })).toBe('app | Deployment is running')
    expect(
      logLineText({
        message: 'waiting for app: 0/1 ready, running (starting)',
        code: 'waiting_ready',
        params: { service: 'app', ready: '0', count: '1', states: 'running (starting)' },
      }),
    ).toBe('attente de app : 0/1 prêt(s), états « running (starting) »')
    setLocale('en')
    expect(logLineText({ message: 'Deployment is running', code: 'running', params: {} })).toBe('Deployment is running')
  })

  it('says why a service is not up in French, the probe’s words quoted', () => {
    const unhealthy = {
      reason: 'is unhealthy (last check: pg_isready: no response)',
      reason_code: 'unhealthy_probe',
      reason_params: { probe: 'pg_isready: no response' },
    }
    expect(serviceReasonText(unhealthy)).toBe(unhealthy.reason)
    setLocale('fr')
    expect(serviceReasonText(unhealthy)).toBe('en mauvaise santé (dernier contrôle : « pg_isready: no response »)')
    expect(
      serviceReasonText({
        reason: 'exited with code 137',
        reason_code: 'exited_code',
        reason_params: { exit_code: '137' },
      }),
    ).toBe('arrêté avec le code 137')
  })

  it('words the watcher’s detail from the services it saw', () => {
    setLocale('fr')
    const degraded = {
      error_message: 'revision 2 is degraded: service web exited with code 137',
      error_code: 'revision_health',
      error_params: { revision: '2', health: 'degraded', detail: 'service web exited with code 137' },
      service_health: [
        {
          service: 'web',
          reason: 'exited with code 137',
          reason_code: 'exited_code',
          reason_params: { exit_code: '137' },
        },
        { service: 'db', reason: null },
      ],
    }
    expect(deploymentErrorText(degraded)).toBe('révision 2 en état dégradé : service web arrêté avec le code 137')
    expect(deploymentErrorText({ ...degraded, service_health: [] })).toBe(
      'révision 2 en état dégradé : « service web exited with code 137 »',
    )
  })
})
