/** Dates: relative for lists, exact on hover. */
export function relativeTime(iso: string | null | undefined, locale: string, now = Date.now()): string {
  if (!iso) return ''
  const t = Date.parse(iso.endsWith('Z') || /[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`)
  if (Number.isNaN(t)) return ''
  const seconds = Math.round((t - now) / 1000)
  const rtf = new Intl.RelativeTimeFormat(locale, { numeric: 'auto' })
  const abs = Math.abs(seconds)
  if (abs < 45) return rtf.format(seconds, 'second')
  if (abs < 2700) return rtf.format(Math.round(seconds / 60), 'minute')
  if (abs < 79200) return rtf.format(Math.round(seconds / 3600), 'hour')
  if (abs < 2592000) return rtf.format(Math.round(seconds / 86400), 'day')
  if (abs < 31536000) return rtf.format(Math.round(seconds / 2592000), 'month')
  return rtf.format(Math.round(seconds / 31536000), 'year')
}

export function exactTime(iso: string | null | undefined, locale: string): string {
  if (!iso) return ''
  const t = Date.parse(iso.endsWith('Z') || /[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`)
  if (Number.isNaN(t)) return iso
  return new Intl.DateTimeFormat(locale, { dateStyle: 'medium', timeStyle: 'medium' }).format(new Date(t))
}

/** hh:mm:ss.mmm of a log line's timestamp. */
export function clockTime(iso: string): string {
  const m = /T(\d\d:\d\d:\d\d(?:\.\d{1,3})?)/.exec(iso)
  return m ? m[1] : iso
}
