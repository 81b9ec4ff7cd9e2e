import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createPinia, setActivePinia } from 'pinia'
import { toApiError } from '../src/api/errors'
import { i18n, setLocale } from '../src/i18n'
import { RealtimeSocket } from '../src/realtime/socket'
import { holdOrganization, setSocket } from '../src/stores/realtime'
import { useDeploymentsStore } from '../src/stores/deployments'
import { confirm, confirmBusy, confirmNow, confirmRequest } from '../src/composables/useConfirm'
import { durationSeconds, stopGraceSeconds } from '../src/utils/compose'
import { reachesHost } from '../src/utils/targets'
import { FakeWebSocket } from './fakeSocket'
import { deployment } from './frames'

describe('server messages in the user’s language', () => {
  afterEach(() => setLocale('en'))

  const tooLong = {
    detail: 'name: String should have at most 100 characters',
    code: 'validation_error',
    errors: [
      {
        field: 'name',
        message: 'String should have at most 100 characters',
        type: 'string_too_long',
        params: { max_length: 100 },
      },
    ],
  }

  it('a 422 field reads in French from its type and limits; English keeps the server’s text', () => {
    setLocale('fr')
    const fr = toApiError(422, tooLong)
    expect(fr.fields).toEqual({ name: 'Au plus 100 caractères' })
    expect(fr.text).toBe('name: Au plus 100 caractères')
    setLocale('en')
    expect(toApiError(422, tooLong).fields).toEqual({ name: 'String should have at most 100 characters' })
  })

  it('a coded error reads in French with its parameters; an unknown code falls back to the detail', () => {
    setLocale('fr')
    const refused = toApiError(403, {
      detail: 'this needs the operator role or higher in the organization; you are viewer',
      code: 'role_required',
      params: { minimum: 'operator', role: 'viewer' },
    })
    expect(refused.text).toBe('Il faut le rôle operator ou supérieur dans l’organisation ; vous êtes viewer.')
    expect(refused.detail).toContain('you are viewer') // the server's English stays available
    expect(toApiError(409, { detail: 'something new', code: 'brand_new_code' }).text).toBe('something new')
    expect(
      toApiError(422, {
        detail: 'x',
        code: 'compose_policy_denied',
        params: { rules: ['allow_host_binds', 'allow_privileged'] },
      }).text,
    ).toContain('allow_host_binds, allow_privileged')
    setLocale('en')
    expect(refused.text).toBe('this needs the operator role or higher in the organization; you are viewer')
    expect(i18n.global.locale.value).toBe('en')
  })
  it("the stack editor's template and YAML errors read in French from their reason, line and values", () => {
    const undefinedName = {
      detail: "rendering the template with the default values failed: template line 4: 'port' is undefined",
      code: 'template_error',
      params: { reason: 'undefined', name: 'port', line: 4, defaults: true },
    }
    const syntax = {
      detail: "template line 3: syntax error: unexpected '}'",
      code: 'template_error',
      params: { reason: 'syntax', line: 3, message: "unexpected '}'" },
    }
    const bomb = {
      detail:
        'invalid YAML: anchors and aliases expand the document to more than 10000 nodes (limit YAML_MAX_NODES); ...',
      code: 'yaml_limit',
      params: { reason: 'nodes', max: 10000 },
    }
    const hostFiles = {
      detail: 'services.web.env_file is not allowed: env_file makes compose read a file of the host',
      code: 'compose_forbidden',
      params: { rules: ['host_files'], paths: ['services.web.env_file'] },
    }
    setLocale('fr')
    const e = toApiError(422, undefinedName)
    expect(e.text).toBe(
      'Le modèle ne se rend pas avec les valeurs par défaut, ligne 4 : « port » n’est pas défini : déclarez cette variable ou corrigez son nom',
    )
    expect(e.reasonText).toBe('« port » n’est pas défini : déclarez cette variable ou corrigez son nom')
    expect(toApiError(422, syntax).text).toBe("Le modèle ne se rend pas, ligne 3 : erreur de syntaxe (unexpected '}')")
    expect(toApiError(422, bomb).text).toBe(
      'Le YAML dépasse une limite : les ancres et alias étendent le document au-delà de 10000 nœuds (limite YAML_MAX_NODES)',
    )
    expect(toApiError(422, hostFiles).text).toBe(
      'Ce document lit des fichiers de l’hôte, ce que toute cible refuse : services.web.env_file',
    )
    // a reason this UI does not know: the server's detail stands in for it
    const newer = toApiError(422, {
      detail: 'template line 2: something new',
      code: 'template_error',
      params: { reason: 'x', line: 2 },
    })
    expect(newer.reasonText).toBeNull()
    expect(newer.text).toBe('Le modèle ne se rend pas, ligne 2 : template line 2: something new')
    // compose's own words: quoted and marked as the tool's, the sentence around them in French
    const rejected = toApiError(422, {
      detail: 'invalid compose document: docker compose rejected it: services.web.ports must be a list',
      code: 'invalid_compose',
      params: { reason: 'rejected', message: 'services.web.ports must be a list' },
    })
    expect(rejected.text).toBe(
      'Document compose invalide : docker compose l’a refusé ; message de l’outil (en anglais) : « services.web.ports must be a list »',
    )
    setLocale('en')
    expect(toApiError(422, undefinedName).text).toBe(undefinedName.detail)
    expect(toApiError(422, undefinedName).reasonText).toBeNull()
  })
})

describe('what a slow stop waits for', () => {
  it('reads compose durations', () => {
    expect(['10s', '1m30s', '1.5s', '500ms', '2h', 4, 'soon'].map(durationSeconds)).toEqual([
      10,
      90,
      1.5,
      0.5,
      7200,
      4,
      null,
    ])
  })

  it('is the longest grace period of the services, Docker’s 10 s by default', () => {
    expect(stopGraceSeconds('services:\n  a: {image: x}\n  b: {image: x, stop_grace_period: 1m}\n')).toBe(60)
    expect(stopGraceSeconds('services:\n  a: {image: x, stop_grace_period: 4s}\n')).toBe(4)
    expect(stopGraceSeconds('services:\n  a: {image: x}\n')).toBe(10)
    expect(stopGraceSeconds('not: [yaml')).toBe(10)
    expect(stopGraceSeconds(null)).toBe(10)
  })
})

describe('targets on the WindFlow host (superusers only, as the API rules)', () => {
  it('are the local socket and loopback engines', () => {
    for (const e of [
      'unix:///var/run/docker.sock',
      'tcp://127.0.0.1:2375',
      'tcp://localhost:2376',
      'tcp://[::1]:2375',
      'tcp://0.0.0.0:2375',
      'ssh://root@127.0.0.2',
    ])
      expect(reachesHost(e), e).toBe(true)
    for (const e of ['tcp://192.0.2.10:2376', 'ssh://deploy@build.example.com', 'tcp://127.example.com:2375'])
      expect(reachesHost(e), e).toBe(false)
  })
})

describe('an action is sent once', () => {
  beforeEach(() => {
    setSocket(new RealtimeSocket({ url: () => 'ws://t', token: () => 'tok', create: (u) => new FakeWebSocket(u) }))
    setActivePinia(createPinia())
  })
  afterEach(() => {
    vi.unstubAllGlobals()
    setSocket(null)
  })

  it('the store refuses a second action on a deployment while one is in flight, and says which runs', async () => {
    let answer: (r: Response) => void = () => {}
    const calls: string[] = []
    vi.stubGlobal(
      'fetch',
      vi.fn((req: Request) => {
        calls.push(`${req.method} ${new URL(req.url).pathname}`)
        return new Promise<Response>((resolve) => (answer = resolve))
      }),
    )
    const store = useDeploymentsStore()
    const first = store.act('d1', 'stop')
    expect(store.inFlight).toEqual({ d1: 'stop' })
    expect(await store.act('d1', 'stop')).toBe(false) // a double click
    expect(await store.act('d1', 'delete')).toBe(false)
    await vi.waitFor(() => expect(calls).toHaveLength(1))
    answer(
      new Response(JSON.stringify(deployment('d1', { status: 'stopped' })), {
        status: 200,
        headers: { 'Content-Type': 'application/json' },
      }),
    )
    expect(await first).toBe(true)
    expect(store.inFlight).toEqual({})
    expect(calls).toEqual(['POST /api/v1/deployments/d1/stop'])
  })

  it('an accepted stop or delete (202) stays in flight until the status moves on or the row goes', async () => {
    const answers: Record<string, unknown> = {
      'POST /api/v1/deployments/d1/stop': deployment('d1', { status: 'stopping' }),
      'DELETE /api/v1/deployments/d2': deployment('d2', { status: 'deleting' }),
    }
    vi.stubGlobal(
      'fetch',
      vi.fn(async (req: Request) => {
        const body = answers[`${req.method} ${new URL(req.url).pathname}`]
        return new Response(JSON.stringify(body), { status: 202, headers: { 'Content-Type': 'application/json' } })
      }),
    )
    const store = useDeploymentsStore()
    let stopped = false
    const stop = store.act('d1', 'stop').then((sent) => (stopped = sent))
    await vi.waitFor(() => expect(store.byId.d1?.status).toBe('stopping'))
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(stopped).toBe(false)
    expect(store.inFlight).toEqual({ d1: 'stop' }) // the row's transition and the dialog's wait go on
    store.byId.d1!.status = 'stopped' // what the socket's DEPLOYMENT_STATUS_CHANGED does
    await stop
    expect(stopped).toBe(true)
    expect(store.inFlight).toEqual({})

    let deleted = false
    const remove = store.act('d2', 'delete').then((sent) => (deleted = sent))
    await vi.waitFor(() => expect(store.byId.d2?.status).toBe('deleting'))
    expect(store.inFlight).toEqual({ d2: 'delete' })
    delete store.byId.d2 // DEPLOYMENT_DELETED
    await remove
    expect(deleted).toBe(true)
    expect(store.inFlight).toEqual({})
  })

  it('the confirmation runs its action once, however often it is pressed', async () => {
    let release: () => void = () => {}
    const run = vi.fn(() => new Promise<void>((resolve) => (release = resolve)))
    confirm({ title: 't', content: 'c', confirmText: 'Stop deployment', cancelText: 'Keep it running', run })
    const pressed = confirmNow()
    void confirmNow()
    void confirmNow()
    expect(confirmBusy.value).toBe(true)
    release()
    await pressed
    expect(run).toHaveBeenCalledTimes(1)
    expect(confirmRequest.value).toBeNull() // closed once done
  })

  it('list pages share one organisation subscription', () => {
    const s = new RealtimeSocket({ url: () => 'ws://t', token: () => 'tok', create: (u) => new FakeWebSocket(u) })
    setSocket(s)
    const a = holdOrganization('o1')
    const b = holdOrganization('o1')
    FakeWebSocket.last().open()
    const subscribes = () => FakeWebSocket.last().sent.filter((f) => f.type === 'subscribe')
    expect(subscribes()).toEqual([{ type: 'subscribe', organization_id: 'o1' }])
    a()
    a() // released twice: counted once
    expect(FakeWebSocket.last().sent.some((f) => f.type === 'unsubscribe')).toBe(false) // b still holds it
    b()
    expect(FakeWebSocket.last().sent.at(-1)).toEqual({ type: 'unsubscribe', organization_id: 'o1' })
  })
})
