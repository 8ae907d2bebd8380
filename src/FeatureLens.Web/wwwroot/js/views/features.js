// The features view: a local Neuronpedia over the feature databases the server was started with (serve --db F.sqlite).
// Two pages, chosen by the URL's hash:
//   #features/DB/SAE          the feature browser of one SAE: a sortable, paged table with label (FTS5) and token search
//   #features/DB/SAE/FEATURE  one feature's dashboard: top and quantile examples with highlighted tokens, the activation
//                             histogram (Plotly), the logit lens, correlated features (links), the label and the scan, and
//                             its upstream / downstream features (links), computed by the server after the page shows
// Requests: GET /api/databases, /api/databases/features, /api/databases/feature, /api/databases/connections; the export
// link is /api/databases/export.
//
// For tests: <body data-features-ready="1"> once the latest page has rendered ("0" while loading, "error" when it failed);
// <body data-connections-ready="1"> once its upstream / downstream tables have ("0" while computing, "note" when the server
// cannot compute them); window.__charts.features holds what was drawn (the page's rows, the dashboard's highlighted tokens,
// histogram drawn, the connection tables' partners).

import { $, PLOT_CONFIG, api, charts, clearError, escapeHtml, fmt, pct, showError, tokenText } from '../api.js';

const state = {
  databases: [], started: false, db: null, sae: null, feature: null,
  query: { sort: 'frequency', order: '', page: 0, size: 50, label: '', token: '' }, seq: 0,
};
window.featuresState = state;
charts.features = { page: null, dashboard: null, loads: 0, connections: null };

export const features = { name: 'features', start, shown };

const enc = encodeURIComponent;
const setReady = v => { document.body.dataset.featuresReady = v; };
const setConnectionsReady = v => { document.body.dataset.connectionsReady = v; };

/** The hash of a browser page (feature undefined) or a feature page. */
export function featureHash(db, sae, feature) {
  return `#features/${enc(db)}/${enc(sae)}` + (feature === undefined || feature === null ? '' : `/${feature}`);
}

async function start() {
  $('fdb').addEventListener('change', () => { fillSaes(); browse($('fdb').value, $('fsae').value, true); });
  $('fsae').addEventListener('change', () => browse($('fdb').value, $('fsae').value, true));
  $('fsearch').addEventListener('click', search);
  $('fclear').addEventListener('click', () => { $('flabel').value = ''; $('ftoken').value = ''; search(); });
  for (const id of ['flabel', 'ftoken']) $(id).addEventListener('keydown', e => { if (e.key === 'Enter') search(); });
  for (const b of document.querySelectorAll('#features-table button.sort')) b.addEventListener('click', () => sortBy(b.dataset.sort));
  $('fprev').addEventListener('click', () => { state.query.page--; loadPage(); });
  $('fnext').addEventListener('click', () => { state.query.page++; loadPage(); });
  setReady('0');
  try {
    const info = await api('/api/databases');
    state.databases = info.databases;
  } catch (e) {
    showError(`could not load the feature databases: ${e.message}`);
    setReady('error');
    return;
  }
  state.started = true;
  $('fdb').innerHTML = state.databases.map(d => `<option value="${escapeHtml(d.name)}">${escapeHtml(d.name)}</option>`).join('');
  fillSaes();
  if (state.databases.length === 0) {
    $('fstatus').textContent = 'no feature databases: start the server with --db F.sqlite (made by featurelens scan)';
    setReady('1');
    return;
  }
  if (document.body.dataset.view === 'features') route();
}

/** The databases the server holds (loaded once; other views use it to link to feature pages). */
let databasesPromise = null;
export function databases() {
  if (!databasesPromise) databasesPromise = api('/api/databases').then(d => d.databases).catch(() => []);
  return databasesPromise;
}

function fillSaes() {
  const d = state.databases.find(x => x.name === $('fdb').value);
  $('fsae').innerHTML = d ? d.saes.map(s => `<option value="${escapeHtml(s.hook)}">${escapeHtml(s.name)} · ${escapeHtml(s.hook)}</option>`).join('') : '';
  $('fscan').textContent = d ? scanText(d) : '';
}

function scanText(d) {
  const m = d.model || {};
  return `${d.name}: model ${m.name || '?'} (${m.architecture || '?'}, ${m.n_layers || '?'} layers, d_model ${m.d_model || '?'}) · ` +
    `${Number(d.tokens_scanned).toLocaleString('en-US')} tokens scanned in windows of ${d.context} · corpus ${d.corpus || '?'} · ${d.path}`;
}

/** The view became visible, or the hash changed: show the page the hash names. */
function shown() {
  if (state.started) route();
}

function route() {
  const parts = location.hash.replace(/^#/, '').split('/').map(decodeURIComponent);
  if (parts[0] !== 'features') return;
  if (parts.length < 3) {
    // the bare tab: the page shown last, else the first database's first SAE
    const d = state.databases[0];
    if (!d) return;
    const target = state.db ? featureHash(state.db, state.sae, state.feature ?? undefined) : featureHash(d.name, d.saes[0].hook);
    history.replaceState(null, '', target);
    route();
    return;
  }
  const [, db, sae, f] = parts;
  if (f !== undefined && f !== '') showFeature(db, sae, Number(f));
  else browse(db, sae, db !== state.db || sae !== state.sae);
}

// ---------- the browser ----------

function browse(db, sae, reset) {
  if (reset) Object.assign(state.query, { page: 0 });
  state.db = db; state.sae = sae; state.feature = null;
  const target = featureHash(db, sae);
  if (location.hash !== target) history.replaceState(null, '', target);
  $('fdb').value = db;
  if ($('fsae').dataset.db !== db) { fillSaes(); $('fsae').dataset.db = db; }
  $('fsae').value = sae;
  $('features-browser').hidden = false;
  $('feature-page').hidden = true;
  loadPage();
}

function search() {
  state.query.label = $('flabel').value.trim();
  state.query.token = $('ftoken').value;
  state.query.page = 0;
  if (state.feature !== null) { location.hash = featureHash(state.db, state.sae); return; }
  loadPage();
}

function sortBy(key) {
  const q = state.query;
  const natural = key === 'frequency' || key === 'max' ? 'desc' : 'asc';
  q.order = q.sort === key ? ((q.order || natural) === 'desc' ? 'asc' : 'desc') : natural;
  q.sort = key;
  q.page = 0;
  loadPage();
}

/** A token search box value: quotes around it are dropped (' Lily' searches for " Lily"). */
function tokenQuery(t) {
  const m = /^(['"])(.*)\1$/s.exec(t);
  return m ? m[2] : t;
}

async function loadPage() {
  const seq = ++state.seq;
  const q = state.query;
  const params = new URLSearchParams({ db: state.db, sae: state.sae, sort: q.sort, page: String(q.page), size: String(q.size) });
  if (q.order) params.set('order', q.order);
  if (q.label) params.set('label', q.label);
  if (q.token) params.set('token', tokenQuery(q.token));
  setReady('0');
  $('fstatus').textContent = 'loading…';
  try {
    const page = await api(`/api/databases/features?${params}`);
    if (seq !== state.seq) return;
    clearError();
    renderPage(page);
    $('fstatus').textContent = '';
    setReady('1');
  } catch (e) {
    if (seq !== state.seq) return;
    $('fstatus').textContent = '';
    showError(e.message);
    setReady('error');
  }
}

function renderPage(p) {
  const q = state.query;
  q.order = p.order;
  for (const b of document.querySelectorAll('#features-table button.sort')) {
    const on = b.dataset.sort === p.sort;
    b.classList.toggle('active', on);
    b.dataset.dir = on ? (p.order === 'desc' ? '▼' : '▲') : '';
  }
  $('fbrowser-title').textContent = `Features of ${p.sae}`;
  const tokens = p.matched_tokens;
  $('fmatched').textContent = (q.label ? `label contains "${q.label}" · ` : '') +
    (tokens ? (tokens.length ? `top examples fire on ${tokens.map(t => `${JSON.stringify(t.text)} (id ${t.token})`).join(', ')} · ` : `no token ${JSON.stringify(tokenQuery(q.token))} in the vocabulary · `) : '') +
    `${p.total.toLocaleString('en-US')} feature(s)`;
  const tbody = $('features-table').querySelector('tbody');
  tbody.innerHTML = p.rows.map(r => `<tr data-feature="${r.feature}">
      <td class="num"><a href="${featureHash(state.db, state.sae, r.feature)}">${r.feature}</a></td>
      <td>${r.label === null ? '<span class="muted">—</span>' : escapeHtml(r.label)}</td>
      <td class="num">${(100 * r.frequency).toFixed(3)}%</td><td class="num">${fmt(r.max)}</td><td class="num">${fmt(r.mean_active)}</td>
      <td class="num">${fmt(r.f1, 2)}</td><td class="num">${pct(r.specialization)}</td></tr>`).join('');
  for (const tr of tbody.querySelectorAll('tr')) {
    tr.addEventListener('click', e => { if (e.target.tagName !== 'A') location.hash = featureHash(state.db, state.sae, Number(tr.dataset.feature)); });
  }
  const pages = Math.max(1, Math.ceil(p.total / p.page_size));
  $('fpage').textContent = `page ${p.page + 1} of ${pages}`;
  $('fprev').disabled = p.page <= 0;
  $('fnext').disabled = p.page + 1 >= pages;
  charts.features.page = { sae: p.sae, sort: p.sort, order: p.order, page: p.page, total: p.total, features: p.rows.map(r => r.feature) };
}

// ---------- the feature page ----------

async function showFeature(db, sae, feature) {
  const seq = ++state.seq;
  state.db = db; state.sae = sae; state.feature = feature;
  $('fdb').value = db;
  if ($('fsae').dataset.db !== db) { fillSaes(); $('fsae').dataset.db = db; }
  $('fsae').value = sae;
  $('features-browser').hidden = true;
  $('feature-page').hidden = false;
  setReady('0');
  $('fstatus').textContent = 'loading…';
  try {
    const d = await api(`/api/databases/feature?${new URLSearchParams({ db, sae, feature: String(feature) })}`);
    if (seq !== state.seq) return;
    clearError();
    await renderDashboard(db, d);
    $('fstatus').textContent = '';
    if (seq === state.seq) setReady('1');
  } catch (e) {
    if (seq !== state.seq) return;
    $('fstatus').textContent = '';
    showError(e.message);
    setReady('error');
  }
}

async function renderDashboard(db, d) {
  const info = state.databases.find(x => x.name === db);
  charts.features.loads++;
  $('fp-back').href = featureHash(db, d.sae);
  $('fp-title').textContent = `${d.sae_name} · feature ${d.feature}`;
  $('fp-export').href = `/api/databases/export?${new URLSearchParams({ db, sae: d.sae, features: String(d.feature) })}`;
  const l = d.label;
  $('fp-label').innerHTML = l
    ? `<b>${escapeHtml(l.label)}</b> <span class="muted">F1 ${fmt(l.f1, 2)} · precision ${fmt(l.precision, 2)} · recall ${fmt(l.recall, 2)} · specialization ${pct(l.specialization)}</span>`
    : '<span class="muted">no label</span>';
  $('fp-stats').textContent = `fires on ${d.count.toLocaleString('en-US')} of ${d.tokens_scanned.toLocaleString('en-US')} tokens ` +
    `(frequency ${(100 * d.frequency).toFixed(4)}%) · max ${fmt(d.max)} · mean ${fmt(d.mean, 4)} over all tokens, ${fmt(d.mean_active)} when firing`;
  $('fp-meta').textContent = info ? `${d.sae} · ${scanText(info)}` : d.sae;

  const top = $('fp-top');
  top.innerHTML = '';
  let highlighted = 0;
  for (const e of d.top) highlighted += renderExample(top, e, d.max);
  if (d.top.length === 0) top.innerHTML = '<p class="muted">The feature never fired in the scan.</p>';

  const qbox = $('fp-quantiles');
  qbox.innerHTML = '';
  for (const iv of d.intervals) {
    const div = document.createElement('div');
    div.className = 'interval';
    div.dataset.interval = String(iv.index);
    div.innerHTML = `<h3>${fmt(iv.lower)} – ${fmt(iv.upper)} <span class="muted">· ${iv.count.toLocaleString('en-US')} firings (${(100 * iv.fraction).toFixed(1)}%)</span></h3>`;
    for (const e of d.quantiles.filter(q => q.interval === iv.index)) renderExample(div, e, d.max);
    qbox.appendChild(div);
  }

  logitTable('fp-pos', d.logits ? d.logits.top : []);
  logitTable('fp-neg', d.logits ? d.logits.bottom : []);

  const saeName = hook => (info && info.saes.find(s => s.hook === hook) || {}).name || hook;
  const ptbody = $('fp-partners').querySelector('tbody');
  ptbody.innerHTML = d.partners.length === 0 ? '<tr><td colspan="2" class="muted">no correlated features</td></tr>'
    : d.partners.map(p => `<tr><td><a class="partner" href="${featureHash(db, p.sae, p.feature)}">${escapeHtml(saeName(p.sae))} #${p.feature}</a></td>` +
      `<td class="num">${fmt(p.r)}</td></tr>`).join('');

  charts.features.dashboard = { sae: d.sae, feature: d.feature, examples: d.top.length, highlighted, histogram: false };
  loadConnections(db, d, saeName);
  await drawHistogram(d);
}

/** The upstream / downstream tables: asked for after the page shows (the server computes them once, which takes a while). */
async function loadConnections(db, d, saeName) {
  const seq = state.seq;
  const note = $('fp-connections');
  const tables = document.querySelector('#fp-conn .conn-tables');
  for (const id of ['fp-upstream', 'fp-downstream']) $(id).querySelector('tbody').innerHTML = '';
  tables.hidden = true;
  charts.features.connections = null;
  setConnectionsReady('0');
  if (d.top.length === 0) {
    note.textContent = 'The feature never fired in the scan: no examples to compute connections over.';
    setConnectionsReady('note');
    return;
  }
  note.innerHTML = '<span class="spinner"></span>computing upstream and downstream features over the top examples…';
  let c;
  try {
    c = await api(`/api/databases/connections?${new URLSearchParams({ db, sae: d.sae, feature: String(d.feature) })}`);
  } catch (e) {
    if (seq !== state.seq) return;
    note.textContent = e.message;
    setConnectionsReady('note');
    return;
  }
  if (seq !== state.seq) return;
  const rows = list => list.map(p => `<tr><td><a class="partner" href="${featureHash(db, p.sae, p.feature)}">${escapeHtml(saeName(p.sae))} #${p.feature}</a></td>` +
    `<td class="num">${fmt(p.effect, 4)}</td><td class="num">${pct(p.fraction)}</td>` +
    `<td>${p.label === null ? '<span class="muted">—</span>' : escapeHtml(p.label)}</td></tr>`).join('');
  const none = what => `<tr><td colspan="4" class="muted">${what}</td></tr>`;
  $('fp-upstream').querySelector('tbody').innerHTML = c.upstream.length ? rows(c.upstream)
    : none(c.upstream_saes.length ? 'no upstream latent has an effect' : 'no SAE upstream of this one');
  $('fp-downstream').querySelector('tbody').innerHTML = c.downstream.length ? rows(c.downstream)
    : none(c.downstream_saes.length ? 'no downstream latent changes' : 'no SAE downstream of this one');
  const errors = c.upstream_errors.length ? ` · error nodes: ${c.upstream_errors.map(e => `${saeName(e.sae)} ${fmt(e.effect, 4)}`).join(', ')}` +
    (c.error_share === null ? '' : ` (${pct(c.error_share)} of all upstream |effect|)`) : '';
  const missing = c.missing_saes.length ? ` · not loaded in the server (no partners from them): ${c.missing_saes.map(saeName).join(', ')}` : '';
  note.textContent = `over ${c.examples} top example(s)${errors}${missing}`;
  tables.hidden = false;
  charts.features.connections = {
    sae: c.sae, feature: c.feature, examples: c.examples,
    upstream: c.upstream.map(p => [p.sae, p.feature]), downstream: c.downstream.map(p => [p.sae, p.feature]),
  };
  setConnectionsReady('1');
}

/** One example: a window of tokens around where it fired, each token's background its activation relative to max. */
function renderExample(box, e, max) {
  const div = document.createElement('div');
  div.className = 'example';
  div.dataset.pos = String(e.pos);
  div.dataset.activation = String(e.activation);
  const lo = Math.max(0, e.pos - 32), hi = Math.min(e.text.length - 1, e.pos + 8);
  const act = document.createElement('span');
  act.className = 'act';
  act.textContent = fmt(e.activation, 2);
  div.appendChild(act);
  if (lo > 0) div.appendChild(document.createTextNode('…'));
  let lit = 0;
  for (let i = lo; i <= hi; i++) {
    const a = e.values[i] || 0;
    const span = document.createElement('span');
    span.className = 'tok' + (i === e.pos ? ' fire' : '');
    span.textContent = e.text[i] === '<0x0A>' ? '↵' : tokenText(e.text[i], i);   // llama2.c's newline byte token
    span.dataset.i = String(i);
    span.dataset.act = String(a);
    span.title = `token ${i} ${JSON.stringify(e.text[i])} (id ${e.tokens[i]}): ${a.toFixed(3)}`;
    if (a > 0) {
      span.style.backgroundColor = `rgba(var(--hl), ${(0.12 + 0.88 * Math.min(1, a / Math.max(1e-9, max))).toFixed(3)})`;
      lit++;
    }
    div.appendChild(span);
  }
  if (hi < e.text.length - 1) div.appendChild(document.createTextNode('…'));
  box.appendChild(div);
  return lit;
}

function logitTable(id, tokens) {
  $(id).querySelector('tbody').innerHTML = tokens.length === 0 ? '<tr><td colspan="2" class="muted">no logit lens stored</td></tr>'
    : tokens.map(t => `<tr><td class="mono">${escapeHtml(JSON.stringify(t.text))}</td><td class="num">${fmt(t.value)}</td></tr>`).join('');
}

async function drawHistogram(d) {
  const div = $('fp-hist');
  const h = d.histogram;
  div.dataset.ready = '0';
  if (h.counts.length === 0) {
    Plotly.purge(div);
    div.innerHTML = '<p class="muted">The feature never fired.</p>';
    div.dataset.ready = '1';
    div.dataset.bars = '0';
    charts.features.dashboard.histogram = true;
    return;
  }
  div.innerHTML = '';
  // log-spaced bins drawn side by side, each labelled by its lower edge
  const x = h.counts.map((_, i) => h.edges[i].toPrecision(3));
  await Plotly.react(div, [{
    type: 'bar', x, y: h.counts, marker: { color: 'rgb(255, 140, 0)' },
    hovertemplate: '%{customdata}<br>%{y} tokens<extra></extra>',
    customdata: h.counts.map((_, i) => `${h.edges[i].toPrecision(3)} – ${h.edges[i + 1].toPrecision(3)}`),
  }], {
    margin: { l: 50, r: 10, t: 10, b: 40 }, height: 300, bargap: 0,
    xaxis: { title: { text: 'activation (bin lower edge)' }, type: 'category' }, yaxis: { title: { text: 'tokens' } },
  }, PLOT_CONFIG);
  div.dataset.ready = '1';
  div.dataset.bars = String(h.counts.length);
  charts.features.dashboard.histogram = true;
}
