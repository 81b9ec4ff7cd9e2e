import { beforeEach, describe, expect, it } from 'vitest'
import { createPinia, setActivePinia } from 'pinia'
import { can, ROLES, type Role } from '../src/constants/roles'
import { ACTIONS_BY_STATUS, STATUSES } from '../src/constants/deployments'
import { availableActions } from '../src/composables/useDeploymentActions'
import { useAuthStore } from '../src/stores/auth'

describe('role gating', () => {
  it.each([
    [
      'viewer',
      {
        'deployment.create': false,
        'deployment.operate': false,
        'stack.write': false,
        'target.write': false,
        'member.manage': false,
      },
    ],
    [
      'operator',
      {
        'deployment.create': true,
        'deployment.operate': true,
        'stack.write': true,
        'target.write': false,
        'member.manage': false,
      },
    ],
    [
      'admin',
      {
        'deployment.create': true,
        'deployment.operate': true,
        'stack.write': true,
        'target.write': true,
        'member.manage': true,
      },
    ],
    [
      'owner',
      {
        'deployment.create': true,
        'deployment.operate': true,
        'stack.write': true,
        'target.write': true,
        'member.manage': true,
      },
    ],
  ] as const)('%s', (role, expected) => {
    for (const [capability, allowed] of Object.entries(expected)) {
      expect(can(role as Role, capability as keyof typeof expected), `${role} ${capability}`).toBe(allowed)
    }
  })

  it('no role means nothing, a superuser everything', () => {
    expect(can(null, 'deployment.create')).toBe(false)
    expect(can(null, 'member.manage', true)).toBe(true)
  })

  it('a viewer is offered no lifecycle action in any status; an operator those of the state machine', () => {
    for (const status of STATUSES) {
      expect(availableActions({ status }, false)).toEqual([])
      expect(availableActions({ status }, true)).toEqual([...ACTIONS_BY_STATUS[status]])
    }
    expect(ROLES).toEqual(['viewer', 'operator', 'admin', 'owner'])
  })

  describe('auth store', () => {
    beforeEach(() => {
      localStorage.clear()
      setActivePinia(createPinia())
    })
    it('takes the role of the selected organisation', () => {
      const auth = useAuthStore()
      auth.me = {
        id: 'u',
        email: 'v@x.io',
        full_name: null,
        is_active: true,
        is_superuser: false,
        created_at: '2026-01-01T00:00:00Z',
        default_organization_id: 'a',
        memberships: [
          { organization_id: 'a', organization_name: 'A', role: 'viewer' },
          { organization_id: 'b', organization_name: 'B', role: 'operator' },
        ],
      }
      auth.selectOrganization('a')
      expect(auth.role).toBe('viewer')
      expect(auth.can('deployment.create')).toBe(false)
      auth.selectOrganization('b')
      expect(auth.can('deployment.create')).toBe(true)
      expect(localStorage.getItem('windflow.organization')).toBe('b')
    })
  })
})
