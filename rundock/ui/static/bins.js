/* rundock: binned charts drawn as Azure ML Studio draws them, shared by the UI and `rundock report`.
   - histogram (residuals): one bar per bin, spanning its bin edges exactly, with a count axis from 0;
   - predictions: the mean prediction per bin of true values, with its error bar, against the ideal line
     (prediction = true value), over a histogram of how many values each bin holds (right axis).
   Specs are those of rundock/ui/render.py ({edges, counts} and {edges, averages, errors, counts}); bins whose
   edges are not numbers are skipped. Labels reach the page only through uPlot (as text). */
(function () {
  "use strict";
  var BAR = "rgba(15,108,189,0.45)", BAR_LINE = "#0f6cbd", MEAN = "#d13438", IDEAL = "#57606a";

  function num(v) { return typeof v === "number" && isFinite(v); }

  function bins(spec) {
    var out = [], edges = spec.edges || [];
    for (var i = 0; i + 1 < edges.length; i++) {
      if (!num(edges[i]) || !num(edges[i + 1])) continue;
      out.push({lo: edges[i], hi: edges[i + 1], mid: (edges[i] + edges[i + 1]) / 2,
                count: num((spec.counts || [])[i]) ? spec.counts[i] : null,
                mean: num((spec.averages || [])[i]) ? spec.averages[i] : null,
                error: num((spec.errors || [])[i]) ? Math.abs(spec.errors[i]) : null});
    }
    return out;
  }

  function clip(u, draw) {
    var ctx = u.ctx;
    ctx.save();
    ctx.setLineDash([]);
    ctx.beginPath();
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    ctx.clip();
    draw(ctx);
    ctx.restore();
  }

  // Bars from each bin's low edge to its high edge (1 px apart), height = its count on scale ``scale``.
  function drawBars(u, list, scale) {
    clip(u, function (ctx) {
      var base = u.valToPos(0, scale, true);
      ctx.fillStyle = BAR;
      ctx.strokeStyle = BAR_LINE;
      ctx.lineWidth = 1;
      list.forEach(function (b) {
        if (b.count === null) return;
        var x0 = u.valToPos(b.lo, "x", true), x1 = u.valToPos(b.hi, "x", true);
        var top = u.valToPos(b.count, scale, true);
        var w = Math.max(1, x1 - x0 - 1);
        ctx.fillRect(x0 + 0.5, top, w, base - top);
        ctx.strokeRect(x0 + 0.5, top, w, base - top);
      });
    });
  }

  function xRange(list) {
    var lo = list[0].lo, hi = list[list.length - 1].hi;
    return function () { return [lo, hi === lo ? lo + 1 : hi]; };
  }

  function none() { return null; }

  function histogram(holder, spec, width, xLabel) {
    var list = bins(spec);
    if (!list.length) { holder.textContent = "No bins to draw."; return null; }
    var top = Math.max.apply(null, list.map(function (b) { return b.count || 0; }).concat([1]));
    var opts = {
      width: width, height: 240,
      scales: {x: {time: false, range: xRange(list)}, y: {range: function () { return [0, top * 1.08]; }}},
      axes: [{label: xLabel || "residual"}, {label: "count"}],
      series: [{label: xLabel || "residual"},
               {label: "count", stroke: BAR_LINE, fill: BAR, paths: none, points: {show: false}}],
      hooks: {drawAxes: [function (u) { drawBars(u, list, "y"); }]}
    };
    return new uPlot(opts, [list.map(function (b) { return b.mid; }), list.map(function (b) { return b.count; })],
                     holder);
  }

  function predictions(holder, spec, width) {
    var list = bins(spec);
    if (!list.length) { holder.textContent = "No bins to draw."; return null; }
    var lo = 0, hi = 0;
    list.forEach(function (b) {
      [b.lo, b.hi].concat(b.mean === null ? [] : [b.mean - (b.error || 0), b.mean + (b.error || 0)])
        .forEach(function (v) { lo = Math.min(lo, v); hi = Math.max(hi, v); });
    });
    var pad = (hi - lo) * 0.05 || 1;
    var top = Math.max.apply(null, list.map(function (b) { return b.count || 0; }).concat([1]));
    var opts = {
      width: width, height: 260,
      scales: {x: {time: false, range: xRange(list)},
               y: {range: function () { return [lo < 0 ? lo - pad : 0, hi + pad]; }},
               count: {range: function () { return [0, top * 2.2]; }}},
      axes: [{label: "true value"}, {label: "prediction"},
             {scale: "count", side: 1, label: "count", grid: {show: false}}],
      series: [{label: "true value (bin centre)"},
               {label: "mean prediction", stroke: MEAN, width: 1.5, points: {show: true, size: 6, fill: MEAN}},
               {label: "ideal", stroke: IDEAL, dash: [6, 4], width: 1, paths: none, points: {show: false}},
               {label: "count", scale: "count", stroke: BAR_LINE, fill: BAR, paths: none, points: {show: false}}],
      hooks: {drawAxes: [function (u) {  // under the series: the bars, and the ideal line across every bin
        drawBars(u, list, "count");
        clip(u, function (ctx) {
          var a = list[0].lo, b = list[list.length - 1].hi;
          ctx.strokeStyle = IDEAL;
          ctx.lineWidth = 1;
          ctx.setLineDash([6, 4]);
          ctx.beginPath();
          ctx.moveTo(u.valToPos(a, "x", true), u.valToPos(a, "y", true));
          ctx.lineTo(u.valToPos(b, "x", true), u.valToPos(b, "y", true));
          ctx.stroke();
        });
      }], draw: [function (u) {
        clip(u, function (ctx) {  // error bars: mean ± error, with caps
          ctx.strokeStyle = MEAN;
          ctx.lineWidth = 1.5;
          list.forEach(function (b) {
            if (b.mean === null || b.error === null) return;
            var x = u.valToPos(b.mid, "x", true), cap = 4 * (window.devicePixelRatio || 1);
            var y0 = u.valToPos(b.mean - b.error, "y", true), y1 = u.valToPos(b.mean + b.error, "y", true);
            ctx.beginPath();
            ctx.moveTo(x, y0); ctx.lineTo(x, y1);
            ctx.moveTo(x - cap, y0); ctx.lineTo(x + cap, y0);
            ctx.moveTo(x - cap, y1); ctx.lineTo(x + cap, y1);
            ctx.stroke();
          });
        });
      }]}
    };
    var mids = list.map(function (b) { return b.mid; });
    return new uPlot(opts, [mids, list.map(function (b) { return b.mean; }), mids.slice(),
                            list.map(function (b) { return b.count; })], holder);
  }

  window.rundockBins = {histogram: histogram, predictions: predictions, bins: bins};
})();
