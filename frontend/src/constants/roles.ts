/** Organisation roles, weakest first (backend Role), and what each may do. */
export type Role = 'viewer' | 'operator' | 'admin' | 'owner'
export const ROLES: readonly Role[] = ['viewer', 'operator', 'admin', 'owner']

export function isRole(value: unknown): value is Role {
  return typeof value === 'string' && (ROLES as readonly string[]).includes(value)
}

export function roleRank(role: Role | null | undefined): number {
  return role ? ROLES.indexOf(role) : -1
}

/** The weakest role each capability needs (mirrors the API's checks). */
export const CAPABILITIES = {
  'deployment.create': 'operator',
  'deployment.operate': 'operator',
  'stack.write': 'operator',
  'stack.delete': 'admin',
  'target.write': 'admin',
  'target.test': 'operator',
  'member.manage': 'admin',
  'audit.read': 'admin',
  'notifications.manage': 'admin',
  'hooks.manage': 'admin',
} as const satisfies Record<string, Role>

export type Capability = keyof typeof CAPABILITIES

export function can(role: Role | null | undefined, capability: Capability, superuser = false): boolean {
  if (superuser) return true
  return roleRank(role) >= roleRank(CAPABILITIES[capability])
}
