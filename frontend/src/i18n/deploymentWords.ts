/**
 * What WindFlow says about a deployment, in the user's language: its `error_message` and the lines WindFlow
 * writes into its log, worded from the stable `code` and `params` the server gives with them
 * (`backend/app/core/deployment_words.py`; `backend/tests/unit/test_ui_words.py` fails when a code lacks its
 * French words here or names a parameter the server's sentence does not have).
 *
 * English is the server's own sentence. Parameters that are other programs' words (Docker's, docker compose's,
 * a probe's, a container's output) or a detail the server quotes in English are shown quoted, never translated;
 * a failed service's last log lines (the lines after the first of `error_message`) are its own output.
 * A text without a code this UI knows is shown as the server wrote it.
 */
import { i18n } from '.'
import { stepText } from './serverWords'

export const deploymentErrorsFr: Record<string, string> = {
  cancelled_by_user: 'Annulé par un utilisateur',
  executor_lost_retrying: 'exécuteur perdu (bail expiré) ; nouvelle tentative',
  executor_lost_after: 'exécuteur perdu (bail expiré) après {attempts} tentative(s)',
  policy_refused: 'refusé par la politique compose de la cible : {detail}',
  cannot_prepare: 'impossible de préparer le déploiement : {detail}',
  unexpected_error: 'erreur inattendue : {detail}',
  service_exited: 'le service {service} s’est arrêté avec le code {exit_code}',
  service_restarting: 'le service {service} redémarre en boucle (il s’est arrêté avec le code {exit_code})',
  service_restarted_exited:
    'le service {service} a redémarré pendant le contrôle de santé (il s’est arrêté avec le code {exit_code})',
  service_restarted_count: 'le service {service} a redémarré pendant le contrôle de santé ({count} redémarrage(s))',
  service_restarted: 'le service {service} a redémarré pendant le contrôle de santé (il est reparti)',
  service_unhealthy_probe: 'le service {service} est en mauvaise santé (dernier contrôle : {probe})',
  service_unhealthy: 'le service {service} est en mauvaise santé',
  healthcheck_timeout_probe:
    'le service {service} n’a pas passé son contrôle de santé en {seconds} s (dernier contrôle : {probe})',
  healthcheck_timeout: 'le service {service} n’a pas passé son contrôle de santé en {seconds} s',
  services_not_ready: 'services pas prêts après {seconds} s : {detail}',
  tasks_still_running: 'tâches toujours en cours après {seconds} s : {services}',
  service_no_image: 'le service {service} n’a pas d’image (WindFlow déploie des images, il ne les construit pas)',
  engine_unreachable: 'moteur Docker {endpoint} injoignable : {detail}',
  engine_timeout: 'le moteur Docker {endpoint} n’a pas répondu à temps : {detail}',
  engine_stopped_pulling: 'le moteur Docker a cessé de répondre pendant le téléchargement de {image} : {detail}',
  invalid_compose_document: 'document compose invalide ; docker compose a dit : {output}',
  invalid_stack_document: 'document de stack invalide ; docker a dit : {output}',
  compose_up_failed: 'compose up a échoué ; docker compose a dit : {output}',
  stack_deploy_failed: 'docker stack deploy a échoué ; docker a dit : {output}',
  could_not_remove: 'impossible de supprimer {names}',
  watch_down: 'plus rien de la révision {revision} ne tourne : {detail}',
  revision_health: 'révision {revision} en état {health} : {detail}',
  automatic_rollback_failed_after:
    'le retour automatique à la révision {of} a échoué : {detail} ; la révision {failed} avait échoué : {failed_detail}',
  automatic_rollback_failed: 'le retour automatique à la révision {of} a échoué : {detail}',
  recovery_timed_out: 'Délai dépassé : toujours en attente après {minutes} minutes',
  delete_failed: 'La suppression a échoué : {detail} ; supprimez-le de nouveau pour réessayer',
  stop_failed: 'L’arrêt a échoué : {detail}',
}

export const logLinesFr: Record<string, string> = {
  step: '[{number}/{total}] {title}',
  started: 'Déploiement commencé (révision {revision}, tentative {attempt}/{max_attempts}, exécuteur {executor})',
  running: 'Le déploiement est en service',
  retrying: 'Échec passager : nouvelle tentative dans {seconds} s (tentative {attempt}/{max_attempts})',
  giving_up: 'Abandon après {attempts} tentative(s)',
  cancelled: 'Annulé',
  cancelled_removing_kept:
    'Annulé pendant l’étape {step}/{total} ({title}), arrêté là : suppression de ce que ce déploiement a créé (les volumes nommés sont gardés)',
  cancelled_removing_step:
    'Annulé pendant l’étape {step}/{total} ({title}), arrêté là : suppression de ce que ce déploiement a créé',
  cancelled_removing_kept_volumes:
    'Annulé : suppression de ce que ce déploiement a créé (les volumes nommés sont gardés)',
  cancelled_removing: 'Annulé : suppression de ce que ce déploiement a créé',
  clean_up_failed: 'Le nettoyage après l’annulation a échoué : {detail}',
  removing_failed_revision:
    'Suppression des conteneurs de la révision {revision} : rien d’une révision en échec ne reste en service (les volumes nommés sont gardés)',
  could_not_remove_them: 'Impossible de les supprimer : {detail}',
  lease_lost: 'Cet exécuteur a perdu son bail (le déploiement est maintenant {status}) ; il s’arrête ici',
  stopping: 'Arrêt (tentative {attempt}/{max_attempts})',
  deleting_kept_volumes:
    'Suppression : retrait des conteneurs, réseaux et volumes (les volumes nommés sont gardés) (tentative {attempt}/{max_attempts})',
  deleting: 'Suppression : retrait des conteneurs, réseaux et volumes (tentative {attempt}/{max_attempts})',
  retrying_stop: 'Échec passager : nouvel essai de l’arrêt dans {seconds} s',
  retrying_delete: 'Échec passager : nouvel essai de la suppression dans {seconds} s',
  stopped: 'Arrêté',
  teardown_lease_lost: 'Cet exécuteur a perdu son bail ; il s’arrête ici',
  watch_running_again:
    'tous les services de la révision {revision} sont en marche et en bonne santé : de nouveau en service',
  watch_up_again: 'tous les services de la révision {revision} sont de nouveau en marche',
  no_live_worker:
    'aucun worker actif ne sert la cible {target} : le déploiement attend dans la file de la cible qu’un worker qui la déclare (WORKER_TARGETS) tourne',
  status_reason: '{reason}',
  dispatched_again: 'Relancé par la récupération (tentative {attempt}/{max_attempts})',
  timeout_rolling_back:
    'Délai dépassé : toujours en attente après {minutes} minutes : la révision {failed} a échoué ; retour à la révision {of}, la dernière à avoir passé le contrôle de santé, en révision {revision}',
  recovery_rolling_back:
    'la révision {failed} a échoué : {detail} ; retour à la révision {of}, la dernière à avoir passé le contrôle de santé, en révision {revision}',
  rolling_back:
    'La révision {failed} a échoué : {detail} ; retour à la révision {of}, la dernière à avoir passé le contrôle de santé',
  automatic_rollback_opening:
    '--- Retour automatique à la révision {of} (la dernière à avoir passé le contrôle de santé), en révision {revision} ---',
  rollback_opening: '--- Retour à la révision {of}, en révision {revision} ---',
  rollback_why: 'Pourquoi : la révision {failed} a échoué : {detail}',
  rollback_images: 'Images fixées à ce que la révision {of} a enregistré : {images}',
  rollback_no_images:
    'La révision {of} n’a enregistré aucune empreinte d’image : les images que nomme son document sont utilisées',
  waiting_none: 'attente de {service} : aucun conteneur',
  waiting_ready: 'attente de {service} : {ready}/{count} prêt(s), états {states}',
  waiting_for: 'attente de {service} : {detail}',
  all_running: 'tous les services sont en service : {services}',
  compose_valid_at_creation: 'document compose valide (vérifié par docker compose config à la création)',
  compose_valid_in_process: 'document compose valide (vérifié dans le processus ; compose up reste le juge final)',
  compose_valid: 'document compose valide',
  stack_valid: 'document de stack valide',
  wrote_project: '{file} du projet {project} écrit ({count} services, étiquetés {label})',
  image_present: 'l’image {image} est présente',
  image_pulling_with_auth:
    'l’image {image} n’est pas présente ici : téléchargement avec les identifiants de l’organisation pour {registry}',
  image_pulling: 'l’image {image} n’est pas présente ici : téléchargement',
  image_pulled: 'image {image} téléchargée ({facts})',
  image_digest_pinned: '{service} : l’image {image} est {digest} (fixée)',
  image_digest: '{service} : l’image {image} est {digest}',
  removing: 'suppression de {names}',
  could_not_remove_yet: 'impossible de supprimer {names} pour l’instant : {detail}',
  compose_down_failed: 'compose down a échoué ; docker compose a dit : {output} ; suppression par étiquette',
  cannot_write_project: 'impossible d’écrire le répertoire du projet : {detail} ; suppression par étiquette',
  stack_rm_failed: 'docker stack rm a échoué ; docker a dit : {output} ; suppression par étiquette',
  swarm_manager: 'la cible est un manager swarm ; les réseaux sont créés par `docker stack deploy`',
  nodes_registry_auth:
    'les nœuds téléchargent avec les identifiants de registre de l’organisation (--with-registry-auth)',
  global_service: '{service} est un service global : il ne peut pas être réduit à 0',
  scaling_down: 'réduction de {service} de {replicas} à 0',
  scaling_back: 'retour de {service} à {replicas}',
  tasks_stopped: 'toutes les tâches sont arrêtées',
}

/** Why the watcher says a service is not up (`service_health[].reason`, after the service's name). */
export const serviceReasonsFr: Record<string, string> = {
  unhealthy_probe: 'en mauvaise santé (dernier contrôle : {probe})',
  unhealthy: 'en mauvaise santé',
  restarted_since: 'a redémarré {count} fois depuis le dernier regard ({total} en tout)',
  restarting_exited: 'redémarre (il s’est arrêté avec le code {exit_code} ; {restarts} redémarrage(s))',
  restarting: 'redémarre (il s’est arrêté ; {restarts} redémarrage(s))',
  exited_code: 'arrêté avec le code {exit_code}',
  exited: 'arrêté',
  state_exited_code: '{state} (arrêté avec le code {exit_code})',
  state_exited: '{state} (arrêté)',
  starting: 'démarre',
  is_state: 'état {state}',
  missing: 'a {count} de ses {expected} conteneur(s)',
}

/** Why a deployment could not be prepared (`cannot_prepare`'s detail, `deployment_words.PREPARE_DETAILS`). */
export const prepareDetailsFr: Record<string, string> = {
  target_not_found: 'la cible du déploiement n’existe plus',
  target_elsewhere:
    'la cible {target} est le moteur de l’hôte {host} ; ce processus tourne sur l’hôte {here} (son travail tourne sur les workers de cet hôte : WORKER_TARGETS=local)',
  no_snapshot: 'ce déploiement n’a pas de document compose rendu',
  invalid_timeout:
    'x-windflow.{key} doit être un nombre de secondes entre 1 et {max} (x-windflow est un dictionnaire, p. ex. x-windflow: {example})',
  cannot_decrypt: 'impossible de déchiffrer un secret enregistré : SECRET_KEY a-t-il changé ?',
}

/** A container's state in the health gate's waiting lines (`deployment_words.CONTAINER_STATES`). */
export const containerStatesFr: Record<string, string> = {
  settling: 'en marche, stabilisation ({seconds} s restantes)',
  no_health_yet: 'en marche (pas encore d’état de santé)',
  health: 'en marche ({health})',
  status: '{status}',
}

/** A service the health gate still waited for when its time ran out (`deployment_words.WAITING_DETAILS`). */
export const waitingDetailsFr: Record<string, string> = {
  no_container: '{service} (aucun conteneur)',
  not_ready: '{service} ({ready}/{count} prêt(s), états {states})',
}

/** The engine's own words for a container's status and health (Docker's fixed vocabulary). */
export const engineStatesFr: Record<string, string> = {
  created: 'créé',
  running: 'en marche',
  paused: 'en pause',
  restarting: 'redémarre',
  removing: 'en suppression',
  exited: 'arrêté',
  dead: 'mort',
  unknown: 'inconnu',
  starting: 'contrôle de santé en cours',
  healthy: 'en bonne santé',
  unhealthy: 'en mauvaise santé',
}

/** Parameters that quote other programs' words or an English detail (`deployment_words.QUOTED`). */
export const QUOTED = new Set(['detail', 'output', 'probe', 'failed_detail', 'states'])

type Params = Record<string, string> | null | undefined

function french(): boolean {
  return i18n.global.locale.value === 'fr'
}

function known(key: string): boolean {
  return i18n.global.te(key, i18n.global.locale.value)
}

/** A parameter as the sentence shows it: quoted when it is another program's words, a status or a step named. */
function shown(name: string, value: string): string {
  if (QUOTED.has(name)) return `« ${value} »`
  if (name === 'status' && known(`status.${value}`)) return i18n.global.t(`status.${value}`).toLocaleLowerCase()
  if (name === 'health' && known(`health.${value}`)) return i18n.global.t(`health.${value}`).toLocaleLowerCase()
  if (name === 'title') return stepText(value)
  return value
}

/**
 * A nested detail worded from its parts (`<name>.parts`, `<name>.<i>.code`, `<name>.<i>.<param>`: the server's
 * `_nest`): the watcher's services, why a deployment could not be prepared, a waiting line's container states,
 * the services the health gate still waited for (each with its states' own parts), why a revision failed before
 * its automatic rollback or why that rollback failed (an error of `deploymentErrorsFr`, with its own parts), the
 * status change's reason after `[RECOVERY]` (the history's words, `history.<code>`).
 * Null when it has none or a part has no words here (the detail is then quoted as the server wrote it).
 */
function nested(code: string | null | undefined, name: string, params: Params): string | null {
  const count = Number(params?.[`${name}.parts`] ?? 0)
  if (!count || !params) return null
  const said: string[] = []
  for (let i = 0; i < count; i++) {
    const prefix = `${name}.${i}.`
    const part = params[`${prefix}code`] ?? ''
    const values: Record<string, string> = {}
    for (const [key, value] of Object.entries(params)) {
      if (key.startsWith(prefix) && key !== `${prefix}code`) values[key.slice(prefix.length)] = value
    }
    let template: string | undefined
    if (name === 'states') {
      template = containerStatesFr[part]
      if (template) {
        said.push(template.replace(/\{(\w+)\}/g, (_, key: string) => engineStatesFr[values[key]] ?? values[key] ?? ''))
      }
    } else if (code && ROLLBACK.has(code)) {
      template = deploymentErrorsFr[part]
      if (template) said.push(fill(template, values, part)) // an error_message, with its own parts
    } else if (code === 'status_reason') {
      // a status change's reason: the history's own words (`history.<code>`)
      template = known(`history.${part}`) ? `history.${part}` : undefined
      if (template) said.push(i18n.global.t(template, values))
    } else if (code === 'services_not_ready') {
      template = waitingDetailsFr[part]
      if (template) said.push(fill(template, values, 'waiting_ready')) // its states: their own parts
    } else if (code && WATCHED.has(code)) {
      template = serviceReasonsFr[part]
      if (template) said.push(`service ${values.service ?? ''} ${fill(template, values)}`)
    } else {
      template = prepareDetailsFr[part]
      if (template) said.push(fill(template, values))
    }
    if (!template) return null
  }
  return said.join(name === 'states' ? ', ' : ' ; ')
}

function fill(template: string, params: Params, code?: string | null): string {
  return template.replace(
    /\{(\w+)\}/g,
    (_, name: string) => nested(code, name, params) ?? shown(name, params?.[name] ?? ''),
  )
}

/** The first line of an error, without the "; last log lines:" that announces the output after it. */
function firstLine(message: string): string {
  return message.split('\n', 1)[0].replace(/; last log lines:$/, '')
}

interface ServiceSaid {
  service: string
  reason?: string | null
  reason_code?: string | null
  reason_params?: Params
}

/** Sentences whose `detail` (and `failed_detail`) is a deployment's error (`deployment_words._ROLLBACK`). */
const ROLLBACK = new Set([
  'rolling_back',
  'recovery_rolling_back',
  'rollback_why',
  'automatic_rollback_failed_after',
  'automatic_rollback_failed',
])

/** The watcher's sentences whose `detail` says, service by service, what `service_health` holds. */
const WATCHED = new Set(['revision_health', 'watch_down'])

/**
 * A deployment's (or a revision's) error in the user's language: one line, the output it quotes aside. The
 * watcher's own detail (which services are not up, and why) is worded from the deployment's `service_health`
 * when it has it (the watcher writes both at once).
 */
export function deploymentErrorText(d: {
  error_message?: string | null
  error_code?: string | null
  error_params?: Params
  service_health?: ServiceSaid[] | null
}): string {
  const message = d.error_message ?? ''
  if (!message) return ''
  let template = d.error_code && french() ? deploymentErrorsFr[d.error_code] : undefined
  const wrong = (d.service_health ?? []).filter((s) => s.reason)
  if (template && d.error_code && WATCHED.has(d.error_code) && wrong.length) {
    const said = wrong.map((s) => `service ${s.service} ${serviceReasonText(s)}`).join(' ; ')
    template = template.replace('{detail}', said.replace(/[{}]/g, ''))
  }
  return template ? fill(template, d.error_params, d.error_code) : firstLine(message)
}

/** The output an error quotes after its first line (a failed service's last log lines), or null. */
export function deploymentErrorOutput(message: string | null | undefined): string | null {
  const at = (message ?? '').indexOf('\n')
  return at >= 0 ? (message ?? '').slice(at + 1) : null
}

/**
 * A log line WindFlow wrote, in the user's language (a container's output, or an unknown code: as it is). A
 * tagged line (`[WATCH]`, `[WAITING]`, `[RECOVERY]`, `[RETRY]`: `deployment_words.TAGS`) keeps its tag, then its sentence.
 */
export function logLineText(line: { message: string; code?: string | null; params?: Params }): string {
  if (!line.code || !french()) return line.message
  const template = logLinesFr[line.code] ?? deploymentErrorsFr[line.code]
  if (!template) return line.message
  const tag = line.params?.tag
  return (tag ? `[${tag}] ` : '') + fill(template, line.params, line.code)
}

/** Why a service is not up, in the user's language (the watcher's English otherwise). */
export function serviceReasonText(s: {
  reason?: string | null
  reason_code?: string | null
  reason_params?: Params
}): string {
  const template = s.reason_code && french() ? serviceReasonsFr[s.reason_code] : undefined
  return template ? fill(template, s.reason_params) : (s.reason ?? '')
}
