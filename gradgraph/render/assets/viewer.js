// gradgraph viewer: a folded autograd graph that unfolds on click, laid out in
// the browser by dagre (bundled just above this file in the page). html.py
// calls it with the root div. No ids are used (two displays of one graph on a
// page do not meet); every user string goes in with textContent.
(function (root) {
  "use strict";
  if (!root || root.getAttribute("data-gg-ready") || !window.dagre) { return; }
  root.setAttribute("data-gg-ready", "1");
  var NS = "http" + "://www.w3.org/2000/svg";
  var D = JSON.parse(root.querySelector("script.gg-data").textContent);
  var S = D.strings, NF = 10, N = D.nodes.length / NF, B = D.boxes.length;
  var U = N + B;
  var FONT = "Helvetica, Arial, sans-serif";
  var LEGIBLE = 0.8;  // the smallest scale a jump to a node leaves

  // -- the graph: units are nodes (0..N-1) and folded boxes (N..U-1) ----------
  function str(i) { return i < 0 ? null : S[i]; }
  function isBox(u) { return u >= N; }
  function field(u, k) { return isBox(u) ? D.boxes[u - N][k] : D.nodes[u * NF + k]; }
  function parentOf(u) { return field(u, 3); }
  function kindOf(u) { return str(field(u, 2)) || "op"; }
  function titleOf(u) { return str(field(u, 0)) || "?"; }
  function idOf(u) { return D.ids ? D.ids[u] : u; }
  function orderOf(u) { return isBox(u) ? D.boxes[u - N][7] : D.nodes[u * NF + 9]; }
  function linesOf(u) { var t = str(field(u, 1)); return t ? t.split("\n") : []; }
  var ins = [], outs = [];
  for (var u0 = 0; u0 < N; u0++) { ins.push([]); outs.push([]); }
  for (var e0 = 0; e0 < D.edges.length; e0 += 2) {
    outs[D.edges[e0]].push(D.edges[e0 + 1]);
    ins[D.edges[e0 + 1]].push(D.edges[e0]);
  }

  // -- the page: bar, canvas (svg + minimap), details panel -------------------
  function el(tag, cls, parent) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function sv(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  var bar = root.querySelector(".gg-bar");
  var search = el("input", "gg-search", bar);
  search.type = "search";
  search.placeholder = "search op, name, module";
  search.setAttribute("aria-label", "search nodes");
  var count = el("span", "gg-count", bar);
  var foldAll = el("button", "gg-foldall", bar);
  foldAll.type = "button";
  foldAll.textContent = "fold all";
  var fitBtn = el("button", "gg-fit", bar);
  fitBtn.type = "button";
  fitBtn.textContent = "fit";
  var staticView = root.querySelector(".gg-static");
  if (staticView) { staticView.parentNode.removeChild(staticView); }
  var main = el("div", "gg-main", root);
  var canvas = el("div", "gg-canvas", main);
  var panel = el("aside", "gg-details", main);
  var svg = sv("svg", { "class": "gg-svg" }, canvas);
  var world = sv("g", {}, svg);
  var mini = el("div", "gg-mini", canvas);
  var miniCanvas = el("canvas", "", mini);
  var miniView = el("div", "gg-mini-view", mini);
  var HINT = "Click a node for its details; click a folded box to unfold it and " +
    "its frame to fold it back. Drag to pan, scroll to zoom.";
  function hint() { panel.textContent = ""; el("p", "", panel).textContent = HINT; }
  hint();

  // -- folding state and visible units ------------------------------------
  var expanded = {};
  var vis = new Int32Array(U);
  function computeVisible() {
    for (var u = N; u < U; u++) { visit(u); }
    for (u = 0; u < N; u++) { visit(u); }
    function visit(u) {
      var p = parentOf(u);
      vis[u] = p < 0 || (vis[p] === p && expanded[p]) ? u : vis[p];
    }
  }

  // -- text measurement and node sizes --------------------------------------
  var ctx = document.createElement("canvas").getContext("2d");
  function width(text, font) { ctx.font = font; return ctx.measureText(text).width; }
  function cut(text, most) { return text.length > most ? text.slice(0, most - 1) + "…" : text; }
  function sizeOf(u) {
    var w = width(cut(titleOf(u), 60), "bold 12px " + FONT);
    linesOf(u).forEach(function (t) { w = Math.max(w, width(cut(t, 70), "10px " + FONT)); });
    return { w: Math.ceil(w) + (isBox(u) ? 34 : 18), h: 22 + 13 * linesOf(u).length };
  }

  // -- layout (dagre) and drawing ------------------------------------------
  var layout = null, shapes = {}, edgeEls = [];
  function relayout() {
    var started = Date.now();
    computeVisible();
    // compound layout (frames around unfolded boxes) only when one is unfolded
    var g = new dagre.graphlib.Graph({ compound: !!D.bands || Object.keys(expanded).length > 0 });
    g.setGraph({ rankdir: "TB", nodesep: 16, ranksep: 44, marginx: 30, marginy: 30 });
    g.setDefaultEdgeLabel(function () { return {}; });
    var units = [], clusters = [];
    for (var u = 0; u < U; u++) {
      if (vis[u] !== u) { continue; }
      if (isBox(u) && expanded[u]) { clusters.push(u); g.setNode("c" + u, {}); continue; }
      var size = sizeOf(u);
      units.push(u);
      g.setNode(String(u), { width: size.w, height: size.h });
    }
    var bands = [];
    function nest(name, u) {  // in its unfolded box, else in its derivative order's band
      var p = parentOf(u), o = orderOf(u);
      if (p >= 0) { g.setParent(name, "c" + p); return; }
      if (!D.bands || o < 0 || !D.bands[o]) { return; }
      if (bands.indexOf(o) < 0) { bands.push(o); g.setNode("o" + o, {}); }
      g.setParent(name, "o" + o);
    }
    clusters.forEach(function (c) { nest("c" + c, c); });
    units.forEach(function (u) { nest(String(u), u); });
    var seen = new Set(), pairs = [];
    for (var e = 0; e < D.edges.length; e += 2) {
      var a = vis[D.edges[e]], b = vis[D.edges[e + 1]];
      if (a === b || seen.has(a * U + b)) { continue; }
      seen.add(a * U + b);
      pairs.push([a, b]);
      g.setEdge(String(a), String(b));
    }
    dagre.layout(g);
    layout = { g: g, units: units, clusters: clusters, pairs: pairs, bands: bands,
      width: g.graph().width, height: g.graph().height };
    svg.setAttribute("width", Math.ceil(layout.width));
    svg.setAttribute("height", Math.ceil(layout.height));
    draw();
    root.setAttribute("data-layout-ms", Date.now() - started);
  }
  function draw() {
    var g = layout.g;
    world.textContent = "";
    shapes = {};
    edgeEls = [];
    layout.bands.forEach(function (o) {
      var n = g.node("o" + o), look = D.bands[o];
      sv("rect", { x: n.x - n.width / 2 - 6, y: n.y - n.height / 2 - 24, width: n.width + 12,
        height: n.height + 30, rx: 10, style: "fill:" + look.fillcolor + ";stroke:" +
        look.color }, world);
      sv("text", { x: n.x - n.width / 2 + 4, y: n.y - n.height / 2 - 8, "class": "gg-band" },
        world).textContent = look.label;
    });
    var back = sv("g", {}, world), edgeLayer = sv("g", {}, world), front = sv("g", {}, world);
    layout.clusters.forEach(function (c) {
      var n = g.node("c" + c);
      var frame = sv("g", { "class": "gg-frame" }, back);
      frame.ggUnit = c;
      sv("rect", { x: n.x - n.width / 2, y: n.y - n.height / 2 - 16, width: n.width,
        height: n.height + 16, rx: 8 }, frame);
      var label = sv("text", { x: n.x - n.width / 2 + 8, y: n.y - n.height / 2 - 3 }, frame);
      label.textContent = "− " + cut(titleOf(c), 80);
      sv("title", {}, frame).textContent = "click to fold " + titleOf(c) + " back";
    });
    layout.pairs.forEach(function (pair) {
      var pts = g.edge(String(pair[0]), String(pair[1])).points;
      var d = "M" + pts[0].x + "," + pts[0].y;
      for (var i = 1; i < pts.length - 1; i++) {
        var mx = (pts[i].x + pts[i + 1].x) / 2, my = (pts[i].y + pts[i + 1].y) / 2;
        d += " Q" + pts[i].x + "," + pts[i].y + " " + (i === pts.length - 2 ? pts[i + 1].x + "," + pts[i + 1].y : mx + "," + my);
      }
      if (pts.length === 2) { d += " L" + pts[1].x + "," + pts[1].y; }
      var grp = sv("g", { "class": "gg-edge" }, edgeLayer);
      sv("path", { d: d }, grp);
      var p = pts[pts.length - 1], q = pts[pts.length - 2];
      var ang = Math.atan2(p.y - q.y, p.x - q.x), s = 6;
      var ax = p.x - s * Math.cos(ang - 0.45), ay = p.y - s * Math.sin(ang - 0.45);
      var bx = p.x - s * Math.cos(ang + 0.45), by = p.y - s * Math.sin(ang + 0.45);
      sv("polygon", { points: p.x + "," + p.y + " " + ax + "," + ay + " " + bx + "," + by }, grp);
      edgeEls.push({ el: grp, a: pair[0], b: pair[1] });
    });
    layout.units.forEach(function (u) {
      var n = g.node(String(u)), kind = kindOf(u), look = D.kinds[kind] || D.kinds.module;
      var x = n.x - n.width / 2, y = n.y - n.height / 2;
      var grp = sv("g", { "class": "gg-node gg-k-" + kind + (isBox(u) ? " gg-box" : ""),
        transform: "translate(" + x + "," + y + ")" }, front);
      grp.ggUnit = u;
      grp.setAttribute(isBox(u) ? "data-box" : "data-id", isBox(u) ? u - N : idOf(u));
      var style = { fill: look.fill, stroke: look.line };
      if (isBox(u)) {  // a stack of cards: this box holds more
        sv("rect", { x: 4, y: 4, width: n.width, height: n.height, rx: 4, style: "fill:" +
          look.fill + ";stroke:" + look.line }, grp);
      }
      var rect = sv("rect", { width: n.width, height: n.height,
        rx: /rounded/.test(look.style) || isBox(u) ? 6 : 2 }, grp);
      rect.setAttribute("style", "fill:" + style.fill + ";stroke:" + style.stroke +
        (/dashed/.test(look.style) ? ";stroke-dasharray:4 3" : ""));
      var t = sv("text", { x: 9, y: 16, "class": "gg-t" }, grp);
      t.textContent = cut(titleOf(u), 60);
      linesOf(u).forEach(function (line, i) {
        var l = sv("text", { x: 9, y: 30 + 13 * i, "class": "gg-l" }, grp);
        l.textContent = cut(line, 70);
      });
      if (isBox(u)) {
        var plus = sv("text", { x: n.width - 16, y: 16, "class": "gg-plus" }, grp);
        plus.textContent = "+";
      }
      sv("title", {}, grp).textContent = titleOf(u) + (isBox(u) ? " (click to unfold)" : "");
      shapes[u] = { el: grp, x: n.x, y: n.y, w: n.width, h: n.height };
    });
    layout.clusters.forEach(function (c) {
      var n = g.node("c" + c);
      shapes[c] = { el: null, x: n.x, y: n.y - 8, w: n.width, h: n.height + 16 };
    });
    drawMini();
    mark();
    root.setAttribute("data-units", layout.units.length);
    root.setAttribute("data-frames", layout.clusters.length);
  }

  // -- camera: translate + scale on the world group -------------------------
  var view = { s: 1, x: 0, y: 0 };
  function box() { return { w: canvas.clientWidth || 800, h: canvas.clientHeight || 500 }; }
  function apply() {
    // a CSS transform on the <svg> box: no SVG relayout on each pan/zoom step
    svg.style.transform = "translate(" + view.x + "px," + view.y + "px) scale(" + view.s + ")";
    root.setAttribute("data-scale", view.s.toFixed(4));
    placeMini();
  }
  function centerOn(x, y, s) {
    var c = box();
    view.s = s;
    view.x = c.w / 2 - x * s;
    view.y = c.h / 2 - y * s;
    apply();
  }
  function zoomAt(px, py, f) {
    var s = Math.min(4, Math.max(0.02, view.s * f));
    view.x = px - (px - view.x) * (s / view.s);
    view.y = py - (py - view.y) * (s / view.s);
    view.s = s;
    apply();
  }
  function fit() {
    var c = box();
    var s = Math.min(1.5, (c.w - 20) / layout.width, (c.h - 20) / layout.height);
    centerOn(layout.width / 2, layout.height / 2, s);
  }
  function opening() {
    // legible from the start: the whole graph when it fits at 0.75x or more,
    // else fitted to the width (but never below 0.75x), starting at the loss
    var c = box(), fitAll = Math.min((c.w - 20) / layout.width, (c.h - 20) / layout.height);
    if (fitAll >= 0.75) { return centerOn(layout.width / 2, layout.height / 2, Math.min(fitAll, 1.25)); }
    var s = Math.max(0.75, Math.min(1, (c.w - 20) / layout.width));
    var r = shapes[vis[D.roots.length ? D.roots[0] : 0]] || { x: layout.width / 2, y: layout.height };
    var x = layout.width * s <= c.w ? layout.width / 2 : r.x;
    var down = D.flow === "forward";  // forward: the loss is at the bottom
    var y = down ? Math.min(r.y + r.h / 2 + 30, layout.height) - c.h / (2 * s)
      : Math.max(r.y - r.h / 2 - 30, 0) + c.h / (2 * s);
    centerOn(x, y, s);
  }
  canvas.addEventListener("wheel", function (evt) {
    evt.preventDefault();
    var r = canvas.getBoundingClientRect();
    var dy = evt.deltaMode === 1 ? evt.deltaY * 20 : evt.deltaY;
    zoomAt(evt.clientX - r.left, evt.clientY - r.top, Math.exp(-Math.max(-300, Math.min(300, dy)) * 0.002));
  }, { passive: false });
  var drag = null, dragged = false;
  canvas.addEventListener("mousedown", function (evt) {
    drag = { x: evt.clientX, y: evt.clientY, vx: view.x, vy: view.y };
    dragged = false;
  });
  window.addEventListener("mousemove", function (evt) {
    if (!drag) { return; }
    var dx = evt.clientX - drag.x, dy = evt.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) { dragged = true; }
    view.x = drag.vx + dx;
    view.y = drag.vy + dy;
    apply();
  });
  window.addEventListener("mouseup", function () { drag = null; });

  // -- minimap: the whole layout, and where the view is ----------------------
  var miniScale = 1, miniX = 0, miniY = 0, MW = 170, MH = 150;
  function drawMini() {
    miniScale = Math.min(MW / layout.width, MH / layout.height);
    miniX = (MW - layout.width * miniScale) / 2;
    miniY = (MH - layout.height * miniScale) / 2;
    miniCanvas.width = MW;
    miniCanvas.height = MH;
    var m = miniCanvas.getContext("2d");
    layout.units.forEach(function (u) {
      var s = shapes[u], look = D.kinds[kindOf(u)] || D.kinds.module;
      m.fillStyle = look.line;
      m.fillRect(miniX + (s.x - s.w / 2) * miniScale, miniY + (s.y - s.h / 2) * miniScale,
        Math.max(1, s.w * miniScale), Math.max(1, s.h * miniScale));
    });
  }
  function placeMini() {
    if (!layout) { return; }
    var c = box();
    var show = layout.width * view.s > c.w + 2 || layout.height * view.s > c.h + 2;
    mini.style.display = show ? "block" : "none";
    var k = miniScale / view.s;
    var x0 = Math.max(0, miniX - view.x * k), y0 = Math.max(0, miniY - view.y * k);
    var x1 = Math.min(MW, miniX + (c.w - view.x) * k), y1 = Math.min(MH, miniY + (c.h - view.y) * k);
    miniView.style.left = x0 + "px";
    miniView.style.top = y0 + "px";
    miniView.style.width = Math.max(4, x1 - x0) + "px";
    miniView.style.height = Math.max(4, y1 - y0) + "px";
  }
  function miniJump(evt) {
    var r = miniCanvas.getBoundingClientRect();
    centerOn((evt.clientX - r.left - miniX) / miniScale, (evt.clientY - r.top - miniY) / miniScale,
      view.s);
  }
  var miniDrag = false;
  mini.addEventListener("click", function (evt) { evt.stopPropagation(); });
  mini.addEventListener("mousedown", function (evt) {
    evt.stopPropagation(); evt.preventDefault(); miniDrag = true; miniJump(evt);
  });
  window.addEventListener("mousemove", function (evt) { if (miniDrag) { miniJump(evt); } });
  window.addEventListener("mouseup", function () { miniDrag = false; });

  // -- selection, highlights and the details panel ---------------------------
  var pinned = -1, matches = [], at = -1, searching = false;
  function mark() {
    var hitUnits = searching ? new Set(matches.map(function (m) { return vis[m]; })) : null;
    layout.units.forEach(function (u) {
      var e = shapes[u].el;
      e.classList.toggle("gg-selected", u === pinned);
      e.classList.toggle("gg-match", !!hitUnits && hitUnits.has(u));
      e.classList.toggle("gg-dim", !!hitUnits && !hitUnits.has(u));
    });
    edgeEls.forEach(function (e) {
      e.el.classList.toggle("gg-near", pinned >= 0 && (e.a === pinned || e.b === pinned));
    });
  }
  var LABELS = [["op", 4], ["name", 5], ["module", 6], ["shape", 7]];
  function row(table, key, value) {
    var tr = el("tr", "", table);
    el("th", "", tr).textContent = key;
    var td = el("td", "", tr);
    if (value && value.nodeType) { td.appendChild(value); } else { td.textContent = String(value); }
    return td;
  }
  function link(u) {
    var a = document.createElement("a");
    a.href = "#";
    a.className = "gg-link";
    a.textContent = titleOf(u) + (isBox(u) ? "" : " #" + idOf(u));
    a.ggUnit = u;
    return a;
  }
  function linkList(title, list) {
    el("h4", "", panel).textContent = title + " (" + list.length + ")";
    var ul = el("ul", "gg-links", panel);
    list.slice(0, 40).forEach(function (u) { el("li", "", ul).appendChild(link(u)); });
    if (list.length > 40) { el("li", "", ul).textContent = "… " + (list.length - 40) + " more"; }
  }
  function inside(n, box) {
    for (var p = parentOf(n); p >= 0; p = parentOf(p)) { if (p === box) { return true; } }
    return false;
  }
  function neighbours(u, forward) {
    // a node: its own inputs/consumers; a box: the units its members meet outside
    if (!isBox(u)) { return forward ? outs[u] : ins[u]; }
    var out = [], seen = new Set();
    for (var e = 0; e < D.edges.length; e += 2) {
      var a = D.edges[e], b = D.edges[e + 1];
      var mine = forward ? a : b, other = forward ? b : a;
      if (inside(mine, u) && !inside(other, u) && !seen.has(vis[other])) {
        seen.add(vis[other]);
        out.push(vis[other]);
      }
    }
    return out;
  }
  function details(u) {
    panel.textContent = "";
    el("h3", "", panel).textContent = titleOf(u);
    var table = el("table", "", panel);
    if (isBox(u)) {
      var b = D.boxes[u - N];
      row(table, "kind", kindOf(u) + (expanded[u] ? " (unfolded)" : " (folded)"));
      if (b[5] >= 0) { row(table, "module", str(b[5])); }
      row(table, "nodes folded", b[4].toLocaleString("en"));
      el("p", "gg-tip", panel).textContent = expanded[u] ? "Click its frame to fold it."
        : "Click the box to unfold it.";
      var ops = el("table", "gg-sub", panel);
      for (var i = 0; i < b[6].length; i += 2) { row(ops, str(b[6][i]), b[6][i + 1]); }
      el("h4", "", panel).textContent = "ops inside";
      panel.appendChild(ops);
    } else {
      row(table, "id", idOf(u));
      row(table, "kind", kindOf(u));
      LABELS.forEach(function (p) { var v = str(D.nodes[u * NF + p[1]]); if (v) { row(table, p[0], v); } });
      var seq = D.nodes[u * NF + 8], order = D.nodes[u * NF + 9];
      if (seq >= 0) { row(table, "seq_nr", seq); }
      if (order >= 0) { row(table, "derivative order", order); }
      var x = D.extra[u] || {};
      if (x.shapes) { row(table, "shapes", x.shapes.join("\n")); }
      if (x.source) { row(table, "source", x.source); }
      if (x.traceback) { row(table, "traceback", [].concat(x.traceback).join("\n")); }
      if (x.saved) {
        el("h4", "", panel).textContent = "saved for backward";
        var saved = el("table", "gg-sub", panel);
        x.saved.forEach(function (f) {  // [attr, shape (-1: freed), bytes, of]
          var parts = f[1] < 0 ? ["freed by backward()"]
            : [str(f[1]), f[2] + " B"].concat(f[3] >= 0 ? ["of " + str(f[3])] : []);
          row(saved, str(f[0]), parts.join(" · "));
        });
      }
      var p = parentOf(u);
      if (p >= 0) { row(table, "inside", link(p)); }
    }
    linkList("inputs", neighbours(u, false));
    linkList("consumers", neighbours(u, true));
  }
  panel.addEventListener("click", function (evt) {
    var a = evt.target.closest ? evt.target.closest("a.gg-link") : null;
    if (!a) { return; }
    evt.preventDefault();
    goTo(a.ggUnit);
  });

  // -- actions: select, unfold, fold, go to ------------------------------------
  function select(u) {
    pinned = u;
    if (u < 0) { hint(); } else { details(u); }
    mark();
  }
  function focus(u) {
    var s = shapes[u];
    if (s) { centerOn(s.x, s.y, Math.min(2, Math.max(view.s, LEGIBLE, 1))); }
  }
  function reveal(u) {
    var changed = false;
    for (var p = parentOf(u); p >= 0; p = parentOf(p)) {
      if (!expanded[p]) { expanded[p] = true; changed = true; }
    }
    if (isBox(u) && expanded[u]) { delete expanded[u]; changed = true; }
    if (changed) { relayout(); }
  }
  function goTo(u) { reveal(u); select(u); focus(u); }
  function keepInPlace(u, change) {
    // run change() and pan so that u's (new) top edge stays where it was
    var before = shapes[u], sx = view.x + before.x * view.s;
    var sy = view.y + (before.y - before.h / 2) * view.s;
    change();
    var after = shapes[u];
    if (!after) { return; }
    view.x = sx - after.x * view.s;
    view.y = sy - (after.y - after.h / 2) * view.s;
    var c = box();  // keep the frame's top (its fold-back label) and left in view
    var top = view.y + (after.y - after.h / 2) * view.s;
    if (top < 8) { view.y += 8 - top; }
    var left = view.x + (after.x - after.w / 2) * view.s;
    if (left < 8 && after.w * view.s < c.w) { view.x += 8 - left; }
    apply();
  }
  function unfold(u) {
    keepInPlace(u, function () { expanded[u] = true; relayout(); });
    select(u);
  }
  function fold(u) {
    keepInPlace(u, function () {
      delete expanded[u];
      relayout();
    });
    select(u);
  }
  function unitAt(target) {
    for (var e = target; e && e !== canvas; e = e.parentNode) {
      if (e.ggUnit !== undefined) { return { u: e.ggUnit, frame: e.classList.contains("gg-frame") }; }
    }
    return null;
  }
  canvas.addEventListener("click", function (evt) {
    if (dragged) { dragged = false; return; }
    var hit = unitAt(evt.target);
    if (!hit) { return select(-1); }
    if (hit.frame) { return fold(hit.u); }
    if (isBox(hit.u)) { return unfold(hit.u); }
    select(hit.u);
    focus(hit.u);
  });
  canvas.addEventListener("mouseover", function (evt) {
    var hit = unitAt(evt.target);
    if (hit && pinned < 0 && !hit.frame) { details(hit.u); }
  });

  // -- search: every node, also inside folded boxes ---------------------------
  var hay = null;
  function haystack() {
    hay = [];
    for (var u = 0; u < N; u++) {
      hay.push([str(D.nodes[u * NF + 4]), str(D.nodes[u * NF + 5]), str(D.nodes[u * NF + 6]),
        titleOf(u), "#" + idOf(u)].join(" ").toLowerCase());
    }
  }
  function runSearch() {
    var q = search.value.trim().toLowerCase();
    matches = [];
    at = -1;
    searching = q !== "";
    if (!searching) { count.textContent = ""; mark(); return; }
    if (!hay) { haystack(); }
    for (var u = 0; u < N; u++) { if (hay[u].indexOf(q) >= 0) { matches.push(u); } }
    count.textContent = matches.length + " found";
    mark();
  }
  var timer = null;
  search.addEventListener("input", function () {
    clearTimeout(timer);
    if (N < 20000) { runSearch(); } else { timer = setTimeout(runSearch, 150); }
  });
  search.addEventListener("keydown", function (evt) {
    if (evt.key !== "Enter") { return; }
    if (timer) { clearTimeout(timer); timer = null; runSearch(); }
    if (!matches.length) { return; }
    at = (at + 1) % matches.length;
    goTo(matches[at]);
    count.textContent = (at + 1) + " / " + matches.length;
  });
  fitBtn.addEventListener("click", fit);
  foldAll.addEventListener("click", function () {
    expanded = {};
    relayout();
    select(-1);
    opening();
  });

  relayout();
  opening();
  root.setAttribute("data-gg-ready", "2");
})
