// The Circuits view: which SAE features (and error terms) carry a metric from a clean prompt to a corrupt one, by attribution
// patching. A clean and a corrupt prompt (or zero ablation), a metric built from the clean prompt's top next-token predictions
// (logit-diff:target,alternative) or typed, gradient or integrated gradients; the answer is drawn as an SAE × token heatmap of
// summed effects (diverging colours centred at 0) and a ranked node table whose feature rows open in the tracker's feature
// panel. Requests: GET /api/sets, POST /api/predictions, POST /api/attribute.
//
// For tests: <body data-circuits-ready="true"> once the latest run is drawn ("false" while one is in flight, "error" when it
// failed); window.__charts.circuits counts what is drawn; window.circuitsState is this view's state.

import { $, PLOT_CONFIG, api, charts, clearError, colorOf, escapeHtml, fmt, labelDetails, showError, showView, tokenText } from '../api.js';
import { showFeature } from './tracker.js';

const state = { sets: [], predictions: null, result: null, request: null, runSeq: 0, predictSeq: 0 };
window.circuitsState = state;
charts.circuits = { runs: 0, predictionRuns: 0, predictions: 0, heatmap: null, rows: 0 };

export const circuits = { name: 'circuits', start, shown };

function setCircuitsReady(value) { document.body.dataset.circuitsReady = value; }

// ---------- start-up ----------

async function start() {
  $('predict').addEventListener('click', () => predict());
  $('run-circuits').addEventListener('click', () => run());
  $('target').addEventListener('change', buildMetric);
  $('alternative').addEventListener('change', buildMetric);
  $('method').addEventListener('change', () => { $('steps-label').hidden = $('method').value !== 'ig'; });
  $('zero-ablation').addEventListener('change', () => { $('corrupt').disabled = $('zero-ablation').checked; });
  for (const id of ['clean', 'corrupt']) {
    $(id).addEventListener('keydown', e => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) run(); });
  }
  $('metric').addEventListener('keydown', e => { if (e.key === 'Enter') run(); });
  try {
    const info = await api('/api/sets');
    state.sets = info.sets;
    $('circuit-set').innerHTML = info.sets.map(s => `<option value="${escapeHtml(s.name)}">${escapeHtml(s.name)}</option>`).join('');
  } catch (e) {
    showError(`could not load the server's SAE sets: ${e.message}`);
    setCircuitsReady('error');
  }
}

/** The panel became visible: a heatmap drawn while it was hidden takes its size. */
function shown() {
  const div = $('circuits-heatmap');
  if (div.classList.contains('js-plotly-plot')) Plotly.Plots.resize(div).catch(() => {});
}

// ---------- the metric picker ----------

/** The clean prompt's top next-token predictions fill the target and alternative pickers (top 1 and top 2 by default). */
async function predict() {
  const seq = ++state.predictSeq;
  clearError();
  $('predict').disabled = true;
  try {
    const p = await api('/api/predictions', { set: $('circuit-set').value, text: $('clean').value, top: 10 });
    if (seq !== state.predictSeq) return;
    state.predictions = p;
    const options = p.predictions.map(x =>
      `<option value="${x.id}">${escapeHtml(JSON.stringify(x.token))} · ${(100 * x.probability).toFixed(1)}% (id ${x.id})</option>`).join('');
    $('target').innerHTML = options;
    $('alternative').innerHTML = options;
    if (p.predictions.length > 1) $('alternative').selectedIndex = 1;
    $('prediction-list').innerHTML = `<span class="muted">Next token after the clean prompt (${p.tokens.length} tokens):</span> ` +
      p.predictions.map(x => `<span class="chip" title="token id ${x.id} · logit ${fmt(x.logit)}">${escapeHtml(JSON.stringify(x.token))} ` +
        `<b>${(100 * x.probability).toFixed(1)}%</b></span>`).join('');
    buildMetric();
    charts.circuits.predictionRuns++;
    charts.circuits.predictions = p.predictions.length;
  } catch (e) {
    if (seq !== state.predictSeq) return;
    showError(e.message);
  } finally {
    if (seq === state.predictSeq) $('predict').disabled = false;
  }
}

function buildMetric() {
  const t = $('target').value, a = $('alternative').value;
  if (t !== '' && a !== '') $('metric').value = `logit-diff:${t},${a}`;
}

// ---------- attribution ----------

async function run() {
  const seq = ++state.runSeq;
  setCircuitsReady('false');
  clearError();
  const zero = $('zero-ablation').checked;
  const request = {
    set: $('circuit-set').value,
    clean: $('clean').value,
    corrupt: zero ? null : $('corrupt').value,
    ablation: zero ? 'zero' : null,
    metric: $('metric').value.trim(),
    method: $('method').value,
    steps: Number($('steps').value),
    top: Number($('top-nodes').value),
  };
  $('run-circuits').disabled = true;
  $('circuits-status').textContent = request.method === 'ig' ? `integrated gradients (${request.steps} steps)…` : 'attributing…';
  const started = performance.now();
  try {
    const result = await api('/api/attribute', request);
    if (seq !== state.runSeq) return;
    state.result = result;
    state.request = request;
    $('circuits-results').hidden = false;
    renderSummary(result);
    renderTable(result);
    await renderHeatmap(result);
    if (seq !== state.runSeq) return;
    const ms = Math.round(performance.now() - started);
    $('circuits-status').textContent = `${result.totalNodes} nodes · ${result.tokens.length} tokens · ${ms} ms`;
    charts.circuits.runs++;
    setCircuitsReady('true');
  } catch (e) {
    if (seq !== state.runSeq) return;
    $('circuits-status').textContent = '';
    showError(e.message);
    setCircuitsReady('error');
  } finally {
    if (seq === state.runSeq) $('run-circuits').disabled = false;
  }
}

function num(x) { return typeof x === 'number' ? x : null; }   // "NaN" comes as a string

function renderSummary(r) {
  const m = r.metric;
  const corrupt = num(m.corrupt);
  const how = r.method === 'ig' ? `integrated gradients, ${r.steps} steps` : 'gradient';
  $('circuits-metric').innerHTML = `<b class="mono">${escapeHtml(m.name)}</b>: clean ${fmt(m.clean)}` +
    (r.ablation === 'zero' ? ' · zero ablation' : ` · corrupt ${fmt(m.corrupt)}` + (corrupt === null ? '' : ` (Δ ${fmt(corrupt - m.clean)})`)) +
    ` · ${escapeHtml(how)} · Σ effect over all ${r.totalNodes} nodes ${fmt(r.totalEffect)}`;
}

/** SAE hooks × clean tokens: the summed signed effect, a diverging scale centred at 0; hover adds Σ|effect|. */
function renderHeatmap(r) {
  const g = r.grid;
  const div = $('circuits-heatmap');
  const x = r.tokens.map((t, i) => `${i}:${tokenText(t, i)}`);
  const z = g.sum.map(row => row.map(num));
  const zmax = Math.max(1e-9, ...z.flat().map(v => Math.abs(v || 0)));
  const cells = g.rows.length * x.length;
  charts.circuits.heatmap = { rows: g.rows.length, columns: x.length, cells };
  div.dataset.rows = String(g.rows.length);
  div.dataset.columns = String(x.length);
  div.dataset.cells = String(cells);
  const trace = {
    type: 'heatmap', z, x, y: g.rows, customdata: g.abs, zmin: -zmax, zmax, zmid: 0,
    colorscale: [[0, '#2166ac'], [0.25, '#92c5de'], [0.5, '#f7f7f7'], [0.75, '#f4a582'], [1, '#b2182b']],
    xgap: 1, ygap: 1, colorbar: { thickness: 12, title: { text: 'Σ effect', side: 'right' } },
    hovertemplate: '%{y} · token %{x}<br>Σ effect %{z:.4f}<br>Σ |effect| %{customdata:.4f}<extra></extra>',
  };
  const layout = {
    height: 120 + 34 * g.rows.length, margin: { l: 110, r: 10, t: 10, b: 90 },
    xaxis: { type: 'category', tickangle: -50, tickfont: { size: 10 } },
    yaxis: { type: 'category', autorange: 'reversed' },
  };
  return Plotly.newPlot(div, [trace], layout, PLOT_CONFIG);
}

/** The top nodes by |effect|; a feature row opens the feature in the tracker's panel. */
function renderTable(r) {
  const maxAbs = Math.max(1e-12, ...r.nodes.map(n => Math.abs(num(n.effect) || 0)));
  const rows = r.nodes.map((n, k) => {
    const feature = n.kind === 'feature';
    const name = feature ? `${n.sae} · ${n.feature}` : `${n.sae} · error`;
    const e = num(n.effect) || 0;
    const bar = `<span class="effect-bar ${e >= 0 ? 'pos' : 'neg'}" style="width:${(100 * Math.abs(e) / maxAbs).toFixed(1)}%"></span>`;
    const lbl = n.label;
    const attrs = feature
      ? `class="feature" data-sae="${escapeHtml(n.sae)}" data-feature="${n.feature}" data-id="${escapeHtml(`${n.sae}:${n.feature}`)}" title="click to open ${escapeHtml(`${n.sae}:${n.feature}`)} in the tracker"`
      : `class="error-node" title="the SAE's error term at this position (what the SAE does not reconstruct)"`;
    return `<tr ${attrs} data-pos="${n.pos}">` +
      `<td class="num">${k + 1}</td>` +
      `<td title="${escapeHtml(n.hook)}"><span class="swatch" style="background:${colorOf(n.saeIndex)}"></span>${escapeHtml(name)}</td>` +
      `<td class="num">${n.pos}</td>` +
      `<td class="mono">${escapeHtml(JSON.stringify(tokenText(n.token, n.pos)))}</td>` +
      `<td class="num effect">${bar}<span>${fmt(n.effect, 4)}</span></td>` +
      `<td class="num">${fmt(n.clean)}</td><td class="num">${fmt(n.corrupt)}</td>` +
      `<td title="${escapeHtml(feature ? labelDetails(lbl) : 'error node')}">${lbl ? escapeHtml(lbl.label) : '<span class="muted">—</span>'}</td></tr>`;
  });
  const body = $('circuits-table').querySelector('tbody');
  body.innerHTML = rows.join('');
  for (const tr of body.querySelectorAll('tr.feature')) {
    tr.addEventListener('click', () => openInTracker(tr.dataset.sae, Number(tr.dataset.feature)));
  }
  $('circuits-table').dataset.rows = String(rows.length);
  charts.circuits.rows = rows.length;
}

/** Switches to the tracker and shows the feature in its feature panel, on the clean prompt. */
async function openInTracker(sae, feature) {
  if (!state.request) return;
  showView('tracker');
  history.replaceState(null, '', location.pathname + location.search);
  await showFeature({ set: state.request.set, sae, feature, text: state.request.clean });
  $('feature-panel').scrollIntoView({ block: 'start' });
}
