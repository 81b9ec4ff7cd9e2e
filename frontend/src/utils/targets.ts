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
