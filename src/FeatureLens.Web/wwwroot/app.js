// FeatureLens web app: the page's entry module. Plain ES modules over the JSON API, no build step:
//   js/api.js           the API call, error banner and ready marker, formatting and DOM helpers shared by views
//   js/views/<name>.js  one module per view, exporting { name, start } (and shown(), called when its panel appears)
// The header's tabs switch views (showView in api.js); the page opens on the view named in the URL's #hash, else the first.
// Plotly.js and Cytoscape.js are classic scripts from lib/ (the globals Plotly and cytoscape), loaded before this module.

import { $, clearError, registerView, showView } from './js/api.js';
import { circuits } from './js/views/circuits.js';
import { clusters } from './js/views/clusters.js';
import { features } from './js/views/features.js';
import { graph } from './js/views/graph.js';
import { steering } from './js/views/steering.js';
import { tracker } from './js/views/tracker.js';

/** The page's views, started in this order. A new view (circuits, graph, features, steering, clusters) is one module
 *  under js/views/ exporting { name, start } and one entry here; start() wires its controls and loads its data. */
const VIEWS = [tracker, circuits, graph, features, steering, clusters];

$('error-close').addEventListener('click', clearError);
for (const view of VIEWS) registerView(view);
for (const tab of document.querySelectorAll('.tabs [data-view]')) {
  tab.addEventListener('click', () => {
    history.replaceState(null, '', tab.dataset.view === VIEWS[0].name ? location.pathname + location.search : `#${tab.dataset.view}`);
    showView(tab.dataset.view);
  });
}
// a view's own place follows its name after a slash (#features/DB/SAE/FEATURE); the view reads it in shown()
const viewOfHash = () => (VIEWS.find(v => `#${v.name}` === location.hash.split('/')[0]) || VIEWS[0]).name;
window.addEventListener('hashchange', () => showView(viewOfHash()));
showView(viewOfHash());
for (const view of VIEWS) view.start();
