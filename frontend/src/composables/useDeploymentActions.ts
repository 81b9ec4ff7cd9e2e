/**
 * Lifecycle actions of a deployment. Each is sent once (the store refuses a second while one is in flight),
 * the row shows the transition at once (`store.inFlight`), and the ones that need it are confirmed first in a
 * dialog whose buttons name the action, destructive ones in the error colour, that says what a slow action
 * waits for (the containers' stop grace period, read from the deployment's compose document).
 */
import { ref } from 'vue'
import { useI18n } from 'vue-i18n'
import { useMessage } from 'naive-ui'
import { errorText } from '../api/errors'
import { getCompose, type Deployment } from '../api/deployments'
import { ACTIONS_BY_STATUS, type DeploymentAction } from '../constants/deployments'
import { useAuthStore } from '../stores/auth'
import { useDeploymentsStore } from '../stores/deployments'
import { DEFAULT_STOP_GRACE_SECONDS, stopGraceSeconds } from '../utils/compose'
import { confirm } from './useConfirm'

/** The actions confirmed first, and whether each is destructive (the error colour). */
const CONFIRMED: Partial<Record<DeploymentAction, { destructive: boolean }>> = {
  delete: { destructive: true },
  stop: { destructive: true },
  cancel: { destructive: true },
  redeploy: { destructive: false },
}

/** The actions a user with this role may take on this deployment now (none for a viewer). */
export function availableActions(d: Pick<Deployment, 'status'>, canOperate: boolean): DeploymentAction[] {
  return canOperate ? [...ACTIONS_BY_STATUS[d.status]] : []
}

export function useDeploymentActions() {
  const { t } = useI18n()
  const message = useMessage()
  const store = useDeploymentsStore()
  const auth = useAuthStore()

  function actionsFor(d: Deployment): DeploymentAction[] {
    return availableActions(d, auth.can('deployment.operate'))
  }

  async function send(d: Deployment, action: DeploymentAction, after?: () => void): Promise<void> {
    try {
      if (!(await store.act(d.id, action))) return // already on its way
      message.success(t(`deployments.done.${action}`, { name: d.name }))
      after?.()
    } catch (err) {
      message.error(errorText(err), { duration: 8000 })
    }
  }

  function run(d: Deployment, action: DeploymentAction, after?: () => void): void {
    if (store.inFlight[d.id]) return
    const confirmed = CONFIRMED[action]
    if (!confirmed) {
      void send(d, action, after)
      return
    }
    const grace = ref(DEFAULT_STOP_GRACE_SECONDS)
    if (action === 'stop' || action === 'delete')
      void getCompose(d.id)
        .then((compose) => (grace.value = stopGraceSeconds(compose)))
        .catch(() => undefined)
    const cancelKey = action === 'cancel' && d.status === 'pending' ? 'keepQueued' : `keep.${action}`
    confirm({
      title: t(`deployments.confirmTitle.${action}`),
      content: t(`deployments.confirm.${action}`, { name: d.name }),
      confirmText: t(`deployments.confirmButton.${action}`),
      cancelText: t(`deployments.${cancelKey}`),
      destructive: confirmed.destructive,
      waiting: () => t(`deployments.waiting.${action}`, { grace: grace.value }),
      run: () => send(d, action, after),
    })
  }

  return { actionsFor, run }
}
