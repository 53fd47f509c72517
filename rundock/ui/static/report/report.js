/* rundock report: draws the charts whose specs are in #report-data into their .chart placeholders (line charts
   here, residuals and predictions with bins.js).
   Every label goes into the page as text (uPlot sets textContent); nothing here builds HTML from data. */
(function () {
  "use strict";
  var PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f",
                 "#7c3aed", "#b45309"];
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var drawn = [];

  function tables(spec) {
    var list = spec.series.map(function (s) { return [s.x, s.y]; });
    return list.length === 1 ? list[0] : uPlot.join(list);
  }

  function draw(holder, spec) {
    var many = spec.series.some(function (s) { return s.x.length > 60; });
    var series = [{ label: spec.x_label || "x" }].concat(spec.series.map(function (s, i) {
      return { label: s.label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true,
               points: { show: !many } };
    }));
    var width = Math.max(300, (holder.clientWidth || 560) - 4);
    var opts = {
      width: width, height: 260, series: series, scales: { x: { time: false } },
      axes: [{ label: spec.x_label || "" }, { label: spec.y_label || "" }],
      legend: { live: true }
    };
    return new uPlot(opts, tables(spec), holder);
  }

  var holders = document.querySelectorAll(".chart[data-chart]");
  for (var i = 0; i < holders.length; i++) {
    var holder = holders[i];
    var spec = data.charts[Number(holder.getAttribute("data-chart"))];
    if (spec && (spec.kind === "histogram" || spec.kind === "predictions")) {  // bins.js, as the UI draws them
      var width = Math.max(300, (holder.clientWidth || 560) - 4);
      var chart = spec.kind === "histogram" ? window.rundockBins.histogram(holder, spec, width, "residual")
        : window.rundockBins.predictions(holder, spec, width);
      if (chart) { drawn.push(chart); holder.setAttribute("data-drawn", "1"); }
      continue;
    }
    if (!spec || !spec.series.length || !spec.series.some(function (s) { return s.x.length; })) {
      holder.textContent = "No values to draw.";
      continue;
    }
    drawn.push(draw(holder, spec));
    holder.setAttribute("data-drawn", "1");
  }
  window.rundockReport = { charts: drawn };
})();
