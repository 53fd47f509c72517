/* rundock UI: charts (uPlot), the live log, live charts and status, tag edits, the runs table's filters.
   Every value coming from the history goes into the page as text (textContent, createTextNode), never as HTML;
   the only HTML taken in is this UI's own server-rendered page (the sections refreshed when a status changes). */
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var COLORS = ["#0f6cbd", "#d13438", "#107c10", "#8764b8", "#ca5010", "#038387", "#986f0b", "#e3008c"];
  window.rundockCharts = {};  // the data each chart draws, by metric name
  window.rundockPlots = {};  // the uPlot of each residuals and predictions chart, by metric name
  var lines = {};  // line charts by metric name: {refresh(spec)} redraws one with a newer spec
  var TABLE_ROWS_SHOWN = 20;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function readJson(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }
  function runState() { return readJson("run-state") || {}; }
  function enc(s) { return encodeURIComponent(s); }
  function width(card) { return Math.max(300, (card.clientWidth || 480) - 20); }

  function card(spec) {
    var box = el("div", {"class": "chart", "data-metric": spec.name, "data-kind": spec.kind});
    box.appendChild(el("h3", {}, spec.name));
    if (spec.description) box.appendChild(el("p", {"class": "note"}, spec.description));
    document.getElementById("charts").appendChild(box);
    return box;
  }

  function plot(box, series, data, opts) {
    opts = opts || {};
    var options = {
      width: width(box), height: 240, series: [{label: opts.xLabel || "step"}].concat(series),
      scales: {x: {time: !!opts.time}}, axes: [{label: opts.xLabel || ""}, {label: opts.yLabel || ""}],
      legend: {show: series.length > 1 || !!opts.legend}
    };
    if (opts.mode) options.mode = opts.mode;
    var holder = el("div", {"class": "plot"});
    box.appendChild(holder);
    return new uPlot(options, data, holder);
  }

  function lineChart(spec, box) {
    var runId = runState().run_id;
    var tools = el("div", {"class": "tools"});
    function noteOf(s) {
      return s.downsampled ? "showing " + s.x.length + " of " + s.total_points + " points" :
        (s.total_points || s.y.length) + " points";
    }
    var note = el("span", {"class": "points"}, noteOf(spec));
    tools.appendChild(note);
    var chart;
    if (spec.kind === "line" && runId) {
      var toggle = el("select", {"class": "x-axis"});
      toggle.appendChild(el("option", {value: "step"}, "over steps"));
      toggle.appendChild(el("option", {value: "time"}, "over time"));
      var show = function (s, fresh) {
        if (fresh) {
          chart.destroy();
          chart = plot(box, [{label: spec.name, stroke: COLORS[0]}], [s.x, s.y],
                       {time: toggle.value === "time", xLabel: toggle.value});
        } else {
          chart.setData([s.x, s.y]);
        }
        note.textContent = noteOf(s);
        window.rundockCharts[spec.name] = {x: s.x, y: s.y};
      };
      var fetchSeries = function (fresh) {
        fetch("/ui/api/runs/" + enc(runId) + "/series?x=" + toggle.value + "&name=" + enc(spec.name),
              {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (s) {
          show(s, fresh);
        });
      };
      toggle.addEventListener("change", function () { fetchSeries(true); });
      lines[spec.name] = {refresh: function (newer) {
        if (toggle.value === "step") show(newer, false); else fetchSeries(false);
      }};
      tools.appendChild(document.createTextNode(" · "));
      tools.appendChild(toggle);
      tools.appendChild(document.createTextNode(" · "));
      tools.appendChild(el("a", {href: "/ui/api/runs/" + enc(runId) + "/metric.csv?name=" + enc(spec.name)},
                           "all values (CSV)"));
    }
    box.appendChild(tools);
    chart = plot(box, [{label: spec.name, stroke: COLORS[0], spanGaps: false}], [spec.x, spec.y],
                 {xLabel: spec.kind === "list" ? "index" : "step"});
    window.rundockCharts[spec.name] = {x: spec.x, y: spec.y};
  }

  function overlayChart(spec, box) {
    var tables = spec.series.map(function (s) { return [s.x, s.y]; });
    var joined = uPlot.join(tables);
    plot(box, spec.series.map(function (s, i) {
      return {label: s.label, stroke: COLORS[i % COLORS.length], spanGaps: true};
    }), joined, {legend: true});
    window.rundockCharts[spec.name] = spec.series;
  }

  function tableChart(spec, box) {
    var wrap = el("div", {"class": "scroll"});
    var table = el("table", {"class": "grid"});
    var head = el("tr");
    spec.columns.forEach(function (c) { head.appendChild(el("th", {}, c)); });
    table.appendChild(el("thead")).appendChild(head);
    var body = el("tbody");
    spec.rows.forEach(function (row, i) {
      var tr = el("tr");
      if (i >= TABLE_ROWS_SHOWN) tr.hidden = true;
      row.forEach(function (v) { tr.appendChild(cell(v)); });
      body.appendChild(tr);
    });
    table.appendChild(body);
    wrap.appendChild(table);
    box.appendChild(wrap);
    var total = spec.total_rows || spec.rows.length;
    if (spec.rows.length > TABLE_ROWS_SHOWN) {
      var more = el("button", {type: "button", "class": "show-all"}, "show all " + total + " rows");
      more.addEventListener("click", function () {
        body.querySelectorAll("tr[hidden]").forEach(function (tr) { tr.hidden = false; });
        more.remove();
      });
      box.appendChild(more);
    }
    if (spec.total_rows) box.appendChild(el("p", {"class": "note"}, "the first " + spec.rows.length + " of " +
                                            spec.total_rows + " rows are on this page"));
  }
  // A table cell: a number that is not whole with up to 6 significant digits (its full value in the tooltip).
  function cell(v) {
    if (typeof v === "number" && isFinite(v) && !Number.isInteger(v)) {
      var td = el("td", {"class": "num", title: String(v)}, String(Number(v.toPrecision(6))));
      return td;
    }
    return el("td", typeof v === "number" ? {"class": "num"} : {}, v === null ? "" : v);
  }

  function heatMap(spec, box) {
    var table = el("table", {"class": "grid heat"});
    var head = el("tr");
    head.appendChild(el("th", {}, "actual \\ predicted"));
    spec.labels.forEach(function (l) { head.appendChild(el("th", {}, l)); });
    table.appendChild(el("thead")).appendChild(head);
    var body = el("tbody");
    spec.matrix.forEach(function (row, i) {
      var tr = el("tr");
      tr.appendChild(el("th", {}, spec.labels[i]));
      var total = row.reduce(function (a, b) { return a + (b || 0); }, 0) || 1;
      row.forEach(function (v) {
        var td = el("td", {}, v);
        var share = (v || 0) / total;
        td.style.backgroundColor = "rgba(15, 108, 189, " + (0.08 + 0.85 * share).toFixed(3) + ")";
        td.style.color = share > 0.5 ? "#fff" : "#1f2328";
        td.title = (100 * share).toFixed(1) + "% of actual " + spec.labels[i];
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    table.appendChild(body);
    box.appendChild(table);
  }

  function curve(xs, ys) {
    var pts = [];
    for (var i = 0; i < xs.length; i++) if (xs[i] !== null && ys[i] !== null) pts.push([xs[i], ys[i]]);
    pts.sort(function (a, b) { return a[0] - b[0] || a[1] - b[1]; });
    return [pts.map(function (p) { return p[0]; }), pts.map(function (p) { return p[1]; })];
  }

  function accuracyChart(spec, box) {
    var roc = spec.curves.map(function (c) { return curve(c.fpr, c.tpr); });
    var pr = spec.curves.map(function (c) { return curve(c.recall, c.precision); });
    var series = spec.curves.map(function (c, i) { return {label: c.label, stroke: COLORS[i % COLORS.length],
                                                          spanGaps: true}; });
    box.appendChild(el("p", {"class": "note"}, "ROC: true vs false positive rate"));
    plot(box, series, uPlot.join(roc), {xLabel: "false positive rate", yLabel: "true positive rate", legend: true});
    box.appendChild(el("p", {"class": "note"}, "Precision-recall"));
    plot(box, series, uPlot.join(pr), {xLabel: "recall", yLabel: "precision", legend: true});
    window.rundockCharts[spec.name] = spec.curves;
  }

  function binned(spec, box) {
    var holder = el("div", {"class": "plot"});
    box.appendChild(holder);
    window.rundockPlots[spec.name] = spec.kind === "histogram" ?
      window.rundockBins.histogram(holder, spec, width(box), "residual") :
      window.rundockBins.predictions(holder, spec, width(box));
  }

  function imageChart(spec, box) {
    var runId = runState().run_id;
    // one encoded segment: a name can never be read as "../" by the browser (the server decodes %2F)
    box.appendChild(el("img", {src: "/ui/api/runs/" + enc(runId) + "/files/" + enc(spec.file) + "?inline=1",
                               alt: spec.name}));
  }

  function drawCharts() {
    var specs = readJson("chart-specs");
    if (!specs || !document.getElementById("charts")) return;
    specs.forEach(drawSpec);
  }
  function drawSpec(spec) {
    var box = card(spec);
    try {
      if (spec.kind === "line" || spec.kind === "list") lineChart(spec, box);
      else if (spec.kind === "overlay") overlayChart(spec, box);
      else if (spec.kind === "table") tableChart(spec, box);
      else if (spec.kind === "confusion_matrix") heatMap(spec, box);
      else if (spec.kind === "accuracy_table") accuracyChart(spec, box);
      else if (spec.kind === "histogram" || spec.kind === "predictions") binned(spec, box);
      else if (spec.kind === "image") imageChart(spec, box);
      if (spec.kind !== "line" && spec.kind !== "overlay" && spec.kind !== "accuracy_table")
        window.rundockCharts[spec.name] = spec;
    } catch (err) {
      box.appendChild(el("p", {"class": "error"}, "cannot draw: " + err));
    }
  }

  /* While the run is live: its charts (new points, new metrics) and its status badge every few seconds; when
     its status changes, the status timeline, details and queue box as the server renders them now. */
  var LIVE_SECONDS = 2;
  var shownStatus = null;
  function showStatus(status) {
    var badge = document.querySelector("#run-status .status");
    if (!badge || !status) return;
    if (shownStatus === null) shownStatus = badge.textContent;  // as the page was rendered
    if (status === shownStatus) return;
    shownStatus = status;
    badge.textContent = status;
    badge.className = "status s-" + status.toLowerCase();
    refreshSections();
  }
  function refreshSections() {
    fetch(window.location.pathname, {credentials: "same-origin"}).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (text) {
      if (!text) return;
      var fresh = new DOMParser().parseFromString(text, "text/html");
      ["sec-status", "sec-details"].forEach(function (id) {
        var now = document.getElementById(id), newer = fresh.getElementById(id);
        if (now && newer) now.replaceWith(document.importNode(newer, true));
      });
      var queue = document.getElementById("queue"), newQueue = fresh.getElementById("queue");
      if (queue && newQueue) queue.replaceWith(document.importNode(newQueue, true));
      else if (queue) queue.remove();
    });
  }
  function followCharts() {
    var state = runState();
    var charts = document.getElementById("charts");
    if (!state.run_id || state.terminal || !charts) return;
    var timer = null;
    function poll() {
      fetch("/ui/api/runs/" + enc(state.run_id) + "/charts", {credentials: "same-origin"}).then(function (r) {
        return r.ok ? r.json() : null;
      }).then(function (live) {
        if (!live) return;
        live.specs.forEach(function (spec) {
          if (lines[spec.name] && spec.kind === "line") lines[spec.name].refresh(spec);
          else if (!charts.querySelector('.chart[data-metric="' + CSS.escape(spec.name) + '"]')) {
            var none = document.getElementById("no-metrics");
            if (none) none.remove();
            drawSpec(spec);
          }
        });
        showStatus(live.status);
        if (live.terminal) {
          clearInterval(timer);
          charts.dataset.ended = "1";
        }
      });
    }
    timer = setInterval(poll, LIVE_SECONDS * 1000);
  }

  var ANSI = /\u001b\[[0-9;?]*[ -\/]*[@-~]|\u001b\][^\u0007\u001b]*(\u0007|\u001b\\)?|\u001b[@-_]/g;
  function followLog() {
    var pre = document.getElementById("log");
    if (!pre || !window.EventSource) return;
    var state = document.getElementById("log-state");
    var select = document.getElementById("log-name");
    var source = null;
    function start(name) {
      if (source) source.close();
      pre.textContent = "";
      source = new EventSource("/ui/api/runs/" + enc(pre.dataset.run) + "/logs/" + name.split("/").map(enc).join("/"));
      source.addEventListener("log", function (e) {
        var stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
        pre.appendChild(document.createTextNode(JSON.parse(e.data).text.replace(ANSI, "")));
        if (stick) pre.scrollTop = pre.scrollHeight;
      });
      source.addEventListener("status", function (e) {
        var s = JSON.parse(e.data);
        showStatus(s.status);
        state.textContent = s.terminal ? s.status : s.status + " · following";
        pre.dataset.status = s.status;
      });
      source.addEventListener("end", function (e) {
        state.textContent = JSON.parse(e.data).status;
        showStatus(JSON.parse(e.data).status);
        pre.dataset.ended = "1";
        source.close();
      });
      source.onerror = function () { if (pre.dataset.ended !== "1") state.textContent = "reconnecting…"; };
    }
    if (select) select.addEventListener("change", function () { pre.dataset.ended = ""; start(select.value); });
    start(pre.dataset.name);
  }

  function postTags(runId, body) {
    var error = document.getElementById("tag-error");
    return fetch("/ui/api/runs/" + enc(runId) + "/tags", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(body)
    }).then(function (r) {
      if (r.ok) { window.location.reload(); return; }
      return r.json().then(function (j) { error.textContent = (j.error || {}).message || r.statusText; });
    });
  }
  function tagEditing() {
    var form = document.getElementById("tag-form");
    if (!form) return;
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var set = {};
      set[form.elements.key.value] = form.elements.value.value;
      postTags(form.dataset.run, {set: set});
    });
    document.querySelectorAll(".tag-remove").forEach(function (button) {
      button.addEventListener("click", function () { postTags(form.dataset.run, {remove: [button.dataset.key]}); });
    });
  }

  function columnChooser() {
    var state = readJson("table-state");
    var form = document.getElementById("filters");
    if (!state || !form) return;
    var params = new URLSearchParams(window.location.search);
    var saved = [];
    try { saved = JSON.parse(window.localStorage.getItem("rundock.columns") || "[]"); } catch (e) { saved = []; }
    if (!params.has("col") && !params.has("nocols") && saved.length) {
      saved.forEach(function (c) { params.append("col", c); });
      window.location.replace("/ui/runs?" + params.toString());
      return;
    }
    form.addEventListener("submit", function () {
      var cols = Array.prototype.map.call(form.querySelectorAll('input[name="col"]:checked'),
                                          function (b) { return b.value; });
      window.localStorage.setItem("rundock.columns", JSON.stringify(cols));
      if (!cols.length) form.appendChild(el("input", {type: "hidden", name: "nocols", value: "1"}));
    });
    // picking a column or a status applies at once (the other filters wait for Apply: they are typed)
    form.querySelectorAll('input[name="col"], input[name="status"]').forEach(function (box) {
      box.addEventListener("change", function () { form.requestSubmit(); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts();
    followCharts();
    followLog();
    tagEditing();
    columnChooser();
  });
})();
