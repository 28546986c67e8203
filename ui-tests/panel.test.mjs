/**
 * The FrevaGPT panel in a real browser: JupyterLab with the extension, the fake LLM as its model
 * (`python -m tests.fake_llm`), headless Chromium through playwright-core.
 *
 *   node --test ui-tests/panel.test.mjs        (PYTHON, CHROMIUM and KEEP_TMP=1 are honoured)
 *
 * Screenshots go to ui-tests/screenshots/ (ignored by git): look at them.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';

import { Harness, SCREENSHOTS } from './harness.mjs';

const PANEL = '#freva-gpt-panel';
const TAB = `.jp-SideBar .lm-TabBar-tab[data-id="freva-gpt-panel"]`;
const MESSAGES = `${PANEL} .jp-chat-messages-container`;

/** Python that prints, then draws a plot (matplotlib comes with the test extra). */
const PLOT_CODE = [
  "print('plotting squares')",
  'import matplotlib.pyplot as plt',
  'plt.plot([1, 2, 3], [1, 4, 9])',
  "plt.title('squares')",
  'plt.show()'
].join('\n');

let h;
let page;
const state = {};

async function screenshot(name) {
  await page.locator(PANEL).screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
}

async function fullScreenshot(name) {
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
}

function input() {
  return page.locator(`${PANEL} .jp-chat-input-container textarea`).first();
}

/** Send a message with Enter, as a user does. */
async function ask(text) {
  const count = await page.locator(`${MESSAGES} > .jp-chat-message`).count();
  const box = input();
  await box.click();
  await box.fill(text);
  await box.press('Enter');
  // The user's message shows once the turn started (the answer may even be complete already).
  await page.waitForFunction(
    ([sel, n]) => document.querySelectorAll(sel).length > n,
    [`${MESSAGES} > .jp-chat-message`, count]
  );
}

async function waitIdle(timeout = 60000) {
  await page.waitForSelector(`${PANEL}[data-streaming="false"]`, { timeout });
}

/**
 * Wait until the message list follows the stream (at its bottom) or, with `false`, is left where the reader
 * scrolled to (more than 100 px above the bottom).
 */
async function waitFollowing(following) {
  await page.waitForFunction(following => {
    const panel = document.querySelector('#freva-gpt-panel');
    const s = panel.querySelector('[id^="jupyter-chat-scroll-container-"]');
    const distance = s.scrollHeight - s.scrollTop - s.clientHeight;
    return panel.dataset.follows === String(following) && (following ? distance < 40 : distance > 100);
  }, following);
}

/** The highest `tokN` of the fake LLM's answer in the last message (-1: none yet). */
function lastToken() {
  return page.evaluate(() => {
    const msgs = document.querySelectorAll('#freva-gpt-panel .jp-chat-messages-container > .jp-chat-message');
    const text = msgs.length ? msgs[msgs.length - 1].innerText : '';
    return Math.max(-1, ...[...text.matchAll(/tok(\d+)/g)].map(m => Number(m[1])));
  });
}

async function waitForToken(n) {
  await page.waitForFunction(n => {
    const msgs = document.querySelectorAll('#freva-gpt-panel .jp-chat-messages-container > .jp-chat-message');
    return msgs.length && msgs[msgs.length - 1].innerText.includes(`tok${n} `);
  }, n);
}

/** Where the message list is scrolled: its top and the distance to the bottom. */
function scrollState() {
  return page.evaluate(() => {
    const s = document.querySelector('#freva-gpt-panel [id^="jupyter-chat-scroll-container-"]');
    return {
      top: s.scrollTop,
      distance: s.scrollHeight - s.scrollTop - s.clientHeight
    };
  });
}

function lastMessage() {
  return page.locator(`${MESSAGES} > .jp-chat-message`).last();
}

async function messagesText() {
  return (await page.locator(MESSAGES).innerText()).replace(/\s+/g, ' ').trim();
}

/**
 * Wait until the last element matching `selector` reads `pattern` (a RegExp source). The chat renders after
 * the model's state changed (e.g. after `data-streaming` turned false): read what it shows only this way.
 */
async function waitForLastText(selector, pattern, timeout = 30000) {
  try {
    await page.waitForFunction(
      ([selector, pattern]) => {
        const all = document.querySelectorAll(selector);
        return all.length > 0 && new RegExp(pattern).test(all[all.length - 1].innerText);
      },
      [selector, pattern],
      { timeout }
    );
  } catch {
    const all = page.locator(selector);
    const text = (await all.count()) ? await all.last().innerText() : '(none)';
    assert.fail(`${selector} does not read /${pattern}/: ${text}`);
  }
}

/** The messages' text (whitespace folded) once it stopped changing: the same in 10 frames in a row. */
async function settledMessagesText() {
  await page.evaluate(() => {
    delete window.frevaText;
  });
  const text = await page.waitForFunction(sel => {
    const text = document.querySelector(sel)?.innerText.replace(/\s+/g, ' ').trim() ?? '';
    if (window.frevaText !== text) {
      window.frevaText = text;
      window.frevaSame = 0;
    }
    return ++window.frevaSame >= 10 ? text : null;
  }, MESSAGES);
  return text.jsonValue();
}

/** Wait until the messages read `expected` (whitespace folded); on a timeout, show the difference. */
async function waitForMessagesText(expected) {
  try {
    await page.waitForFunction(
      ([sel, text]) => document.querySelector(sel)?.innerText.replace(/\s+/g, ' ').trim() === text,
      [MESSAGES, expected],
      { timeout: 15000 }
    );
  } catch {
    assert.equal(await messagesText(), expected);
  }
}

/** Wait for the number of threads the list shows and its pager's label, which follow the same data. */
async function waitForThreadPage(items, label) {
  await page.waitForFunction(
    ([items, label]) =>
      document.querySelectorAll('#freva-gpt-panel .freva-gpt-thread').length === items &&
      new RegExp(label).test(
        document.querySelector('#freva-gpt-panel .freva-gpt-thread-count')?.textContent ?? ''
      ),
    [items, label]
  );
}

/** Drag the right side bar's split handle until the panel is `width` px wide. */
async function setPanelWidth(width) {
  const panel = await page.locator(PANEL).boundingBox();
  const handle = page.locator('#jp-main-split-panel > .lm-SplitPanel-handle:not(.lm-mod-hidden)').last();
  const box = await handle.boundingBox();
  const y = box.y + box.height / 2;
  await page.mouse.move(box.x + box.width / 2, y);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2 - (width - panel.width), y, { steps: 5 });
  await page.mouse.up();
  await page.waitForFunction(
    ([sel, width]) => Math.abs(document.querySelector(sel).getBoundingClientRect().width - width) < 1,
    [PANEL, width]
  );
}

/**
 * What does not fit in the panel's header: elements outside the panel's box, content wider than its
 * element (a squeezed button), and neighbours on one line that overlap.
 */
function headerProblems() {
  return page.evaluate(sel => {
    const panel = document.querySelector(sel).getBoundingClientRect();
    const header = document.querySelector(`${sel} .freva-gpt-header`);
    const name = e =>
      e.tagName.toLowerCase() + (e.className ? `.${String(e.className).split(' ').join('.')}` : '');
    const problems = [];
    if (header.scrollWidth > header.clientWidth) {
      problems.push(`the header overflows: ${header.scrollWidth} > ${header.clientWidth}`);
    }
    for (const e of header.querySelectorAll('*')) {
      const r = e.getBoundingClientRect();
      if (!r.width || !r.height) {
        continue;
      }
      if (r.left < panel.left - 0.5 || r.right > panel.right + 0.5) {
        problems.push(
          `${name(e)} [${r.left}, ${r.right}] is outside the panel [${panel.left}, ${panel.right}]`
        );
      }
      if (e.matches('button, select') && e.scrollWidth > e.clientWidth + 1) {
        problems.push(`${name(e)}: content ${e.scrollWidth} px in ${e.clientWidth} px`);
      }
    }
    for (const row of header.querySelectorAll('.freva-gpt-header-row')) {
      const boxes = [...row.children].map(c => [c, c.getBoundingClientRect()]);
      for (let i = 1; i < boxes.length; i++) {
        const [a, ra] = boxes[i - 1];
        const [b, rb] = boxes[i];
        if (rb.top < ra.bottom && rb.bottom > ra.top && rb.left < ra.right - 0.5) {
          problems.push(`${name(a)} and ${name(b)} overlap`);
        }
      }
    }
    return problems;
  }, PANEL);
}

/** The ids of the threads the list shows, in order. */
function threadIds() {
  return page.$$eval(`${PANEL} .freva-gpt-thread`, items => items.map(i => i.dataset.threadId));
}

/** Wait until the theme's styles apply to the panel. */
async function waitForPanelBackground(theme) {
  await page.waitForFunction(theme => {
    const colour = getComputedStyle(document.querySelector('#freva-gpt-panel')).backgroundColor;
    const sum = colour
      .match(/\d+/g)
      .slice(0, 3)
      .reduce((a, b) => a + Number(b), 0);
    return theme === 'dark' ? sum < 300 : sum > 600;
  }, theme);
}

/** Run a JupyterLab command (the app is exposed with --LabApp.expose_app_in_browser). */
function command(id, args = {}) {
  return page.evaluate(
    async ([id, args]) => {
      await window.jupyterapp.commands.execute(id, args);
    },
    [id, args]
  );
}

describe('the FrevaGPT panel', { timeout: 600000 }, () => {
  before(async () => {
    h = await new Harness().start();
    page = h.page;
  });

  after(async () => {
    if (h) {
      if (h.errors.length) {
        console.log('# browser errors:\n' + h.errors.map(e => `#   ${e}`).join('\n'));
      }
      await h.stop();
    }
  });

  it('opens from the side bar', async () => {
    await page.goto(`${h.url}lab?token=${h.token}`);
    await page.waitForSelector(TAB, { timeout: 60000 });
    await page.click(TAB);
    await input().waitFor({ timeout: 30000 });
    // The models of the catalogue, the first one picked.
    const select = page.locator(`${PANEL} .freva-gpt-model select`);
    await page.waitForFunction(
      sel => document.querySelector(sel)?.options.length > 1,
      `${PANEL} .freva-gpt-model select`
    );
    assert.equal(await select.inputValue(), 'fake-text');
    await page.waitForFunction(() =>
      document.querySelector('#freva-gpt-panel .jp-chat-welcome-message')?.textContent?.includes('FrevaGPT')
    );

    // The header fits at the side bar's default width and at 300 px.
    assert.deepEqual(await headerProblems(), [], `at ${(await page.locator(PANEL).boundingBox()).width} px`);
    await setPanelWidth(300);
    assert.deepEqual(await headerProblems(), [], 'at 300 px');
    await screenshot('0-header-300px');
    // Wider, so that the screenshots show something.
    await setPanelWidth(480);
    // Shift+Enter is a new line, not a send.
    await input().fill('first line');
    await input().press('Shift+Enter');
    await input().focus();
    await page.keyboard.insertText('second line');
    assert.equal(await input().inputValue(), 'first line\nsecond line');
    assert.equal(await page.locator(`${MESSAGES} > .jp-chat-message`).count(), 0);
    await input().fill('');
  });

  it('streams an answer in, with the model that answered', async () => {
    await ask('Hello, what is $E = mc^2$? [[fake:text tokens=80 delay=0.04]]');
    const message = lastMessage();
    // The answer and the status line as they were when the first tokens showed (read at once, in the page).
    const { early, status } = await (
      await page.waitForFunction(() => {
        const msgs = document.querySelectorAll(
          '#freva-gpt-panel .jp-chat-messages-container > .jp-chat-message'
        );
        const text = msgs.length ? msgs[msgs.length - 1].innerText : '';
        return text.includes('tok3 ')
          ? { early: text, status: document.querySelector('#freva-gpt-panel .freva-gpt-status')?.innerText }
          : null;
      })
    ).jsonValue();
    assert.ok(!early.includes('tok79'), 'the whole answer came at once');
    assert.match(status, /Writing|Thinking/);
    await screenshot('1-streaming');
    await waitIdle();
    await waitForLastText(`${MESSAGES} > .jp-chat-message`, 'tok79');
    const text = await message.innerText();
    // The list followed the stream to its end.
    await waitFollowing(true);
    assert.ok(text.length > early.length);
    assert.match(await page.locator(`${MESSAGES}`).innerText(), /FrevaGPT · fake-text/);
    // Math in the user's message went through JupyterLab's typesetter.
    await page.waitForSelector(`${MESSAGES} mjx-container, ${MESSAGES} .MathJax`);
    state.firstThread = await page.locator(PANEL).getAttribute('data-thread-id');
    assert.ok(state.firstThread);
  });

  it('shows code, its output and the plot; the plot enlarges', async () => {
    await ask(`Plot squares [[fake:code code="${PLOT_CODE.replace(/"/g, '\\"')}"]]`);
    await page.waitForSelector(`${MESSAGES} .freva-gpt-code`, {
      timeout: 30000
    });
    await waitIdle(90000);
    const code = page.locator(`${MESSAGES} .freva-gpt-code`).last();
    assert.match(
      await code.locator('.freva-gpt-code-source').innerText(),
      /plt\.plot\(\[1, 2, 3\], \[1, 4, 9\]\)/
    );
    await waitForLastText(
      `${MESSAGES} .freva-gpt-code[data-state="done"] .freva-gpt-code-output`,
      'plotting'
    );
    assert.equal(await code.getAttribute('data-state'), 'done', await code.innerText());
    const image = page.locator(`${MESSAGES} img.freva-gpt-image`).last();
    await image.waitFor();
    await page.waitForFunction(() =>
      [...document.querySelectorAll('#freva-gpt-panel img.freva-gpt-image')].some(i => i.naturalWidth > 10)
    );
    // The final answer quotes the output.
    await waitForLastText(`${MESSAGES} > .jp-chat-message`, 'The result was');
    await screenshot('2-code-output-image');
    await image.click();
    const large = page.locator('.jp-Dialog img.freva-gpt-image-large');
    await large.waitFor();
    await fullScreenshot('3-image-enlarged');
    await page.keyboard.press('Escape');
    await large.waitFor({ state: 'detached' });
  });

  it('stops a long answer', async () => {
    await ask('Tell me everything [[fake:text tokens=3000 delay=0.05]]');
    await page.waitForFunction(() => {
      const msgs = document.querySelectorAll(
        '#freva-gpt-panel .jp-chat-messages-container > .jp-chat-message'
      );
      return msgs.length && msgs[msgs.length - 1].innerText.includes('tok10 ');
    });
    // Following the stream; a reader who scrolls up is left alone, and followed again back at the bottom.
    await waitFollowing(true);
    const list = await page.locator(`${PANEL} [id^="jupyter-chat-scroll-container-"]`).boundingBox();
    await page.mouse.move(list.x + list.width / 2, list.y + list.height / 2);
    await page.mouse.wheel(0, -400);
    await waitFollowing(false);
    const up = await scrollState();
    await waitForToken((await lastToken()) + 20);
    const later = await scrollState();
    assert.ok(
      Math.abs(later.top - up.top) < 2,
      `the list moved while the reader was up: ${up.top} → ${later.top}`
    );
    assert.ok(later.distance > up.distance, 'the answer stopped growing');
    await page.mouse.wheel(0, 100000);
    await waitFollowing(true);
    // And it keeps following as the answer grows.
    await waitForToken((await lastToken()) + 20);
    await waitFollowing(true);
    const stop = page.locator(`${PANEL} .freva-gpt-stop`);
    await stop.waitFor();
    await screenshot('4-before-stop');
    const clicked = Date.now();
    await stop.click();
    await waitIdle(15000);
    const took = Date.now() - clicked;
    assert.ok(took < 5000, `the stream ended ${took} ms after stop`);
    await waitForLastText(`${PANEL} .freva-gpt-status`, 'Stopped');
    const text = await lastMessage().innerText();
    assert.ok(text.includes('tok10') && !text.includes('tok2999'), 'the answer went on after stop');
    await stop.waitFor({ state: 'detached' });
  });

  it('reopens the thread from the list, as it looked live', async () => {
    const threadId = await page.locator(PANEL).getAttribute('data-thread-id');
    assert.equal(threadId, state.firstThread, 'the conversation changed thread');
    // The live view, once the last answer's buttons are in.
    await lastMessage().locator('.freva-gpt-feedback').waitFor();
    const live = await settledMessagesText();
    const liveImages = await page.locator(`${MESSAGES} img.freva-gpt-image`).count();
    await page.click(`${PANEL} .freva-gpt-new-chat`);
    await page.waitForFunction(sel => !document.querySelector(sel)?.children.length, MESSAGES);
    assert.equal(await page.locator(PANEL).getAttribute('data-thread-id'), '');

    await page.click(`${PANEL} .freva-gpt-threads-button`);
    const item = page.locator(`${PANEL} .freva-gpt-thread[data-thread-id="${threadId}"]`);
    await item.waitFor();
    await screenshot('5-thread-list');
    // Search finds it by a word of the conversation.
    await page.fill(`${PANEL} .freva-gpt-thread-search`, 'squares');
    await page.waitForFunction(id => {
      const items = document.querySelectorAll('#freva-gpt-panel .freva-gpt-thread');
      return items.length === 1 && items[0].getAttribute('data-thread-id') === id;
    }, threadId);
    await page.fill(`${PANEL} .freva-gpt-thread-search`, 'no such words at all');
    await page.waitForSelector(`${PANEL} .freva-gpt-threads-empty`);
    await page.fill(`${PANEL} .freva-gpt-thread-search`, '');
    // Rename it.
    await item.locator('[data-action="rename"]').click();
    const rename = item.locator('.freva-gpt-thread-rename');
    await rename.fill('My squares thread');
    await rename.press('Enter');
    await page.waitForFunction(
      id =>
        document.querySelector(
          `#freva-gpt-panel .freva-gpt-thread[data-thread-id="${id}"] .freva-gpt-thread-topic`
        )?.textContent === 'My squares thread',
      threadId
    );
    // Reopen it.
    await item.locator('.freva-gpt-thread-open').click();
    await page.waitForFunction(
      id => document.querySelector('#freva-gpt-panel')?.dataset.threadId === id,
      threadId
    );
    await page.waitForFunction(
      n => document.querySelectorAll('#freva-gpt-panel img.freva-gpt-image').length === n,
      liveImages
    );
    await waitForMessagesText(live);
    await screenshot('6-reopened');
  });

  it('rates an answer', async () => {
    const up = page.locator(`${MESSAGES} .freva-gpt-feedback [data-feedback="up"]`).last();
    await up.click();
    await page.waitForFunction(() =>
      document.querySelector('#freva-gpt-panel .freva-gpt-feedback [data-feedback="up"][aria-pressed="true"]')
    );
    // It was stored: the reopened thread shows it.
    const threadId = await page.locator(PANEL).getAttribute('data-thread-id');
    await page.click(`${PANEL} .freva-gpt-threads-button`);
    await page
      .locator(`${PANEL} .freva-gpt-thread[data-thread-id="${threadId}"] .freva-gpt-thread-open`)
      .click();
    await page.waitForSelector(`${MESSAGES} .freva-gpt-feedback [data-feedback="up"][aria-pressed="true"]`);
  });

  it('edits an earlier message: the thread forks before it', async () => {
    const before = await page.locator(PANEL).getAttribute('data-thread-id');
    const userMessages = page
      .locator(`${MESSAGES} > .jp-chat-message`)
      .filter({ hasText: 'Tell me everything' });
    const message = userMessages.last();
    await message.hover();
    await message.locator('.jp-chat-toolbar button[aria-label="Edit"]').click();
    // While edited, the message is an input (the only one in the list).
    const edit = page.locator(`${MESSAGES} textarea`).first();
    await edit.fill('Say less [[fake:text text="An edited, short answer." delay=0.01]]');
    await edit.press('Enter');
    await page.waitForFunction(id => {
      const panel = document.querySelector('#freva-gpt-panel');
      return panel.dataset.threadId && panel.dataset.threadId !== id && panel.dataset.streaming === 'false';
    }, before);
    await page.waitForFunction(() =>
      document
        .querySelector('#freva-gpt-panel .jp-chat-messages-container')
        .innerText.includes('An edited, short answer.')
    );
    const text = await messagesText();
    assert.ok(!text.includes('Tell me everything'), 'the edited message is still there');
    assert.ok(text.includes('squares'), 'the history before the edited message is gone');
    state.forkedThread = await page.locator(PANEL).getAttribute('data-thread-id');
  });

  it('shows tool calls collapsed and errors apart from answers', async () => {
    await ask(`Look it up [[fake:tool tool=lookup args='{"query": "ERA5 tas"}' text="Nothing found."]]`);
    await waitIdle();
    const tool = page.locator(`${MESSAGES} details.freva-gpt-tool`).last();
    await tool.waitFor();
    assert.equal(await tool.evaluate(d => d.open), false, 'a tool call opened by itself');
    assert.match(await tool.locator('summary').innerText(), /lookup/);
    await tool.locator('summary').click();
    await waitForLastText(`${MESSAGES} details.freva-gpt-tool`, 'ERA5 tas');
    await ask('Break [[fake:error status=400 message="the model refuses"]]');
    await waitIdle();
    const error = page.locator(`${MESSAGES} .freva-gpt-error`).last();
    await error.waitFor();
    assert.equal(await error.getAttribute('role'), 'alert');
    const colour = await error.evaluate(e => getComputedStyle(e).borderLeftColor);
    const plain = await page
      .locator(`${MESSAGES} .freva-gpt-markdown`)
      .last()
      .evaluate(e => getComputedStyle(e).borderLeftColor);
    assert.notEqual(colour, plain);
    await screenshot('7-tool-and-error');
  });

  it('shows API errors as notifications with their detail', async () => {
    // Another tab deletes the thread; opening it from this (stale) list then fails with a 404.
    const threadId = state.forkedThread;
    await page.click(`${PANEL} .freva-gpt-threads-button`);
    const item = page.locator(`${PANEL} .freva-gpt-thread[data-thread-id="${threadId}"]`);
    await item.waitFor();
    // The list has loaded: no answer of an earlier request takes the item away.
    await page.waitForSelector(`${PANEL} .freva-gpt-thread-list[aria-busy="false"]`);
    const status = await page.evaluate(
      async ([id, token]) => {
        const response = await fetch('/api/chatbot/deletethread', {
          method: 'POST',
          headers: {
            Authorization: `token ${token}`,
            'Content-Type': 'application/json'
          },
          body: JSON.stringify({ thread_id: id })
        });
        return response.status;
      },
      [threadId, h.token]
    );
    assert.equal(status, 200);
    await item.locator('.freva-gpt-thread-open').click();
    const toast = page.locator('.jp-toastContainer .Toastify__toast').filter({ hasText: 'FrevaGPT:' }).last();
    await toast.waitFor({ timeout: 10000 });
    const text = await toast.innerText();
    assert.match(text, /not found/i, text);
    await page.click(`${PANEL} .freva-gpt-threads-button`);
  });

  it('inserts a code block into the notebook, and inserts and runs it', async () => {
    await page.click(`${PANEL} .freva-gpt-new-chat`);
    // The kernel toggle says when no notebook is open.
    await page.check(`${PANEL} .freva-gpt-kernel-toggle input`);
    await page.waitForSelector(`${PANEL} .freva-gpt-kernel-target[data-state="no-notebook"]`);
    await command('notebook:create-new', { kernelName: 'python3' });
    await page.waitForSelector('.jp-NotebookPanel .jp-Notebook');
    await page.waitForSelector(`${PANEL} .freva-gpt-kernel-target[data-state="kernel"]`, { timeout: 60000 });
    assert.match(await page.locator(`${PANEL} .freva-gpt-kernel-target`).innerText(), /Untitled\.ipynb/);
    await page.uncheck(`${PANEL} .freva-gpt-kernel-toggle input`);

    await ask(
      'Some code please [[fake:text text="Here you are:\n```python\nprint(6 * 7)\n```\nRun it." delay=0.01]]'
    );
    await waitIdle();
    const bar = page.locator(`${MESSAGES} .freva-gpt-code-toolbar`).last();
    await bar.locator('[data-action="insert"]').click();
    const cells = page.locator('.jp-NotebookPanel:visible .jp-Cell .jp-InputArea-editor');
    await page.waitForFunction(() =>
      [...document.querySelectorAll('.jp-NotebookPanel .jp-Cell .jp-InputArea-editor')].some(e =>
        e.textContent.includes('print(6 * 7)')
      )
    );
    assert.ok((await cells.count()) >= 2);
    await bar.locator('[data-action="insert-run"]').click();
    await page.waitForFunction(
      () =>
        [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')].some(
          o => o.textContent.trim() === '42'
        ),
      null,
      { timeout: 60000 }
    );
    await fullScreenshot('8-inserted-into-notebook');
  });

  it("runs the assistant's code in the notebook's kernel", async () => {
    await page.check(`${PANEL} .freva-gpt-kernel-toggle input`);
    await page.waitForSelector(`${PANEL} .freva-gpt-kernel-target[data-state="kernel"]`);
    await ask(`Remember a number [[fake:code code="freva_marker = 6 * 7\nprint('marker', freva_marker)"]]`);
    await waitIdle(90000);
    await waitForLastText(`${MESSAGES} .freva-gpt-code-output`, 'marker 42');
    // The notebook's own kernel now knows the variable.
    await ask('And in the notebook? [[fake:text text="```python\nprint(freva_marker + 1)\n```" delay=0.01]]');
    await waitIdle();
    await page
      .locator(`${MESSAGES} .freva-gpt-code-toolbar`)
      .last()
      .locator('[data-action="insert-run"]')
      .click();
    await page.waitForFunction(
      () =>
        [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')].some(
          o => o.textContent.trim() === '43'
        ),
      null,
      { timeout: 60000 }
    );
    await fullScreenshot('9-end');
    await screenshot('10-panel-end');
  });

  it('says so when the notebook has no kernel', async () => {
    await page.evaluate(async () => {
      const nb = window.jupyterapp.shell.currentWidget;
      await nb.sessionContext.shutdown();
    });
    await page.waitForSelector(`${PANEL} .freva-gpt-kernel-target[data-state="no-kernel"]`, {
      timeout: 30000
    });
    assert.match(await page.locator(`${PANEL} .freva-gpt-kernel-target`).innerText(), /has no kernel/);
  });

  it('pages through many threads and deletes one', async () => {
    // 21 more threads, asked through the API as another tab would.
    await page.evaluate(async token => {
      for (let i = 0; i < 21; i++) {
        const response = await fetch('/api/chatbot/streamresponse', {
          method: 'POST',
          headers: { Authorization: `token ${token}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ input: `Paging question ${i} [[fake:text text="Answer ${i}."]]` })
        });
        await response.text();
      }
    }, h.token);
    await page.click(`${PANEL} .freva-gpt-threads-button`);
    const count = page.locator(`${PANEL} .freva-gpt-thread-count`);
    await waitForThreadPage(20, '^1–20 of \\d+$');
    const total = Number((await count.innerText()).split(' of ')[1]);
    assert.ok(total > 21 && total <= 40, `${total} threads`);
    const firstPage = await threadIds();
    await page.click(`${PANEL} .freva-gpt-thread-pages [data-action="next"]`);
    await waitForThreadPage(total - 20, `^21–${total} of ${total}$`);
    const secondPage = await threadIds();
    assert.deepEqual(
      secondPage.filter(id => firstPage.includes(id)),
      [],
      'the second page shows threads of the first'
    );
    await page.click(`${PANEL} .freva-gpt-thread-pages [data-action="previous"]`);
    await waitForThreadPage(20, `^1–20 of ${total}$`);
    assert.deepEqual(await threadIds(), firstPage);
    // Delete the newest one, confirming in the dialog.
    const first = page.locator(`${PANEL} .freva-gpt-thread`).first();
    const id = await first.getAttribute('data-thread-id');
    await first.locator('[data-action="delete"]').click();
    await page.click('.jp-Dialog .jp-mod-warn');
    await waitForThreadPage(20, `^1–20 of ${total - 1}$`);
    assert.ok(!(await threadIds()).includes(id), 'the deleted thread is still listed');
    await page.click(`${PANEL} .freva-gpt-threads-button`);
  });

  it('looks right in the dark theme', async () => {
    await command('apputils:change-theme', { theme: 'JupyterLab Dark' });
    await waitForPanelBackground('dark');
    await screenshot('11-dark-theme');
    await command('apputils:change-theme', { theme: 'JupyterLab Light' });
    await waitForPanelBackground('light');
  });

  it('had no errors in the browser', () => {
    const errors = h.errors.filter(e => !/favicon|Failed to load resource/.test(e));
    assert.deepEqual(errors, []);
  });
});
