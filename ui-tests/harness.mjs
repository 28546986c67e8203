/**
 * What the browser test needs around it: the fake LLM, a JupyterLab server with the extension (isolated
 * Jupyter dirs, no news toast), and headless Chromium through playwright-core.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';

import { chromium } from 'playwright-core';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HERE, '..');
export const PYTHON = process.env.PYTHON ?? join(REPO, '.venv', 'bin', 'python');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const SCREENSHOTS = join(HERE, 'screenshots');

const sleep = ms => new Promise(r => setTimeout(r, ms));

export function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

/** A child process whose output goes to a log file; stopped with SIGTERM (then SIGKILL). */
export class Child {
  constructor(name, command, args, options, logDir) {
    this.name = name;
    this.log = join(logDir, `${name}.log`);
    const fd = openSync(this.log, 'a');
    this.proc = spawn(command, args, { ...options, stdio: ['ignore', fd, fd] });
    this.exited = new Promise(ok => this.proc.on('exit', code => ok(code)));
  }

  async stop() {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
      return;
    }
    this.proc.kill('SIGTERM');
    const timeout = sleep(15000).then(() => 'timeout');
    if ((await Promise.race([this.exited, timeout])) === 'timeout') {
      this.proc.kill('SIGKILL');
      await this.exited;
    }
  }
}

/** The parent's environment without settings that would configure the children behind the test's back. */
function cleanEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(FREVAGPT_|JUPYTER_|JUPYTERHUB_|JUPYTERLAB_)/.test(k) && k !== 'LITELLM_CONFIG') {
      env[k] = v;
    }
  }
  return { ...env, PYTHONUNBUFFERED: '1', ...extra };
}

/** The end of a child's log, for an error message (the log itself goes with the temporary folder). */
function logTail(child) {
  const lines = readFileSync(child.log, 'utf-8').trimEnd().split('\n').slice(-30);
  return `; the end of ${child.log}:\n${lines.join('\n')}`;
}

async function waitFor(what, check, timeoutMs, child) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child && child.proc.exitCode !== null) {
      throw new Error(`${child.name} exited with ${child.proc.exitCode}${logTail(child)}`);
    }
    try {
      const value = await check();
      if (value) {
        return value;
      }
    } catch {
      // not yet
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${child ? logTail(child) : ''}`);
    }
    await sleep(200);
  }
}

export class Harness {
  /**
   * `catalogue`: the model catalogue's text (written to `this.catalogue`), `null` for none at all; by default
   * the fake LLM runs and the catalogue lists its models. `env`: more of JupyterLab's environment; model
   * discovery is off unless it sets FREVAGPT_MODEL_DISCOVERY (a model server on this machine must not
   * change what the tests see).
   */
  constructor({ catalogue, env } = {}) {
    this.catalogueText = catalogue;
    this.env = env ?? {};
  }

  async start() {
    this.tmp = mkdtempSync(join(tmpdir(), 'freva-gpt-ui-'));
    this.logs = join(this.tmp, 'logs');
    mkdirSync(this.logs);
    mkdirSync(SCREENSHOTS, { recursive: true });

    this.catalogue = this.catalogueText === null ? null : join(this.tmp, 'models.yaml');
    if (this.catalogueText === undefined) {
      // The fake LLM (`python -m tests.fake_llm`) and its catalogue, written by the test suite's own helper.
      const llmPort = await freePort();
      this.llm = new Child(
        'fake-llm',
        PYTHON,
        ['-m', 'tests.fake_llm', '--port', String(llmPort)],
        {
          cwd: REPO,
          env: cleanEnv({})
        },
        this.logs
      );
      const llmUrl = `http://127.0.0.1:${llmPort}/v1`;
      await waitFor('the fake LLM', async () => (await fetch(`${llmUrl}/models`)).ok, 30000, this.llm);
      writeFileSync(
        this.catalogue,
        execFileSync(
          PYTHON,
          [
            '-c',
            `from tests.fake_llm import catalogue_yaml; print(catalogue_yaml(${JSON.stringify(llmUrl)}))`
          ],
          {
            cwd: REPO,
            encoding: 'utf-8'
          }
        )
      );
    } else if (this.catalogue) {
      writeFileSync(this.catalogue, this.catalogueText);
    }

    // JupyterLab settings: no news, no update check.
    const settings = join(this.tmp, 'lab-settings');
    mkdirSync(join(settings, '@jupyterlab', 'apputils-extension'), {
      recursive: true
    });
    writeFileSync(
      join(settings, '@jupyterlab', 'apputils-extension', 'notification.jupyterlab-settings'),
      JSON.stringify({ fetchNews: 'false', checkForUpdates: false })
    );
    this.root = join(this.tmp, 'root');
    mkdirSync(this.root);
    this.port = await freePort();
    this.token = randomBytes(16).toString('hex');
    const dirs = Object.fromEntries(
      ['config', 'data', 'runtime'].map(name => {
        const path = join(this.tmp, 'jupyter', name);
        mkdirSync(path, { recursive: true });
        return [`JUPYTER_${name.toUpperCase()}_DIR`, path];
      })
    );
    const args = [
      '-m',
      'jupyter',
      'lab',
      '--no-browser',
      '--ServerApp.ip=127.0.0.1',
      `--ServerApp.port=${this.port}`,
      '--ServerApp.port_retries=0',
      `--IdentityProvider.token=${this.token}`,
      `--ServerApp.root_dir=${this.root}`,
      '--LabApp.expose_app_in_browser=True',
      ...(process.getuid?.() === 0 ? ['--allow-root'] : [])
    ];
    this.lab = new Child(
      'jupyterlab',
      PYTHON,
      args,
      {
        cwd: this.root,
        env: cleanEnv({
          ...dirs,
          JUPYTERLAB_SETTINGS_DIR: settings,
          JUPYTERLAB_WORKSPACES_DIR: join(this.tmp, 'workspaces'),
          ...(this.catalogue ? { FREVAGPT_LITELLM_CONFIG: this.catalogue } : {}),
          FREVAGPT_DATA_DIR: join(this.tmp, 'freva-data'),
          FREVAGPT_HEARTBEAT_INTERVAL: '0.5',
          FREVAGPT_MODEL_DISCOVERY: '[]',
          ...this.env
        })
      },
      this.logs
    );
    this.url = `http://127.0.0.1:${this.port}/`;
    await waitFor('JupyterLab', async () => (await fetch(`${this.url}api/chatbot/ping`)).ok, 90000, this.lab);

    if (!existsSync(CHROMIUM)) {
      throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
    }
    this.context = await chromium.launchPersistentContext(join(this.tmp, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1400, height: 900 },
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync'
      ]
    });
    this.page = this.context.pages()[0] ?? (await this.context.newPage());
    this.errors = [];
    this.page.on('pageerror', error => this.errors.push(String(error)));
    this.page.on('console', message => {
      if (message.type() === 'error') {
        this.errors.push(`console: ${message.text()}`);
      }
    });
    return this;
  }

  async stop() {
    await this.context?.close().catch(() => undefined);
    await this.lab?.stop();
    await this.llm?.stop();
    if (!process.env.KEEP_TMP) {
      rmSync(this.tmp, { recursive: true, force: true });
    } else {
      console.log(`# kept ${this.tmp}`);
    }
  }
}
