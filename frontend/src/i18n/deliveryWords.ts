/**
 * Why a notification's delivery failed, in the user's language: worded from the stable `last_error_code` and
 * `last_error_params` the server gives with `last_error` (`backend/app/core/delivery_words.py`;
 * `backend/tests/unit/test_ui_words.py` fails when a code lacks its French words here or names a parameter the
 * server's sentence does not have). English is the server's own sentence; a text without a code this UI knows
 * is shown as the server wrote it. An exception's name and a mail server's answer are quoted, never translated.
 */
import { i18n } from '.'

export const deliveryErrorsFr: Record<string, string> = {
  egress_embedded:
    'refusé, rien envoyé : le destinataire {host} n’est pas joignable depuis WindFlow : {ip} contient l’adresse non publique {inner} ; les notifications ne vont qu’à des adresses publiques (un opérateur peut autoriser un réseau interne avec {setting})',
  egress_refused:
    'refusé, rien envoyé : le destinataire {host} n’est pas joignable depuis WindFlow : {ip} est une adresse {kind} ; les notifications ne vont qu’à des adresses publiques (un opérateur peut autoriser un réseau interne avec {setting})',
  unix_socket: 'refusé, rien envoyé : les notifications ne passent jamais par un socket Unix',
  refused: 'refusé, rien envoyé : {detail}',
  no_answer: 'pas de réponse en {seconds} s',
  unreachable: 'destinataire injoignable ({error})',
  answered: 'le destinataire a répondu {status_code}',
  smtp_not_set: 'SMTP_HOST n’est pas défini : le serveur ne peut pas envoyer de courriel',
  smtp_failed: 'échec SMTP : {detail}',
}

/** The kinds of address egress refuses (`egress.refusal`), in French. */
const KINDS_FR: Record<string, string> = {
  loopback: 'de bouclage',
  'link-local (cloud metadata lives there)': 'lien-local (les métadonnées du cloud y sont)',
  reserved: 'réservée',
  private: 'privée',
}

/** Parameters that quote other programs' words (`delivery_words.QUOTED`). */
export const QUOTED = new Set(['detail', 'error'])

type Params = Record<string, string> | null | undefined

function shown(name: string, value: string): string {
  if (QUOTED.has(name)) return `« ${value} »`
  if (name === 'kind') return KINDS_FR[value] ?? value
  return value
}

/** A delivery's last error in the user's language (the server's English for an unknown code). */
export function deliveryErrorText(d: {
  last_error?: string | null
  last_error_code?: string | null
  last_error_params?: Params
}): string {
  const text = d.last_error ?? ''
  if (!text) return ''
  const template =
    d.last_error_code && i18n.global.locale.value === 'fr' ? deliveryErrorsFr[d.last_error_code] : undefined
  if (!template) return text
  return template.replace(/\{(\w+)\}/g, (_, name: string) => shown(name, d.last_error_params?.[name] ?? ''))
}
