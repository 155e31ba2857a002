// SqueezeSAM dashboard charts: plain SVG, no libraries (the machines have no network).
// Every <figure class="chart" data-chart=TABLE data-y=FIELD [data-x=FIELD]> becomes a bar
// chart of data[TABLE][*][FIELD]. Each figure gets data-marks = the number of bars drawn,
// and <body> gets data-ready="1" when done, or data-js-errors when anything failed (the
// browser test reads both from the DOM).
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var errors = [];
  window.addEventListener("error", function (e) {
    errors.push(String(e.message || e));
    document.body.setAttribute("data-js-errors", errors.join(" | "));
  });

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  // 0, 1, 2, 5 x 10^k ticks: round numbers a reader takes in at a glance.
  function niceMax(max) {
    if (!(max > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(max)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= max) return steps[i] * p;
    return 10 * p;
  }

  function fmt(v, unit) {
    if (unit === "%") return Math.round(v) + "%";
    var s = Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
    s = s.replace(/\.0+$/, "").replace(/(\.\d*[1-9])0+$/, "$1");
    return unit ? s + " " + unit : s;
  }

  // x labels: dates as MM-DD; long names (model versions) keep their distinctive end.
  function shortLabel(x, table) {
    x = String(x);
    if (table === "per_day" || table === "per_hour") return x.slice(5, 10);
    return x.length > 16 ? "…" + x.slice(-15) : x;
  }

  // Which bars get an x label: per_hour at midnight only, others evenly thinned.
  function labelled(rows, table, j, every) {
    if (table === "per_hour") return rows.length > 48 ? String(rows[j].time).slice(11, 13) === "00" : j % 6 === 0;
    return j % every === 0;
  }

  function draw(fig, data) {
    var table = fig.getAttribute("data-chart");
    var yKey = fig.getAttribute("data-y");
    var xKey = fig.getAttribute("data-x") || "time";
    var unit = fig.getAttribute("data-unit") || "";
    var rows = (data[table] || []).filter(function (r) { return r[yKey] !== null && r[yKey] !== undefined; });
    var ys = rows.map(function (r) { return unit === "%" ? 100 * r[yKey] : Number(r[yKey]); });
    var W = fig.classList.contains("wide") ? 1040 : 500, H = 220;
    var m = { l: 46, r: 12, t: 12, b: 38 };
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": fig.textContent.trim() });
    fig.appendChild(svg);
    var total = ys.reduce(function (a, b) { return a + b; }, 0);
    if (!rows.length || (table.indexOf("per_") === 0 && total === 0)) {
      var t = el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "class": "empty" }, svg);
      t.textContent = "no data in this period";
      fig.setAttribute("data-marks", "0");
      return;
    }
    var top = niceMax(Math.max.apply(null, ys));
    var pw = W - m.l - m.r, ph = H - m.t - m.b;
    for (var i = 0; i <= 5; i++) {  // grid and y axis labels: top / 5 is always round
      var v = (top * i) / 5, y = m.t + ph - (ph * i) / 5;
      el("line", { x1: m.l, x2: W - m.r, y1: y, y2: y, "class": i ? "grid" : "axis" }, svg);
      var lab = el("text", { x: m.l - 6, y: y + 4, "text-anchor": "end", "class": "tick" }, svg);
      lab.textContent = fmt(v, unit === "%" ? "%" : "");
    }
    var n = rows.length, slot = pw / n, bw = Math.max(1, Math.min(56, slot * 0.72));
    var every = Math.max(1, Math.ceil(n / (W > 600 ? 16 : 7)));  // at most ~16 x labels
    var marks = 0;
    rows.forEach(function (r, j) {
      var h = top ? (ph * ys[j]) / top : 0, x = m.l + slot * j + (slot - bw) / 2;
      var bar = el("rect", { x: x, y: m.t + ph - h, width: bw, height: Math.max(h, 0), rx: bw > 6 ? 2 : 0, "class": "bar" }, svg);
      el("title", {}, bar).textContent = r[xKey] + ": " + fmt(ys[j], unit);
      marks += 1;
      if (n <= 12 && ys[j] > 0) {  // few bars: print the value on top
        var val = el("text", { x: x + bw / 2, y: m.t + ph - h - 4, "text-anchor": "middle", "class": "val" }, svg);
        val.textContent = fmt(ys[j], unit);
      }
      if (labelled(rows, table, j, every)) {
        var xl = el("text", { x: x + bw / 2, y: H - m.b + 16, "text-anchor": "middle", "class": "tick" }, svg);
        xl.textContent = table === "per_hour" && rows.length <= 48 ? String(r.time).slice(11, 13) + "h" : shortLabel(r[xKey], table);
      }
    });
    fig.setAttribute("data-marks", String(marks));
  }

  function main() {
    var data = JSON.parse(document.getElementById("dashboard-data").textContent);
    var figs = document.querySelectorAll("figure.chart");
    for (var i = 0; i < figs.length; i++) {
      try {
        draw(figs[i], data);
      } catch (e) {
        errors.push(figs[i].getAttribute("data-chart") + ": " + e);
        document.body.setAttribute("data-js-errors", errors.join(" | "));
      }
    }
    document.body.setAttribute("data-ready", "1");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
})();
