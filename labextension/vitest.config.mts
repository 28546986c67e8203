import { defineConfig } from 'vitest/config';

// Unit tests without a DOM: the pure modules, and the API client through JupyterLab's ServerConnection.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node'
  }
});
