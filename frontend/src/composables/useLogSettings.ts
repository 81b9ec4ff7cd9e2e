/** The drawer's display settings, remembered across openings and deployments (localStorage). */
import { reactive, watch } from 'vue'
import { LOG_LEVELS, type LogLevel } from '../constants/deployments'

export interface LogSettings {
  timestamps: boolean
  wrap: boolean
  levels: LogLevel[]
}

export const LOG_SETTINGS_KEY = 'windflow.logs.settings'
const DEFAULTS: LogSettings = { timestamps: true, wrap: false, levels: [...LOG_LEVELS] }

function read(): LogSettings {
  try {
    const raw = JSON.parse(localStorage.getItem(LOG_SETTINGS_KEY) || '{}') as Partial<LogSettings>
    return {
      timestamps: typeof raw.timestamps === 'boolean' ? raw.timestamps : DEFAULTS.timestamps,
      wrap: typeof raw.wrap === 'boolean' ? raw.wrap : DEFAULTS.wrap,
      levels: Array.isArray(raw.levels)
        ? raw.levels.filter((l): l is LogLevel => LOG_LEVELS.includes(l))
        : [...DEFAULTS.levels],
    }
  } catch {
    return { ...DEFAULTS, levels: [...DEFAULTS.levels] }
  }
}

export function useLogSettings(): LogSettings {
  const settings = reactive(read())
  watch(settings, (s) => localStorage.setItem(LOG_SETTINGS_KEY, JSON.stringify(s)), { deep: true })
  return settings
}
