// The cluster view: a clusters file (featurelens cluster --out, served with serve --clusters FILE...) drawn three ways:
//   the heatmap   the file's cosine matrix of its heatmap features, ordered by cluster, each cluster boxed on the diagonal
//   the dendrogram  the hierarchical result's linkage rows (scipy's [a, b, distance, size]) as Plotly lines; for more than
//                 MAX_MERGES merges only the last ones are drawn and the subtrees below them are leaves marked with their size
//   the cards     each cluster's name, size, most common labels and top tokens, and its members
// Clicking a feature (a member, a heatmap cell, a dendrogram leaf) opens its feature page (#features/DB/HOOK/I) when a
// served database holds an SAE at the feature's hook with the same width, else shows its label below the picker.
// Requests: GET /api/clusters, /api/clusters/ID, and /api/databases (through features.js) for the links.
// The page's place: #clusters/ID.
//
// For tests: <body data-clusters-ready="1"> once the chosen file has rendered ("0" while loading, "error" when it failed);
// window.__charts.clusters holds what was drawn (heatmap size, dendrogram merges drawn and leaves, cards, linked members).

import { $, PLOT_CONFIG, api, charts, clearError, colorOf, escapeHtml, fmt, showError } from '../api.js';
import { databases, featureHash } from './features.js';

const MAX_MERGES = 400;
const MAX_MEMBERS = 60;

const state = { files: [], started: false, id: null, data: null, dbs: [], seq: 0 };
window.clustersState = state;
charts.clusters = { heatmap: null, dendrogram: null, cards: null, links: null, loads: 0 };

export const clusters = { name: 'clusters', start, shown };

const setReady = v => { document.body.dataset.clustersReady = v; };

async function start() {
  $('cfile').addEventListener('change', () => { location.hash = `#clusters/${encodeURIComponent($('cfile').value)}`; });
  $('cluster-cards').addEventListener('click', e => {
    const el = e.target.closest('[data-feature]');
    if (el && el.tagName === 'BUTTON') openFeature(Number(el.dataset.feature));
  });
  setReady('0');
  try {
    const [list, dbs] = await Promise.all([api('/api/clusters'), databases()]);
    state.files = list.files;
    state.dbs = dbs;
  } catch (e) {
    showError(`could not load the clusters files: ${e.message}`);
    setReady('error');
    return;
  }
  state.started = true;
  $('cfile').innerHTML = state.files.map(f => `<option value="${escapeHtml(f.id)}">${escapeHtml(f.id)} · ${escapeHtml(f.method)}, ` +
    `${f.clusters} clusters of ${f.features} features (${escapeHtml(f.source)} profiles)</option>`).join('');
  if (state.files.length === 0) {
    $('cstatus').textContent = 'no clusters files: start the server with --clusters FILE (made by featurelens cluster --out)';
    setReady('1');
    return;
  }
  if (document.body.dataset.view === 'clusters') route();
}

function shown() { if (state.started) route(); }

function route() {
  const parts = location.hash.replace(/^#/, '').split('/').map(decodeURIComponent);
  if (parts[0] !== 'clusters' || state.files.length === 0) return;
  const id = parts[1] && state.files.some(f => f.id === parts[1]) ? parts[1] : (state.id || state.files[0].id);
  if (parts[1] !== id) history.replaceState(null, '', `#clusters/${encodeURIComponent(id)}`);
  if (id !== state.id || !state.data) load(id);
}

async function load(id) {
  const seq = ++state.seq;
  state.id = id;
  $('cfile').value = id;
  $('cstatus').textContent = 'loading…';
  setReady('0');
  let data;
  try {
    data = await api(`/api/clusters/${encodeURIComponent(id)}`);
  } catch (e) {
    if (seq !== state.seq) return;
    showError(`clusters file ${id}: ${e.message}`);
    $('cstatus').textContent = '';
    setReady('error');
    return;
  }
  if (seq !== state.seq) return;
  clearError();
  state.data = data;
  $('cfeature-info').textContent = '';
  $('clusters-main').hidden = false;
  renderSummary(data);
  renderCards(data);
  const drawn = [renderHeatmap(data), renderDendrogram(data)];
  await Promise.all(drawn);
  if (seq !== state.seq) return;
  $('cstatus').textContent = '';
  charts.clusters.loads++;
  setReady('1');
}

// ---------- features: names, labels, links ----------

function featureName(data, i) { const f = data.features[i]; return `L${f.layer}:${f.latent}`; }

/** The feature page of feature i when a served database holds its SAE (same hook and width), else null. */
function featureLink(data, i) {
  const f = data.features[i];
  const hook = data.transcoders[f.layer], width = data.d_sae[f.layer];
  const db = state.dbs.find(d => d.saes.some(s => s.hook === hook && s.d_sae === width));
  return db ? featureHash(db.name, hook, f.latent) : null;
}

function openFeature(i) {
  const data = state.data;
  if (!data || !(i >= 0 && i < data.features.length)) return;
  const link = featureLink(data, i);
  if (link) { location.hash = link; return; }
  const f = data.features[i];
  $('cfeature-info').textContent = `${featureName(data, i)} (${data.transcoders[f.layer]}, latent ${f.latent}, cluster ${f.cluster}): ` +
    `${f.label ? `label "${f.label}"` : 'no label'}${f.top_tokens ? ` · top tokens ${f.top_tokens.map(t => JSON.stringify(t)).join(', ')}` : ''}` +
    ' — no served feature database holds this SAE (serve --db F.sqlite)';
  $('cfeature-info').dataset.feature = String(i);
}

// ---------- summary and cards ----------

function renderSummary(data) {
  const cut = data.cut.k !== undefined ? `cut at ${data.cut.k} clusters` : data.cut.distance !== undefined ? `cut at cosine distance ${data.cut.distance}` : '';
  const method = data.method === 'louvain' ? `Louvain (kNN ${data.knn}, resolution ${data.resolution}, seed ${data.seed}, modularity ${fmt(data.modularity)})`
    : `average-linkage hierarchical, ${cut}`;
  const s = data.score;
  const score = s.labelled > 0 ? ` · over ${s.labelled} labelled features: purity ${fmt(s.purity)}, NMI ${fmt(s.nmi)} (label word: ${s.label_word})` : '';
  $('csummary').textContent = `${data.clusters.length} clusters of ${data.features.length} features from ${data.source} profiles` +
    `${data.prompts != null ? ` over ${data.prompts} prompts` : ''} · ${method}${score} · transcoders ${data.transcoders.join(', ')}`;
}

function renderCards(data) {
  const box = $('cluster-cards');
  let links = 0;
  box.innerHTML = data.clusters.map(c => {
    const members = c.members.slice(0, MAX_MEMBERS).map(i => {
      const f = data.features[i];
      const title = escapeHtml(`${data.transcoders[f.layer]} latent ${f.latent}${f.label ? ': ' + f.label : ''}`);
      const text = `${escapeHtml(featureName(data, i))}${f.label ? ` <span class="muted">${escapeHtml(f.label)}</span>` : ''}`;
      const link = featureLink(data, i);
      if (link) links++;
      return link ? `<li><a class="cfeat" data-feature="${i}" href="${escapeHtml(link)}" title="${title}">${text}</a></li>`
        : `<li><button type="button" class="cfeat link" data-feature="${i}" title="${title}">${text}</button></li>`;
    }).join('');
    const more = c.members.length > MAX_MEMBERS ? `<li class="muted">… and ${c.members.length - MAX_MEMBERS} more</li>` : '';
    const labels = c.labels.length ? c.labels.map(l => `<span class="chip">${escapeHtml(l)}</span>`).join(' ') : '<span class="muted">no labels</span>';
    const tokens = c.top_tokens.length ? c.top_tokens.map(t => `<span class="chip">${escapeHtml(JSON.stringify(t))}</span>`).join(' ') : '<span class="muted">—</span>';
    return `<div class="cluster-card" data-cluster="${c.id}">
      <h3><span class="swatch" style="background:${colorOf(c.id)}"></span>${escapeHtml(c.name)} <span class="muted">${c.size} features</span></h3>
      <p class="cluster-labels">Labels: ${labels}</p>
      <p class="cluster-tokens">Top tokens: ${tokens}</p>
      <ul class="cluster-members">${members}${more}</ul></div>`;
  }).join('');
  charts.clusters.cards = data.clusters.length;
  charts.clusters.links = links;
}

// ---------- heatmap ----------

function renderHeatmap(data) {
  const order = data.heatmap.features;
  const names = order.map(i => featureName(data, i));
  const text = order.map((a, r) => order.map((b, c) => `${names[r]} (cluster ${data.features[a].cluster}) · ${names[c]} (cluster ${data.features[b].cluster})`));
  // each cluster's run along the diagonal, boxed
  const shapes = [];
  for (let s = 0; s < order.length;) {
    let e = s;
    while (e + 1 < order.length && data.features[order[e + 1]].cluster === data.features[order[s]].cluster) e++;
    shapes.push({ type: 'rect', xref: 'x', yref: 'y', x0: s - 0.5, x1: e + 0.5, y0: s - 0.5, y1: e + 0.5, line: { color: '#1d2330', width: 1 } });
    s = e + 1;
  }
  const trace = {
    type: 'heatmap', z: data.heatmap.cosine, x: order.map((_, i) => i), y: order.map((_, i) => i), text, customdata: order,
    hovertemplate: '%{text}<br>cosine %{z:.3f}<extra></extra>', colorscale: 'RdBu', reversescale: true, zmin: -1, zmax: 1,
    colorbar: { title: { text: 'cosine' } },
  };
  const layout = {
    margin: { l: 40, r: 10, t: 10, b: 40 }, height: 560, shapes,
    xaxis: { title: { text: 'features ordered by cluster' }, showticklabels: order.length <= 40, tickvals: order.map((_, i) => i), ticktext: names, constrain: 'domain' },
    yaxis: { autorange: 'reversed', showticklabels: order.length <= 40, tickvals: order.map((_, i) => i), ticktext: names, scaleanchor: 'x' },
  };
  const div = $('cluster-heatmap');
  return Plotly.react(div, [trace], layout, PLOT_CONFIG).then(() => {
    charts.clusters.heatmap = order.length;
    if (!div.dataset.wired) {
      div.dataset.wired = '1';
      div.on('plotly_click', ev => { const p = ev.points && ev.points[0]; if (p) openFeature(state.data.heatmap.features[p.x]); });
    }
  });
}

// ---------- dendrogram ----------

/** Lines of the dendrogram's last MAX_MERGES merges: x of each leaf by the tree's order, y the merge distance. */
export function dendrogramLines(merges, n, maxMerges = MAX_MERGES) {
  const first = Math.max(0, merges.length - maxMerges);   // merges [first, end) are drawn
  const drawn = id => id >= n + first;
  const children = new Set();
  for (let r = first; r < merges.length; r++) { children.add(merges[r][0]); children.add(merges[r][1]); }
  const roots = [];
  for (let r = first; r < merges.length; r++) if (!children.has(n + r)) roots.push(n + r);
  const xs = [], ys = [], leaves = [];
  const pos = new Map();
  // iterative post-order: children before their merge, A before B
  for (const root of roots) {
    const stack = [[root, false]];
    while (stack.length) {
      const [id, done] = stack.pop();
      if (!drawn(id)) {
        const x = leaves.length;
        const y = id < n ? 0 : merges[id - n][2];
        leaves.push({ id, x, y, size: id < n ? 1 : merges[id - n][3] });
        pos.set(id, [x, y]);
        continue;
      }
      const [a, b, dist] = merges[id - n];
      if (!done) { stack.push([id, true], [b, false], [a, false]); continue; }
      const [xa, ya] = pos.get(a), [xb, yb] = pos.get(b);
      xs.push(xa, xa, xb, xb, null);
      ys.push(ya, dist, dist, yb, null);
      pos.set(id, [(xa + xb) / 2, dist]);
    }
  }
  return { xs, ys, leaves, merges: merges.length - first };
}

function renderDendrogram(data) {
  const div = $('cluster-dendrogram');
  if (!data.dendrogram.length) {
    Plotly.purge(div);
    delete div.dataset.wired;
    div.hidden = true;
    $('cdendro-note').textContent = `${data.method} clustering has no dendrogram (only hierarchical results have one).`;
    charts.clusters.dendrogram = { merges: 0, leaves: 0 };
    return Promise.resolve();
  }
  div.hidden = false;
  const n = data.features.length;
  const { xs, ys, leaves, merges } = dendrogramLines(data.dendrogram, n);
  $('cdendro-note').textContent = merges < data.dendrogram.length
    ? `The last ${merges} of ${data.dendrogram.length} merges; a leaf marked with a size is a subtree of that many features.`
    : `All ${merges} merges of the ${n} features; leaves coloured by cluster.`;
  const lines = { type: 'scatter', mode: 'lines', x: xs, y: ys, line: { color: '#667085', width: 1 }, hoverinfo: 'skip', showlegend: false };
  const leafText = leaves.map(l => l.id < n ? `${featureName(data, l.id)}${data.features[l.id].label ? ': ' + data.features[l.id].label : ''} (cluster ${data.features[l.id].cluster})`
    : `a subtree of ${l.size} features`);
  const marks = {
    type: 'scatter', mode: 'markers', x: leaves.map(l => l.x), y: leaves.map(l => l.y), text: leafText, customdata: leaves.map(l => l.id),
    hovertemplate: '%{text}<extra></extra>', showlegend: false,
    marker: { size: leaves.map(l => l.id < n ? 7 : 6 + Math.min(10, Math.log2(l.size))), color: leaves.map(l => l.id < n ? colorOf(data.features[l.id].cluster) : '#bab0ac') },
  };
  const layout = {
    margin: { l: 50, r: 10, t: 10, b: 30 }, height: 360,
    xaxis: { showticklabels: false, zeroline: false, showgrid: false },
    yaxis: { title: { text: 'cosine distance' }, rangemode: 'tozero' },
  };
  return Plotly.react(div, [lines, marks], layout, PLOT_CONFIG).then(() => {
    charts.clusters.dendrogram = { merges, leaves: leaves.length };
    if (!div.dataset.wired) {
      div.dataset.wired = '1';
      div.on('plotly_click', ev => {
        const p = ev.points && ev.points.find(q => q.curveNumber === 1);
        if (p && p.customdata < state.data.features.length) openFeature(p.customdata);
      });
    }
  });
}
