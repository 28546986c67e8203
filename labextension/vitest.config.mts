import { defineConfig } from 'vitest/config';

// Unit tests of the pure modules (no JupyterLab, no DOM): the NDJSON reader and the variant reducer.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node'
  }
});
