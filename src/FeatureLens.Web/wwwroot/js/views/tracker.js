// The feature activation tracker view: a prompt's top features per SAE (Plotly bar charts, layer comparison, heatmap),
// their correlation network (Cytoscape.js) and feature table, and one feature's panel (its activation per token and its
// evolution across layers). Requests: GET /api/sets, POST /api/track, POST /api/feature.
//
// For tests, besides data-ready and window.__charts (see api.js): window.__cy is the network, window.state this view's state.

import {
  $, PLOT_CONFIG, api, charts, clearError, colorOf, escapeHtml, fmt, labelDetails, labelText, pct, renderTokens, setReady,
  showError, showView, topTokens,
} from '../api.js';
import { databases, featureHash } from './features.js';
import { steerFeature } from './steering.js';

const state = { sets: [], limits: null, result: null, request: null, feature: null, runSeq: 0, featureSeq: 0, cy: null, debounce: 0 };
window.state = state;
Object.assign(charts, { layers: [], comparison: null, heatmap: null, network: null, evolution: null, feature: null });

export const tracker = { name: 'tracker', start, shown };

// ---------- start-up ----------

/** Wires the controls, loads the server's SAE sets and analyses the example prompt. */
async function start() {
  $('analyse').addEventListener('click', () => analyse());
  $('text').addEventListener('keydown', e => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) analyse(); });
  for (const id of ['top', 'threshold']) {
    $(id).addEventListener('input', () => { showControlValues(); scheduleAnalyse(); });
  }
  $('rank-by').addEventListener('change', () => { $('token-index-label').hidden = $('rank-by').value !== 'atToken'; scheduleAnalyse(); });
  $('token-index').addEventListener('change', scheduleAnalyse);
  $('set').addEventListener('change', () => { showSetInfo(); analyse(); });
  $('feature-steer').addEventListener('click', () => {
    if (state.feature) steerFeature({ set: state.feature.set, hook: state.feature.hook, feature: state.feature.feature });
  });
  showControlValues();
  try {
    const info = await api('/api/sets');
    state.sets = info.sets;
    state.limits = info.limits;
    $('set').innerHTML = info.sets.map(s => `<option value="${escapeHtml(s.name)}">${escapeHtml(s.name)}</option>`).join('');
    showSetInfo();
  } catch (e) {
    showError(`could not load the server's SAE sets: ${e.message}`);
    setReady('error');
    return;
  }
  if (state.sets.length === 0) {
    // a server of feature databases only (serve --db): nothing to track; open the Features view
    $('status').textContent = 'no model + SAE sets on this server (start it with --model and --sae); see the Features tab';
    $('analyse').disabled = true;
    setReady('1');
    if (!location.hash) { history.replaceState(null, '', '#features'); showView('features'); }
    return;
  }
  await analyse();
}

/** The view's panel became visible again: charts and the network drawn while it was hidden take its size. */
function shown() {
  for (const div of document.querySelectorAll('#view-tracker .js-plotly-plot')) Plotly.Plots.resize(div).catch(() => {});
  if (state.cy) {
    state.cy.resize();
    // drawn while hidden (the page opened on another view), the circle had no room: lay it out again
    if (state.cyDrawnHidden) { state.cyDrawnHidden = false; state.cy.layout({ name: 'circle', animate: false, padding: 24 }).run(); }
  }
}

/**
 * Opens a feature in the feature panel from another view: the prompt is set to text (and analysed, on set) first when it is not
 * the one the tracker shows, then the feature is loaded as a click on it would (selectFeature).
 */
export async function showFeature({ set, sae, feature, text }) {
  let analyseFirst = !state.result;
  if (set && set !== $('set').value && state.sets.some(s => s.name === set)) { $('set').value = set; showSetInfo(); analyseFirst = true; }
  if (text && (!state.result || state.result.text !== text)) { $('text').value = text; analyseFirst = true; }
  if (analyseFirst) await analyse();
  if (!state.result || (text && state.result.text !== text)) return;   // the analysis failed: its error is on the banner
  await selectFeature(sae, feature);
}

function showControlValues() {
  $('top-value').textContent = $('top').value;
  $('threshold-value').textContent = Number($('threshold').value).toFixed(2);
}

function showSetInfo() {
  const s = state.sets.find(x => x.name === $('set').value);
  if (!s) return;
  const saes = s.saes.map(x => `${x.name} (${x.dSae}${x.k ? `, k=${x.k}` : ''})`).join(', ');
  $('set-info').textContent = `${s.model || s.name} · ${s.architecture}, ${s.layers} layers, d_model ${s.dModel} · SAEs: ${saes}` +
    (s.labels ? ` · ${s.labels} labelled features` : ' · no labels loaded');
}

/** Top-N, threshold and ranking re-run the analysis; marked not-ready at once so a waiting test never sees the old state. */
function scheduleAnalyse() {
  setReady('0');
  clearTimeout(state.debounce);
  state.debounce = setTimeout(() => analyse(), 250);
}

// ---------- analysis ----------

async function analyse() {
  clearTimeout(state.debounce);
  const seq = ++state.runSeq;
  setReady('0');
  clearError();
  const request = {
    set: $('set').value,
    text: $('text').value,
    top: Number($('top').value),
    threshold: Number($('threshold').value),
    rankBy: $('rank-by').value,
    tokenIndex: $('rank-by').value === 'atToken' ? Number($('token-index').value) : null,
  };
  $('analyse').disabled = true;
  $('status').textContent = 'analysing…';
  const started = performance.now();
  try {
    const result = await api('/api/track', request);
    if (seq !== state.runSeq) return;          // a newer analysis was started meanwhile
    state.result = result;
    state.request = request;
    $('results').hidden = false;
    await renderResult(result);
    // keep the selected feature when it is still shown, else inspect the strongest feature of the deepest SAE
    const shown = result.network.nodes.map(n => n.id);
    let pick = state.feature && shown.includes(state.feature.id) ? { sae: state.feature.sae, feature: state.feature.feature } : null;
    if (!pick) {
      const deepest = [...result.layers].reverse().find(l => l.top.length > 0);
      if (deepest) pick = { sae: deepest.name, feature: deepest.top[0].feature };
    }
    if (pick) await selectFeature(pick.sae, pick.feature, seq);
    if (seq !== state.runSeq) return;
    const ms = Math.round(performance.now() - started);
    $('status').textContent = `${result.tokens.length} tokens · ${result.layers.length} SAEs · ${ms} ms`;
    charts.runs++;
    setReady('1');
  } catch (e) {
    if (seq !== state.runSeq) return;
    $('status').textContent = '';
    showError(e.message);
    setReady('error');
  } finally {
    if (seq === state.runSeq) $('analyse').disabled = false;
  }
}

async function renderResult(r) {
  const plots = [];
  plots.push(...renderLayerCharts(r));
  plots.push(renderComparison(r));
  plots.push(renderHeatmap(r));
  renderNetwork(r);
  renderFeatureTable(r);
  await Promise.all(plots);
}

function hoverFor(layer, f) {
  const lbl = labelText(f.label);
  return `<b>${escapeHtml(layer.name)} · feature ${f.feature}</b><br>` + (lbl ? `${escapeHtml(lbl)}<br>` : '') +
    `score ${fmt(f.score)} · max ${fmt(f.max)} · mean ${fmt(f.mean)}` +
    (f.label && f.label.f1 != null ? `<br>F1 ${fmt(f.label.f1, 2)} · specialization ${pct(f.label.specialization)}` : '');
}

/** One horizontal bar chart per SAE: its top features, strongest on top. */
function renderLayerCharts(r) {
  const box = $('layer-charts');
  for (const div of box.querySelectorAll('.layer-chart')) Plotly.purge(div);
  box.innerHTML = '';
  charts.layers = [];
  return r.layers.map(layer => {
    const div = document.createElement('div');
    div.className = 'layer-chart';
    div.id = `layer-chart-${layer.saeIndex}`;
    div.dataset.sae = layer.name;
    div.dataset.bars = String(layer.top.length);
    box.appendChild(div);
    charts.layers.push({ name: layer.name, saeIndex: layer.saeIndex, bars: layer.top.length });
    const names = layer.top.map(f => `${f.feature}` + (labelText(f.label) ? ` · ${labelText(f.label).slice(0, 18)}` : ''));
    const trace = {
      type: 'bar', orientation: 'h', x: layer.top.map(f => f.score), y: names,
      marker: { color: colorOf(layer.saeIndex) }, customdata: layer.top.map(f => f.feature),
      hovertext: layer.top.map(f => hoverFor(layer, f)), hovertemplate: '%{hovertext}<extra></extra>',
    };
    const layout = {
      title: { text: `${layer.name} <span style="font-size:11px;color:#667085">${layer.activeFeatures} active · L0 ${layer.meanL0.toFixed(1)}</span>`, font: { size: 13 }, x: 0.02 },
      height: 70 + 19 * Math.max(layer.top.length, 3), margin: { l: 120, r: 12, t: 32, b: 28 },
      yaxis: { type: 'category', autorange: 'reversed', automargin: true, tickfont: { size: 10 } }, xaxis: { title: { text: rankTitle(r), font: { size: 10 } }, tickfont: { size: 10 } },
      bargap: 0.2,
    };
    return Plotly.newPlot(div, [trace], layout, { ...PLOT_CONFIG, displayModeBar: false }).then(gd => {
      gd.on('plotly_click', ev => { const p = ev.points[0]; selectFeature(layer.name, p.customdata); });
    });
  });
}

function rankTitle(r) {
  const by = r.options.rankBy;
  return by === 'AtToken' ? `activation at token ${r.options.tokenIndex}` : by === 'Mean' ? 'mean activation' : 'max activation';
}

/** Grouped bars: the k-th strongest feature of every layer side by side. */
function renderComparison(r) {
  const div = $('comparison-chart');
  const n = Math.max(0, ...r.layers.map(l => l.top.length));
  const ranks = Array.from({ length: n }, (_, k) => `#${k + 1}`);
  const traces = r.layers.map(layer => ({
    type: 'bar', name: layer.name, x: ranks.slice(0, layer.top.length), y: layer.top.map(f => f.score),
    marker: { color: colorOf(layer.saeIndex) }, customdata: layer.top.map(f => f.feature),
    hovertext: layer.top.map(f => hoverFor(layer, f)), hovertemplate: '%{hovertext}<extra></extra>',
  }));
  const bars = traces.reduce((s, t) => s + t.y.length, 0);
  charts.comparison = { traces: traces.length, bars };
  div.dataset.traces = String(traces.length);
  div.dataset.bars = String(bars);
  const layout = {
    barmode: 'group', height: 360, margin: { l: 50, r: 10, t: 40, b: 40 },
    xaxis: { title: { text: 'rank within layer' } }, yaxis: { title: { text: rankTitle(r) } },
    legend: { orientation: 'h', y: 1.02, yanchor: 'bottom', x: 0 },
  };
  return Plotly.newPlot(div, traces, layout, PLOT_CONFIG).then(gd => {
    gd.removeAllListeners && gd.removeAllListeners('plotly_click');
    gd.on('plotly_click', ev => { const p = ev.points[0]; selectFeature(r.layers[p.curveNumber].name, p.customdata); });
  });
}

/** Layers × the union of their top features. */
function renderHeatmap(r) {
  const div = $('heatmap-chart');
  const h = r.heatmap;
  const cells = h.rows.length * h.columns.length;
  charts.heatmap = { rows: h.rows.length, columns: h.columns.length, cells };
  div.dataset.rows = String(h.rows.length);
  div.dataset.columns = String(h.columns.length);
  div.dataset.cells = String(cells);
  const trace = {
    type: 'heatmap', z: h.values, x: h.columns, y: h.rows, colorscale: 'YlOrRd', reversescale: true,
    hovertemplate: '%{y} · %{x}<br>%{z:.3f}<extra></extra>', colorbar: { thickness: 12 },
  };
  const layout = {
    height: 360, margin: { l: 100, r: 10, t: 10, b: 90 },
    xaxis: { tickangle: -60, tickfont: { size: 8 }, type: 'category' }, yaxis: { autorange: 'reversed', type: 'category' },
  };
  return Plotly.newPlot(div, [trace], layout, PLOT_CONFIG).then(gd => {
    gd.removeAllListeners && gd.removeAllListeners('plotly_click');
    gd.on('plotly_click', ev => {
      const id = ev.points[0].x; const cut = id.lastIndexOf(':');
      selectFeature(id.slice(0, cut), Number(id.slice(cut + 1)));
    });
  });
}

/** The prompt's correlation network: nodes on a circle grouped by layer, edges |r| ≥ threshold. */
function renderNetwork(r) {
  const net = r.network;
  if (state.cy) { state.cy.destroy(); state.cy = null; }
  const order = new Map();
  net.nodes.forEach((n, i) => order.set(n.id, i));
  const elements = [
    ...[...net.nodes].sort((a, b) => a.saeIndex - b.saeIndex || order.get(a.id) - order.get(b.id)).map(n => ({
      group: 'nodes',
      data: { id: n.id, label: String(n.feature), sae: n.sae, saeIndex: n.saeIndex, feature: n.feature, degree: n.degree,
        color: colorOf(n.saeIndex), size: Math.min(30, 11 + 2.5 * Math.sqrt(n.degree)), title: n.label || '' },
      classes: n.degree === 0 ? 'isolated' : '',
    })),
    ...net.edges.map((e, i) => ({
      group: 'edges',
      data: { id: `e${i}`, source: e.source, target: e.target, r: e.r, width: 1 + 7 * Math.abs(e.r), color: e.r >= 0 ? '#7d8fa9' : '#d9534f' },
    })),
  ];
  const cy = cytoscape({
    container: $('network'),
    elements,
    layout: { name: 'circle', animate: false, padding: 24, sort: undefined },
    wheelSensitivity: 0.3,
    style: [
      { selector: 'node', style: { 'background-color': 'data(color)', width: 'data(size)', height: 'data(size)', label: 'data(label)',
        'font-size': 9, color: '#1d2330', 'text-valign': 'center', 'text-halign': 'center', 'border-width': 1, 'border-color': '#ffffff' } },
      { selector: 'node.isolated', style: { opacity: 0.45 } },
      { selector: 'node.selected', style: { 'border-width': 4, 'border-color': '#111827', opacity: 1 } },
      { selector: 'edge', style: { width: 'data(width)', 'line-color': 'data(color)', opacity: 0.7, 'curve-style': 'bezier' } },
      { selector: 'edge.near', style: { opacity: 1, 'line-color': '#111827' } },
    ],
  });
  cy.on('tap', 'node', ev => { const d = ev.target.data(); selectFeature(d.sae, d.feature); });
  state.cy = cy;
  state.cyDrawnHidden = $('network').offsetParent === null;
  window.__cy = cy;
  const stats = { nodes: cy.nodes().length, edges: cy.edges().length, threshold: net.threshold, components: net.components.length };
  charts.network = stats;
  const box = $('network');
  box.dataset.nodes = String(stats.nodes);
  box.dataset.edges = String(stats.edges);
  const hubs = net.hubs.slice(0, 5).join(', ');
  $('network-stats').textContent = `${stats.nodes} features · ${stats.edges} edges with |r| ≥ ${net.threshold.toFixed(2)} over ${net.tokens} tokens · ` +
    `${stats.components} connected component(s)` + (hubs ? ` · hubs: ${hubs}` : '');
  $('network-legend').innerHTML = r.layers.map(l => `<span><i style="background:${colorOf(l.saeIndex)}"></i>${escapeHtml(l.name)}</span>`).join('');
}

/** Every top feature with its label, F1 and specialization; cells carry tooltips. */
function renderFeatureTable(r) {
  const rows = [];
  for (const layer of r.layers) {
    for (const f of layer.top) {
      const id = `${layer.name}:${f.feature}`;
      const lbl = f.label;
      const where = topTokens(r.tokens, f.perToken) || 'does not fire';
      rows.push(`<tr data-id="${escapeHtml(id)}" data-sae="${escapeHtml(layer.name)}" data-feature="${f.feature}" title="${escapeHtml(id)} — click to inspect">` +
        `<td title="${escapeHtml(layer.hook)}"><span class="swatch" style="background:${colorOf(layer.saeIndex)}"></span>${escapeHtml(layer.name)}</td>` +
        `<td class="num">${f.feature}</td>` +
        `<td class="num" title="${escapeHtml(rankTitle(r))}">${fmt(f.score)}</td>` +
        `<td class="num" title="largest activation over the prompt">${fmt(f.max)}</td>` +
        `<td class="num" title="mean activation over the prompt">${fmt(f.mean)}</td>` +
        `<td title="${escapeHtml(labelDetails(lbl))}">${lbl ? escapeHtml(lbl.label) : '<span class="muted">—</span>'}</td>` +
        `<td class="num" title="${lbl && lbl.precision != null ? `precision ${fmt(lbl.precision, 2)}, recall ${fmt(lbl.recall, 2)}` : 'no F1 known'}">${lbl ? fmt(lbl.f1, 2) : '—'}</td>` +
        `<td class="num" title="share of the feature's activation on its category">${lbl ? pct(lbl.specialization) : '—'}</td>` +
        `<td class="mono" title="${escapeHtml('activation per token: ' + f.perToken.map((a, i) => `${r.tokens[i]}=${a.toFixed(2)}`).join(' '))}">${escapeHtml(where)}</td></tr>`);
    }
  }
  const body = $('feature-table').querySelector('tbody');
  body.innerHTML = rows.join('');
  for (const tr of body.querySelectorAll('tr')) tr.addEventListener('click', () => selectFeature(tr.dataset.sae, Number(tr.dataset.feature)));
  $('feature-table').dataset.rows = String(rows.length);
}

// ---------- one feature ----------

/** Loads a feature (its activations on the prompt, label and evolution) into the feature panel. */
async function selectFeature(sae, feature, analysisSeq) {
  if (!state.result) return;
  const seq = ++state.featureSeq;
  const standalone = analysisSeq === undefined;
  if (standalone) setReady('0');
  $('feature-panel').dataset.loading = '1';
  try {
    const d = await api('/api/feature', { set: state.request.set, sae, feature, text: state.result.text });
    if (seq !== state.featureSeq) return;
    state.feature = d;
    await renderFeature(d);
    charts.featureRuns++;
    if (standalone && seq === state.featureSeq) setReady('1');
  } catch (e) {
    if (seq !== state.featureSeq) return;
    showError(e.message);
    if (standalone) setReady('error');
  } finally {
    if (seq === state.featureSeq) delete $('feature-panel').dataset.loading;
  }
}

async function renderFeature(d) {
  const panel = $('feature-panel');
  panel.dataset.feature = d.id;
  panel.dataset.sae = d.sae;
  panel.dataset.featureIndex = String(d.feature);
  $('feature-title').textContent = d.id;
  $('feature-steer').disabled = false;
  const lbl = d.label;
  $('feature-meta').innerHTML =
    `<b>${lbl ? escapeHtml(lbl.label) : 'no label'}</b>` +
    (lbl ? ` <span title="${escapeHtml(labelDetails(lbl))}">· F1 ${fmt(lbl.f1, 2)} · specialization ${pct(lbl.specialization)} · ${escapeHtml(lbl.source)}</span>` : '') +
    ` · ${escapeHtml(d.hook)} · max ${fmt(d.max)} · mean ${fmt(d.mean)}`;
  // a link to the feature's page in a served feature database that holds this SAE (matched by hook name)
  const db = (await databases()).find(x => x.saes.some(s => s.hook === d.hook));
  if (db && $('feature-panel').dataset.feature === d.id) {
    $('feature-meta').insertAdjacentHTML('beforeend',
      ` · <a class="dashboard-link" href="${featureHash(db.name, d.hook, d.feature)}" title="This feature's page in the feature database ${escapeHtml(db.name)}">dashboard</a>`);
  }
  renderTokens($('feature-tokens'), d.tokens, d.perToken);
  if (state.cy) {
    state.cy.nodes().removeClass('selected');
    state.cy.edges().removeClass('near');
    const node = state.cy.$id(d.id);
    node.addClass('selected');
    node.connectedEdges().addClass('near');
  }
  for (const tr of $('feature-table').querySelectorAll('tbody tr')) tr.classList.toggle('selected', tr.dataset.id === d.id);
  charts.feature = { id: d.id, sae: d.sae, feature: d.feature, highlighted: d.perToken.filter(a => a > 0).length };
  await renderEvolution(d);
}

/** The chain of decoder matches across layers: each member's activation on every token. */
function renderEvolution(d) {
  const ev = d.evolution;
  const x = ev.tokens.map((t, i) => i);
  const ticks = ev.tokens.map((t, i) => `${i}:${t.trim() || '␣'}`);
  const traces = ev.chain.map(link => {
    const self = link.saeIndex === d.saeIndex && link.feature === d.feature;
    return {
      type: 'scatter', mode: 'lines+markers', name: `${link.sae}:${link.feature}` + (self ? ' ★' : ''), x, y: link.perToken,
      line: { color: colorOf(link.saeIndex), width: self ? 3.5 : 1.8 }, marker: { size: self ? 6 : 4 },
      hovertemplate: `${escapeHtml(link.sae)}:${link.feature}` + (labelText(link.label) ? ` (${escapeHtml(labelText(link.label))})` : '') +
        `<br>decoder cos ${fmt(link.cosine, 2)}<br>token %{x}: %{y:.3f}<extra></extra>`,
    };
  });
  const div = $('evolution-chart');
  const points = traces.reduce((s, t) => s + t.y.length, 0);
  charts.evolution = { traces: traces.length, points };
  div.dataset.traces = String(traces.length);
  const layout = {
    height: 340, margin: { l: 50, r: 10, t: 50, b: 80 },
    xaxis: { tickmode: 'array', tickvals: x, ticktext: ticks, tickangle: -60, tickfont: { size: 9 } },
    yaxis: { title: { text: 'activation' } }, legend: { orientation: 'h', y: 1.02, yanchor: 'bottom', x: 0 },
  };
  // best matches per other SAE
  const rows = ev.matches.map(m => {
    const dec = m.byDecoder[0], pr = m.byPrompt[0];
    const cell = (mm, what) => mm ? `<td title="${escapeHtml(labelDetails(mm.label))}">${mm.feature} <span class="muted">(${what} ${fmt(mm.score, 2)})</span></td>` : '<td class="muted">—</td>';
    return `<tr><td><span class="swatch" style="background:${colorOf(m.saeIndex)}"></span>${escapeHtml(m.sae)}</td>${cell(dec, 'cos')}${cell(pr, 'r')}</tr>`;
  });
  $('evolution-table').innerHTML = `<thead><tr><th>SAE</th><th title="Best match by cosine of decoder directions">best by decoder</th>` +
    `<th title="Best match by Pearson r of activations over this prompt">best by activation</th></tr></thead><tbody>${rows.join('')}</tbody>`;
  return Plotly.newPlot(div, traces, layout, PLOT_CONFIG);
}
