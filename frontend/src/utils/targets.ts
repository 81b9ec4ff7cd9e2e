/** What the UI mirrors of the API's target rules (the API checks them again). */

/** Whether an endpoint reaches the WindFlow host itself (its engine is root there): only superusers manage those. */
export function reachesHost(endpoint: string): boolean {
  const [scheme, rest = ''] = endpoint.split('://')
  if (scheme === 'unix') return true
  const host = rest.replace(/^[^@]*@/, '').replace(/\/.*$/, '')
  const name = host.startsWith('[') ? host.slice(1, host.indexOf(']')) : host.replace(/:\d+$/, '')
  return (
    name === 'localhost' ||
    name === '::1' ||
    name === '::' ||
    name === '0.0.0.0' ||
    /^127\.\d+\.\d+\.\d+$/.test(name) ||
    /^::ffff:127\./.test(name)
  )
}

/** The compose policy's options, in the order the editor shows them. */
export const POLICY_OPTIONS = [
  'allow_host_binds',
  'allow_docker_socket',
  'allow_privileged',
  'allow_capabilities',
  'allow_devices',
  'allow_host_namespaces',
  'allow_security_opt',
  'allow_sysctls',
  'allow_foreign_containers',
  'allow_external_resources',
] as const
export type PolicyOption = (typeof POLICY_OPTIONS)[number]

/** Where a target's work runs, as the Targets page says it (`placed`, `host`, `served`, `workers` of the API). */
export interface Placement {
  /** `shared`: any worker without a declaration (or the server itself); `placed`: its own queue */
  kind: 'shared' | 'placed'
  /** a placed target that no live worker serves: its deployments wait, stop and delete are refused */
  unserved: boolean
  /** live workers that run its work (0 for a target that is not placed: the server runs it) */
  workers: number
  host: string | null
  /** the names of the workers that declare it (superusers only: `/system/workers` hides them from others) */
  names: string[]
}

export function placementOf(
  target: { id: string; placed: boolean; host: string | null; served: boolean; workers: number },
  seen: { name: string | null; alive: boolean; state?: string; targets?: string[] | null }[] = [],
): Placement {
  const names = target.placed
    ? seen
        .filter((w) => w.alive && w.state !== 'degraded' && w.name && (w.targets ?? []).includes(target.id))
        .map((w) => w.name as string)
    : []
  return {
    kind: target.placed ? 'placed' : 'shared',
    unserved: target.placed && !target.served,
    workers: target.workers,
    host: target.host,
    names,
  }
}
