// The status page: one HTML document with its CSS and JS inline (no build step, no CDN, works offline). The script
// listens to /events (Server-Sent Events) and redraws; a one-second timer only ages the "ago" labels and slides the
// charts along, it never asks the server for anything. Everything shown is put in with textContent: keys, values
// and error messages are data, never markup. The CSP allows exactly this script and this style (by hash).
// Written without backticks or dollar-brace in the script below: it sits inside a String.raw template.
import { createHash } from 'node:crypto';

const STYLE = String.raw`
:root { --bg:#f6f7f9; --card:#fff; --fg:#1d2330; --muted:#6b7280; --line:#e3e6eb; --good:#15803d; --warn:#b45309;
  --bad:#b91c1c; --info:#1d4ed8; --chart:#2563eb; --chart2:#0d9488; color-scheme: light dark; }
@media (prefers-color-scheme: dark) { :root { --bg:#111418; --card:#1a1f26; --fg:#e5e7eb; --muted:#9ca3af;
  --line:#2b323c; --good:#4ade80; --warn:#fbbf24; --bad:#f87171; --info:#93c5fd; --chart:#60a5fa; --chart2:#2dd4bf; } }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg); font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
body > header { display:flex; gap:16px; align-items:baseline; padding:12px 20px; border-bottom:1px solid var(--line);
  background:var(--card); position:sticky; top:0; z-index:1; }
h1 { font-size:18px; margin:0; } h2 { font-size:16px; margin:0; } h3 { font-size:13px; margin:14px 0 6px;
  color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
#summary { color:var(--muted); flex:1; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.conn { font-size:12px; padding:2px 8px; border-radius:10px; border:1px solid var(--line); }
.conn[data-state=live] { color:var(--good); border-color:var(--good); }
.conn[data-state=retry], .conn[data-state=connecting] { color:var(--warn); border-color:var(--warn); }
.conn[data-state=down] { color:var(--bad); border-color:var(--bad); }
main { padding:16px 20px; display:grid; gap:16px; max-width:1400px; }
.banner { margin:12px 20px 0; padding:10px 14px; border-radius:6px; background:var(--bad); color:#fff; }
.banner .why { opacity:.9; font-size:12px; margin-top:2px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 16px; }
.card-h { display:flex; gap:10px; align-items:baseline; flex-wrap:wrap; }
.stats { display:flex; flex-wrap:wrap; gap:6px 18px; margin-top:8px; }
.stat { display:flex; flex-direction:column; min-width:80px; }
.stat .k { font-size:11px; color:var(--muted); } .stat .v { font-variant-numeric:tabular-nums; font-weight:600; }
.stat.warn .v { color:var(--warn); } .stat.bad .v { color:var(--bad); }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th { text-align:left; font-weight:500; font-size:12px; color:var(--muted); border-bottom:1px solid var(--line); padding:4px 8px 4px 0; }
td { border-bottom:1px solid var(--line); padding:5px 8px 5px 0; vertical-align:top; }
tr:last-child > td { border-bottom:0; }
.num { text-align:right; } .mono { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:13px; }
.muted { color:var(--muted); }
.err { color:var(--bad); font-size:12px; max-width:42ch; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.badge { display:inline-block; font-size:12px; padding:0 7px; border-radius:9px; border:1px solid currentColor; }
.badge.good { color:var(--good); } .badge.warn { color:var(--warn); } .badge.bad { color:var(--bad); background:color-mix(in srgb, var(--bad) 12%, transparent); }
.badge.idle { color:var(--muted); }
details > summary { cursor:pointer; color:var(--info); }
table.kv { margin:6px 0 2px; font-size:12px; } table.kv td { padding:2px 8px 2px 0; }
.val { white-space:pre-wrap; word-break:break-all; max-width:60ch; }
.charts { display:grid; grid-template-columns:repeat(auto-fit, minmax(260px, 1fr)); gap:12px; margin-top:12px; }
figure.chart { margin:0; border:1px solid var(--line); border-radius:6px; padding:6px 8px; }
figure.chart figcaption { display:flex; justify-content:space-between; font-size:12px; color:var(--muted); }
figure.chart .cur { color:var(--fg); font-variant-numeric:tabular-nums; }
figure.chart svg { display:block; width:100%; height:64px; margin-top:4px; }
svg .grid { stroke:var(--line); stroke-width:1; vector-effect:non-scaling-stroke; }
svg .line { fill:none; stroke:var(--chart); stroke-width:1.5; vector-effect:non-scaling-stroke; }
svg .area { fill:var(--chart); opacity:.15; stroke:none; }
#chart-export svg .line { stroke:var(--chart2); } #chart-export svg .area { fill:var(--chart2); }
.axis { display:flex; justify-content:space-between; font-size:11px; color:var(--muted); }
.replay { margin-top:10px; padding:8px 12px; border-radius:6px; border:1px solid var(--info); color:var(--info); }
ol#events { list-style:none; margin:6px 0 0; padding:0; max-height:420px; overflow:auto; }
ol#events li { display:grid; grid-template-columns:72px 150px minmax(120px, 220px) 1fr; gap:8px; padding:3px 0;
  border-bottom:1px solid var(--line); font-size:13px; }
ol#events time { color:var(--muted); font-variant-numeric:tabular-nums; }
li.bad .kind { color:var(--bad); font-weight:600; } li.warn .kind { color:var(--warn); } li.good .kind { color:var(--good); }
li.info .kind { color:var(--info); }
`;

const SCRIPT = String.raw`
(function () {
  'use strict';
  var WINDOW_MS = 5 * 60 * 1000;
  var SVGNS = 'http://www.w3.org/2000/svg';
  var state = { view: null, at: 0, history: [], events: [], skew: 0, open: {} };
  function $(id) { return document.getElementById(id); }
  function add(el, c) {
    if (c === undefined || c === null || c === false || c === '') return;
    if (Array.isArray(c)) { for (var i = 0; i < c.length; i++) add(el, c[i]); return; }
    el.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
  }
  function h(tag, attrs) {
    var el = document.createElement(tag);
    for (var k in attrs || {}) {
      var v = attrs[k];
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v; else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (var i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }
  function svg(tag, attrs) {
    var el = document.createElementNS(SVGNS, tag);
    for (var k in attrs) el.setAttribute(k, String(attrs[k]));
    return el;
  }
  function now() { return Date.now() + state.skew; }
  function num(n) { return n === undefined || n === null ? '–' : Number(n).toLocaleString('en'); }
  function bytes(n) {
    if (n === undefined || n === null) return '–';
    var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(n < 10 ? 1 : 0) : String(n)) + ' ' + u[i];
  }
  function dur(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + 's';
    var m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + (s % 60) + 's';
    var hr = Math.floor(m / 60);
    if (hr < 48) return hr + 'h ' + (m % 60) + 'm';
    return Math.floor(hr / 24) + 'd ' + (hr % 24) + 'h';
  }
  function rate(n) { n = Number(n) || 0; return n >= 100 ? Math.round(n).toLocaleString('en') : n.toFixed(n >= 10 ? 1 : 2).replace(/\.?0+$/, '') || '0'; }
  function pad(n) { return (n < 10 ? '0' : '') + n; }
  function clock(t) { var d = new Date(t); return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()); }
  function listen(l) { return !l ? '' : typeof l === 'string' ? l : l.kind === 'unix' ? 'unix:' + l.path : l.host + ':' + l.port; }
  /** A label that counts up by itself: "12s ago" (age) or "3m 4s" (uptime). */
  function since(t, ago) { return h('span', { 'data-since': t, 'data-ago': ago ? '1' : null }, label(t, ago)); }
  function label(t, ago) { return dur(now() - t) + (ago ? ' ago' : ''); }
  var TONES = { running: 'good', listening: 'good', closed: 'good', starting: 'warn', backoff: 'warn',
    draining: 'warn', 'half-open': 'warn', stopping: 'idle', stopped: 'idle', unknown: 'idle', failed: 'bad', open: 'bad' };
  function badge(s, cls) { return h('span', { class: 'badge ' + (TONES[s] || 'idle') + (cls ? ' ' + cls : '') }, s); }
  function th(t, cls) { return h('th', { class: cls }, t); }
  function stat(k, v, cls) { return h('div', { class: 'stat' + (cls ? ' ' + cls : '') }, h('span', { class: 'k' }, k), h('span', { class: 'v' }, v)); }
  function warnIf(n) { return n > 0 ? 'warn' : ''; }
  function plural(n, one) { return num(n) + ' ' + one + (n === 1 ? '' : 's'); }

  function render() {
    var v = state.view;
    if (!v) return;
    var s = v.status;
    var sum = $('summary');
    sum.textContent = '';
    add(sum, ['pid ', s.pid, ' · up ', since(v.startedAt, false), ' · reloads ', num(s.reloads), s.config ? ' · ' + s.config : '']);
    renderBanner(s.agent);
    var apps = $('apps');
    apps.textContent = '';
    (s.apps || []).forEach(function (app) { add(apps, renderApp(v, app)); });
    if (!(s.apps || []).length) add(apps, h('p', { class: 'muted' }, 'No apps configured.'));
    renderAgent(v);
  }

  function renderBanner(a) {
    var b = $('banner');
    var br = a && a.pipeline && a.pipeline.breaker;
    b.textContent = '';
    b.hidden = !br || br.state !== 'open';
    document.title = (b.hidden ? '' : '⚠ breaker open · ') + 'Sidekick status';
    if (b.hidden) return;
    var g = a.gauges || {};
    add(b, [h('strong', null, 'Agent breaker open'), ': central is failing, so exports are paused',
      br.retryInMs ? ' (next try in ' + dur(br.retryInMs) + ')' : '', '. ', num(g.spoolRecords), ' records (',
      bytes(g.spoolBytes), ') wait in the spool.']);
    var err = a.pipeline.lastExportError;
    if (err) add(b, h('div', { class: 'why' }, 'Last export error: ' + err.message));
  }

  function renderApp(v, app) {
    var workers = app.workers || [];
    return h('section', { class: 'card app', 'data-app': app.name },
      h('header', { class: 'card-h' }, h('h2', null, app.name), h('span', { class: 'muted mono' }, listen(app.listen))),
      h('div', { class: 'stats' },
        stat('workers', workers.length),
        stat('worker restarts', num(app.workerRestarts), warnIf(app.workerRestarts)),
        stat('unresponsive kills', num(app.unresponsiveKills), warnIf(app.unresponsiveKills)),
        stat('recycles', num(app.recycles)),
        stat('handler errors', num(app.handlerErrors), warnIf(app.handlerErrors)),
        stat('handler timeouts', num(app.handlerTimeouts), warnIf(app.handlerTimeouts)),
        stat('task timeouts', num(app.taskTimeouts), warnIf(app.taskTimeouts))),
      h('h3', null, 'HTTP workers'),
      workers.length ? h('table', { class: 'workers' },
        h('thead', null, h('tr', null, th('pid'), th('state'), th('uptime'), th('RSS', 'num'), th('restarts (app)', 'num'))),
        h('tbody', null, workers.map(function (w) {
          return h('tr', { 'data-pid': w.pid },
            h('td', { class: 'mono' }, w.pid), h('td', null, badge(w.state)),
            h('td', null, w.startedAt ? since(Date.parse(w.startedAt), false) : '–'),
            h('td', { class: 'num' }, bytes(w.rss)), h('td', { class: 'num muted' }, num(app.workerRestarts)));
        }))) : h('p', { class: 'muted' }, 'none running'),
      h('h3', null, 'Sidekicks'),
      sidekicks(v, app));
  }

  function sidekicks(v, app) {
    var list = app.sidekicks || [];
    if (!list.length) return h('p', { class: 'muted' }, 'none started yet');
    return h('table', { class: 'sidekicks' },
      h('thead', null, h('tr', null, th('name'), th('state'), th('gen', 'num'), th('last publish'),
        th('publishes', 'num'), th('restarts', 'num'), th('vars'))),
      h('tbody', null, list.map(function (sk) {
        var id = app.name + '/' + sk.name;
        var r = sk.restarts || {};
        var restarts = (r.crash || 0) + (r.boot_failure || 0) + (r.clean_exit || 0) + (r.reload || 0);
        return h('tr', { 'data-sidekick': id, 'data-state': sk.state },
          h('td', null, h('span', { class: 'mono' }, sk.name),
            sk.lastError ? h('div', { class: 'err', title: sk.lastError }, sk.lastError) : null),
          h('td', { class: 'state' }, badge(sk.state)),
          h('td', { class: 'num gen' }, sk.generation),
          h('td', { class: 'published' }, sk.publishedAt ? since(sk.publishedAt, true) : h('span', { class: 'muted' }, 'never')),
          h('td', { class: 'num publishes' }, num(sk.publishes)),
          h('td', { class: 'num restarts', title: 'crash ' + (r.crash || 0) + ', boot failure ' + (r.boot_failure || 0) +
            ', clean exit ' + (r.clean_exit || 0) + ', reload ' + (r.reload || 0) }, restarts),
          h('td', { class: 'vars' }, varsCell(id, v.vars[id], plural(sk.keys, 'key') + ' · ' + bytes(sk.bytes), v.showValues)));
      })));
  }

  function varsCell(id, sum, text, showValues) {
    if (!sum) return h('span', { class: 'muted' }, text);
    var d = h('details', { 'data-vars': id, open: !!state.open[id] }, h('summary', null, text), varsTable(sum, showValues));
    d.addEventListener('toggle', function () { state.open[id] = d.open; });
    return d;
  }

  function varsTable(sum, showValues) {
    var cols = showValues ? 4 : 3;
    return h('table', { class: 'kv' },
      h('thead', null, h('tr', null, th('key'), th('size', 'num'), th('hash'), showValues ? th('value') : null)),
      h('tbody', null, sum.keys.map(function (k) {
        return h('tr', null, h('td', { class: 'mono' }, k.key), h('td', { class: 'num' }, bytes(k.bytes)),
          h('td', { class: 'mono muted' }, k.hash), showValues ? h('td', { class: 'mono val' }, k.value) : null);
      }),
      sum.more ? h('tr', null, h('td', { colspan: cols, class: 'muted' }, '… and ' + plural(sum.more, 'more key'))) : null,
      showValues ? null : h('tr', null, h('td', { colspan: cols, class: 'muted' }, 'values hidden (admin.showValues is off)'))));
  }

  function renderAgent(v) {
    var root = $('agent');
    var a = v.status.agent;
    root.hidden = !a;
    root.textContent = '';
    if (!a) return;
    var p = a.pipeline || {};
    var br = p.breaker ? p.breaker.state : 'unknown';
    var g = a.gauges || {}, c = a.counters || {}, rates = a.rates || {};
    var dropped = 0;
    for (var k in c.dropped || {}) dropped += c.dropped[k];
    add(root, [
      h('header', { class: 'card-h' }, h('h2', null, 'Agent'), badge(a.state),
        h('span', { class: 'muted mono' }, p.exporter ? p.exporter.type + ' → ' + p.exporter.target : '')),
      h('div', { class: 'stats' },
        stat('breaker', badge(br, 'breaker-state'), br === 'open' ? 'bad' : ''),
        stat('spool backlog', plural(g.spoolRecords, 'record') + ' · ' + bytes(g.spoolBytes)),
        stat('ingest', rate(rates.receivedPerSec) + '/s'),
        stat('export', rate(rates.exportedPerSec) + '/s'),
        stat('received', num(c.received)),
        stat('exported', num(c.exported)),
        stat('dead-lettered', num(c.deadLettered), warnIf(c.deadLettered)),
        stat('dropped', num(dropped), warnIf(dropped)),
        stat('connections', num(g.openConnections)),
        stat('worker restarts', num(a.restarts), warnIf(a.restarts))),
      a.replay ? h('div', { class: 'replay', id: 'replay' }, h('strong', null, 'Replaying the spool backlog'), ': ',
        num(a.replay.backlogRecords), ' records left at ', num(a.replay.exportedPerSec), ' records/s; done in about ',
        a.replay.etaSeconds === undefined || a.replay.etaSeconds === null ? '– (nothing exported yet)' : dur(a.replay.etaSeconds * 1000)) : null,
      h('div', { class: 'charts' }, chart('ingest', 'Ingest, records/s'), chart('export', 'Export, records/s')),
      v.agentVars ? h('h3', null, 'Agent vars (every app reads them as the sidekick "agent")') : null,
      v.agentVars ? varsCell('agent', v.agentVars, plural(v.agentVars.keys.length, 'key'), v.showValues) : null,
    ]);
    drawCharts();
  }

  function chart(id, title) {
    return h('figure', { class: 'chart', id: 'chart-' + id },
      h('figcaption', null, h('span', null, title), h('span', { class: 'cur' })),
      svg('svg', { viewBox: '0 0 300 64', preserveAspectRatio: 'none', role: 'img', 'aria-label': title }),
      h('div', { class: 'axis' }, h('span', null, '−5 min'), h('span', { class: 'top' }), h('span', null, 'now')));
  }

  function drawCharts() { drawChart('ingest', 'received'); drawChart('export', 'exported'); }

  /** A step line of one rate over the last five minutes, scaled to its own maximum. */
  function drawChart(id, field) {
    var fig = $('chart-' + id);
    if (!fig) return;
    var el = fig.querySelector('svg');
    while (el.firstChild) el.removeChild(el.firstChild);
    var W = 300, H = 64, end = now(), start = end - WINDOW_MS;
    var pts = [];
    for (var i = 0; i < state.history.length; i++) {
      var p = state.history[i];
      if (p.t >= start) pts.push(p);
      else pts[0] = p; // the last sample before the window: where the line starts
    }
    var max = 0;
    pts.forEach(function (q) { max = Math.max(max, q[field]); });
    var top = max <= 1 ? 1 : Math.pow(10, Math.ceil(Math.log10(max * 1.1)));
    if (top / 2 >= max * 1.1) top /= 2;
    var x = function (t) { return Math.max(0, Math.min(W, ((t - start) / WINDOW_MS) * W)).toFixed(1); };
    var y = function (val) { return (H - 1 - (val / top) * (H - 4)).toFixed(1); };
    el.appendChild(svg('line', { x1: 0, x2: W, y1: y(top), y2: y(top), class: 'grid' }));
    el.appendChild(svg('line', { x1: 0, x2: W, y1: y(top / 2), y2: y(top / 2), class: 'grid' }));
    var last = pts.length ? pts[pts.length - 1][field] : 0;
    fig.querySelector('.cur').textContent = rate(last) + '/s now · max ' + rate(max) + '/s';
    fig.querySelector('.top').textContent = 'scale ' + rate(top) + '/s';
    if (!pts.length) return;
    var d = 'M' + x(pts[0].t) + ' ' + y(pts[0][field]);
    for (var j = 1; j < pts.length; j++) d += ' H' + x(pts[j].t) + ' V' + y(pts[j][field]);
    d += ' H' + x(end);
    el.appendChild(svg('path', { d: d + ' V' + H + ' H' + x(pts[0].t) + ' Z', class: 'area' }));
    el.appendChild(svg('path', { d: d, class: 'line' }));
  }

  function tone(e) {
    if (/crashed|boot_failed|gave_up|died|unresponsive/.test(e.kind)) return 'bad';
    if (e.kind === 'agent_breaker') return /half/.test(e.detail || '') ? 'warn' : /open/.test(e.detail || '') ? 'bad' : 'good';
    return e.kind === 'reload' || e.kind === 'worker_recycled' ? 'info' : '';
  }

  function renderEvents() {
    var ol = $('events');
    ol.textContent = '';
    var list = state.events.slice(-100).reverse();
    if (!list.length) add(ol, h('li', { class: 'muted' }, 'nothing yet'));
    list.forEach(function (e) {
      var who = [e.app, e.sidekick].filter(Boolean).join('/') +
        (e.generation !== undefined ? ' gen ' + e.generation : '') + (e.pid ? ' pid ' + e.pid : '');
      add(ol, h('li', { class: tone(e), 'data-kind': e.kind },
        h('time', { datetime: new Date(e.at).toISOString(), title: new Date(e.at).toString() }, clock(e.at)),
        h('span', { class: 'kind' }, e.kind.replace(/_/g, ' ')),
        h('span', { class: 'mono' }, who),
        h('span', { class: 'detail' }, e.detail || '')));
    });
  }

  function conn(s, text) { var c = $('conn'); c.setAttribute('data-state', s); c.textContent = text; }

  function sample(view, at) {
    var a = view && view.status.agent;
    if (!a || !a.rates) return;
    state.history.push({ t: at, received: a.rates.receivedPerSec, exported: a.rates.exportedPerSec,
      spoolRecords: (a.gauges || {}).spoolRecords || 0 });
    while (state.history.length > 2 && state.history[1].t < now() - WINDOW_MS) state.history.shift();
  }

  var es = new EventSource('events');
  es.addEventListener('hello', function (m) {
    var d = JSON.parse(m.data);
    state.skew = d.at - Date.now();
    state.history = d.history || [];
    state.events = d.events || [];
    state.view = d.view;
    conn('live', 'live');
    render();
    renderEvents();
  });
  es.addEventListener('status', function (m) {
    var d = JSON.parse(m.data);
    state.skew = d.at - Date.now();
    state.view = d.view;
    sample(d.view, d.at);
    render();
  });
  es.addEventListener('lifecycle', function (m) {
    state.events.push(JSON.parse(m.data));
    if (state.events.length > 200) state.events.shift();
    renderEvents();
  });
  es.onerror = function () {
    if (es.readyState === EventSource.CLOSED) conn('down', 'disconnected: reload the page');
    else conn('retry', 'reconnecting…');
  };
  // Ages and uptimes count on by themselves; the charts slide. Nothing here talks to the server.
  setInterval(function () {
    var els = document.querySelectorAll('[data-since]');
    for (var i = 0; i < els.length; i++)
      els[i].textContent = label(Number(els[i].getAttribute('data-since')), els[i].hasAttribute('data-ago'));
    drawCharts();
  }, 1000);
})();
`;

const hash = (s: string): string => `'sha256-${createHash('sha256').update(s).digest('base64')}'`;

/** Only this page's own script and style run; it talks to its own origin only, and cannot be framed. */
export const PAGE_CSP = [
  "default-src 'none'",
  `script-src ${hash(SCRIPT)}`,
  `style-src ${hash(STYLE)}`,
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sidekick status</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<header><h1>Sidekick</h1><span id="summary">waiting for the first status…</span><span id="conn" class="conn" data-state="connecting">connecting…</span></header>
<div id="banner" class="banner" role="alert" hidden></div>
<main>
<div id="apps"></div>
<section id="agent" class="card" hidden></section>
<section class="card"><h2>Recent events</h2><ol id="events"></ol></section>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
