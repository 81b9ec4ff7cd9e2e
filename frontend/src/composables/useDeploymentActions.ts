/** Lifecycle actions with confirmation naming the deployment, and messages with the API's detail. */
import { useI18n } from 'vue-i18n'
import { useDialog, useMessage } from 'naive-ui'
import { errorText } from '../api/errors'
import type { Deployment } from '../api/deployments'
import { ACTIONS_BY_STATUS, type DeploymentAction } from '../constants/deployments'
import { useAuthStore } from '../stores/auth'
import { useDeploymentsStore } from '../stores/deployments'

const CONFIRM: Partial<Record<DeploymentAction, string>> = {
  delete: 'deployments.confirmDelete',
  stop: 'deployments.confirmStop',
  cancel: 'deployments.confirmCancel',
  redeploy: 'deployments.confirmRedeploy',
}

/** The actions a user with this role may take on this deployment now (none for a viewer). */
export function availableActions(d: Pick<Deployment, 'status'>, canOperate: boolean): DeploymentAction[] {
  return canOperate ? [...ACTIONS_BY_STATUS[d.status]] : []
}

export function useDeploymentActions() {
  const { t } = useI18n()
  const dialog = useDialog()
  const message = useMessage()
  const store = useDeploymentsStore()
  const auth = useAuthStore()

  function actionsFor(d: Deployment): DeploymentAction[] {
    return availableActions(d, auth.can('deployment.operate'))
  }

  async function run(d: Deployment, action: DeploymentAction, after?: () => void): Promise<void> {
    const go = async () => {
      try {
        await store.act(d.id, action)
        message.success(t(`deployments.done.${action}`, { name: d.name }))
        after?.()
      } catch (err) {
        message.error(errorText(err), { duration: 8000 })
      }
    }
    const confirm = CONFIRM[action]
    if (!confirm) return go()
    dialog.warning({
      title: t(`deployments.${action}`),
      content: t(confirm, { name: d.name }),
      positiveText: t(`deployments.${action}`),
      negativeText: t('common.cancel'),
      onPositiveClick: go,
    })
  }

  return { actionsFor, run }
}
