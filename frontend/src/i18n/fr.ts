import type en from './en'

const fr: typeof en = {
  app: { name: 'WindFlow', tagline: 'Déployez des stacks Docker, suivez-les en direct' },
  nav: { deployments: 'Déploiements', stacks: 'Stacks', targets: 'Cibles', organization: 'Organisation', tokens: 'Jetons d’API', system: 'Système' },
  menu: { profile: 'Profil', password: 'Changer le mot de passe', logout: 'Se déconnecter', theme: 'Basculer thème clair/sombre', language: 'Langue', organization: 'Organisation', light: 'Clair', dark: 'Sombre', system: 'Système' },
  common: {
    save: 'Enregistrer', cancel: 'Annuler', create: 'Créer', delete: 'Supprimer', edit: 'Modifier', close: 'Fermer', loading: 'Chargement…',
    none: 'Aucun', name: 'Nom', description: 'Description', actions: 'Actions', yes: 'Oui', no: 'Non', retry: 'Réessayer',
    loadMore: 'Charger plus', refresh: 'Actualiser', all: 'Tous', created: 'Créé', back: 'Retour', optional: 'facultatif',
    confirm: 'Confirmer', add: 'Ajouter', email: 'E-mail', role: 'Rôle', password: 'Mot de passe', copy: 'Copier', copied: 'Copié',
    offlineBanner: 'Les mises à jour en direct sont hors ligne.', reconnect: 'Reconnecter', empty: 'Rien pour l’instant',
  },
  status: { pending: 'En attente', deploying: 'En déploiement', running: 'En service', failed: 'Échec', stopped: 'Arrêté', cancelled: 'Annulé' },
  levels: { debug: 'Debug', info: 'Info', warning: 'Avertissement', error: 'Erreur' },
  roles: { viewer: 'Lecteur', operator: 'Opérateur', admin: 'Administrateur', owner: 'Propriétaire' },
  setup: {
    title: 'Bienvenue dans WindFlow', intro: 'Créez le premier administrateur et son organisation.',
    organization: 'Nom de l’organisation', fullName: 'Nom complet', submit: 'Créer l’administrateur', confirmPassword: 'Confirmer le mot de passe',
    mismatch: 'Les mots de passe diffèrent', done: 'Installation terminée. Bienvenue !',
  },
  login: { title: 'Connexion à WindFlow', submit: 'Se connecter', failed: 'Échec de la connexion', expired: 'Votre session a pris fin ; reconnectez-vous.' },
  validation: {
    required: 'Obligatoire', email: 'Saisissez une adresse e-mail valide', minLength: 'Au moins {n} caractères', maxLength: 'Au plus {n} caractères',
    min: 'Au moins {n}', max: 'Au plus {n}', integer: 'Un nombre entier', number: 'Un nombre', pattern: 'Doit correspondre à {pattern}',
  },
  deployments: {
    title: 'Déploiements', new: 'Nouveau déploiement', stack: 'Stack', target: 'Cible', status: 'Statut', progress: 'Progression',
    attempt: 'Tentative', created: 'Créé', empty: 'Aucun déploiement pour l’instant.', emptyHint: 'Créez-en un à partir d’une stack et d’une cible.',
    filterStatus: 'Filtrer par statut', filterStack: 'Filtrer par stack', filterTarget: 'Filtrer par cible', clearFilters: 'Effacer les filtres',
    moreActions: 'Plus d’actions', logs: 'Logs', details: 'Détails', stop: 'Arrêter', start: 'Démarrer', redeploy: 'Redéployer', retry: 'Réessayer', cancel: 'Annuler', delete: 'Supprimer',
    confirmDelete: 'Supprimer le déploiement « {name} » ? Ses conteneurs, réseaux et volumes sont supprimés.',
    confirmStop: 'Arrêter le déploiement « {name} » ?', confirmCancel: 'Annuler le déploiement « {name} » ?', confirmRedeploy: 'Redéployer « {name} » ?',
    done: { stop: 'Arrêt de « {name} »', start: 'Démarrage de « {name} »', redeploy: 'Redéploiement de « {name} »', retry: 'Nouvel essai de « {name} »', cancel: 'Annulation de « {name} »', delete: '« {name} » supprimé' },
    count: '{n} déploiement | {n} déploiements', unknown: 'inconnu', error: 'Erreur',
  },
  newDeployment: {
    title: 'Nouveau déploiement', pickStack: 'Stack', pickTarget: 'Cible', name: 'Nom du déploiement', namePlaceholder: 'dérivé du nom de la stack',
    variables: 'Variables', noVariables: 'Cette stack n’a pas de variable.', submit: 'Déployer', created: 'Déploiement « {name} » créé',
    generated: 'Générée au déploiement : {expr}', generatedHelp: 'Laissez vide : WindFlow génère une valeur à la création du déploiement ; un redéploiement la conserve.',
    reveal: 'Afficher', hide: 'Masquer', fixErrors: 'Corrigez les champs signalés', noStacks: 'Aucune stack dans cette organisation.', noTargets: 'Aucune cible dans cette organisation.',
    defaultValue: 'Par défaut : {value}', preview: 'Aperçu du compose', previewTitle: 'Compose rendu (secrets masqués)',
  },
  detail: {
    title: 'Déploiement', timeline: 'Historique des statuts', compose: 'Compose rendu', composeHint: 'Les valeurs secrètes sont masquées.', variables: 'Variables',
    logs: 'Ouvrir les logs', error: 'Erreur', executor: 'Exécuteur', step: 'Étape {current}/{total}', noHistory: 'Aucun changement de statut.',
    overview: 'Vue d’ensemble', queued: 'Mis en file', started: 'Démarré', finished: 'Terminé', by: 'par {actor}',
  },
  stacks: {
    title: 'Stacks', new: 'Nouvelle stack', catalog: 'Catalogue', custom: 'Personnalisée', version: 'Version', source: 'Source', variables: 'Variables',
    template: 'Modèle compose', variablesJson: 'Variables (liste YAML ou JSON)', save: 'Enregistrer la stack', saved: 'Stack « {name} » enregistrée',
    deploy: 'Déployer', confirmDelete: 'Supprimer la stack « {name} » ? Ses déploiements continuent de tourner.', errorAtLine: 'Ligne {line} : {message}',
    editor: 'Éditeur de stack', invalidVariables: 'Les variables ne sont pas une liste YAML/JSON valide : {message}', count: '{n} variable | {n} variables',
  },
  targets: {
    title: 'Cibles', new: 'Ajouter une cible', endpoint: 'Point d’accès', type: 'Type', maxConcurrent: 'Déploiements simultanés', test: 'Tester la connexion',
    testOk: 'Connecté : Docker {version} (API {api}){swarm}', testFailed: 'Échec de la connexion : {error}', swarmManager: ', manager swarm',
    policy: 'Politique compose', policyHint: 'Ce que les documents compose peuvent faire sur cette cible.', tls: 'TLS', ssh: 'Clé SSH', active: 'Active',
    tlsCa: 'Certificat de l’AC (PEM)', tlsCert: 'Certificat client (PEM)', tlsKey: 'Clé client (PEM)', sshKey: 'Clé privée SSH', tlsVerify: 'Vérifier le certificat du moteur',
    confirmDelete: 'Supprimer la cible « {name} » ?', saved: 'Cible « {name} » ajoutée', alwaysRefused: 'Toujours refusé', deniedUnlessAllowed: 'Refusé sauf si la politique l’autorise',
    policyDocs: 'Les propriétaires et administrateurs la modifient pour leurs cibles, les super-utilisateurs pour les cibles de l’hôte WindFlow (docs/security.md).',
    allowed: 'Autorisé', denied: 'Refusé',
  },
  organization: {
    title: 'Organisation', members: 'Membres', addMember: 'Ajouter un membre', memberAdded: '{email} ajouté', remove: 'Retirer', confirmRemove: 'Retirer {email} de l’organisation ?',
    create: 'Nouvelle organisation', created: 'Organisation « {name} » créée', you: 'vous',
  },
  tokens: {
    title: 'Jetons d’API', new: 'Nouveau jeton', expires: 'Expire', lastUsed: 'Dernière utilisation', revoke: 'Révoquer', revoked: 'Révoqué', never: 'Jamais',
    expiresInDays: 'Expire dans (jours)', shownOnce: 'Copiez ce jeton maintenant : il n’est affiché qu’une fois.', confirmRevoke: 'Révoquer le jeton « {name} » ?', prefix: 'Préfixe',
    usage: 'Utilisez-le comme Authorization: Bearer <jeton>.',
  },
  system: {
    title: 'Système', executionMode: 'Mode d’exécution', reason: 'Pourquoi', broker: 'Broker', brokerOk: 'Broker joignable', workers: 'Workers',
    embedded: 'Worker intégré', lastRecovery: 'Dernier recovery', totals: 'Totaux', runRecovery: 'Lancer un recovery', health: 'Santé', eventBus: 'Bus d’événements',
    noWorkers: 'Aucun worker Celery détecté.', never: 'Aucun recovery pour l’instant.', recoveryDone: 'Recovery terminé', database: 'Base de données', hostname: 'Hôte', lastSeen: 'Vu pour la dernière fois',
  },
  profile: { title: 'Profil', fullName: 'Nom complet', newPassword: 'Nouveau mot de passe', currentPassword: 'Mot de passe actuel', changePassword: 'Changer le mot de passe', passwordChanged: 'Mot de passe changé ; vos autres sessions sont déconnectées', passwordHint: 'Le changer déconnecte toutes les autres sessions de votre compte.', samePassword: 'Choisissez un mot de passe différent de l’actuel', saved: 'Enregistré', superuser: 'Super-utilisateur de la plateforme' },
  logs: {
    title: 'Logs — {name}', live: 'En direct', offline: 'Hors ligne', reconnecting: 'reconnexion…', retry: 'Réessayer', lines: '{n} ligne | {n} lignes',
    progress: 'Progression du déploiement', tabDeployment: 'Log du déploiement', tabServices: 'Services', search: 'Rechercher dans le log', prevMatch: 'Résultat précédent',
    nextMatch: 'Résultat suivant', levels: 'Niveaux affichés', timestamps: 'Horodatage', wrap: 'Retour à la ligne', autoScrollOn: 'Défilement auto activé',
    autoScrollOff: 'Défilement auto désactivé', firstError: 'Première erreur', copy: 'Copier', copySelection: 'Copier la sélection', copyHint: 'Cliquez un numéro de ligne pour la sélectionner, Maj+clic pour étendre ; la sélection sert aussi de permalien',
    download: 'Télécharger .txt', clear: 'Effacer', region: 'Log du déploiement', permalink: 'Sélectionner cette ligne (permalien)', empty: 'Aucune ligne de log pour l’instant.',
    noErrors: 'Aucune ligne d’erreur.', copied: '{n} ligne copiée | {n} lignes copiées', noServiceOutput: 'Aucune sortie des services pour l’instant.',
  },
  errors: { notFound: 'Page introuvable', goHome: 'Retour aux déploiements', forbidden: 'Votre rôle ne permet pas cette action.' },
}
export default fr
