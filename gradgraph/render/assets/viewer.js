// gradgraph viewer: pan/zoom, search and a details panel for one rendered graph.
// Self-contained (no network, no libraries); html.py calls it with the root div.
// Every user-supplied string is put into the page with textContent, never as
// markup.
(function (root) {
  "use strict";
  var svg = root.querySelector(".gg-canvas svg");
  var data = JSON.parse(root.querySelector("script.gg-data").textContent);
  var panel = root.querySelector(".gg-details");
  var search = root.querySelector(".gg-search");
  var count = root.querySelector(".gg-count");
  if (!svg) { return; }

  // -- pan and zoom: the SVG viewBox is the camera ---------------------------
  var base = svg.viewBox.baseVal;
  var full = { x: base.x, y: base.y, w: base.width, h: base.height };
  var view = { x: full.x, y: full.y, w: full.w, h: full.h };
  svg.removeAttribute("width");
  svg.removeAttribute("height");
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  function apply() {
    svg.setAttribute("viewBox", [view.x, view.y, view.w, view.h].join(" "));
  }
  function fit() {
    view = { x: full.x, y: full.y, w: full.w, h: full.h };
    apply();
  }
  function scale() {
    var box = svg.getBoundingClientRect();
    return Math.max(view.w / Math.max(box.width, 1), view.h / Math.max(box.height, 1));
  }
  function toGraph(evt) {
    var box = svg.getBoundingClientRect();
    var s = scale();
    var cx = view.x + view.w / 2 + (evt.clientX - box.left - box.width / 2) * s;
    var cy = view.y + view.h / 2 + (evt.clientY - box.top - box.height / 2) * s;
    return { x: cx, y: cy };
  }
  function zoomAt(point, factor) {
    view.x = point.x - (point.x - view.x) * factor;
    view.y = point.y - (point.y - view.y) * factor;
    view.w *= factor;
    view.h *= factor;
    apply();
  }
  svg.addEventListener("wheel", function (evt) {
    evt.preventDefault();
    zoomAt(toGraph(evt), evt.deltaY > 0 ? 1.15 : 1 / 1.15);
  }, { passive: false });
  var drag = null;
  svg.addEventListener("mousedown", function (evt) {
    drag = { x: evt.clientX, y: evt.clientY, vx: view.x, vy: view.y, moved: false };
  });
  window.addEventListener("mousemove", function (evt) {
    if (!drag) { return; }
    var dx = evt.clientX - drag.x, dy = evt.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; }
    var s = scale();
    view.x = drag.vx - dx * s;
    view.y = drag.vy - dy * s;
    apply();
  });
  window.addEventListener("mouseup", function () {
    if (drag && drag.moved) { root.dataset.dragged = "1"; }
    drag = null;
  });
  function userBox(el) {
    // the element's box in the SVG's own units (graphviz nests a translate)
    var b = el.getBBox();
    var m = svg.getScreenCTM().inverse().multiply(el.getScreenCTM());
    var p = svg.createSVGPoint();
    p.x = b.x; p.y = b.y;
    var a = p.matrixTransform(m);
    p.x = b.x + b.width; p.y = b.y + b.height;
    var c = p.matrixTransform(m);
    return { x: Math.min(a.x, c.x), y: Math.min(a.y, c.y),
      width: Math.abs(c.x - a.x), height: Math.abs(c.y - a.y) };
  }
  function centerOn(el) {
    var b = userBox(el);
    var w = Math.min(full.w, Math.max(b.width * 6, 400));
    var h = w * (view.h / view.w);
    view = { x: b.x + b.width / 2 - w / 2, y: b.y + b.height / 2 - h / 2, w: w, h: h };
    apply();
  }

  // -- details panel ---------------------------------------------------------
  var LABELS = [
    ["op", "op"], ["kind", "kind"], ["name", "name"], ["module", "module"],
    ["shape", "shape"], ["shapes", "shapes"], ["dtype", "dtype"], ["seq_nr", "seq_nr"],
    ["order", "derivative order"], ["members", "nodes folded"], ["source", "source"],
    ["traceback", "traceback"], ["attr", "saved as"], ["of", "tensor of"],
    ["nbytes", "bytes"], ["freed", "freed"]
  ];
  function text(value) {
    if (value === null || value === undefined) { return "—"; }
    if (Array.isArray(value)) { return value.map(text).join("\n"); }
    if (typeof value === "object") { return JSON.stringify(value); }
    return String(value);
  }
  function row(table, key, value) {
    var tr = document.createElement("tr");
    var th = document.createElement("th");
    var td = document.createElement("td");
    th.textContent = key;
    td.textContent = text(value);
    tr.appendChild(th);
    tr.appendChild(td);
    table.appendChild(tr);
  }
  function show(id) {
    var info = data.nodes[id];
    panel.textContent = "";
    if (!info) { return; }
    var head = document.createElement("h3");
    head.textContent = info.name || info.module || info.op || id;
    panel.appendChild(head);
    var table = document.createElement("table");
    row(table, "id", id);
    LABELS.forEach(function (pair) {
      if (info[pair[0]] !== undefined && info[pair[0]] !== null) {
        row(table, pair[1], info[pair[0]]);
      }
    });
    panel.appendChild(table);
    if (info.ops) {
      var ops = document.createElement("table");
      ops.className = "gg-sub";
      Object.keys(info.ops).forEach(function (op) { row(ops, op, info.ops[op]); });
      panel.appendChild(document.createElement("h4")).textContent = "ops inside";
      panel.appendChild(ops);
    }
    if (info.saved) {
      var saved = document.createElement("table");
      saved.className = "gg-sub";
      info.saved.forEach(function (fact) {
        var parts = fact.freed ? ["freed by backward()"]
          : [fact.shape, fact.nbytes + " B"].concat(fact.of ? ["of " + fact.of] : []);
        row(saved, fact.attr, parts.join(" · "));
      });
      panel.appendChild(document.createElement("h4")).textContent =
        "saved for backward";
      panel.appendChild(saved);
    }
  }

  // -- nodes: hover previews, click pins ---------------------------------------
  var nodes = Array.prototype.slice.call(svg.querySelectorAll("g.node"));
  var edges = Array.prototype.slice.call(svg.querySelectorAll("g.edge")).map(function (g) {
    var t = g.querySelector("title");
    var ends = (t ? t.textContent : "").split("->");
    return { el: g, a: ends[0], b: ends[1] };
  });
  var pinned = null;
  function select(el) {
    nodes.forEach(function (n) { n.classList.remove("gg-selected"); });
    edges.forEach(function (e) { e.el.classList.remove("gg-near"); });
    pinned = el;
    if (!el) { panel.textContent = ""; panel.appendChild(hint.cloneNode(true)); return; }
    el.classList.add("gg-selected");
    edges.forEach(function (e) {
      if (e.a === el.id || e.b === el.id) { e.el.classList.add("gg-near"); }
    });
    show(el.id);
  }
  var hint = panel.firstElementChild ? panel.firstElementChild.cloneNode(true)
    : document.createElement("p");
  nodes.forEach(function (el) {
    el.addEventListener("mouseenter", function () { if (!pinned) { show(el.id); } });
    el.addEventListener("click", function (evt) {
      evt.stopPropagation();
      if (root.dataset.dragged) { delete root.dataset.dragged; return; }
      select(el);
    });
  });
  svg.addEventListener("click", function () {
    if (root.dataset.dragged) { delete root.dataset.dragged; return; }
    select(null);
  });

  // -- search ----------------------------------------------------------------
  var matches = [], at = -1;
  function haystack(id) {
    var info = data.nodes[id] || {};
    return [id, info.op, info.name, info.module, info.attr, info.label]
      .concat(Object.keys(info.ops || {})).join(" ").toLowerCase();
  }
  var hay = {};
  nodes.forEach(function (el) { hay[el.id] = haystack(el.id); });
  search.addEventListener("input", function () {
    var q = search.value.trim().toLowerCase();
    matches = [];
    at = -1;
    nodes.forEach(function (el) {
      var hit = q !== "" && hay[el.id].indexOf(q) >= 0;
      el.classList.toggle("gg-match", hit);
      el.classList.toggle("gg-dim", q !== "" && !hit);
      if (hit) { matches.push(el); }
    });
    count.textContent = q === "" ? "" : matches.length + " found";
  });
  search.addEventListener("keydown", function (evt) {
    if (evt.key !== "Enter" || !matches.length) { return; }
    at = (at + 1) % matches.length;
    select(matches[at]);
    centerOn(matches[at]);
    count.textContent = (at + 1) + " / " + matches.length;
  });
  root.querySelector(".gg-fit").addEventListener("click", fit);
  apply();
})
