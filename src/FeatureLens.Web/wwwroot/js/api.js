// Shared by every view of the page: the JSON API call, the page-wide error banner and ready marker, and the
// formatting and colour helpers. Views import what they use; nothing here knows about a particular view.
//
// For tests: <body data-ready="1"> once the latest work of the page has rendered, "0" while work is in flight,
// "error" when the last request failed; window.__charts counts what is drawn (views add their own entries).

export const $ = id => document.getElementById(id);

export const LAYER_COLORS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac',
  '#1f77b4', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#17becf'];
export const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ['lasso2d', 'select2d', 'toImage'] };

/** What the page has drawn, for tests: the counters every view bumps; views add their charts' entries. */
export const charts = { runs: 0, featureRuns: 0, errors: 0 };
window.__charts = charts;

// ---------- the API ----------

/** GET path (body undefined) or POST body as JSON; the parsed JSON answer, or an Error with the server's message. */
export async function api(path, body) {
  const init = body === undefined ? {} : { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) };
  let resp;
  try { resp = await fetch(path, init); } catch (e) { throw new Error(`the server did not answer (${e.message})`, { cause: e }); }
  const text = await resp.text();
  let data;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) throw new Error((data && data.error) || `HTTP ${resp.status} ${resp.statusText}`);
  if (data === null) throw new Error(`${path} answered without JSON`);
  return data;
}

// ---------- page state: ready marker and error banner ----------

export function setReady(value) { document.body.dataset.ready = value; }

export function showError(message) {
  $('error-text').textContent = message;
  $('error').hidden = false;
  charts.errors++;
}

export function clearError() { $('error').hidden = true; $('error-text').textContent = ''; }

// ---------- views ----------

const views = new Map();

/** Registers a view ({ name, start, shown? }) for showView; app.js registers every view it starts. */
export function registerView(view) { views.set(view.name, view); }

/** Shows one view's panel (data-view-panel) and marks its tab (data-view); calls the view's shown() once it is visible. */
export function showView(name) {
  if (!views.has(name)) return;
  for (const panel of document.querySelectorAll('[data-view-panel]')) panel.hidden = panel.dataset.viewPanel !== name;
  for (const tab of document.querySelectorAll('.tabs [data-view]')) {
    const on = tab.dataset.view === name;
    tab.classList.toggle('active', on);
    tab.setAttribute('aria-pressed', String(on));
  }
  document.body.dataset.view = name;
  const view = views.get(name);
  if (view.shown) view.shown();
}

// ---------- formatting ----------

export function colorOf(saeIndex) { return LAYER_COLORS[saeIndex % LAYER_COLORS.length]; }

export function fmt(x, digits = 3) {
  if (x === null || x === undefined) return '—';
  if (typeof x === 'string') return x;   // "NaN" from the server
  return Number(x).toFixed(digits);
}

export function pct(x) { return x === null || x === undefined ? '—' : (100 * x).toFixed(0) + '%'; }

export function labelText(label) { return label && label.label ? label.label : ''; }

export function labelDetails(label) {
  if (!label) return 'no label';
  const parts = [`label: ${label.label}`, `source: ${label.source}`];
  if (label.f1 != null) parts.push(`F1 ${fmt(label.f1, 2)}`);
  if (label.precision != null) parts.push(`precision ${fmt(label.precision, 2)}`);
  if (label.recall != null) parts.push(`recall ${fmt(label.recall, 2)}`);
  if (label.specialization != null) parts.push(`specialization ${pct(label.specialization)}`);
  return parts.join(' · ');
}

export function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

/** How a token is shown: visible whitespace, BOS marked. */
export function tokenText(tok, index) {
  if (index === 0 && tok === '') return '<bos>';
  return tok.replace(/\n/g, '↵\n');
}

/** The n tokens where perToken is largest (and positive), as `"token" 1.23, ...`. */
export function topTokens(tokens, perToken, n = 3) {
  return perToken.map((a, i) => [a, i]).filter(p => p[0] > 0).sort((a, b) => b[0] - a[0]).slice(0, n)
    .map(([a, i]) => `${JSON.stringify(tokens[i])} ${a.toFixed(2)}`).join(', ');
}

// ---------- DOM ----------

/** The prompt in box, each token's background as strong as its activation in perToken (tokens are shown by tokenText). */
export function renderTokens(box, tokens, perToken) {
  const max = Math.max(1e-9, ...perToken);
  box.innerHTML = '';
  tokens.forEach((tok, i) => {
    const a = perToken[i] || 0;
    const span = document.createElement('span');
    span.textContent = tokenText(tok, i);
    if (i === 0 && tok === '') span.className = 'bos';
    span.dataset.act = a.toFixed(4);
    span.title = `token ${i} ${JSON.stringify(tok)}: activation ${a.toFixed(3)}`;
    if (a > 0) span.style.backgroundColor = `rgba(var(--hl), ${(0.12 + 0.88 * a / max).toFixed(3)})`;
    box.appendChild(span);
  });
  box.dataset.highlighted = String(perToken.filter(a => a > 0).length);
}
