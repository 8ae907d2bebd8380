// FeatureLens web app: the page's entry module. Plain ES modules over the JSON API, no build step:
//   js/api.js           the API call, error banner and ready marker, formatting and DOM helpers shared by views
//   js/views/<name>.js  one module per view, exporting { name, start }
// Plotly.js and Cytoscape.js are classic scripts from lib/ (the globals Plotly and cytoscape), loaded before this module.

import { $, clearError } from './js/api.js';
import { tracker } from './js/views/tracker.js';

/** The page's views, started in this order. A new view (circuits, graph, features, steering, clusters) is one module
 *  under js/views/ exporting { name, start } and one entry here; start() wires its controls and loads its data. */
const VIEWS = [tracker];

$('error-close').addEventListener('click', clearError);
for (const view of VIEWS) view.start();
