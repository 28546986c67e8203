/**
 * The panel in notebooks, in a real browser: "Ask FrevaGPT" on a cell (its toolbar and its context menu),
 * "Explain this error", what the assistant sees of the notebook's kernel, and a thread exported as a notebook
 * (written next to the active notebook and opened) or downloaded. JupyterLab with the extension and the fake
 * LLM (`python -m tests.fake_llm`), headless Chromium through playwright-core.
 *
 *   node --test ui-tests/notebook.test.mjs        (PYTHON, CHROMIUM and KEEP_TMP=1 are honoured)
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { Harness, SCREENSHOTS } from './harness.mjs';

const PANEL = '#freva-gpt-panel';
const TAB = `.jp-SideBar .lm-TabBar-tab[data-id="freva-gpt-panel"]`;
const MESSAGES = `${PANEL} .jp-chat-messages-container`;
const BAR = `${PANEL} .freva-gpt-context-bar`;
/** The notebook's folder: exports go next to it. */
const FOLDER = 'work';
const NOTEBOOK = `${FOLDER}/analysis.ipynb`;
/** The failing cell's source (one short line: the cell toolbar shows only when it does not cover the code). */
const FAILING = '1 / 0';

let h;
let page;
const state = {};

function screenshot(name) {
  return page.screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
}

function input() {
  return page.locator(`${PANEL} .jp-chat-input-container textarea`).first();
}

/** Run a JupyterLab command (the app is exposed with --LabApp.expose_app_in_browser). */
function command(id, args = {}) {
  return page.evaluate(([id, args]) => window.jupyterapp.commands.execute(id, args), [id, args]);
}

/** A route of the chatbot API, called as another tab would (token auth). */
async function api(route, body) {
  const response = await fetch(`${h.url}api/chatbot/${route}`, {
    method: 'POST',
    headers: { Authorization: `token ${h.token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body)
  });
  assert.equal(response.status, 200, `${route}: ${await response.clone().text()}`);
  return response.json();
}

/** The contents API's model of a file, `null` when it does not exist. */
async function contents(path) {
  const response = await fetch(`${h.url}api/contents/${encodeURI(path)}?content=0`, {
    headers: { Authorization: `token ${h.token}` }
  });
  return response.status === 404 ? null : response.json();
}

/**
 * Send the input with Enter and return the body of the `streamresponse` request the panel made, once the
 * answer is complete.
 */
async function send() {
  const request = page.waitForRequest(r => r.url().includes('/api/chatbot/streamresponse'));
  await input().press('Enter');
  const body = (await request).postDataJSON();
  await page.waitForSelector(`${PANEL}[data-streaming="false"]`, { timeout: 60000 });
  return body;
}

/** The active notebook cell. */
function activeCell() {
  return page.locator('.jp-NotebookPanel:visible .jp-Notebook .jp-Cell.jp-mod-active');
}

/** Wait until the messages contain `text` (the chat renders after the model's state changed). */
async function waitForMessages(text) {
  await page.waitForFunction(
    ([sel, text]) => document.querySelector(sel)?.innerText.includes(text),
    [MESSAGES, text],
    { timeout: 30000 }
  );
}

/** The User variants of the panel's thread, as stored. */
async function storedUsers() {
  const threadId = await page.locator(PANEL).getAttribute('data-thread-id');
  const variants = await api('getthread', { thread_id: threadId });
  return variants.filter(v => v.variant === 'User');
}

describe('the FrevaGPT panel in notebooks', { timeout: 600000 }, () => {
  before(async () => {
    h = await new Harness().start();
    page = h.page;
    mkdirSync(join(h.root, FOLDER));
  });

  after(async () => {
    if (h) {
      if (h.errors.length) {
        console.log('# browser errors:\n' + h.errors.map(e => `#   ${e}`).join('\n'));
      }
      await h.stop();
    }
  });

  it('opens a notebook whose cell fails', async () => {
    await page.goto(`${h.url}lab?token=${h.token}`);
    await page.waitForSelector(TAB, { timeout: 60000 });
    await page.click(TAB);
    await input().waitFor({ timeout: 30000 });
    await page.waitForFunction(
      sel => document.querySelector(sel)?.options.length > 1,
      `${PANEL} .freva-gpt-model select`
    );
    const created = await page.evaluate(
      async ([folder, path]) => {
        const app = window.jupyterapp;
        const model = await app.serviceManager.contents.newUntitled({ path: folder, type: 'notebook' });
        await app.serviceManager.contents.rename(model.path, path);
        const panel = await app.commands.execute('docmanager:open', { path, kernel: { name: 'python3' } });
        await panel.context.ready;
        // Cells run only once the kernel is there (before, running one asks which kernel to start).
        await panel.sessionContext.ready;
        return panel.sessionContext.hasNoKernel ? null : panel.context.path;
      },
      [FOLDER, NOTEBOOK]
    );
    assert.equal(created, NOTEBOOK);
    await page.evaluate(source => {
      window.jupyterapp.shell.currentWidget.content.activeCell.model.sharedModel.setSource(source);
    }, FAILING);
    await command('notebook:run-cell');
    await page.waitForFunction(
      () =>
        [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')].some(o =>
          o.textContent.includes('ZeroDivisionError')
        ),
      null,
      { timeout: 60000 }
    );
  });

  it('asks about a cell from its toolbar: the cell goes with the question and shows as a chip', async () => {
    const button = activeCell().locator('.jp-cell-toolbar [data-command="freva-gpt:ask-cell"]');
    await button.click();
    const pending = page.locator(`${BAR} .freva-gpt-pending-cell .freva-gpt-cell-chip`);
    await pending.waitFor();
    assert.equal(await pending.getAttribute('data-failed'), 'true');
    assert.match(await pending.innerText(), /analysis\.ipynb/);
    assert.match(await pending.innerText(), /1 \/ 0/);
    await screenshot('nb-1-pending-cell');

    await input().fill('What does this cell do?');
    const body = await send();
    assert.equal(body.input, 'What does this cell do?');
    assert.equal(body.cell_context.source, FAILING);
    assert.equal(body.cell_context.notebook_path, NOTEBOOK);
    assert.match(body.cell_context.outputs, /ZeroDivisionError/);
    assert.ok(!('kernel_context' in body), 'kernel_context sent though it is on');
    // The fake LLM answers with the user's message: the cell reached the model.
    await waitForMessages('You said:');
    await waitForMessages(FAILING);
    // The chip moved from above the input onto the user's message.
    await pending.waitFor({ state: 'detached' });
    const chip = page.locator(`${MESSAGES} .freva-gpt-cell-preamble .freva-gpt-cell-chip`);
    assert.equal(await chip.count(), 1);
    assert.match(await chip.innerText(), /analysis\.ipynb/);
    // And it is stored with the question.
    const [user] = await storedUsers();
    assert.equal(user.content, 'What does this cell do?');
    assert.deepEqual(user.cell_context, body.cell_context);
    state.threadId = await page.locator(PANEL).getAttribute('data-thread-id');
    await screenshot('nb-2-chip-on-message');
  });

  it('explains the error from the context menu of the output', async () => {
    await page.locator('.jp-NotebookPanel:visible .jp-Cell').first().locator('.jp-OutputArea-output').click({
      button: 'right'
    });
    const item = page.locator('.lm-Menu .lm-Menu-item[data-command="freva-gpt:explain-error"]');
    await item.waitFor();
    // "Ask FrevaGPT" is there too, for any cell.
    await page.locator('.lm-Menu .lm-Menu-item[data-command="freva-gpt:ask-cell"]').waitFor();
    await screenshot('nb-3-context-menu');
    await item.click();
    await page.locator(`${BAR} .freva-gpt-pending-cell .freva-gpt-cell-chip[data-failed="true"]`).waitFor();
    assert.equal(await input().inputValue(), 'Explain this error.');
    const body = await send();
    assert.equal(body.input, 'Explain this error.');
    assert.equal(body.cell_context.source, FAILING);
    assert.match(body.cell_context.outputs, /ZeroDivisionError/);
    await page.waitForFunction(
      sel => document.querySelectorAll(sel).length === 2,
      `${MESSAGES} .freva-gpt-cell-preamble .freva-gpt-cell-chip`
    );
    const users = await storedUsers();
    assert.deepEqual(
      users.map(u => u.cell_context?.source),
      [FAILING, FAILING]
    );
  });

  it('takes a cell off again, and a cell without error has no error mark', async () => {
    await command('notebook:insert-cell-below');
    await page.evaluate(() => {
      window.jupyterapp.shell.currentWidget.content.activeCell.model.sharedModel.setSource('x = 1');
    });
    await page.locator('.jp-NotebookPanel:visible .jp-Cell').nth(1).click({ button: 'right' });
    await page.locator('.lm-Menu .lm-Menu-item[data-command="freva-gpt:ask-cell"]').click();
    const pending = page.locator(`${BAR} .freva-gpt-pending-cell .freva-gpt-cell-chip`);
    await pending.waitFor();
    assert.equal(await pending.getAttribute('data-failed'), 'false');
    await pending.locator('.freva-gpt-cell-chip-remove').click();
    await pending.waitFor({ state: 'detached' });
    await input().fill('No cell this time [[fake:text text="Fine." delay=0.01]]');
    const body = await send();
    assert.ok(!('cell_context' in body), 'a removed cell was sent');
  });

  it('shows which kernel the assistant sees and its variables, and keeps them back for one question', async () => {
    await page.evaluate(() => {
      const notebook = window.jupyterapp.shell.currentWidget.content;
      notebook.activeCell.model.sharedModel.setSource('tas_marker = 1.5');
    });
    await command('notebook:run-cell');
    await page.check(`${PANEL} .freva-gpt-kernel-toggle input`);
    const context = page.locator(`${BAR} .freva-gpt-kernel-context`);
    await page.waitForFunction(
      sel =>
        [...document.querySelectorAll(`${sel} .freva-gpt-kernel-variables code`)].some(
          c => c.textContent === 'tas_marker'
        ),
      BAR,
      { timeout: 60000 }
    );
    assert.equal(await context.getAttribute('data-state'), 'shared');
    const summary = context.locator('.freva-gpt-kernel-context-details > summary');
    assert.match(await summary.innerText(), /analysis\.ipynb/);
    await summary.click();
    await page.waitForFunction(
      sel => /tas_marker/.test(document.querySelector(`${sel} .freva-gpt-kernel-summary`)?.textContent ?? ''),
      BAR
    );
    // The code that reads the kernel is shown as it runs there.
    assert.match(
      await context.locator('.freva-gpt-kernel-code pre').textContent(),
      /user_expressions|namespace/
    );
    await screenshot('nb-4-kernel-context');
    // What the assistant's own code leaves in the kernel shows once its turn ended.
    await input().fill('Remember a number [[fake:code code="turn_marker = 7"]]');
    const turn = await send();
    assert.ok(turn.kernel_id, 'the question did not run in the notebook kernel');
    await page.waitForFunction(
      sel =>
        [...document.querySelectorAll(`${sel} .freva-gpt-kernel-variables code`)].some(
          c => c.textContent === 'turn_marker'
        ),
      BAR,
      { timeout: 30000 }
    );

    const share = context.locator('.freva-gpt-kernel-share input');
    await share.uncheck();
    await page.waitForSelector(`${BAR} .freva-gpt-kernel-context[data-state="off"]`);
    await input().fill('Without my variables [[fake:text text="Understood." delay=0.01]]');
    const body = await send();
    assert.equal(body.kernel_context, false);
    assert.ok(body.kernel_id, 'the question did not run in the notebook kernel');
    // Off for that one question only.
    await page.waitForFunction(
      sel => document.querySelector(sel)?.checked === true,
      `${BAR} .freva-gpt-kernel-share input`
    );
    await input().fill('With them [[fake:text text="Sure." delay=0.01]]');
    const next = await send();
    assert.ok(!('kernel_context' in next), 'kernel_context sent though it is on');
    await page.uncheck(`${PANEL} .freva-gpt-kernel-toggle input`);
    await context.waitFor({ state: 'detached' });
  });

  it('exports the thread as a notebook next to the active notebook and opens it', async () => {
    await api('setthreadtopic', { thread_id: state.threadId, topic: 'Division "by"/zero\nexplained' });
    await page.click(`${PANEL} .freva-gpt-threads-button`);
    const item = page.locator(`${PANEL} .freva-gpt-thread[data-thread-id="${state.threadId}"]`);
    await item.waitFor();
    await page.waitForSelector(`${PANEL} .freva-gpt-thread-list[aria-busy="false"]`);
    const expected = [
      `${FOLDER}/Division by zero explained.ipynb`,
      `${FOLDER}/Division by zero explained-1.ipynb`
    ];
    for (const path of expected) {
      await item.locator('[data-action="menu"]').click();
      const entry = page.locator('.lm-Menu .lm-Menu-item[data-command="freva-gpt:export-notebook"]');
      await entry.waitFor();
      if (path === expected[0]) {
        await screenshot('nb-5-thread-menu');
      }
      await entry.click();
      // Opened in JupyterLab, as a notebook.
      await page.waitForFunction(
        path => {
          const widget = window.jupyterapp.shell.currentWidget;
          return widget?.context?.path === path && widget.content?.widgets?.length > 0;
        },
        path,
        { timeout: 30000 }
      );
      const model = await contents(path);
      assert.equal(model?.type, 'notebook', `${path} is not listed as a notebook`);
    }
    const notebook = JSON.parse(readFileSync(join(h.root, expected[0]), 'utf-8'));
    assert.equal(notebook.nbformat, 4);
    const text = notebook.cells.map(c => (Array.isArray(c.source) ? c.source.join('') : c.source)).join('\n');
    assert.match(text, /What does this cell do\?/);
    assert.ok(!existsSync(join(h.root, 'Division by zero explained.ipynb')), 'exported into the root');
    await screenshot('nb-6-exported-notebook');
  });

  it('downloads the thread as a .ipynb file', async () => {
    await page
      .locator(`${PANEL} .freva-gpt-thread[data-thread-id="${state.threadId}"] .freva-gpt-thread-open`)
      .click();
    await page.waitForFunction(
      id => document.querySelector('#freva-gpt-panel')?.dataset.threadId === id,
      state.threadId
    );
    // The reopened thread shows the chips of the stored questions.
    await page.waitForFunction(
      sel => document.querySelectorAll(sel).length === 2,
      `${MESSAGES} .freva-gpt-cell-preamble .freva-gpt-cell-chip`
    );
    await page.click(`${PANEL} .freva-gpt-thread-menu-button`);
    const entry = page.locator('.lm-Menu .lm-Menu-item[data-command="freva-gpt:download-notebook"]');
    await entry.waitFor();
    const download = page.waitForEvent('download');
    await entry.click();
    const file = await download;
    assert.equal(file.suggestedFilename(), 'Division by zero explained.ipynb');
    const notebook = JSON.parse(readFileSync(await file.path(), 'utf-8'));
    assert.equal(notebook.nbformat, 4);
    assert.ok(notebook.cells.length > 2);
  });

  it('had no errors in the browser', () => {
    const errors = h.errors.filter(e => !/favicon|Failed to load resource/.test(e));
    assert.deepEqual(errors, []);
  });
});
