/** An organisation's notification channels and their delivery logs over the typed client. */
import { api, unwrap } from './client'
import type { Page, PageQuery } from './paging'
import type { components } from './schema'

export type Channel = components['schemas']['ChannelRead']
export type ChannelCreate = components['schemas']['ChannelCreate']
export type Delivery = components['schemas']['DeliveryRead']

/** The events a channel may ask for, as the API names them (the UI's words are under that path). */
export const NOTIFICATION_EVENTS = [
  'deployment.succeeded',
  'deployment.failed',
  'deployment.cancelled',
  'deployment.rolled_back',
  'deployment.recovered',
  'deployment.stuck',
  'target.unreachable',
] as const satisfies readonly ChannelCreate['events'][number][]

export function pageChannels(organizationId: string, page: PageQuery): Promise<Page<Channel>> {
  return unwrap(
    api.GET('/api/v1/notification-channels', { params: { query: { organization_id: organizationId, ...page } } }),
  )
}

export function createChannel(body: ChannelCreate): Promise<Channel> {
  return unwrap(api.POST('/api/v1/notification-channels', { body }))
}

export async function deleteChannel(id: string): Promise<void> {
  await unwrap(api.DELETE('/api/v1/notification-channels/{channel_id}', { params: { path: { channel_id: id } } }))
}

export function testChannel(id: string): Promise<Delivery> {
  return unwrap(api.POST('/api/v1/notification-channels/{channel_id}/test', { params: { path: { channel_id: id } } }))
}

export function pageDeliveries(id: string, page: PageQuery): Promise<Page<Delivery>> {
  return unwrap(
    api.GET('/api/v1/notification-channels/{channel_id}/deliveries', {
      params: { path: { channel_id: id }, query: page },
    }),
  )
}
