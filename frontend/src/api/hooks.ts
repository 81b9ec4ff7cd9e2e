/** Deploy hooks of a deployment or of a stack (admins) over the typed client. */
import { api, unwrap } from './client'
import type { components } from './schema'

export type Hook = components['schemas']['HookRead']
export type CreatedHook = components['schemas']['HookCreated']
export type HookCall = components['schemas']['HookCallRead']
/** Whose hooks: a deployment's, or a stack's (a call rolls out the stack's deployments). */
export type HookOwner = { kind: 'deployment' | 'stack'; id: string }

export function listHooks(owner: HookOwner): Promise<Hook[]> {
  return owner.kind === 'stack'
    ? unwrap(api.GET('/api/v1/stacks/{stack_id}/hooks', { params: { path: { stack_id: owner.id } } }))
    : unwrap(api.GET('/api/v1/deployments/{deployment_id}/hooks', { params: { path: { deployment_id: owner.id } } }))
}

export function createHook(
  owner: HookOwner,
  name: string,
  allowed: string[],
  branch: string | null,
): Promise<CreatedHook> {
  const body = { name, allowed_variables: allowed, branch }
  return owner.kind === 'stack'
    ? unwrap(api.POST('/api/v1/stacks/{stack_id}/hooks', { params: { path: { stack_id: owner.id } }, body }))
    : unwrap(
        api.POST('/api/v1/deployments/{deployment_id}/hooks', { params: { path: { deployment_id: owner.id } }, body }),
      )
}

export function rotateHook(owner: HookOwner, hookId: string): Promise<CreatedHook> {
  return owner.kind === 'stack'
    ? unwrap(
        api.POST('/api/v1/stacks/{stack_id}/hooks/{hook_id}/rotate', {
          params: { path: { stack_id: owner.id, hook_id: hookId } },
        }),
      )
    : unwrap(
        api.POST('/api/v1/deployments/{deployment_id}/hooks/{hook_id}/rotate', {
          params: { path: { deployment_id: owner.id, hook_id: hookId } },
        }),
      )
}

export function setHookEnabled(owner: HookOwner, hookId: string, enabled: boolean): Promise<Hook> {
  return owner.kind === 'stack'
    ? unwrap(
        api.PATCH('/api/v1/stacks/{stack_id}/hooks/{hook_id}', {
          params: { path: { stack_id: owner.id, hook_id: hookId } },
          body: { enabled },
        }),
      )
    : unwrap(
        api.PATCH('/api/v1/deployments/{deployment_id}/hooks/{hook_id}', {
          params: { path: { deployment_id: owner.id, hook_id: hookId } },
          body: { enabled },
        }),
      )
}

export async function deleteHook(owner: HookOwner, hookId: string): Promise<void> {
  await (owner.kind === 'stack'
    ? unwrap(
        api.DELETE('/api/v1/stacks/{stack_id}/hooks/{hook_id}', {
          params: { path: { stack_id: owner.id, hook_id: hookId } },
        }),
      )
    : unwrap(
        api.DELETE('/api/v1/deployments/{deployment_id}/hooks/{hook_id}', {
          params: { path: { deployment_id: owner.id, hook_id: hookId } },
        }),
      ))
}

export function hookCalls(owner: HookOwner, hookId: string): Promise<HookCall[]> {
  return owner.kind === 'stack'
    ? unwrap(
        api.GET('/api/v1/stacks/{stack_id}/hooks/{hook_id}/calls', {
          params: { path: { stack_id: owner.id, hook_id: hookId } },
        }),
      )
    : unwrap(
        api.GET('/api/v1/deployments/{deployment_id}/hooks/{hook_id}/calls', {
          params: { path: { deployment_id: owner.id, hook_id: hookId } },
        }),
      )
}
