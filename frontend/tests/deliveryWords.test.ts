import { afterEach, describe, expect, it } from 'vitest'
import { setLocale } from '../src/i18n'
import { deliveryErrorText } from '../src/i18n/deliveryWords'

/** As the delivery log gives it (backend/tests/integration/test_notifications.py checks the code and params). */
const refused = {
  last_error:
    'refused, nothing sent: the receiver localhost is not reachable from WindFlow: 127.0.0.1 is a loopback address; ' +
    'notifications go to public addresses only (an operator can allow an internal network with NOTIFY_ALLOWED_NETWORKS)',
  last_error_code: 'egress_refused',
  last_error_params: { host: 'localhost', ip: '127.0.0.1', kind: 'loopback', setting: 'NOTIFY_ALLOWED_NETWORKS' },
}

describe('why a notification was not delivered, in the user’s language', () => {
  afterEach(() => setLocale('en'))

  it('words a refused address in French, the kind of address too', () => {
    setLocale('fr')
    const text = deliveryErrorText(refused)
    expect(text).toBe(
      'refusé, rien envoyé : le destinataire localhost n’est pas joignable depuis WindFlow : 127.0.0.1 est une adresse de bouclage ; ' +
        'les notifications ne vont qu’à des adresses publiques (un opérateur peut autoriser un réseau interne avec NOTIFY_ALLOWED_NETWORKS)',
    )
    expect(text).not.toMatch(/refused|loopback|receiver/)
  })

  it('quotes an exception’s name and a mail server’s answer, never translated', () => {
    setLocale('fr')
    expect(
      deliveryErrorText({
        last_error: 'ClientConnectorError: could not reach the receiver',
        last_error_code: 'unreachable',
        last_error_params: { error: 'ClientConnectorError' },
      }),
    ).toBe('destinataire injoignable (« ClientConnectorError »)')
    expect(
      deliveryErrorText({
        last_error: 'the receiver answered 500',
        last_error_code: 'answered',
        last_error_params: { status_code: '500' },
      }),
    ).toBe('le destinataire a répondu 500')
  })

  it('shows the server’s English in English, and a text without a code as it is', () => {
    expect(deliveryErrorText(refused)).toBe(refused.last_error)
    setLocale('fr')
    expect(deliveryErrorText({ last_error: 'something new', last_error_code: null })).toBe('something new')
    expect(deliveryErrorText({ last_error: null })).toBe('')
  })
})
