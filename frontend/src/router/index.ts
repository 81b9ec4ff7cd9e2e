import { createRouter, createWebHistory, type RouteRecordRaw } from 'vue-router'
import { setupNeeded as fetchSetupNeeded } from '../api/auth'
import { tokens } from '../api/tokens'
import { useAuthStore } from '../stores/auth'
import { isChunkLoadError, lazy } from './lazy'

const routes: RouteRecordRaw[] = [
  { path: '/setup', name: 'setup', component: lazy(() => import('../views/SetupView.vue')), meta: { public: true } },
  { path: '/login', name: 'login', component: lazy(() => import('../views/LoginView.vue')), meta: { public: true } },
  {
    path: '/',
    component: lazy(() => import('../components/AppFrame.vue')),
    children: [
      { path: '', redirect: { name: 'deployments' } },
      { path: 'deployments', name: 'deployments', component: lazy(() => import('../views/DeploymentsView.vue')) },
      {
        path: 'deployments/new',
        name: 'deployment-new',
        component: lazy(() => import('../views/NewDeploymentView.vue')),
        meta: { capability: 'deployment.create' },
      },
      {
        path: 'deployments/:id/edit',
        name: 'deployment-edit',
        component: lazy(() => import('../views/DeploymentEditView.vue')),
        props: true,
        meta: { capability: 'deployment.operate' },
      },
      {
        path: 'deployments/:id',
        name: 'deployment',
        component: lazy(() => import('../views/DeploymentDetailView.vue')),
        props: true,
      },
      { path: 'stacks', name: 'stacks', component: lazy(() => import('../views/StacksView.vue')) },
      {
        path: 'stacks/new',
        name: 'stack-new',
        component: lazy(() => import('../views/StackEditView.vue')),
        meta: { capability: 'stack.write' },
      },
      { path: 'stacks/:id', name: 'stack', component: lazy(() => import('../views/StackEditView.vue')), props: true },
      { path: 'targets', name: 'targets', component: lazy(() => import('../views/TargetsView.vue')) },
      { path: 'organization', name: 'organization', component: lazy(() => import('../views/OrganizationView.vue')) },
      { path: 'tokens', name: 'tokens', component: lazy(() => import('../views/TokensView.vue')) },
      {
        path: 'audit',
        name: 'audit',
        component: lazy(() => import('../views/AuditView.vue')),
        meta: { capability: 'audit.read' },
      },
      {
        path: 'notifications',
        name: 'notifications',
        component: lazy(() => import('../views/NotificationsView.vue')),
        meta: { capability: 'notifications.manage' },
      },
      { path: 'system', name: 'system', component: lazy(() => import('../views/SystemView.vue')) },
      { path: 'profile', name: 'profile', component: lazy(() => import('../views/ProfileView.vue')) },
      {
        path: 'admin',
        name: 'admin',
        component: lazy(() => import('../views/AdminView.vue')),
        meta: { superuser: true },
      },
      { path: ':pathMatch(.*)*', name: 'not-found', component: lazy(() => import('../views/NotFoundView.vue')) },
    ],
  },
]

export const router = createRouter({ history: createWebHistory(), routes })

let setupNeeded: boolean | null = null
export async function isSetupNeeded(): Promise<boolean> {
  if (setupNeeded === null || setupNeeded) {
    try {
      setupNeeded = await fetchSetupNeeded()
    } catch {
      setupNeeded = false
    }
  }
  return setupNeeded
}
export function markSetupDone(): void {
  setupNeeded = false
}

router.beforeEach(async (to) => {
  const auth = useAuthStore()
  if (to.meta.public) {
    if (to.name === 'setup' && !(await isSetupNeeded())) return { name: 'login' }
    return true
  }
  if (!auth.loggedIn && (tokens.access() || tokens.refreshToken())) await auth.loadMe()
  if (!auth.loggedIn) {
    if (await isSetupNeeded()) return { name: 'setup' }
    return { name: 'login', query: to.fullPath !== '/' && to.fullPath !== '/deployments' ? { next: to.fullPath } : {} }
  }
  const capability = to.meta.capability as Parameters<typeof auth.can>[0] | undefined
  if (capability && !auth.can(capability)) return { name: 'deployments' }
  if (to.meta.superuser && !auth.superuser) return { name: 'deployments' }
  return true
})

// A session that ends (refresh refused) sends the user to the login page.
tokens.onChange((access) => {
  const auth = useAuthStore()
  if (access === null && auth.me !== null && !router.currentRoute.value.meta.public) {
    auth.reset()
    void router.push({ name: 'login', query: { expired: '1' } })
  }
})

// A chunk that fails to load (a new build replaced it, or the network dropped the request) gets one
// full reload of the page it was for, instead of leaving the user on the previous page with an error.
const RELOADED = 'windflow.chunk-reload'
router.onError((error, to) => {
  if (!isChunkLoadError(error)) return
  if (sessionStorage.getItem(RELOADED) === to.fullPath) return
  sessionStorage.setItem(RELOADED, to.fullPath)
  window.location.assign(to.fullPath)
})
router.afterEach(() => sessionStorage.removeItem(RELOADED))
