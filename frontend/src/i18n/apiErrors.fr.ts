/**
 * The server's errors in French, by `code` (`apiErrors`) and, for a 422, by each field's pydantic `type`
 * (`apiFields`). `{detail}` is the server's English text, for the few whose specifics have no parameter.
 * English needs no catalogue: the server's detail is English.
 *
 * `{why}` is the error's `reason` worded from `apiReasons.<code>.<reason>` (the server's detail when it has none)
 * and `{at}` where it happened (`apiWords`: its line, with the default values). A variable's problems are
 * worded from `variableReasons.ts`, each one (`{why}` of `invalid_variables` and `invalid_variable_schema`).
 */
import { variableReasonsFr, variableWordsFr } from './variableReasons'

export const apiErrorsFr: Record<string, string> = {
  network: 'Le serveur est injoignable ; vérifiez votre connexion et réessayez.',
  validation_error: 'Certains champs sont invalides : {detail}',
  not_authenticated: 'Connectez-vous pour continuer.',
  invalid_credentials: 'E-mail ou mot de passe incorrect.',
  inactive_user: 'Ce compte est désactivé ; adressez-vous à un administrateur.',
  invalid_token: 'Votre session n’est plus valide ; reconnectez-vous.',
  token_scope: 'Ce jeton d’API ne permet pas cela (portée : {scopes}) : {detail}',
  token_organization_invalid: 'Choisissez une organisation dont vous êtes membre.',
  token_stacks_need_deploy: 'Les stacks d’un jeton limitent la portée « déploiement » : choisissez-la seule.',
  token_stacks_need_organization: 'Choisissez l’organisation des stacks du jeton.',
  token_stack_invalid: 'Ces stacks ne sont pas dans l’organisation du jeton : {stack_ids}',
  token_expired: 'Votre session a expiré ; reconnectez-vous.',
  token_revoked: 'Cette session a été révoquée ; reconnectez-vous.',
  already_set_up: 'L’installation est déjà faite : connectez-vous.',
  forbidden: 'Votre rôle ne permet pas cette action.',
  role_required: 'Il faut le rôle {minimum} ou supérieur dans l’organisation ; vous êtes {role}.',
  superuser_required: 'Réservé aux super-utilisateurs de la plateforme.',
  owner_required: 'Seul un propriétaire peut nommer un propriétaire.',
  not_found: 'Introuvable.',
  conflict: 'Conflit avec l’état actuel ; rechargez et réessayez.',
  rate_limited: 'Trop de demandes ; réessayez dans {seconds} s.',
  payload_too_large: 'La requête est trop volumineuse.',
  method_not_allowed: 'Action non prise en charge par le serveur.',
  internal_error: 'Erreur interne du serveur ; le journal du serveur en donne le détail.',
  database_unavailable: 'La base de données est injoignable (redémarrage ?) ; réessayez dans quelques secondes.',
  organization_not_found: 'Organisation introuvable.',
  organization_exists: 'Une organisation nommée « {name} » existe déjà ; choisissez un autre nom.',
  no_organization: 'Vous n’appartenez à aucune organisation : demandez à un administrateur de vous ajouter.',
  user_not_found: 'Aucun utilisateur avec l’e-mail {email} : un super-utilisateur doit d’abord le créer.',
  user_exists: 'Un utilisateur avec l’e-mail {email} existe déjà.',
  already_member: '{email} est déjà membre ; changez plutôt son rôle.',
  member_not_found: 'Cet utilisateur n’est pas membre de l’organisation.',
  last_owner: 'Une organisation garde au moins un propriétaire : nommez-en un autre d’abord.',
  organization_has_deployments:
    'Cette organisation a encore {count} déploiement(s) ({deployments}) : supprimez-les d’abord, ou supprimez-la avec force=true, qui les démonte tous avant.',
  self_lockout: 'Vous ne pouvez ni vous désactiver ni vous rétrograder ; demandez à un autre super-utilisateur.',
  not_nullable: 'Le champ {field} ne peut pas être vide ; omettez-le pour garder sa valeur.',
  token_not_found: 'Jeton d’API introuvable.',
  stack_not_found: 'Stack introuvable dans cette organisation.',
  stack_exists: 'Une stack nommée « {name} » existe déjà ; choisissez un autre nom.',
  target_not_found: 'Cible introuvable dans cette organisation.',
  target_name_taken: 'Une cible nommée « {name} » existe déjà ; choisissez un autre nom.',
  target_inactive: 'La cible « {name} » est désactivée ; réactivez-la ou choisissez-en une autre.',
  target_in_use: 'Des déploiements utilisent encore cette cible : désactivez-la plutôt. ({detail})',
  host_target_forbidden:
    'Seul un super-utilisateur peut gérer une cible qui atteint l’hôte de WindFlow ({endpoint}) : son moteur y est root.',
  credentials_mismatch: 'Ces identifiants ne vont pas avec ce point d’accès : {detail}',
  deployment_not_found: 'Déploiement introuvable.',
  deployment_busy: 'Ce déploiement est en cours : annulez-le d’abord, puis supprimez-le.',
  teardown_failed:
    'Le déploiement {deployments} n’a pas pu être supprimé de son moteur ; l’organisation est conservée : réessayez quand le moteur répond.',
  teardown_in_progress:
    'La suppression de {count} déploiement(s) se poursuit en arrière-plan ; redemandez la suppression de l’organisation dans un instant.',
  deployment_not_running: 'Les logs des services ne sont disponibles que pendant que le déploiement est en service.',
  invalid_transition: 'Impossible ({action}) : le déploiement est {status}.',
  no_snapshot: 'Ce déploiement n’a pas encore de document compose rendu.',
  rollout_in_progress:
    'La révision {revision} est en cours de déploiement : attendez qu’elle se termine, ou annulez-la, avant de modifier le déploiement.',
  revision_conflict: 'Le déploiement a changé entre-temps (il est maintenant en révision {revision}) ; réessayez.',
  revision_not_found: 'Ce déploiement n’a pas de révision {number}.',
  stack_deleted: 'La stack de ce déploiement a été supprimée : il n’y a pas de dernière version à rendre.',
  no_template_recorded:
    'La révision {revision} n’a pas enregistré son modèle : utilisez la dernière version de la stack.',
  engine_unavailable: 'Le moteur Docker de la cible ne répond pas ; son message (en anglais) : « {detail} »',
  engine_error: 'Le moteur Docker a refusé ; son message (en anglais) : « {detail} »',
  compose_policy_denied: 'Refusé par la politique compose de la cible (options : {rules}) : {detail}',
  compose_forbidden: 'Ce document lit des fichiers de l’hôte, ce que toute cible refuse : {paths}',
  invalid_compose: 'Document compose invalide{at} : {why}',
  invalid_pull_timeout:
    'x-windflow.pull_timeout doit être un nombre de secondes entre 1 et {max} (par ex. « pull_timeout: 600 » sous « x-windflow: »).',
  invalid_up_timeout:
    'x-windflow.up_timeout doit être un nombre de secondes entre 1 et {max} (par ex. « up_timeout: 600 » sous « x-windflow: »).',
  compose_failed: 'Compose n’a pas pu juger le document{at} : {why}',
  compose_timeout:
    'Compose n’a pas validé le document en {seconds} s (limite COMPOSE_VALIDATE_TIMEOUT_SECONDS) : le document est refusé.',
  compose_too_large: 'Le document compose rendu est trop volumineux : {detail}',
  template_error: 'Le modèle ne se rend pas{at} : {why}',
  template_limit: 'Le rendu du modèle dépasse une limite{at} : {why}',
  renderer_unavailable: 'Le moteur de rendu n’a pas pu démarrer ; réessayez plus tard.',
  invalid_yaml: 'YAML invalide, ligne {line}, colonne {column} : {problem}',
  yaml_limit: 'Le YAML dépasse une limite{at} : {why}',
  invalid_variables: 'Valeurs invalides : {why}',
  invalid_variable_schema: 'Définition des variables invalide : {why}',
  variables_twice: 'Envoyez les variables en liste ou en texte, pas les deux.',
  invalid_cursor: 'Pagination invalide ; rechargez la liste.',
  invalid_page: 'Pagination invalide ; rechargez la liste.',
  offset_too_large: 'Trop loin dans la liste ({max} au plus) ; utilisez « Charger plus ».',
  bad_request: 'Requête invalide : {detail}',
  unavailable: 'Service momentanément indisponible ; réessayez dans quelques secondes.',
  invalid_last_event_id: 'Reprise du flux impossible (identifiant d’événement invalide) ; rechargez la page.',
  bad_frame: 'Message temps réel refusé par le serveur : {detail}',
  not_subscribed: 'Aucun abonnement de ce type à annuler.',
  access_revoked: 'Vous n’avez plus accès à ceci (rôle ou appartenance retirés).',
  closed: 'Le flux temps réel a été fermé par le serveur.',
  target_unserved:
    'Aucun worker en service ne dessert la cible « {target} » : démarrez un worker qui la déclare (WORKER_TARGETS), puis réessayez.',
  target_worker_timeout:
    'Le worker de la cible n’a pas répondu à temps (il le fera peut-être) ; regardez le déploiement dans un moment.',
  target_worker_failed: 'Le worker de la cible a échoué ; réessayez.',
  host_binding_forbidden:
    'Seul un super-utilisateur de la plateforme peut lier une cible à un hôte : cela dit quels workers atteignent son moteur.',
  host_target_placed:
    'Une cible liée à un hôte est toujours placée (seuls les workers de cet hôte l’atteignent) : retirez d’abord l’hôte.',
  target_elsewhere:
    'La cible « {target} » est le moteur de l’hôte {host} : ses déploiements passent par les workers de cet hôte.',
  hook_not_found: 'Hook introuvable (supprimé, ou URL erronée).',
  hook_signature_missing:
    'L’appel n’est pas signé : envoyez X-Hub-Signature-256 (ou X-WindFlow-Timestamp et X-WindFlow-Signature-256).',
  hook_signature_invalid: 'La signature ne correspond pas au secret du hook.',
  hook_timestamp_invalid: 'X-WindFlow-Timestamp doit être l’heure de signature en secondes Unix.',
  hook_replayed: 'Cet appel signé a déjà été reçu ou est hors de la fenêtre de {window} s : signez un nouvel appel.',
  hook_disabled: 'Ce hook est désactivé ; réactivez-le sur la page du déploiement.',
  hook_body_invalid: 'Le corps doit être un objet JSON vide, ou n’avoir que le champ « variables ».',
  hook_variable_not_allowed: 'Ce hook ne peut pas modifier {names} ; il autorise : {allowed}.',
  too_many_hooks: 'Un déploiement ou une stack a au plus {max} hooks ; supprimez-en un d’abord.',
  stack_has_no_deployments: 'La stack de ce hook n’a aucun déploiement à relancer.',
  too_many_deployments:
    'La stack a plus de {max} déploiements : le hook d’une stack en relance au plus {max} ; utilisez les hooks des déploiements.',
  deployment_rolling_out: 'Le déploiement est {status} : réessayez dans {seconds} s, une fois terminé.',
  channel_not_found: 'Canal de notification introuvable.',
  channel_field_invalid: 'Ce champ ne convient pas à ce type de canal : {detail}',
  channel_url_not_allowed:
    'Cette adresse n’est pas publique (boucle locale, réseau privé, métadonnées du cloud) : les notifications n’y vont pas, sauf si l’exploitant l’autorise avec NOTIFY_ALLOWED_NETWORKS. {detail}',
}

export const apiFieldsFr: Record<string, string> = {
  missing: 'Obligatoire',
  string_too_long: 'Au plus {max_length} caractères',
  string_too_short: 'Au moins {min_length} caractères',
  too_long: 'Au plus {max_length} éléments',
  too_short: 'Au moins {min_length} éléments',
  string_pattern_mismatch: 'Doit correspondre à {pattern}',
  greater_than_equal: 'Au moins {ge}',
  greater_than: 'Plus de {gt}',
  less_than_equal: 'Au plus {le}',
  less_than: 'Moins de {lt}',
  int_parsing: 'Un nombre entier',
  int_type: 'Un nombre entier',
  int_from_float: 'Un nombre entier',
  float_parsing: 'Un nombre',
  float_type: 'Un nombre',
  bool_parsing: 'Oui ou non',
  bool_type: 'Oui ou non',
  string_type: 'Du texte',
  literal_error: 'Une de ces valeurs : {expected}',
  enum: 'Une de ces valeurs : {expected}',
  extra_forbidden: 'Champ inconnu : retirez-le',
  json_invalid: 'Le corps de la requête n’est pas du JSON valide',
  value_error: 'Valeur refusée : {detail}',
  invalid_endpoint: 'Point d’accès invalide : {detail}',
  invalid_server: 'Adresse de registre invalide : {detail}',
  credentials_mismatch: 'Identifiants incompatibles avec le point d’accès : {detail}',
  invalid_pem: 'Ce n’est pas un fichier PEM complet : collez tout le fichier, de la ligne BEGIN à la ligne END',
  encrypted_key: 'Clé protégée par une phrase de passe : donnez la clé déchiffrée (WindFlow la stocke chiffrée)',
  null_not_allowed: 'Ne peut pas être vide ; omettez-le pour garder la valeur actuelle',
  list_type: 'Une liste',
  dict_type: 'Un objet',
  model_type: 'Un objet',
  url_parsing: 'Une URL',
  uuid_parsing: 'Un identifiant',
  datetime_parsing: 'Une date',
}

/** Why a template, YAML or compose document was refused, by the error's code and its `params.reason`. */
export const apiReasonsFr: Record<string, Record<string, string>> = {
  template_error: {
    syntax: 'erreur de syntaxe ({message})',
    forbidden_tag: 'include, import et extends ne sont pas disponibles : un modèle de stack est un document autonome',
    not_string: 'le modèle doit être un texte',
    output_limit: 'le document rendu dépasse {max} caractères (limite TEMPLATE_MAX_OUTPUT_CHARS)',
    sandbox: 'refusé par le bac à sable ({message})',
    undefined: '« {name} » n’est pas défini : déclarez cette variable ou corrigez son nom',
    error: 'le rendu a échoué ({message})',
  },
  template_limit: {
    memory: 'le rendu a dépassé la limite de mémoire de {mib} Mio (TEMPLATE_RENDER_MEMORY_MB)',
    cpu_time: 'le rendu a dépassé la limite de temps CPU de {seconds} s (TEMPLATE_RENDER_TIMEOUT_SECONDS)',
    process_failed: 'le processus de rendu a échoué (statut {status})',
    nesting: 'le modèle est imbriqué trop profondément',
  },
  yaml_limit: {
    nodes: 'les ancres et alias étendent le document au-delà de {max} nœuds (limite YAML_MAX_NODES)',
    chars: 'les ancres et alias étendent le document au-delà de {max} caractères (limite YAML_MAX_EXPANDED_CHARS)',
    recursive_alias: 'un alias renvoie à un nœud qui le contient (alias récursif)',
    depth: 'le document est imbriqué trop profondément',
  },
  invalid_compose: {
    not_mapping: 'le document doit être un dictionnaire avec une clé « services »',
    no_services: 'il faut un dictionnaire « services » non vide (nom du service → définition)',
    service_not_mapping: 'services.{service} doit être un dictionnaire (image, ports, …)',
    rejected: 'docker compose l’a refusé ; message de l’outil (en anglais) : « {message} »',
  },
  compose_failed: {
    cannot_run: 'docker compose n’a pas pu s’exécuter',
    killed: 'docker compose a été tué (signal {signal}) pendant la validation',
  },
  invalid_variables: variableReasonsFr,
  invalid_variable_schema: variableReasonsFr,
}

/** The words around a reason: where the error happened. */
export const apiWordsFr: Record<string, string | Record<string, string>> = {
  variable: variableWordsFr,
  at_line: ', ligne {line}',
  with_defaults: ' avec les valeurs par défaut',
}
