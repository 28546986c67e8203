/**
 * The FrevaGPT panel when no model can answer: a model catalogue that cannot be read, and none at all. The
 * panel says why and what to do, in the panel, and raises no notifications for these states.
 *
 *   node --test ui-tests/catalogue.test.mjs        (PYTHON, CHROMIUM and KEEP_TMP=1 are honoured)
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';

import { Harness, SCREENSHOTS } from './harness.mjs';

const PANEL = '#freva-gpt-panel';
const TAB = `.jp-SideBar .lm-TabBar-tab[data-id="freva-gpt-panel"]`;
const NOTICE = `${PANEL} .freva-gpt-notice`;

/** A YAML syntax error in line 4: the flow mapping is never closed. */
const INVALID_YAML = [
  'model_list:',
  '  - model_name: broken',
  '    litellm_params:',
  '      {model: openai/broken, api_base: http://127.0.0.1:9/v1',
  '  - model_name: other',
  ''
].join('\n');

/** JupyterLab with this catalogue (`null`: none), the panel open; toasts are recorded from the start. */
async function openPanel(catalogue) {
  const h = await new Harness({ catalogue }).start();
  const page = h.page;
  await page.addInitScript(() => {
    window.frevaToasts = [];
    new MutationObserver(records => {
      for (const record of records) {
        for (const node of record.addedNodes) {
          if (node instanceof Element) {
            const toasts = node.matches('.Toastify__toast')
              ? [node]
              : node.querySelectorAll('.Toastify__toast');
            window.frevaToasts.push(...[...toasts].map(t => t.textContent));
          }
        }
      }
    }).observe(document, { childList: true, subtree: true });
  });
  await page.goto(`${h.url}lab?token=${h.token}`);
  await page.waitForSelector(TAB, { timeout: 60000 });
  await page.click(TAB);
  await page.locator(`${PANEL} .jp-chat-input-container textarea`).first().waitFor({ timeout: 30000 });
  return h;
}

/**
 * Ask anyway: the server refuses (503); the panel keeps the text in the input, raises no notification and
 * asks the server again why. Returns the notifications raised up to the frames after that.
 */
async function askAnyway(page) {
  const input = page.locator(`${PANEL} .jp-chat-input-container textarea`).first();
  const answered = route => page.waitForResponse(r => r.url().includes(`/api/chatbot/${route}`));
  await page.waitForSelector(NOTICE);
  // Before the question: the panel asked the server why (the models, then ping) when it opened.
  const refused = answered('streamresponse');
  const reloaded = [answered('availablechatbots'), answered('ping')];
  await input.fill('Hello?');
  await input.press('Enter');
  assert.equal((await refused).status(), 503);
  // The panel asks again, after it put the text back into the input.
  await Promise.all(reloaded);
  assert.equal(await input.inputValue(), 'Hello?');
  await page.waitForSelector(`${PANEL}[data-streaming="false"]`);
  // A notification renders in the frames after it was raised.
  await page.evaluate(() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))));
  return page.evaluate(() => window.frevaToasts);
}

function browserErrors(h) {
  // The refused request itself is logged by the browser.
  return h.errors.filter(e => !/favicon|Failed to load resource/.test(e));
}

describe('the panel with a catalogue that cannot be read', { timeout: 300000 }, () => {
  let h;
  before(async () => {
    h = await openPanel(INVALID_YAML);
  });
  after(async () => {
    await h?.stop();
  });

  it('shows what is wrong, naming the file, in the panel', async () => {
    const page = h.page;
    const notice = page.locator(`${NOTICE}[data-kind="degraded"]`);
    await notice.waitFor({ timeout: 30000 });
    const text = await notice.innerText();
    assert.ok(text.includes(h.catalogue), text);
    assert.match(text, /line \d+, column \d+/, text);
    assert.match(text, /restart/, text);
    assert.ok(!/404|Not Found/.test(text), text);
    const select = page.locator(`${PANEL} .freva-gpt-model select`);
    assert.equal(await select.isDisabled(), true);
    await page.locator(PANEL).screenshot({ path: join(SCREENSHOTS, 'catalogue-invalid.png') });
    assert.deepEqual(await page.evaluate(() => window.frevaToasts), []);
  });

  it('refuses a question without notifications, the notice still there', async () => {
    assert.deepEqual(await askAnyway(h.page), []);
    assert.ok((await h.page.locator(`${NOTICE}[data-kind="degraded"]`).innerText()).includes(h.catalogue));
    assert.deepEqual(browserErrors(h), []);
  });
});

describe('the panel with no catalogue', { timeout: 300000 }, () => {
  let h;
  before(async () => {
    h = await openPanel(null);
  });
  after(async () => {
    await h?.stop();
  });

  it('says how to add a model', async () => {
    const page = h.page;
    const notice = page.locator(`${NOTICE}[data-kind="no-model"]`);
    await notice.waitFor({ timeout: 30000 });
    const text = await notice.innerText();
    assert.match(text, /FREVAGPT_LITELLM_CONFIG/, text);
    assert.match(text, /examples\/litellm_config\.yaml/, text);
    assert.match(text, /restart JupyterLab/, text);
    await page.locator(PANEL).screenshot({ path: join(SCREENSHOTS, 'catalogue-none.png') });
    assert.deepEqual(await page.evaluate(() => window.frevaToasts), []);
  });

  it('refuses a question without notifications, the help still there', async () => {
    assert.deepEqual(await askAnyway(h.page), []);
    await h.page.locator(`${NOTICE}[data-kind="no-model"]`).waitFor();
    assert.deepEqual(browserErrors(h), []);
  });
});
