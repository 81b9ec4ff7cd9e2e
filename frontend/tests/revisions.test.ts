/** Revisions in the UI: the diff as rows, the edit form's values, the services of a revision, the store's events. */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createPinia, setActivePinia } from 'pinia'
import { fileTitle, parseUnifiedDiff, sideBySide } from '../src/utils/diff'
import {
  changedValues,
  editValues,
  secretsOptional,
  validate,
  variableRows,
  type VariableSpec,
} from '../src/utils/variables'
import {
  composeServices,
  containersByService,
  portMapping,
  portText,
  serviceRows,
  shortDigest,
} from '../src/utils/services'
import { mergeRevisions } from '../src/composables/useRevisions'
import { createRevision, diffRevisions, listRevisions, rollback, type Revision } from '../src/api/revisions'
import { updateDeployment } from '../src/api/deployments'
import { ApiError } from '../src/api/errors'
import { i18n } from '../src/i18n'
import { RealtimeSocket } from '../src/realtime/socket'
import type { FrameOf } from '../src/realtime/frames'
import { setSocket } from '../src/stores/realtime'
import { useDeploymentsStore } from '../src/stores/deployments'
import { FakeWebSocket } from './fakeSocket'
import { deployment, statusChanged } from './frames'

/** What the API answers (backend revisions.diff: difflib.unified_diff of the compose, then of the values). */
const DIFF = [
  '--- revision 1/compose',
  '+++ revision 2/compose',
  '@@ -2,5 +2,6 @@',
  '   app:',
  '     image: busybox',
  '     environment:',
  '-      GREETING: hello',
  '+      GREETING: bye',
  '       PASSWORD: "***"',
  '+      MODE: fast',
  '--- revision 1/values',
  '+++ revision 2/values',
  '@@ -1,2 +1,2 @@',
  '-greeting: "hello"',
  '-password: ***',
  '+greeting: "bye"',
  '+password: *** (changed)',
  '',
].join('\n')

describe('the diff of two revisions', () => {
  it('reads files, hunks and numbered lines', () => {
    const files = parseUnifiedDiff(DIFF)
    expect(files.map(fileTitle)).toEqual(['compose', 'values'])
    const [compose, values] = files
    expect([compose.added, compose.removed, values.added, values.removed]).toEqual([2, 1, 2, 2])
    const lines = compose.hunks[0].lines
    expect(lines.map((l) => l.kind)).toEqual(['context', 'context', 'context', 'del', 'add', 'context', 'add'])
    expect(lines[3]).toEqual({ kind: 'del', text: '      GREETING: hello', oldNo: 5, newNo: null })
    expect(lines[4]).toEqual({ kind: 'add', text: '      GREETING: bye', oldNo: null, newNo: 5 })
    expect(lines[6]).toEqual({ kind: 'add', text: '      MODE: fast', oldNo: null, newNo: 7 })
  })

  it('lays a removed run next to the added run that replaces it', () => {
    const [compose, values] = parseUnifiedDiff(DIFF)
    const rows = sideBySide(compose.hunks[0])
    expect(rows.map((r) => [r.left?.kind ?? null, r.right?.kind ?? null])).toEqual([
      ['context', 'context'],
      ['context', 'context'],
      ['context', 'context'],
      ['del', 'add'],
      ['context', 'context'],
      [null, 'add'], // an added line faces an empty cell
    ])
    expect(rows[3].left).toEqual({ no: 5, text: '      GREETING: hello', kind: 'del' })
    expect(rows[5].right).toEqual({ no: 7, text: '      MODE: fast', kind: 'add' })
    // Two removed then two added: paired one by one, the changed secret marked as such (never its value).
    const vrows = sideBySide(values.hunks[0])
    expect(vrows.map((r) => [r.left?.text, r.right?.text])).toEqual([
      ['greeting: "hello"', 'greeting: "bye"'],
      ['password: ***', 'password: *** (changed)'],
    ])
  })

  it('counts lines by the hunk header: a removed "-- x" line is not a file header; no diff, no files', () => {
    const tricky = [
      '--- a',
      '+++ b',
      '@@ -1,2 +1,2 @@',
      '--- x',
      '+++ y',
      ' same',
      '\\ No newline at end of file',
    ].join('\n')
    const files = parseUnifiedDiff(tricky)
    expect(files).toHaveLength(1)
    expect(files[0].hunks[0].lines.map((l) => [l.kind, l.text])).toEqual([
      ['del', '-- x'],
      ['add', '++ y'],
      ['context', 'same'],
    ])
    expect(parseUnifiedDiff('')).toEqual([])
    expect(parseUnifiedDiff(null)).toEqual([])
  })
})

describe('the Edit & redeploy form', () => {
  const specs: VariableSpec[] = [
    { name: 'greeting', type: 'string', default: 'hello', required: true },
    { name: 'delay', type: 'integer', default: 4 },
    { name: 'note', type: 'string' },
    { name: 'password', type: 'secret', required: true, default: '{{ generate_password(16) }}' },
    { name: 'mode', type: 'enum', options: [{ value: 'fast', label: 'Fast mode' }, 'safe'], default: 'safe' },
    {
      name: 'db',
      type: 'group',
      label: 'Database',
      variables: [
        { name: 'user', type: 'string', label: 'User', required: true },
        { name: 'pass', type: 'password', label: 'Password' },
      ],
    },
  ]
  const current = {
    greeting: 'bonjour',
    delay: 9,
    note: 'x',
    password: '***',
    mode: 'fast',
    db: { user: 'app', pass: '***' },
    removed: 'gone from the schema',
  }

  it('starts from the current values, secrets blank, values the schema lacks left out', () => {
    expect(editValues(specs, current)).toEqual({
      greeting: 'bonjour',
      delay: 9,
      note: 'x',
      password: null,
      mode: 'fast',
      db: { user: 'app', pass: null },
    })
    // A variable the current values lack (added to the stack since) starts from its default.
    expect(editValues(specs, { greeting: 'hi' }).delay).toBe(4)
  })

  it('sends what changed only: a typed secret, an emptied field as null, groups member by member', () => {
    const values = editValues(specs, current)
    expect(changedValues(specs, values, current)).toEqual({}) // untouched: nothing to send
    values.greeting = 'salut'
    values.note = ''
    ;(values.db as Record<string, unknown>).pass = 's3cret'
    expect(changedValues(specs, values, current)).toEqual({ greeting: 'salut', note: null, db: { pass: 's3cret' } })
    values.delay = 9 // back to its value: not sent
    values.password = '' // blank: keeps the current secret
    expect(changedValues(specs, values, current)).not.toHaveProperty('delay')
    expect(changedValues(specs, values, current)).not.toHaveProperty('password')
  })

  it('a blank required secret passes the checks (it keeps its value); other rules still apply', () => {
    const m = {
      required: 'required',
      integer: 'integer',
      number: 'number',
      min: (n: number) => `min ${n}`,
      max: (n: number) => `max ${n}`,
      minLength: (n: number) => `minlen ${n}`,
      maxLength: (n: number) => `maxlen ${n}`,
      pattern: (p: string) => `pattern ${p}`,
    }
    const values = { ...editValues(specs, current), greeting: '' }
    expect(validate(secretsOptional(specs), values, m)).toEqual({ greeting: 'required' })
    expect(validate(specs, { ...values, greeting: 'x', password: null }, m)).toEqual({}) // a generator: not required
    const strict: VariableSpec[] = [{ name: 'token', type: 'secret', required: true }]
    expect(validate(strict, { token: null }, m)).toEqual({ token: 'required' })
    expect(validate(secretsOptional(strict), { token: null }, m)).toEqual({})
  })

  it('lists the values labelled by the schema, secrets as ***, removed variables by their name', () => {
    const rows = variableRows(
      [...specs.slice(0, 1).map((s) => ({ ...s, label: 'Greeting', description: 'what it says' })), ...specs.slice(1)],
      current,
      (v) => (v ? 'yes' : 'no'),
    )
    expect(rows.map((r) => [r.path, r.label, r.value])).toEqual([
      ['greeting', 'Greeting', 'bonjour'],
      ['delay', 'delay', '9'],
      ['note', 'note', 'x'],
      ['password', 'password', '***'],
      ['mode', 'mode', 'Fast mode'], // an enum shows its option's label
      ['db.user', 'Database › User', 'app'],
      ['db.pass', 'Database › Password', '***'],
      ['removed', 'removed', 'gone from the schema'],
    ])
    expect(rows[0].description).toBe('what it says')
    expect(rows.filter((r) => r.secret).map((r) => r.path)).toEqual(['password', 'db.pass'])
    expect(variableRows([{ name: 'on', type: 'boolean' }], { on: true }, (v) => (v ? 'yes' : 'no'))[0].value).toBe(
      'yes',
    )
  })
})

describe('the services of a revision', () => {
  const COMPOSE = [
    'services:',
    '  web:',
    '    image: nginx:1.27-alpine',
    '    ports: ["8080:80", "127.0.0.1:8443:443/tcp", "9000", {target: 53, published: "5353", protocol: udp}]',
    '    healthcheck:',
    '      test: ["CMD", "true"]',
    '  worker:',
    '    image: busybox:1.36',
    '    healthcheck: {disable: true}',
  ].join('\n')

  it('reads the published ports in every form compose allows', () => {
    expect(portMapping('8080:80')).toEqual({ hostIp: null, published: '8080', target: '80', protocol: 'tcp' })
    expect(portMapping('[::1]:8080:80/udp')).toEqual({
      hostIp: '::1',
      published: '8080',
      target: '80',
      protocol: 'udp',
    })
    expect(portMapping(3000)).toEqual({ hostIp: null, published: null, target: '3000', protocol: 'tcp' })
    expect(portMapping({ published: 1 })).toBeNull()
  })

  it('merges the document, the digests the revision recorded and the containers', () => {
    const services = composeServices(COMPOSE)
    expect(services.map((s) => [s.name, s.image, s.ports.map(portText), s.healthcheck])).toEqual([
      ['web', 'nginx:1.27-alpine', ['8080→80/tcp', '127.0.0.1:8443→443/tcp', '9000/tcp', '5353→53/udp'], true],
      ['worker', 'busybox:1.36', [], false],
    ])
    const digest = 'sha256:' + 'a'.repeat(64)
    const rows = serviceRows(services, [{ service: 'web', image: 'nginx:1.27-alpine', digest }], {
      web: [{ name: 'p-web-1', state: 'running', health: 'healthy', restarts: 0, exitCode: null, ports: [] }],
    })
    expect(rows.map((r) => [r.name, r.digest, r.containers?.length])).toEqual([
      ['web', digest, 1],
      ['worker', null, 0], // reported, and none: the page says so
    ])
    expect(serviceRows(services, [], null)[0].containers).toBeNull() // not reported at all
    // the document not read yet: a service known from its recorded image has no known healthcheck (not "none")
    expect(serviceRows([], [{ service: 'web', image: 'nginx:1.27-alpine', digest }], null)[0].healthcheck).toBeNull()
    expect(rows.map((r) => r.healthcheck)).toEqual([true, false])
    expect(rows[0].livePorts).toBe(false) // no container bound a port: the document's ports
    expect(shortDigest(digest)).toBe('sha256:aaaaaaaaaaaa')
    expect(composeServices('not: [valid')).toEqual([])
  })

  it('reads the containers the engine reports: bound ports once per address, live in the row', () => {
    const reported = containersByService([
      {
        service: 'web',
        containers: [
          {
            name: 'p-web-1',
            state: 'running',
            health: 'healthy',
            exit_code: null,
            restarts: 2,
            ports: [
              { container_port: '80/tcp', host_ip: '0.0.0.0', host_port: '32768' },
              { container_port: '80/tcp', host_ip: '::', host_port: '32768' }, // the same binding on IPv6
              { container_port: '443/tcp', host_ip: '127.0.0.1', host_port: '8443' },
              { container_port: '9000/tcp', host_ip: null, host_port: null }, // exposed, not published
            ],
          },
        ],
      },
      { service: 'worker', containers: [] },
    ])
    expect(reported.web[0]).toMatchObject({ name: 'p-web-1', state: 'running', restarts: 2, exitCode: null })
    expect(reported.web[0].ports.map(portText)).toEqual(['32768→80/tcp', '127.0.0.1:8443→443/tcp'])
    const rows = serviceRows(composeServices(COMPOSE), [], reported)
    expect(rows[0].livePorts).toBe(true)
    expect(rows[0].ports.map(portText)).toEqual(['32768→80/tcp', '127.0.0.1:8443→443/tcp'])
    expect(rows[1].containers).toEqual([]) // reported with none: the page says "no container"
  })
})

describe('revisions pages', () => {
  const rev = (number: number, outcome: Revision['outcome'] = 'superseded'): Revision => ({
    number,
    reason: 'update',
    rollback_of: null,
    outcome,
    stack_id: 's',
    stack_version: '1.0',
    variables: {},
    images: [],
    error_message: null,
    created_at: '2026-01-01T00:00:00Z',
    created_by: 'a@example.com',
    finished_at: null,
  })
  it('newest first, each number once, the newer copy kept', () => {
    const merged = mergeRevisions([rev(3, 'running'), rev(2, 'failed')], [rev(2), rev(1)])
    expect(merged.map((r) => [r.number, r.outcome])).toEqual([
      [3, 'running'],
      [2, 'failed'],
      [1, 'superseded'],
    ])
  })
})

describe('the revisions API module', () => {
  afterEach(() => vi.unstubAllGlobals())
  function answer(...bodies: { status?: number; body: unknown }[]): { method: string; path: string; body: string }[] {
    const calls: { method: string; path: string; body: string }[] = []
    vi.stubGlobal(
      'fetch',
      vi.fn(async (req: Request) => {
        const u = new URL(req.url)
        calls.push({ method: req.method, path: decodeURIComponent(u.pathname + u.search), body: await req.text() })
        const next = bodies.shift() ?? { status: 500, body: { detail: 'unexpected' } }
        return new Response(JSON.stringify(next.body), {
          status: next.status ?? 200,
          headers: { 'Content-Type': 'application/json' },
        })
      }),
    )
    return calls
  }

  it('lists, creates, rolls back and compares by the routes of the API', async () => {
    const calls = answer(
      { body: { items: [], total: 0, total_is_exact: true, next_cursor: 'c2' } },
      { status: 201, body: { number: 2 } },
      { status: 201, body: { number: 3 } },
      { body: { diff: '--- revision 1/compose' } },
      { body: { ...deployment('d1'), auto_rollback: false } },
    )
    expect((await listRevisions('d1', { limit: 20, cursor: 'c1' })).next_cursor).toBe('c2')
    expect((await createRevision('d1', { variables: { greeting: 'x' }, stack_version: 'latest' })).number).toBe(2)
    expect((await rollback('d1', 1)).number).toBe(3)
    expect(await diffRevisions('d1', 1, 3)).toBe('--- revision 1/compose')
    expect((await updateDeployment('d1', { auto_rollback: false })).auto_rollback).toBe(false)
    expect(calls.map((c) => `${c.method} ${c.path} ${c.body}`)).toEqual([
      'GET /api/v1/deployments/d1/revisions?limit=20&cursor=c1 ',
      'POST /api/v1/deployments/d1/revisions {"variables":{"greeting":"x"},"stack_version":"latest"}',
      'POST /api/v1/deployments/d1/rollback {"revision":1}',
      'GET /api/v1/deployments/d1/revisions/1/diff/3 ',
      'PATCH /api/v1/deployments/d1 {"auto_rollback":false}',
    ])
  })

  it("a change during a rollout is a 409 naming the revision, worded in the user's language", async () => {
    answer({
      status: 409,
      body: {
        detail:
          'revision 2 is being rolled out (deploying); wait for it to end, or cancel it, before changing the deployment',
        code: 'rollout_in_progress',
        params: { revision: 2, status: 'deploying' },
      },
    })
    const err = await createRevision('d1', { variables: { greeting: 'x' } }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ApiError)
    expect((err as ApiError).status).toBe(409)
    expect((err as ApiError).text).toContain('being rolled out')
    i18n.global.locale.value = 'fr'
    try {
      expect((err as ApiError).text).toBe(
        'La révision 2 est en cours de déploiement : attendez qu’elle se termine, ou annulez-la, avant de modifier le déploiement.',
      )
    } finally {
      i18n.global.locale.value = 'en'
    }
  })

  it('every reason, outcome and container state has its words in both languages', () => {
    for (const locale of ['en', 'fr'] as const) {
      for (const r of ['created', 'update', 'rollback', 'automatic_rollback'])
        expect(i18n.global.te(`revisions.reasons.${r}`, locale), `${locale} ${r}`).toBe(true)
      for (const o of ['pending', 'deploying', 'running', 'failed', 'rolled_back', 'superseded'])
        expect(i18n.global.te(`revisions.outcomes.${o}`, locale), `${locale} ${o}`).toBe(true)
      for (const code of ['revision_update', 'revision_rollback', 'automatic_rollback', 'automatic_rollback_failed'])
        expect(i18n.global.te(`history.${code}`, locale), `${locale} history.${code}`).toBe(true)
    }
  })
})

describe('the deployments store and revisions', () => {
  beforeEach(() => {
    FakeWebSocket.instances = []
    localStorage.setItem('windflow.access', 'tok')
    setSocket(
      new RealtimeSocket({
        url: () => 'ws://t',
        token: () => 'tok',
        create: (u) => new FakeWebSocket(u),
        pingIntervalMs: 60_000,
      }),
    )
    setActivePinia(createPinia())
  })
  afterEach(() => vi.unstubAllGlobals())

  function rolledBack(id: string): FrameOf<'DEPLOYMENT_ROLLED_BACK'> {
    return {
      type: 'DEPLOYMENT_ROLLED_BACK',
      deployment_id: id,
      organization_id: 'o1',
      timestamp: '2026-01-01T00:00:05Z',
      data: {
        from_revision: 2,
        to_revision: 1,
        revision: 3,
        reason: 'app exited with code 3',
        reason_code: null,
        reason_params: {},
      },
    }
  }

  it('a status event moves the row to its revision; an automatic rollback is kept for the page to say', async () => {
    let served = deployment('a', { status: 'deploying', revision: 2 })
    vi.stubGlobal(
      'fetch',
      vi.fn(async (req: Request) => {
        const body = req.url.includes('/api/v1/deployments?') ? { items: [served], total: 1 } : served
        return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json' } })
      }),
    )
    const store = useDeploymentsStore()
    await store.load('o1', { status: [], stack_id: null, target_id: null })
    const ws = FakeWebSocket.last()
    ws.open()
    expect(store.byId.a.revision).toBe(2)

    served = deployment('a', { status: 'pending', revision: 3 })
    ws.receive(rolledBack('a'))
    expect(store.byId.a.revision).toBe(3) // at once, before the row is read again
    expect(store.rollbacks.a).toMatchObject({
      from_revision: 2,
      to_revision: 1,
      revision: 3,
      at: '2026-01-01T00:00:05Z',
    })
    await vi.waitFor(() => expect(store.byId.a.status).toBe('pending')) // and the row is read again

    served = deployment('a', { status: 'running', revision: 4 })
    ws.receive(statusChanged('a', 'running', 'deploying', { revision: 4 }))
    expect(store.byId.a.revision).toBe(4)
    ws.receive(statusChanged('a', 'running', 'running', { revision: null })) // no revision: kept
    expect(store.byId.a.revision).toBe(4)
    // Another organisation's rollback changes nothing.
    ws.receive({ ...rolledBack('a'), organization_id: 'other' })
    expect(store.byId.a.revision).toBe(4)
  })
})
