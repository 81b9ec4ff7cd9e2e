import { describe, expect, it } from 'vitest'
import { NOTIFICATION_EVENTS } from '../src/api/notifications'
import { i18n } from '../src/i18n'
import en from '../src/i18n/en'
import fr from '../src/i18n/fr'

/** The UI's sources, as text. */
const SOURCES = import.meta.glob('../src/**/*.{vue,ts}', { query: '?raw', import: 'default', eager: true }) as Record<
  string,
  string
>

/** Every literal key the sources pass to t('...') (dynamic ones, t(`status.${s}`), are checked by their own tests). */
function usedKeys(): Set<string> {
  const keys = new Set<string>()
  for (const text of Object.values(SOURCES)) {
    for (const m of text.matchAll(/\bt\(\s*'([a-zA-Z][\w]*(?:\.[\w]+)+)'/g)) keys.add(m[1])
  }
  return keys
}

function leaves(obj: object, prefix = ''): string[] {
  return Object.entries(obj).flatMap(([k, v]) =>
    v && typeof v === 'object' ? leaves(v, `${prefix}${k}.`) : [`${prefix}${k}`],
  )
}

describe('translations', () => {
  it('every key the UI uses exists in English and in French', () => {
    const used = usedKeys()
    expect(used.size).toBeGreaterThan(200) // the sources were read
    expect(used.has('deployments.title') && used.has('admin.newUser')).toBe(true)
    const missing = [...used].filter((k) => !i18n.global.te(k, 'en') || !i18n.global.te(k, 'fr'))
    expect(missing).toEqual([])
  })

  it('French has every English message (the API error catalogue is French only: English shows the server text)', () => {
    const frKeys = new Set(leaves(fr))
    expect(leaves(en).filter((k) => !frKeys.has(k))).toEqual([])
  })

  it("the dynamic keys' families are complete", () => {
    const g = i18n.global
    for (const locale of ['en', 'fr'] as const) {
      for (const a of ['stop', 'start', 'redeploy', 'retry', 'cancel', 'delete'])
        expect(g.te(`transition.${a}`, locale) && g.te(`deployments.done.${a}`, locale), `${locale} ${a}`).toBe(true)
      for (const a of ['stop', 'cancel', 'delete', 'redeploy'])
        for (const family of ['confirmTitle', 'confirm', 'confirmButton', 'waiting', 'keep'])
          expect(g.te(`deployments.${family}.${a}`, locale), `${locale} deployments.${family}.${a}`).toBe(true)
      for (const code of ['created', 'claimed', 'running', 'retry_scheduled', 'failed', 'stopped_by_user'])
        expect(g.te(`history.${code}`, locale), `${locale} history.${code}`).toBe(true)
    }
  })
})

describe('notification event names', () => {
  // the API's event names hold a dot: the message of each is found under that path, in both languages
  it.each(['en', 'fr'] as const)('each reads as words in %s, never as its key', (locale) => {
    for (const event of NOTIFICATION_EVENTS) {
      const key = `notifications.eventNames.${event}`
      expect(i18n.global.te(key, locale), key).toBe(true)
      expect(i18n.global.t(key, {}, { locale })).not.toContain('eventNames')
    }
  })
})
