// The Graph view: attribution graphs (featurelens graph) drawn as layer rows × prompt-position columns, embeddings at the
// bottom and logits at the top; edges as SVG lines, width ∝ |weight|, blue positive and red negative. Hover a node for its
// label, activation, influence and id; click it for its upstream and downstream neighbours ranked by |weight| (features open
// in the tracker's feature panel, or in the Steering tab with "Steer"); pin nodes and group selected nodes (shift-click) into named supernodes, saved into the
// graph file's qParams (pinnedIds, supernodes as [name, id, …], as circuit-tracer's frontend reads them). The threshold
// sliders re-prune on the server (GraphPruning.Prune): exactly for graphs computed here or saved unpruned, and within what
// the file holds for a file saved pruned. Requests: GET /api/sets, GET/POST /api/graphs, GET /api/graphs/progress,
// GET /api/graphs/{id}, POST /api/graphs/{id}/qparams. The page opens the saved graph named by ?graph=ID (with #graph).
//
// For tests: <body data-graph-ready="true"> once the latest graph is drawn ("false" while a request is in flight, "error"
// when it failed); #graph-canvas carries data-nodes and data-links (what is drawn); window.__charts.graph counts draws and
// saves; window.graphState is this view's state.

import { $, api, charts, clearError, colorOf, escapeHtml, fmt, showError, showView } from '../api.js';
import { steerFeature } from './steering.js';
import { showFeature } from './tracker.js';

const state = {
  sets: [], list: null, view: null, clicked: null, selected: new Set(), pinned: new Set(), supernodes: [],
  seq: 0, debounce: 0, poll: 0,
};
window.graphState = state;
charts.graph = { draws: 0, nodes: 0, links: 0, saves: 0, computes: 0 };

export const graph = { name: 'graph', start };

const SVG = 'http://www.w3.org/2000/svg';
const ROW_H = 74, LINE_H = 13, PER_LINE = 8, LEFT = 70, TOP = 34, BOTTOM = 70, NODE_GAP = 13, MIN_COL = 54, MAX_LINKS = 4000;

function setGraphReady(value) { document.body.dataset.graphReady = value; }

// ---------- start-up ----------

async function start() {
  $('graph-compute').addEventListener('click', () => compute());
  $('graph-load').addEventListener('click', () => { if ($('graph-picker').value) load($('graph-picker').value); });
  $('graph-refresh').addEventListener('click', () => refreshList());
  $('graph-prompt').addEventListener('keydown', e => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) compute(); });
  for (const id of ['graph-node-threshold', 'graph-edge-threshold']) $(id).addEventListener('input', () => { showThresholds(); scheduleReprune(); });
  $('graph-group').addEventListener('click', () => groupSelected());
  $('graph-clear-selection').addEventListener('click', () => { state.selected.clear(); markNodes(); });
  try {
    const info = await api('/api/sets');
    state.sets = info.sets.filter(s => s.transcoderSet);
    $('graph-set').innerHTML = state.sets.map(s => `<option value="${escapeHtml(s.name)}">${escapeHtml(s.name)}</option>`).join('') ||
      '<option value="">(no set has transcoders)</option>';
    $('graph-compute').disabled = state.sets.length === 0;
    if (state.sets.length === 0) $('graph-status').textContent = 'start the server with --transcoders DIR to compute graphs';
    await refreshList();
    // ?graph=ID opens a saved graph (a link to share)
    const id = new URLSearchParams(location.search).get('graph');
    if (id) await load(id);
  } catch (e) {
    showError(`could not load the graph page: ${e.message}`);
    setGraphReady('error');
  }
}

async function refreshList() {
  const list = await api('/api/graphs');
  state.list = list;
  $('graph-max').max = String(list.limits.maxFeatureNodesMax);
  if (!state.view) $('graph-max').value = String(list.limits.maxFeatureNodesDefault);
  $('graph-picker').innerHTML = list.graphs.length === 0 ? '<option value="">(none saved yet)</option>' : list.graphs.map(g => {
    const what = g.error ? `unreadable: ${g.error}` : `${g.prompt.slice(0, 60)} · ${g.nodes} nodes${g.nodeThreshold == null ? ' · unpruned' : ''}`;
    return `<option value="${escapeHtml(g.id)}" ${g.error ? 'disabled' : ''}>${escapeHtml(g.id)} — ${escapeHtml(what)}</option>`;
  }).join('');
  if (state.view && list.graphs.some(g => g.id === state.view.id)) $('graph-picker').value = state.view.id;
  $('graph-picker').dataset.count = String(list.graphs.length);
}

// ---------- computing, loading, re-pruning ----------

async function compute() {
  const seq = ++state.seq;
  setGraphReady('false');
  clearError();
  const set = $('graph-set').value;
  const request = { set, prompt: $('graph-prompt').value, maxFeatureNodes: Number($('graph-max').value) };
  $('graph-compute').disabled = true;
  const started = performance.now();
  let finished = false;
  const tick = async () => {
    let p;
    try { p = await api(`/api/graphs/progress?set=${encodeURIComponent(set)}`); } catch { p = null; }
    if (finished || seq !== state.seq) return;
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    const rows = p && p.running && p.phase ? ` · ${p.phase} rows ${p.done}/${p.total}` : '';
    $('graph-status').innerHTML = `<span class="spinner"></span>computing the graph… ${secs} s${escapeHtml(rows)}`;
  };
  tick();
  clearInterval(state.poll);
  state.poll = setInterval(tick, 400);
  try {
    const view = await api('/api/graphs', request);
    finished = true;
    if (seq !== state.seq) return;
    charts.graph.computes++;
    $('graph-status').textContent = `computed ${view.id} in ${((performance.now() - started) / 1000).toFixed(1)} s`;
    show(view);
    await refreshList();
    setGraphReady('true');
  } catch (e) {
    if (seq !== state.seq) return;
    $('graph-status').textContent = '';
    showError(e.message);
    setGraphReady('error');
  } finally {
    finished = true;
    clearInterval(state.poll);
    $('graph-compute').disabled = state.sets.length === 0;
  }
}

async function load(id, thresholds) {
  const seq = ++state.seq;
  setGraphReady('false');
  clearError();
  const q = thresholds ? `?nodeThreshold=${thresholds.node}&edgeThreshold=${thresholds.edge}` : '';
  try {
    const view = await api(`/api/graphs/${encodeURIComponent(id)}${q}`);
    if (seq !== state.seq) return;
    show(view, Boolean(thresholds));
    setGraphReady('true');
  } catch (e) {
    if (seq !== state.seq) return;
    showError(e.message);
    setGraphReady('error');
  }
}

function showThresholds() {
  $('graph-node-value').textContent = Number($('graph-node-threshold').value).toFixed(2);
  $('graph-edge-value').textContent = Number($('graph-edge-threshold').value).toFixed(2);
}

/** The sliders re-prune on the server after a short pause; marked not-ready at once so a waiting test never sees the old graph. */
function scheduleReprune() {
  if (!state.view) return;
  setGraphReady('false');
  clearTimeout(state.debounce);
  state.debounce = setTimeout(() => load(state.view.id, { node: $('graph-node-threshold').value, edge: $('graph-edge-threshold').value }), 250);
}

// ---------- the graph ----------

function kindOf(n) {
  switch (n.featureType) {
    case 'embedding': return 'embedding';
    case 'logit': return 'logit';
    case 'mlp reconstruction error': return 'error';
    default: return 'feature';
  }
}

/** A view from the server replaces the drawn graph; the pins and supernodes come from its qParams. */
function show(view, keepSelection = false) {
  const previous = state.view;
  state.view = view;
  const sameGraph = previous && previous.id === view.id;
  if (!sameGraph || !keepSelection) { state.selected.clear(); state.clicked = null; }
  state.pinned = new Set(view.qParams.pinnedIds);
  state.supernodes = view.qParams.supernodes.map(s => [...s]);
  $('graph-main').hidden = false;
  $('graph-title').textContent = `Attribution graph · ${view.metadata.prompt}`;
  if (!keepSelection) {
    $('graph-node-threshold').value = String(view.nodeThreshold);
    $('graph-edge-threshold').value = String(view.edgeThreshold);
    showThresholds();
  }
  $('graph-note').textContent = view.full
    ? `The server holds the full graph (${view.heldNodes} nodes, ${view.heldFeatures} features): the sliders re-prune it exactly.`
    : `This file was saved pruned (node threshold ${fmt(view.fileNodeThreshold, 2)}; ${view.heldNodes} nodes): the sliders re-prune the nodes and links it holds, ` +
      'so the graph can only get sparser. Compute it again, or save it with featurelens graph --no-prune, for the full graph.';
  draw();
  renderPanel();
  renderSupernodes();
}

/** Node positions: row by layer (embeddings 0, layer l at l + 1, logits on top), column by position; nodes of a cell side by side. */
function layout(view) {
  const nodes = view.nodes.map(n => ({ ...n, kind: kindOf(n) }));
  const logitLayer = Math.max(1, ...nodes.filter(n => n.kind === 'logit').map(n => Number(n.layer)));
  const rowOf = n => n.kind === 'embedding' ? 0 : n.kind === 'logit' ? logitLayer : Number(n.layer) + 1;
  const nPos = view.metadata.promptTokens.length;
  const cells = new Map();
  for (const n of nodes) {
    n.row = rowOf(n);
    const key = `${n.row}:${n.ctxIdx}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(n);
  }
  // a crowded cell wraps into lines of PER_LINE nodes, stacked upwards inside its row; rows grow to fit their fullest cell
  const widest = new Array(nPos).fill(1);
  const lines = new Array(logitLayer + 1).fill(1);
  for (const list of cells.values()) {
    const pos = list[0].ctxIdx;
    widest[pos] = Math.max(widest[pos], Math.min(PER_LINE, list.length));
    lines[list[0].row] = Math.max(lines[list[0].row], Math.ceil(list.length / PER_LINE));
    // most influential first (smaller cumulative influence), errors after features
    list.sort((a, b) => (a.kind === 'error') - (b.kind === 'error') || (a.influence ?? 1) - (b.influence ?? 1));
  }
  const colW = widest.map(w => Math.max(MIN_COL, w * NODE_GAP + 10));
  const colX = [];
  let x = LEFT;
  for (let p = 0; p < nPos; p++) { colX.push(x); x += colW[p]; }
  const rowH = lines.map(n => Math.max(ROW_H, 40 + (n - 1) * LINE_H));
  const rowY = new Array(logitLayer + 1);
  let y = TOP;
  for (let r = logitLayer; r >= 0; r--) { rowY[r] = y + (lines[r] - 1) * LINE_H; y += rowH[r]; }
  const height = y - ROW_H + BOTTOM;
  for (const list of cells.values()) {
    const p = list[0].ctxIdx;
    list.forEach((n, i) => {
      const line = Math.floor(i / PER_LINE), inLine = Math.min(PER_LINE, list.length - line * PER_LINE);
      n.x = colX[p] + colW[p] / 2 - (inLine - 1) * NODE_GAP / 2 + (i % PER_LINE) * NODE_GAP;
      n.y = rowY[n.row] - line * LINE_H;
    });
  }
  return { nodes, byId: new Map(nodes.map(n => [n.nodeId, n])), width: x + 20, height, colX, colW, rowY, logitLayer, nPos };
}

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function draw() {
  const view = state.view;
  const L = layout(view);
  state.layout = L;
  const box = $('graph-canvas');
  box.innerHTML = '';
  const svg = el('svg', { width: L.width, height: L.height, viewBox: `0 0 ${L.width} ${L.height}`, role: 'img', 'aria-label': 'attribution graph' }, box);
  // a graph wider than the panel is scaled down to its width (the viewBox keeps the proportions)
  if (box.clientWidth > 0 && L.width > box.clientWidth) { svg.setAttribute('width', '100%'); svg.removeAttribute('height'); }

  // row labels and prompt tokens
  for (let r = 0; r <= L.logitLayer; r++) {
    const t = el('text', { x: 8, y: L.rowY[r] + 4, class: 'row-label' }, svg);
    t.textContent = r === 0 ? 'embeddings' : r === L.logitLayer ? 'logits' : `layer ${r - 1}`;
  }
  const tokens = view.metadata.promptTokens;
  tokens.forEach((tok, p) => {
    const t = el('text', { x: L.colX[p] + L.colW[p] / 2, y: L.rowY[0] + 26, class: 'token', 'text-anchor': 'middle' }, svg);
    t.textContent = p === 0 && tok === '' ? '<bos>' : tok;
    const title = el('title', {}, t);
    title.textContent = `position ${p}: ${JSON.stringify(tok)}`;
  });

  // supernodes: one box around their drawn members
  const groups = el('g', { class: 'supernodes' }, svg);
  for (const sn of state.supernodes) {
    const members = sn.slice(1).map(id => L.byId.get(id)).filter(Boolean);
    if (members.length === 0) continue;
    const xs = members.map(m => m.x), ys = members.map(m => m.y);
    const g = el('g', { class: 'supernode', 'data-name': sn[0] }, groups);
    el('rect', { x: Math.min(...xs) - 10, y: Math.min(...ys) - 12, width: Math.max(...xs) - Math.min(...xs) + 20, height: Math.max(...ys) - Math.min(...ys) + 24, rx: 8 }, g);
    const t = el('text', { x: Math.min(...xs) - 8, y: Math.min(...ys) - 15 }, g);
    t.textContent = sn[0];
  }

  // edges: the strongest MAX_LINKS by |weight|
  const links = view.links.filter(l => L.byId.has(l.source) && L.byId.has(l.target))
    .sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, MAX_LINKS);
  const maxW = Math.max(1e-12, ...links.map(l => Math.abs(l.weight)));
  const edges = el('g', { class: 'edges' }, svg);
  for (let i = links.length - 1; i >= 0; i--) {
    const l = links[i], s = L.byId.get(l.source), t = L.byId.get(l.target);
    const w = Math.abs(l.weight) / maxW;
    el('line', {
      x1: s.x, y1: s.y, x2: t.x, y2: t.y, stroke: l.weight >= 0 ? '#2166ac' : '#b2182b',
      'stroke-width': (0.3 + 4.2 * w).toFixed(2), 'stroke-opacity': (0.15 + 0.6 * w).toFixed(2),
      'data-source': l.source, 'data-target': l.target,
    }, edges);
  }

  // nodes
  const layer = el('g', { class: 'nodes' }, svg);
  for (const n of L.nodes) {
    const g = el('g', { class: `node ${n.kind}`, 'data-id': n.nodeId, 'data-kind': n.kind }, layer);
    if (n.kind === 'feature') el('circle', { cx: n.x, cy: n.y, r: 5.5, fill: colorOf(Number(n.layer)), stroke: '#fff', 'stroke-width': 1 }, g);
    else if (n.kind === 'error') el('rect', { x: n.x - 5, y: n.y - 5, width: 10, height: 10, fill: '#9aa1ab', stroke: '#fff' }, g);
    else if (n.kind === 'embedding') el('rect', { x: n.x - 6, y: n.y - 4, width: 12, height: 8, rx: 2, fill: '#5b6b82', stroke: '#fff' }, g);
    else el('path', { d: `M${n.x} ${n.y - 7}L${n.x + 7} ${n.y}L${n.x} ${n.y + 7}L${n.x - 7} ${n.y}Z`, fill: n.isTargetLogit ? '#e15759' : '#f28e2b', stroke: '#fff' }, g);
    g.addEventListener('mouseenter', e => showTooltip(n, e));
    g.addEventListener('mousemove', e => moveTooltip(e));
    g.addEventListener('mouseleave', hideTooltip);
    g.addEventListener('click', e => {
      if (e.shiftKey) toggleSelected(n.nodeId); else clickNode(n.nodeId);
    });
  }
  box.dataset.nodes = String(L.nodes.length);
  box.dataset.links = String(links.length);
  $('graph-counts').textContent = `${L.nodes.length} nodes · ${links.length}${links.length < view.links.length ? ` of ${view.links.length}` : ''} links drawn`;
  charts.graph.draws++;
  charts.graph.nodes = L.nodes.length;
  charts.graph.links = links.length;
  markNodes();
}

function markNodes() {
  for (const g of $('graph-canvas').querySelectorAll('.node')) {
    const id = g.dataset.id;
    g.classList.toggle('selected', state.selected.has(id));
    g.classList.toggle('pinned', state.pinned.has(id));
    g.classList.toggle('clicked', state.clicked === id);
  }
  const n = state.selected.size;
  $('graph-selection').textContent = n === 0 ? 'No nodes selected (shift-click nodes to select them).' : `${n} node${n === 1 ? '' : 's'} selected`;
  $('graph-group').disabled = n < 2;
}

// ---------- hover ----------

function describe(n) {
  switch (n.kind) {
    case 'feature': return `L${n.layer} feature ${n.latent ?? n.feature} at ${n.ctxIdx}`;
    case 'error': return `L${n.layer} MLP error at ${n.ctxIdx}`;
    case 'embedding': return `embedding of ${JSON.stringify(state.view.metadata.promptTokens[n.ctxIdx] ?? '')} at ${n.ctxIdx}`;
    default: return n.clerp || `logit ${n.feature}`;
  }
}

function labelOf(n) { return n.kind === 'feature' ? n.clerp || '(no label)' : describe(n); }

function showTooltip(n, e) {
  const tip = $('graph-tooltip');
  tip.innerHTML = `<b>${escapeHtml(labelOf(n))}</b><br>${escapeHtml(describe(n))}` +
    `<br>activation ${n.activation == null ? '—' : fmt(n.activation)} · influence ${n.influence == null ? '—' : fmt(n.influence)}` +
    (n.kind === 'logit' ? ` · p ${fmt(n.tokenProb)}` : '') + `<br><span class="mono">${escapeHtml(n.nodeId)}</span>`;
  tip.dataset.id = n.nodeId;
  tip.hidden = false;
  moveTooltip(e);
}

function moveTooltip(e) {
  const tip = $('graph-tooltip');
  tip.style.left = `${Math.min(window.innerWidth - 370, e.clientX + 14)}px`;
  tip.style.top = `${e.clientY + 14}px`;
}

function hideTooltip() { $('graph-tooltip').hidden = true; }

// ---------- click: the side panel ----------

function clickNode(id) {
  state.clicked = id;
  markNodes();
  renderPanel();
}

function toggleSelected(id) {
  if (state.selected.has(id)) state.selected.delete(id); else state.selected.add(id);
  markNodes();
}

function neighbourRows(list, key) {
  const L = state.layout;
  return list.map(l => {
    const other = L.byId.get(l[key]);
    return `<tr class="neighbour" data-id="${escapeHtml(l[key])}" title="${escapeHtml(l[key])}">` +
      `<td class="num ${l.weight >= 0 ? 'pos' : 'neg'}">${fmt(l.weight, 4)}</td><td>${escapeHtml(other ? labelOf(other) : l[key])}` +
      `<br><span class="muted">${escapeHtml(other ? describe(other) : '')}</span></td></tr>`;
  }).join('');
}

function renderPanel() {
  const panel = $('graph-panel');
  const n = state.clicked && state.layout ? state.layout.byId.get(state.clicked) : null;
  if (!n) { panel.innerHTML = '<p class="muted">Click a node to see its neighbours.</p>'; panel.dataset.id = ''; return; }
  const byAbs = (a, b) => Math.abs(b.weight) - Math.abs(a.weight);
  const up = state.view.links.filter(l => l.target === n.nodeId && state.layout.byId.has(l.source)).sort(byAbs);
  const down = state.view.links.filter(l => l.source === n.nodeId && state.layout.byId.has(l.target)).sort(byAbs);
  const pinned = state.pinned.has(n.nodeId);
  panel.dataset.id = n.nodeId;
  panel.innerHTML = `<h3>${escapeHtml(labelOf(n))}</h3><p class="muted">${escapeHtml(describe(n))} · <span class="mono">${escapeHtml(n.nodeId)}</span><br>` +
    `activation ${n.activation == null ? '—' : fmt(n.activation)} · influence ${n.influence == null ? '—' : fmt(n.influence)}` +
    (n.input == null ? '' : ` · input ${fmt(n.input)} · bias ${fmt(n.bias)}`) + '</p>' +
    `<button id="graph-pin" type="button">${pinned ? 'Unpin' : 'Pin'}</button> ` +
    (n.kind === 'feature' ? '<button id="graph-open-feature" type="button" title="Open this transcoder feature in the tracker\'s feature panel">Open in tracker</button> ' +
      '<button id="graph-steer" type="button" title="Steer generation with this transcoder feature (added at the hook it writes) in the Steering tab">Steer</button>' : '') +
    `<h3>Upstream (${up.length})</h3><table id="graph-upstream"><tbody>${neighbourRows(up, 'source')}</tbody></table>` +
    `<h3>Downstream (${down.length})</h3><table id="graph-downstream"><tbody>${neighbourRows(down, 'target')}</tbody></table>`;
  for (const tr of panel.querySelectorAll('tr.neighbour')) tr.addEventListener('click', () => clickNode(tr.dataset.id));
  $('graph-pin').addEventListener('click', () => togglePin(n.nodeId));
  if (n.kind === 'feature') {
    $('graph-open-feature').addEventListener('click', () => openInTracker(n));
    $('graph-steer').addEventListener('click', () => steerNode(n));
  }
}

/** Switches to the tracker and shows the transcoder feature there, on the graph's prompt, in the set holding the transcoders. */
async function openInTracker(n) {
  const view = state.view;
  const setName = view.set || $('graph-set').value;
  const set = state.sets.find(s => s.name === setName);
  if (!set) { showError('no set with transcoders is loaded to show this feature in'); return; }
  const hook = view.metadata.transcoderList[Number(n.layer)];
  showView('tracker');
  history.replaceState(null, '', location.pathname + location.search);
  await showFeature({ set: set.transcoderSet, sae: hook, feature: n.latent ?? n.feature, text: view.metadata.prompt });
  $('feature-panel').scrollIntoView({ block: 'start' });
}

/**
 * Opens the Steering tab with the transcoder feature as a term: in the graph's set, named by the hook its transcoder reads
 * (the server resolves it among the set's served transcoders); in the transcoders' own set when an SAE of the set reads that hook too.
 */
function steerNode(n) {
  const view = state.view;
  const setName = view.set || $('graph-set').value;
  const set = state.sets.find(s => s.name === setName);
  if (!set) { showError('no set with transcoders is loaded to steer this feature in'); return; }
  const hook = view.metadata.transcoderList[Number(n.layer)];
  const clash = set.saes.some(s => s.hook === hook) && set.transcoderSet !== set.name;
  steerFeature({ set: clash ? set.transcoderSet : set.name, hook, feature: n.latent ?? n.feature });
}

// ---------- pins and supernodes (saved into the file's qParams) ----------

async function save() {
  const view = state.view;
  const q = await api(`/api/graphs/${encodeURIComponent(view.id)}/qparams`, { pinnedIds: [...state.pinned], supernodes: state.supernodes });
  view.qParams = { ...view.qParams, pinnedIds: q.pinnedIds, supernodes: q.supernodes };
  charts.graph.saves++;
}

async function persist() {
  try { await save(); } catch (e) { showError(`could not save the pins and supernodes: ${e.message}`); }
  draw();
  renderPanel();
  renderSupernodes();
}

function togglePin(id) {
  if (state.pinned.has(id)) state.pinned.delete(id); else state.pinned.add(id);
  persist();
}

function groupSelected() {
  const name = $('graph-group-name').value.trim() || `supernode ${state.supernodes.length + 1}`;
  if (state.supernodes.some(s => s[0] === name)) { showError(`a supernode is already named "${name}"`); return; }
  const ids = [...state.selected];
  // a node belongs to one supernode: grouping moves it out of any other
  state.supernodes = state.supernodes.map(s => [s[0], ...s.slice(1).filter(id => !state.selected.has(id))]).filter(s => s.length >= 3);
  state.supernodes.push([name, ...ids]);
  state.selected.clear();
  $('graph-group-name').value = '';
  persist();
}

function renderSupernodes() {
  const box = $('graph-supernodes');
  box.innerHTML = state.supernodes.map((s, i) => `<span class="chip" data-name="${escapeHtml(s[0])}">${escapeHtml(s[0])} · ${s.length - 1} nodes` +
    `<button type="button" data-index="${i}" title="Ungroup">×</button></span>`).join('');
  for (const b of box.querySelectorAll('button')) {
    b.addEventListener('click', () => { state.supernodes.splice(Number(b.dataset.index), 1); persist(); });
  }
  box.dataset.count = String(state.supernodes.length);
}
