// The Steering view: steer generation along SAE features and compare with the unsteered model. Features are typed as
// HOOK:LATENT (the hook or the SAE's name, e.g. "blocks.2.hook_resid_post:17" or "L2 resid_post:17") or sent here from the
// tracker's feature panel or the Graph view's node panel ("Steer" buttons; a graph feature is a served transcoder's latent,
// added at the hook the transcoder writes); each is added (strength × its decoder row) or clamped (its latent set to a value).
// One request generates the baseline and one steered continuation per strength with the same seed, side by side with the
// next-token KL, and draws, for every watched feature, its activation at each token of the baseline and steered sequences.
// Request: POST /api/steer (the library's SteeringSweep).
//
// For tests: <body data-steer-ready="true"> once the latest run is drawn ("false" while one is in flight, "error" when it
// failed); window.__charts.steering counts what is drawn; window.steeringState is this view's state.

import { $, PLOT_CONFIG, api, charts, clearError, colorOf, escapeHtml, fmt, labelText, showError, showView, tokenText } from '../api.js';

const state = { sets: [], terms: [], watch: [], result: null, request: null, runSeq: 0 };
window.steeringState = state;
charts.steering = { runs: 0, continuations: 0, watchCharts: 0, points: 0 };

export const steering = { name: 'steering', start, shown };

const STRENGTH_COLORS = ['#d62728', '#9467bd', '#2ca02c', '#ff7f0e', '#17becf', '#8c564b', '#e377c2', '#bcbd22'];

function setSteerReady(value) { document.body.dataset.steerReady = value; }

// ---------- start-up ----------

async function start() {
  $('steer-add').addEventListener('click', () => addTyped());
  $('steer-feature').addEventListener('keydown', e => { if (e.key === 'Enter') addTyped(); });
  $('steer-watch-add').addEventListener('click', () => addWatchTyped());
  $('steer-watch-input').addEventListener('keydown', e => { if (e.key === 'Enter') addWatchTyped(); });
  $('steer-run').addEventListener('click', () => run());
  $('steer-prompt').addEventListener('keydown', e => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) run(); });
  renderTerms();
  renderWatch();
  try {
    const info = await api('/api/sets');
    state.sets = info.sets;
    $('steer-set').innerHTML = info.sets.map(s => `<option value="${escapeHtml(s.name)}">${escapeHtml(s.name)}</option>`).join('');
  } catch (e) {
    showError(`could not load the server's SAE sets: ${e.message}`);
    setSteerReady('error');
  }
}

/** The panel became visible: charts drawn while it was hidden take their size. */
function shown() {
  for (const div of document.querySelectorAll('#view-steering .js-plotly-plot')) Plotly.Plots.resize(div).catch(() => {});
}

// ---------- choosing features ----------

/** "HOOK:LATENT" → { hook, latent }; the latent is sent as typed, so the server names a bad one. */
function parseFeature(text) {
  const t = text.trim();
  const cut = t.lastIndexOf(':');
  if (cut <= 0) return { hook: t, latent: null };
  const latent = t.slice(cut + 1).trim();
  return { hook: t.slice(0, cut).trim(), latent: /^\d+$/.test(latent) ? Number(latent) : latent };
}

function addTyped() {
  const text = $('steer-feature').value;
  if (!text.trim()) return;
  const { hook, latent } = parseFeature(text);
  addTerm({ hook, latent, kind: $('steer-kind').value, value: $('steer-strength').value.trim() });
  $('steer-feature').value = '';
}

function addWatchTyped() {
  const text = $('steer-watch-input').value;
  if (!text.trim()) return;
  addWatch(parseFeature(text));
  $('steer-watch-input').value = '';
}

function sameFeature(a, b) { return a.hook === b.hook && String(a.latent) === String(b.latent); }

function addTerm(term) {
  state.terms.push(term);
  addWatch({ hook: term.hook, latent: term.latent });
  renderTerms();
}

function addWatch(w) {
  if (!state.watch.some(x => sameFeature(x, w))) state.watch.push(w);
  renderWatch();
}

/**
 * Called by the tracker's feature panel and the Graph view's node panel ("Steer"): the feature joins the steering terms (an addition at the typed strength)
 * and the watched features, and the Steering view opens.
 */
export function steerFeature({ set, hook, feature }) {
  if (set && state.sets.some(s => s.name === set)) $('steer-set').value = set;
  if (!state.terms.some(t => sameFeature(t, { hook, latent: feature }))) {
    addTerm({ hook, latent: feature, kind: 'add', value: $('steer-strength').value.trim() || '4' });
  }
  history.replaceState(null, '', '#steering');
  showView('steering');
}

/** Removes a term; its feature stops being watched unless another term steers it. */
function removeTerm(index) {
  const [gone] = state.terms.splice(index, 1);
  if (!state.terms.some(t => sameFeature(t, gone))) state.watch = state.watch.filter(w => !sameFeature(w, gone));
  renderTerms();
  renderWatch();
}

function renderTerms() {
  const body = $('steer-terms').querySelector('tbody');
  body.innerHTML = state.terms.map((t, i) =>
    `<tr data-index="${i}" data-hook="${escapeHtml(t.hook)}" data-latent="${escapeHtml(String(t.latent))}">` +
    `<td class="mono">${escapeHtml(`${t.hook}:${t.latent}`)}</td>` +
    `<td><select class="term-kind" title="add: value × the decoder row; clamp: set the latent to value (SAE spliced with its error term)">` +
    `<option value="add"${t.kind === 'add' ? ' selected' : ''}>add</option><option value="clamp"${t.kind === 'clamp' ? ' selected' : ''}>clamp</option></select></td>` +
    `<td><input class="term-value" type="text" size="6" value="${escapeHtml(t.value)}" title="strength (add) or value (clamp)"></td>` +
    `<td><button type="button" class="term-remove" title="remove">×</button></td></tr>`).join('');
  for (const tr of body.querySelectorAll('tr')) {
    const t = state.terms[Number(tr.dataset.index)];
    tr.querySelector('.term-kind').addEventListener('change', e => { t.kind = e.target.value; });
    tr.querySelector('.term-value').addEventListener('input', e => { t.value = e.target.value.trim(); });
    tr.querySelector('.term-remove').addEventListener('click', () => removeTerm(Number(tr.dataset.index)));
  }
  $('steer-terms').dataset.rows = String(state.terms.length);
  $('steer-terms').hidden = state.terms.length === 0;
  $('steer-no-terms').hidden = state.terms.length > 0;
}

function renderWatch() {
  const box = $('steer-watch-list');
  box.innerHTML = state.watch.map((w, i) =>
    `<span class="chip" data-index="${i}">${escapeHtml(`${w.hook}:${w.latent}`)}<button type="button" title="stop watching">×</button></span>`).join('');
  for (const chip of box.querySelectorAll('.chip')) {
    chip.querySelector('button').addEventListener('click', () => { state.watch.splice(Number(chip.dataset.index), 1); renderWatch(); });
  }
  box.dataset.count = String(state.watch.length);
}

// ---------- the request ----------

/** Numbers are sent as typed (trimmed); the server parses them and names the field of one that is not a number. */
function numberOrText(s) { return s === '' ? null : (Number.isFinite(Number(s)) ? Number(s) : s); }

function buildRequest() {
  return {
    set: $('steer-set').value,
    prompt: $('steer-prompt').value,
    features: state.terms.filter(t => t.kind === 'add').map(t => ({ hook: t.hook, latent: t.latent, strength: numberOrText(t.value) })),
    clamps: state.terms.filter(t => t.kind === 'clamp').map(t => ({ hook: t.hook, latent: t.latent, value: numberOrText(t.value) })),
    strengths: $('steer-strengths').value.split(',').map(s => s.trim()).filter(s => s !== '').map(numberOrText),
    positions: $('steer-positions').value,
    maxNewTokens: numberOrText($('steer-max-new').value.trim()),
    temperature: numberOrText($('steer-temperature').value.trim()),
    seed: numberOrText($('steer-seed').value.trim()),
    watch: state.watch.map(w => ({ hook: w.hook, latent: w.latent })),
  };
}

async function run() {
  const seq = ++state.runSeq;
  setSteerReady('false');
  clearError();
  const request = buildRequest();
  $('steer-run').disabled = true;
  $('steer-status').textContent = 'generating…';
  const started = performance.now();
  try {
    const result = await api('/api/steer', request);
    if (seq !== state.runSeq) return;
    state.result = result;
    state.request = request;
    $('steer-error-note').hidden = true;
    $('steer-results').hidden = false;
    renderContinuations(result);
    renderFeatureChanges(result);
    await renderWatchCharts(result);
    if (seq !== state.runSeq) return;
    const ms = Math.round(performance.now() - started);
    $('steer-status').textContent = `${result.result.steered.length} strength(s) · ${result.promptTokens.length} prompt tokens · ${ms} ms`;
    charts.steering.runs++;
    setSteerReady('true');
  } catch (e) {
    if (seq !== state.runSeq) return;
    $('steer-status').textContent = '';
    $('steer-error-note').textContent = e.message;
    $('steer-error-note').hidden = false;
    showError(e.message);
    setSteerReady('error');
  } finally {
    if (seq === state.runSeq) $('steer-run').disabled = false;
  }
}

// ---------- results ----------

/** The baseline and each strength's continuation side by side, each after the prompt, with the next-token KL. */
function renderContinuations(r) {
  const prompt = r.promptTokens.map((t, i) => tokenText(t, i)).join('').replace(/^<bos>/, '');
  const card = (cls, title, text, extra, strength) =>
    `<div class="continuation ${cls}"${strength === undefined ? '' : ` data-strength="${strength}"`}>` +
    `<h3>${title}</h3><p class="muted">${extra}</p>` +
    `<div class="continuation-text"><span class="prompt-part">${escapeHtml(prompt)}</span><span class="generated">${escapeHtml(text)}</span></div></div>`;
  const parts = [card('baseline', 'Baseline', r.result.baseline.text, `${r.result.baseline.tokens.length} new tokens · unsteered`)];
  r.result.steered.forEach(s => {
    const logits = s.logit_changes.map(c => `${escapeHtml(JSON.stringify(c.text))} Δ ${fmt(c.delta)}`).join(' · ');
    parts.push(card('steered', `Steered × ${fmt(s.strength, 2)}`, s.text,
      `${s.tokens.length} new tokens · KL(next token) ${fmt(s.kl, 4)}` + (logits ? ` · ${logits}` : ''), s.strength));
  });
  $('steer-continuations').innerHTML = parts.join('');
  const how = [...r.additions.map(a => `add ${a.label} at ${a.hook} (scale ${fmt(a.scale)} × strength)`), ...r.clamps.map(c => `clamp ${c}`)];
  $('steer-summary').textContent = `${how.join(' · ')} · positions: ${r.result.positions}`;
  charts.steering.continuations = 1 + r.result.steered.length;
}

/** The most changed latents per SAE (mean over the sequence, steered − baseline) for each strength. */
function renderFeatureChanges(r) {
  const rows = [];
  for (const s of r.result.steered) {
    for (const f of s.features) {
      rows.push(`<tr><td class="num">${fmt(s.strength, 2)}</td><td class="mono">${escapeHtml(`${f.hook}:${f.latent}`)}</td>` +
        `<td class="num">${fmt(f.baseline)}</td><td class="num">${fmt(f.steered)}</td><td class="num">${fmt(f.delta)}</td></tr>`);
    }
  }
  $('steer-changes').querySelector('tbody').innerHTML = rows.join('');
  $('steer-changes').dataset.rows = String(rows.length);
  $('steer-changes-card').hidden = rows.length === 0;
}

/** One small chart per watched feature: its activation at each position, baseline (grey) and each strength (colour). */
function renderWatchCharts(r) {
  const box = $('steer-watch-charts');
  for (const div of box.querySelectorAll('.js-plotly-plot')) Plotly.purge(div);
  box.innerHTML = '';
  charts.steering.watchCharts = 0;
  charts.steering.points = 0;
  const nPrompt = r.promptTokens.length;
  const label = (tokens, i) => `${i}:${tokenText(tokens[i], i)}`;
  const baseTokens = [...r.promptTokens, ...r.baselineTokens];
  $('steer-watch-card').hidden = r.watch.length === 0;
  return Promise.all(r.watch.map((w, wi) => {
    const div = document.createElement('div');
    div.className = 'steer-watch-chart';
    div.dataset.feature = `${w.hook}:${w.latent}`;
    box.appendChild(div);
    const traces = [{
      type: 'scatter', mode: 'lines+markers', name: 'baseline', x: w.baseline.map((_, i) => i), y: w.baseline,
      line: { color: '#8a8f98', width: 2 }, marker: { size: 4 }, text: w.baseline.map((_, i) => label(baseTokens, i)),
      hovertemplate: 'baseline · %{text}<br>activation %{y:.3f}<extra></extra>',
    }];
    r.result.steered.forEach((s, k) => {
      const tokens = [...r.promptTokens, ...r.steeredTokens[k]];
      const y = w.steered[k];
      traces.push({
        type: 'scatter', mode: 'lines+markers', name: `× ${fmt(s.strength, 2)}`, x: y.map((_, i) => i), y,
        line: { color: STRENGTH_COLORS[k % STRENGTH_COLORS.length], width: 2 }, marker: { size: 4 },
        text: y.map((_, i) => label(tokens, i)),
        customdata: y.map((v, i) => (i < w.baseline.length ? v - w.baseline[i] : null)),
        hovertemplate: `× ${fmt(s.strength, 2)} · %{text}<br>activation %{y:.3f}<br>Δ vs baseline %{customdata:.3f}<extra></extra>`,
      });
    });
    const points = traces.reduce((n, t) => n + t.y.length, 0);
    div.dataset.traces = String(traces.length);
    div.dataset.points = String(points);
    charts.steering.points += points;
    const name = labelText(w.label);
    const layout = {
      title: { text: `<span style="color:${colorOf(w.saeIndex)}">●</span> ${escapeHtml(`${w.sae}:${w.latent}`)}` + (name ? ` · ${escapeHtml(name)}` : ''), font: { size: 13 }, x: 0.02 },
      height: 230, margin: { l: 44, r: 10, t: 34, b: 34 },
      xaxis: { title: { text: 'position (prompt | generated)', font: { size: 10 } }, tickfont: { size: 10 } },
      yaxis: { title: { text: 'activation', font: { size: 10 } }, tickfont: { size: 10 } },
      shapes: [{ type: 'line', x0: nPrompt - 0.5, x1: nPrompt - 0.5, yref: 'paper', y0: 0, y1: 1, line: { color: '#667085', dash: 'dot', width: 1 } }],
      legend: { orientation: 'h', y: -0.25, font: { size: 10 } }, showlegend: wi === 0,
    };
    return Plotly.newPlot(div, traces, layout, { ...PLOT_CONFIG, displayModeBar: false }).then(() => { charts.steering.watchCharts++; });
  }));
}
