// ESLint for the web page's own modules (scripts/lint-js.sh runs it): the recommended rules, browser globals,
// and the two bundles from wwwroot/lib that the page loads as classic scripts. The bundles themselves are not linted.
import js from '@eslint/js';
import globals from 'globals';

export default [
  { ignores: ['wwwroot/lib/', 'node_modules/'] },
  js.configs.recommended,
  {
    files: ['wwwroot/**/*.js'],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: { ...globals.browser, Plotly: 'readonly', cytoscape: 'readonly' },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
  },
];
