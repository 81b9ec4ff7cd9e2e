/**
 * The WebSocket frames of `/api/v1/ws` (docs/api.md, "Real time"), typed from the generated `ServerFrame` and
 * `ClientFrame` schemas, and the dispatch of a server frame to the one handler of its type.
 */
import type { components } from '../api/schema'

type S = components['schemas']

/** Every frame the server sends, discriminated by `type`. */
export type ServerFrame = S['ServerFrame']
export type ServerFrameType = ServerFrame['type']
export type FrameOf<T extends ServerFrameType> = Extract<ServerFrame, { type: T }>

/** The frames about one deployment (its organisation subscription or its own): they carry both ids. */
export type DeploymentEvent = FrameOf<
  | 'DEPLOYMENT_STATUS_CHANGED'
  | 'DEPLOYMENT_LOGS_UPDATE'
  | 'DEPLOYMENT_PROGRESS'
  | 'DEPLOYMENT_CREATED'
  | 'DEPLOYMENT_DELETED'
  | 'DEPLOYMENT_ROLLED_BACK'
  | 'DEPLOYMENT_HEALTH_CHANGED'
  | 'SERVICE_LOGS'
  | 'SERVICE_LOGS_END'
>

/** A client frame may leave out the fields the server gives a default (the generated types make them required). */
type Outgoing<F, Defaulted extends keyof F> = Omit<F, Defaulted> & Partial<Pick<F, Defaulted>>
export type SubscribeFrame = Outgoing<
  S['SubscribeFrame'],
  'deployment_id' | 'organization_id' | 'since_seq' | 'stream' | 'tail'
>
export type UnsubscribeFrame = Outgoing<S['UnsubscribeFrame'], 'deployment_id' | 'organization_id' | 'stream'>
/** Every frame the client sends: the generated `ClientFrame`, defaults optional. */
export type ClientFrame = S['AuthFrame'] | S['PingFrame'] | SubscribeFrame | UnsubscribeFrame

/** One handler per frame type; a type without a handler is ignored. */
export type FrameHandlers = { [T in ServerFrameType]?: (frame: FrameOf<T>) => void }

export function dispatchFrame(handlers: FrameHandlers, frame: ServerFrame): void {
  // The handler was chosen by this frame's type, so it takes this frame (TypeScript cannot correlate the two).
  const handler = handlers[frame.type] as ((frame: ServerFrame) => void) | undefined
  handler?.(frame)
}

/** A frame read off the wire: JSON with a string `type` (the server's frames are trusted to match their schema). */
export function parseFrame(data: unknown): ServerFrame | null {
  let value: unknown
  try {
    value = JSON.parse(String(data))
  } catch {
    return null
  }
  if (!value || typeof value !== 'object' || typeof (value as { type?: unknown }).type !== 'string') return null
  return value as ServerFrame
}
