/**
 * The FrevaGPT panel when no model can answer: a model catalogue that cannot be read, and none at all. The
 * panel says why and what to do, in the panel, and raises no notifications for these states.
 *
 *   node --test ui-tests/catalogue.test.mjs        (PYTHON, CHROMIUM and KEEP_TMP=1 are honoured)
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';

import { Child, Harness, PYTHON, REPO, SCREENSHOTS, freePort } from './harness.mjs';

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

/**
 * JupyterLab with this catalogue (`null`: none) and more of its environment, the panel open; toasts are
 * recorded from the start.
 */
async function openPanel(catalogue, env = {}) {
  const h = await new Harness({ catalogue, env }).start();
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
  // Before the question: the panel asked the server why (the models, then ping) when it opened, and asks
  // again when its input gets the focus.
  await input.focus();
  await page.waitForSelector(`${PANEL}[data-asking-models="false"]`);
  const refused = answered('streamresponse');
  const reloaded = [answered('availablechatbots'), answered('ping')];
  await input.fill('Hello?');
  await input.press('Enter');
  assert.equal((await refused).status(), 503);
  // The panel asks again, and puts the text back into the input.
  await Promise.all(reloaded);
  await page.waitForSelector(`${PANEL}[data-streaming="false"][data-asking-models="false"]`);
  assert.equal(await input.inputValue(), 'Hello?');
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

/** Two frames: what the panel's state says has been rendered. */
function frames(page) {
  return page.evaluate(() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))));
}

/**
 * `turn()`, which must make the panel ask for the models; returns the answer of `availablechatbots` once the
 * panel has asked all it asks (with no model, ping too) and shows the outcome.
 */
async function askedBy(page, turn) {
  const answered = page.waitForResponse(r => r.url().includes('/api/chatbot/availablechatbots'), {
    timeout: 30000
  });
  await turn();
  const response = await answered;
  await page.waitForSelector(`${PANEL}[data-asking-models="false"]`, { timeout: 30000 });
  await frames(page);
  return response;
}

/** Close the panel and open it again (its tab in the right sidebar). */
async function reopen(page) {
  await page.click(TAB);
  await page.locator(PANEL).waitFor({ state: 'hidden' });
  await page.click(TAB);
  await page.locator(PANEL).waitFor({ state: 'visible' });
}

/** Focus the panel's input, coming from outside the panel (so that it is a focus event). */
async function focusInput(page) {
  await page.evaluate(() => document.activeElement?.blur?.());
  await page.locator(`${PANEL} .jp-chat-input-container textarea`).first().focus();
}

/**
 * `turn()` (which makes the panel ask for the models) until `check()` holds: the server discovers in the
 * background and rate-limits itself, so an answer may still be the one from before.
 */
async function untilAfter(page, turn, check, what) {
  const deadline = Date.now() + 90000;
  for (;;) {
    assert.equal((await askedBy(page, turn)).status(), 200);
    if (await check()) {
      return;
    }
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
  }
}

describe('the panel with no catalogue, when a local model server starts later', { timeout: 300000 }, () => {
  let h;
  let llm;
  let port;
  before(async () => {
    // Nothing listens there yet: discovery finds nothing until the test starts the fake LLM on it.
    port = await freePort();
    h = await openPanel(null, {
      FREVAGPT_MODEL_DISCOVERY: JSON.stringify([`http://127.0.0.1:${port}/v1`]),
      FREVAGPT_MODEL_DISCOVERY_INTERVAL: '0.5'
    });
  });
  after(async () => {
    await h?.stop();
    await llm?.stop();
  });

  const detail = () =>
    h.page.locator(`${NOTICE}[data-kind="no-model"] .freva-gpt-notice-detail[data-server-detail]`);
  const select = () => h.page.locator(`${PANEL} .freva-gpt-model select`);

  it('says where the server looked, and how to start a model server', async () => {
    const page = h.page;
    const notice = page.locator(`${NOTICE}[data-kind="no-model"]`);
    await notice.waitFor({ timeout: 30000 });
    const where = `127.0.0.1:${port}`;
    await untilAfter(
      page,
      () => page.locator(`${NOTICE} .freva-gpt-notice-title`).click(),
      async () => (await detail().count()) > 0 && (await detail().innerText()).includes(where),
      `the notice to name ${where}`
    );
    const text = await notice.innerText();
    assert.match(text, /FREVAGPT_LITELLM_CONFIG/, text);
    assert.match(text, /ollama serve/, text);
    assert.match(text, /ollama pull/, text);
    assert.match(text, /llama\.cpp/, text);
    assert.match(text, /vLLM/, text);
    assert.match(text, /JupyterHub/, text);
    assert.equal(await select().isDisabled(), true);
    await page.locator(PANEL).screenshot({ path: join(SCREENSHOTS, 'discovery-none.png') });
  });

  it('asks again when it is opened or focused while it has no model', async () => {
    const page = h.page;
    assert.equal((await askedBy(page, () => reopen(page))).status(), 200);
    assert.equal((await askedBy(page, () => focusInput(page))).status(), 200);
    await page.locator(`${NOTICE}[data-kind="no-model"]`).waitFor();
  });

  it('offers the models once the model server runs, the notice gone', async () => {
    const page = h.page;
    llm = new Child(
      'fake-llm-later',
      PYTHON,
      ['-m', 'tests.fake_llm', '--port', String(port)],
      { cwd: REPO, env: { ...process.env, PYTHONUNBUFFERED: '1' } },
      h.logs
    );
    const deadline = Date.now() + 30000;
    while (
      !(await fetch(`http://127.0.0.1:${port}/v1/models`).then(
        r => r.ok,
        () => false
      ))
    ) {
      assert.equal(llm.proc.exitCode, null, `the fake LLM exited (${llm.log})`);
      assert.ok(Date.now() < deadline, 'timed out waiting for the fake LLM');
      await new Promise(r => setTimeout(r, 200));
    }
    // Reopened, then focused, in turn: either makes the panel ask.
    let reopening = false;
    await untilAfter(
      page,
      () => ((reopening = !reopening) ? reopen(page) : focusInput(page)),
      async () => (await select().isEnabled()) && (await page.locator(NOTICE).count()) === 0,
      'the models to show'
    );
    const options = await select()
      .locator('option')
      .evaluateAll(os => os.map(o => o.value));
    assert.ok(options.includes('fake-text'), options.join(', '));
    assert.ok(!options.some(o => /embed/.test(o)), options.join(', '));
    await page.locator(PANEL).screenshot({ path: join(SCREENSHOTS, 'discovery-found.png') });
    assert.deepEqual(await page.evaluate(() => window.frevaToasts), []);
  });

  it('does not ask again once it has models', async () => {
    const page = h.page;
    const requests = [];
    const record = request => {
      if (request.url().includes('/api/chatbot/availablechatbots')) {
        requests.push(request.url());
      }
    };
    page.on('request', record);
    try {
      await reopen(page);
      await focusInput(page);
      await page.locator(`${PANEL} .freva-gpt-header`).click();
      // A request made after these would have been sent before this one's answer came back.
      await frames(page);
      await page.evaluate(() => fetch('/api/chatbot/ping'));
      assert.deepEqual(requests, []);
      assert.equal(await page.locator(PANEL).getAttribute('data-asking-models'), 'false');
    } finally {
      page.off('request', record);
    }
    assert.deepEqual(browserErrors(h), []);
  });
});
