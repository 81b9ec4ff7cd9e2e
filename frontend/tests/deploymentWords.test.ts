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

  // the params as the server gives them (backend/tests/unit/test_deployment_words.py: a nested detail's parts)
  it('words a revision row’s health detail from its parts, without service_health', () => {
    setLocale('fr')
    const revision = {
      error_message:
        'revision 2 is degraded: service web exited with code 137; service db is unhealthy (last check: no)',
      error_code: 'revision_health',
      error_params: {
        revision: '2',
        health: 'degraded',
        detail: 'service web exited with code 137; service db is unhealthy (last check: no)',
        'detail.parts': '2',
        'detail.0.code': 'exited_code',
        'detail.0.service': 'web',
        'detail.0.exit_code': '137',
        'detail.1.code': 'unhealthy_probe',
        'detail.1.service': 'db',
        'detail.1.probe': 'no',
      },
    }
    expect(deploymentErrorText(revision)).toBe(
      'révision 2 en état dégradé : service web arrêté avec le code 137 ; service db en mauvaise santé (dernier contrôle : « no »)',
    )
    setLocale('en')
    expect(deploymentErrorText(revision)).toBe(revision.error_message)
  })

  it('words why a deployment could not be prepared, and quotes a detail it has no words for', () => {
    setLocale('fr')
    const prepare = (detail: string, parts: Record<string, string>) => ({
      error_message: `cannot prepare the deployment: ${detail}`,
      error_code: 'cannot_prepare',
      error_params: { detail, ...parts },
    })
    expect(
      deploymentErrorText(
        prepare('the deployment’s target no longer exists', {
          'detail.parts': '1',
          'detail.0.code': 'target_not_found',
        }),
      ),
    ).toBe('impossible de préparer le déploiement : la cible du déploiement n’existe plus')
    expect(
      deploymentErrorText(
        prepare('x-windflow.up_timeout must be ...', {
          'detail.parts': '1',
          'detail.0.code': 'invalid_timeout',
          'detail.0.key': 'up_timeout',
          'detail.0.max': '86400',
          'detail.0.example': '{up_timeout: 600}',
        }),
      ),
    ).toBe(
      'impossible de préparer le déploiement : x-windflow.up_timeout doit être un nombre de secondes entre 1 et 86400 (x-windflow est un dictionnaire, p. ex. x-windflow: {up_timeout: 600})',
    )
    expect(deploymentErrorText(prepare('disk full', {}))).toBe('impossible de préparer le déploiement : « disk full »')
    // a part this UI has no words for: the whole detail quoted as the server wrote it
    expect(deploymentErrorText(prepare('new', { 'detail.parts': '1', 'detail.0.code': 'from_a_newer_server' }))).toBe(
      'impossible de préparer le déploiement : « new »',
    )
  })

  it('words the health gate’s container states, Docker’s words too', () => {
    setLocale('fr')
    const line = {
      message: 'waiting for app: 0/3 ready, created, running (starting), running, settling (4.5s left)',
      code: 'waiting_ready',
      params: {
        service: 'app',
        ready: '0',
        count: '3',
        states: 'created, running (starting), running, settling (4.5s left)',
        'states.parts': '3',
        'states.0.code': 'status',
        'states.0.status': 'created',
        'states.1.code': 'health',
        'states.1.health': 'starting',
        'states.2.code': 'settling',
        'states.2.seconds': '4.5',
      },
    }
    const text = logLineText(line)
    expect(text).toBe(
      'attente de app : 0/3 prêt(s), états créé, en marche (contrôle de santé en cours), en marche, stabilisation (4.5 s restantes)',
    )
    expect(text).not.toMatch(/running|created|starting|settling/)
  })

  it('words the services the health gate still waited for, each with its states', () => {
    setLocale('fr')
    const timeout = {
      error_message: 'services not ready after 60s: app (0/1 ready, running (starting)); db (no container)',
      error_code: 'services_not_ready',
      error_params: {
        seconds: '60',
        detail: 'app (0/1 ready, running (starting)); db (no container)',
        'detail.parts': '2',
        'detail.0.code': 'not_ready',
        'detail.0.service': 'app',
        'detail.0.ready': '0',
        'detail.0.count': '1',
        'detail.0.states': 'running (starting)',
        'detail.0.states.parts': '1',
        'detail.0.states.0.code': 'health',
        'detail.0.states.0.health': 'starting',
        'detail.1.code': 'no_container',
        'detail.1.service': 'db',
      },
    }
    expect(deploymentErrorText(timeout)).toBe(
      'services pas prêts après 60 s : app (0/1 prêt(s), états en marche (contrôle de santé en cours)) ; db (aucun conteneur)',
    )
  })

  it('words why a revision failed before its automatic rollback, and why that rollback failed', () => {
    setLocale('fr')
    // as line_words and error_words give them (backend/tests/unit/test_deployment_words.py)
    const line = {
      message:
        'Revision 2 failed: nothing of revision 2 runs any more: service web exited with code 137; rolling back to revision 1, the last that passed the health gate',
      code: 'rolling_back',
      params: {
        failed: '2',
        detail: 'nothing of revision 2 runs any more: service web exited with code 137',
        of: '1',
        'detail.parts': '1',
        'detail.0.code': 'watch_down',
        'detail.0.revision': '2',
        'detail.0.detail': 'service web exited with code 137',
        'detail.0.detail.parts': '1',
        'detail.0.detail.0.code': 'exited_code',
        'detail.0.detail.0.service': 'web',
        'detail.0.detail.0.exit_code': '137',
      },
    }
    const said = logLineText(line)
    expect(said).toBe(
      'La révision 2 a échoué : plus rien de la révision 2 ne tourne : service web arrêté avec le code 137 ; retour à la révision 1, la dernière à avoir passé le contrôle de santé',
    )
    expect(said).not.toMatch(/exited|runs any more|«/)
    const rollback = {
      error_message:
        'automatic rollback to revision 1 failed: services not ready after 60s: db (no container); revision 2 had failed: service web exited with code 1; last log lines:\nboom',
      error_code: 'automatic_rollback_failed_after',
      error_params: {
        of: '1',
        detail: 'services not ready after 60s: db (no container)',
        failed: '2',
        failed_detail: 'service web exited with code 1',
        'detail.parts': '1',
        'detail.0.code': 'services_not_ready',
        'detail.0.seconds': '60',
        'detail.0.detail': 'db (no container)',
        'detail.0.detail.parts': '1',
        'detail.0.detail.0.code': 'no_container',
        'detail.0.detail.0.service': 'db',
        'failed_detail.parts': '1',
        'failed_detail.0.code': 'service_exited',
        'failed_detail.0.service': 'web',
        'failed_detail.0.exit_code': '1',
      },
    }
    const text = deploymentErrorText(rollback)
    expect(text).toBe(
      'le retour automatique à la révision 1 a échoué : services pas prêts après 60 s : db (aucun conteneur) ; la révision 2 avait échoué : le service web s’est arrêté avec le code 1',
    )
    expect(text).not.toMatch(/not ready|no container|exited|«/)
    // a detail that is none of WindFlow's sentences: quoted as the server wrote it
    expect(
      logLineText({
        message: 'Why: revision 2 failed: disk full',
        code: 'rollback_why',
        params: { failed: '2', detail: 'disk full' },
      }),
    ).toBe('Pourquoi : la révision 2 a échoué : « disk full »')
  })

  it('words a tagged line after its tag: the watcher’s, the dispatcher’s and the orphan recovery’s', () => {
    setLocale('fr')
    // as line_words gives them (backend/tests/unit/test_deployment_words.py)
    const exited = {
      detail: 'service web exited with code 137',
      'detail.parts': '1',
      'detail.0.code': 'exited_code',
      'detail.0.service': 'web',
      'detail.0.exit_code': '137',
    }
    const lines: { message: string; code: string; params: Record<string, string>; fr: string }[] = [
      {
        message: '[WATCH] nothing of revision 1 runs any more: service web exited with code 137',
        code: 'watch_down',
        params: { tag: 'WATCH', revision: '1', ...exited },
        fr: '[WATCH] plus rien de la révision 1 ne tourne : service web arrêté avec le code 137',
      },
      {
        message: '[WATCH] every service of revision 3 is up and healthy: running again',
        code: 'watch_running_again',
        params: { tag: 'WATCH', revision: '3' },
        fr: '[WATCH] tous les services de la révision 3 sont en marche et en bonne santé : de nouveau en service',
      },
      {
        message: '[WATCH] every service of revision 3 is up again',
        code: 'watch_up_again',
        params: { tag: 'WATCH', revision: '3' },
        fr: '[WATCH] tous les services de la révision 3 sont de nouveau en marche',
      },
      {
        message: '[WATCH] revision 2 is degraded: service web exited with code 137',
        code: 'revision_health',
        params: { tag: 'WATCH', revision: '2', health: 'degraded', ...exited },
        fr: '[WATCH] révision 2 en état dégradé : service web arrêté avec le code 137',
      },
      {
        message:
          "[WAITING] no live worker serves target edge-1: the deployment waits in the target's queue until a worker that declares it (WORKER_TARGETS) runs",
        code: 'no_live_worker',
        params: { tag: 'WAITING', target: 'edge-1' },
        fr: '[WAITING] aucun worker actif ne sert la cible edge-1 : le déploiement attend dans la file de la cible qu’un worker qui la déclare (WORKER_TARGETS) tourne',
      },
      {
        message:
          '[RECOVERY] revision 2 failed: executor lost (lease expired) after 3 attempt(s); rolling back to revision 1, the last that passed the health gate, as revision 3',
        code: 'recovery_rolling_back',
        params: {
          tag: 'RECOVERY',
          failed: '2',
          detail: 'executor lost (lease expired) after 3 attempt(s)',
          of: '1',
          revision: '3',
          'detail.parts': '1',
          'detail.0.code': 'executor_lost_after',
          'detail.0.attempts': '3',
        },
        fr: '[RECOVERY] la révision 2 a échoué : exécuteur perdu (bail expiré) après 3 tentative(s) ; retour à la révision 1, la dernière à avoir passé le contrôle de santé, en révision 3',
      },
    ]
    for (const { fr, ...line } of lines) {
      const said = logLineText(line)
      expect(said).toBe(fr)
      expect(said).not.toMatch(/revision|service of|exited|live worker|waits|executor lost|rolling back|«/)
    }
    setLocale('en')
    expect(logLineText(lines[0])).toBe(lines[0].message)
  })

  it('words recovery’s lines: a status change’s reason, a timeout, a deployment dispatched again', () => {
    setLocale('fr')
    // as line_words gives them (backend/tests/unit/test_deployment_words.py)
    const lines: { message: string; code: string; params: Record<string, string>; fr: string }[] = [
      {
        message: '[RECOVERY] executor lost, no attempts left',
        code: 'status_reason',
        params: {
          tag: 'RECOVERY',
          reason: 'executor lost, no attempts left',
          'reason.parts': '1',
          'reason.0.code': 'executor_lost_failed',
        },
        fr: '[RECOVERY] Exécuteur perdu ; plus d’essai',
      },
      {
        message: '[RECOVERY] revision 2 failed: automatic rollback to revision 1 as revision 3',
        code: 'status_reason',
        params: {
          tag: 'RECOVERY',
          reason: 'revision 2 failed: automatic rollback to revision 1 as revision 3',
          'reason.parts': '1',
          'reason.0.code': 'automatic_rollback',
          'reason.0.failed': '2',
          'reason.0.of': '1',
          'reason.0.revision': '3',
        },
        fr: '[RECOVERY] La révision 2 a échoué : retour automatique à la révision 1 (sous le numéro 3)',
      },
      {
        message: '[RETRY] Dispatched again by recovery (attempt 2/3)',
        code: 'dispatched_again',
        params: { tag: 'RETRY', attempt: '2', max_attempts: '3' },
        fr: '[RETRY] Relancé par la récupération (tentative 2/3)',
      },
      {
        message: 'Timeout: still pending after 30 minutes',
        code: 'recovery_timed_out',
        params: { minutes: '30' },
        fr: 'Délai dépassé : toujours en attente après 30 minutes',
      },
      {
        message:
          'Timeout: still pending after 30 minutes: revision 2 failed; rolling back to revision 1, the last that passed the health gate, as revision 3',
        code: 'timeout_rolling_back',
        params: { minutes: '30', failed: '2', of: '1', revision: '3' },
        fr: 'Délai dépassé : toujours en attente après 30 minutes : la révision 2 a échoué ; retour à la révision 1, la dernière à avoir passé le contrôle de santé, en révision 3',
      },
    ]
    for (const { fr, ...line } of lines) {
      const said = logLineText(line)
      expect(said).toBe(fr)
      expect(said).not.toMatch(/revision|executor|attempts|automatic|Dispatched|Timeout|pending|rolling back|«/)
    }
    // the timeout of an automatic rollback, as error_words gives it
    expect(
      deploymentErrorText({
        error_message: 'automatic rollback to revision 1 failed: Timeout: still pending after 0.5 minutes',
        error_code: 'automatic_rollback_failed',
        error_params: {
          of: '1',
          detail: 'Timeout: still pending after 0.5 minutes',
          'detail.parts': '1',
          'detail.0.code': 'recovery_timed_out',
          'detail.0.minutes': '0.5',
        },
      }),
    ).toBe('le retour automatique à la révision 1 a échoué : Délai dépassé : toujours en attente après 0.5 minutes')
    // a reason this UI has no words for: the line as the server wrote it
    const unknown = {
      message: '[RECOVERY] a reason',
      code: 'status_reason',
      params: { tag: 'RECOVERY', reason: 'a reason', 'reason.parts': '1', 'reason.0.code': 'nope' },
    }
    expect(logLineText(unknown)).toBe('[RECOVERY] a reason')
    setLocale('en')
    expect(logLineText(lines[0])).toBe(lines[0].message)
  })
})
