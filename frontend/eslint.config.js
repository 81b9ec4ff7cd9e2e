// ESLint for the Vue + TypeScript frontend (create-vue's setup): ESLint's, Vue's and typescript-eslint's
// recommended rules, and no formatting rules (Prettier formats; `npm run lint` runs both checks).
import js from '@eslint/js'
import { globalIgnores } from 'eslint/config'
import { defineConfigWithVueTs, vueTsConfigs } from '@vue/eslint-config-typescript'
import pluginVue from 'eslint-plugin-vue'
import skipFormatting from '@vue/eslint-config-prettier/skip-formatting'

export default defineConfigWithVueTs(
  { name: 'app/files-to-lint', files: ['**/*.{js,mjs,ts,vue}'] },
  globalIgnores(['dist/**', 'node_modules/**', 'src/api/schema.d.ts']),
  js.configs.recommended,
  pluginVue.configs['flat/recommended'],
  vueTsConfigs.recommended,
  // The scripts run under Node, not in the browser.
  { files: ['scripts/**'], languageOptions: { globals: { process: 'readonly', console: 'readonly' } } },
  skipFormatting,
)
