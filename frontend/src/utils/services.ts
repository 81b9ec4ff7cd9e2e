/**
 * The services of a deployment's current revision as its page lists them: each service of the rendered compose
 * document (its image, published ports, whether it has a healthcheck), the image and digest the revision
 * recorded for it, and, when the server reports them, its containers' state.
 */
import { parse } from 'yaml'

export interface ComposeService {
  name: string
  image: string | null
  /** Published ports as "host:published→target/protocol" ("8080→80/tcp", "127.0.0.1:8443→443/tcp"). */
  ports: PortMapping[]
  /** null: not known (a service the document, not read yet or unreadable, does not name) */
  healthcheck: boolean | null
}

export interface PortMapping {
  hostIp: string | null
  /** null: Docker picks a host port when the container starts. */
  published: string | null
  target: string
  protocol: string
}

/** One container of a service, as the server reports it (`GET /deployments/{id}/services`). */
export interface ContainerState {
  name: string
  state: string
  health: string | null
  restarts: number | null
  exitCode: number | null
  /** Its published ports, as the engine bound them. */
  ports: PortMapping[]
}

/** `GET /deployments/{id}/services`' items, as the API gives them. */
export interface ReportedService {
  service: string
  containers: {
    name: string
    state: string
    health: string | null
    exit_code: number | null
    restarts: number
    ports: { container_port: string; host_ip: string | null; host_port: string | null }[]
  }[]
}

/**
 * The containers by service. Published ports only, each once: Docker binds a port on IPv4 and IPv6 alike
 * (0.0.0.0 and ::), which reads as one binding on every address.
 */
export function containersByService(items: ReportedService[]): Record<string, ContainerState[]> {
  const out: Record<string, ContainerState[]> = {}
  for (const item of items) {
    out[item.service] = item.containers.map((c) => {
      const ports: PortMapping[] = []
      for (const p of c.ports) {
        if (!p.host_port) continue
        const [target, protocol = 'tcp'] = p.container_port.split('/')
        const hostIp = p.host_ip && p.host_ip !== '0.0.0.0' && p.host_ip !== '::' ? p.host_ip : null
        const mapping = { hostIp, published: p.host_port, target, protocol }
        if (!ports.some((q) => portText(q) === portText(mapping))) ports.push(mapping)
      }
      return { name: c.name, state: c.state, health: c.health, restarts: c.restarts, exitCode: c.exit_code, ports }
    })
  }
  return out
}

export interface ServiceRow extends ComposeService {
  /** The ports are those the containers were bound to (else the document's, some without a host port yet). */
  livePorts: boolean
  /** The image the revision recorded (as the document names it), else the document's. */
  recordedImage: string | null
  digest: string | null
  /** Bytes the image takes on the engine, as the pull recorded it (null: not recorded). */
  size: number | null
  /** null: the server does not report containers; [] : it reports none. */
  containers: ContainerState[] | null
}

function text(v: unknown): string | null {
  return typeof v === 'string' || typeof v === 'number' ? String(v) : null
}

/** A compose `ports` entry (short "[ip:][host:]target[/proto]" or long form) as a mapping; null if unreadable. */
export function portMapping(entry: unknown): PortMapping | null {
  if (entry && typeof entry === 'object' && !Array.isArray(entry)) {
    const e = entry as Record<string, unknown>
    const target = text(e.target)
    if (!target) return null
    return {
      hostIp: text(e.host_ip),
      published: text(e.published),
      target,
      protocol: text(e.protocol) ?? 'tcp',
    }
  }
  const raw = text(entry)
  if (!raw) return null
  const [spec, protocol = 'tcp'] = raw.split('/')
  // An IPv6 host address is bracketed: "[::1]:8080:80".
  const v6 = /^\[([^\]]+)\]:(.*)$/.exec(spec)
  const parts = v6 ? [v6[1], ...v6[2].split(':')] : spec.split(':')
  if (parts.length === 1) return { hostIp: null, published: null, target: parts[0], protocol }
  if (parts.length === 2) return { hostIp: null, published: parts[0] || null, target: parts[1], protocol }
  return { hostIp: parts[0] || null, published: parts[1] || null, target: parts[2], protocol }
}

/** The services of a rendered compose document, in its order; [] when it cannot be read. */
export function composeServices(compose: string | null | undefined): ComposeService[] {
  let doc: unknown
  try {
    doc = compose ? parse(compose) : null
  } catch {
    return []
  }
  const services = (doc as { services?: unknown } | null)?.services
  if (!services || typeof services !== 'object' || Array.isArray(services)) return []
  return Object.entries(services as Record<string, unknown>).map(([name, raw]) => {
    const s = (raw && typeof raw === 'object' ? raw : {}) as Record<string, unknown>
    const hc = s.healthcheck as Record<string, unknown> | undefined
    const disabled = !!hc && (hc.disable === true || (Array.isArray(hc.test) && hc.test[0] === 'NONE'))
    return {
      name,
      image: text(s.image),
      ports: (Array.isArray(s.ports) ? s.ports : []).map(portMapping).filter((p): p is PortMapping => !!p),
      healthcheck: !!hc && !disabled,
    }
  })
}

/** A mapping as one short text: "127.0.0.1:8080→80/tcp", "8080→80/tcp", or "80/tcp" (random host port). */
export function portText(p: PortMapping): string {
  const host = p.published ? `${p.hostIp ? `${p.hostIp}:` : ''}${p.published}→` : ''
  return `${host}${p.target}/${p.protocol}`
}

/** "sha256:0123456789abcdef…" → "sha256:0123456789ab" (the full digest stays in a title). */
export function shortDigest(digest: string | null | undefined, length = 12): string {
  if (!digest) return ''
  const [algo, hex] = digest.includes(':') ? digest.split(':', 2) : ['', digest]
  return `${algo ? `${algo}:` : ''}${hex.slice(0, length)}`
}

/**
 * The rows of the services table: the document's services (then any service only the revision's images or the
 * containers name), each with its recorded image and digest and its containers.
 */
export function serviceRows(
  services: ComposeService[],
  images: { service: string; image: string; digest: string | null; size?: number | null }[],
  containers: Record<string, ContainerState[]> | null,
): ServiceRow[] {
  const byImage = new Map(images.map((i) => [i.service, i]))
  const names = [...services.map((s) => s.name)]
  for (const extra of [...images.map((i) => i.service), ...Object.keys(containers ?? {})])
    if (!names.includes(extra)) names.push(extra)
  return names.map((name) => {
    const s = services.find((x) => x.name === name) ?? { name, image: null, ports: [], healthcheck: null }
    const recorded = byImage.get(name)
    const mine = containers ? (containers[name] ?? []) : null
    const bound: PortMapping[] = []
    for (const c of mine ?? [])
      for (const p of c.ports) if (!bound.some((q) => portText(q) === portText(p))) bound.push(p)
    return {
      ...s,
      ports: bound.length ? bound : s.ports,
      livePorts: bound.length > 0,
      recordedImage: recorded?.image ?? s.image,
      digest: recorded?.digest ?? null,
      size: recorded?.size ?? null,
      containers: mine,
    }
  })
}

/**
 * An image reference split as Docker reads it: "registry:5000/team/api:1.4" → repository
 * "registry:5000/team/api", tag "1.4"; no tag means "latest" (unless the reference names a digest,
 * "app@sha256:…", which has no tag).
 */
export function splitImage(reference: string): { repository: string; tag: string | null } {
  const at = reference.indexOf('@')
  const named = at >= 0 ? reference.slice(0, at) : reference
  const slash = named.lastIndexOf('/')
  const colon = named.lastIndexOf(':')
  if (colon > slash) return { repository: named.slice(0, colon), tag: named.slice(colon + 1) }
  return { repository: named, tag: at >= 0 ? null : 'latest' }
}

/** Bytes as the engine's own units: "4.3 MB", "812 kB", "1.20 GB" (decimal, like `docker image ls`). */
export function imageSize(bytes: number): string {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`
  if (bytes >= 1e3) return `${Math.round(bytes / 1e3)} kB`
  return `${bytes} B`
}
