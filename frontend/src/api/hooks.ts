/** A deployment's deploy hooks (admins) over the typed client. */
import { api, unwrap } from './client'
import type { components } from './schema'

export type Hook = components['schemas']['HookRead']
export type CreatedHook = components['schemas']['HookCreated']
export type HookCall = components['schemas']['HookCallRead']

const path = (deploymentId: string) => ({ deployment_id: deploymentId })

export function listHooks(deploymentId: string): Promise<Hook[]> {
  return unwrap(api.GET('/api/v1/deployments/{deployment_id}/hooks', { params: { path: path(deploymentId) } }))
}

export function createHook(
  deploymentId: string,
  name: string,
  allowed: string[],
  branch: string | null,
): Promise<CreatedHook> {
  return unwrap(
    api.POST('/api/v1/deployments/{deployment_id}/hooks', {
      params: { path: path(deploymentId) },
      body: { name, allowed_variables: allowed, branch },
    }),
  )
}

export function rotateHook(deploymentId: string, hookId: string): Promise<CreatedHook> {
  return unwrap(
    api.POST('/api/v1/deployments/{deployment_id}/hooks/{hook_id}/rotate', {
      params: { path: { ...path(deploymentId), hook_id: hookId } },
    }),
  )
}

export function setHookEnabled(deploymentId: string, hookId: string, enabled: boolean): Promise<Hook> {
  return unwrap(
    api.PATCH('/api/v1/deployments/{deployment_id}/hooks/{hook_id}', {
      params: { path: { ...path(deploymentId), hook_id: hookId } },
      body: { enabled },
    }),
  )
}

export async function deleteHook(deploymentId: string, hookId: string): Promise<void> {
  await unwrap(
    api.DELETE('/api/v1/deployments/{deployment_id}/hooks/{hook_id}', {
      params: { path: { ...path(deploymentId), hook_id: hookId } },
    }),
  )
}

export function hookCalls(deploymentId: string, hookId: string): Promise<HookCall[]> {
  return unwrap(
    api.GET('/api/v1/deployments/{deployment_id}/hooks/{hook_id}/calls', {
      params: { path: { ...path(deploymentId), hook_id: hookId } },
    }),
  )
}
