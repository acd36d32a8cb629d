// The dashboard page (service/templates/dashboard.html): draws the charts as inline SVG from
// the numbers embedded in the page, then refreshes them from <base>/data every
// data-refresh-ms. No CDN, no build step; values carry data-testid attributes for the tests.
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var ROUTES = ["manual", "suggest", "duplicate"];  // stacking order, bottom up
  var COLORS = {duplicate: "#c92a2a", suggest: "#e67700", manual: "#1c7ed6"};
  var body = document.body;
  var base = body.getAttribute("data-base");
  var refreshes = 0;

  function byId(id) { return document.querySelector('[data-testid="' + id + '"]'); }
  function setText(id, value) { byId(id).textContent = String(value); }
  function node(ns, tag, attrs, text) {
    var e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (var k in attrs) { if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, String(attrs[k])); }
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs, text) { return node(NS, tag, attrs, text); }
  function html(tag, attrs, text) { return node(null, tag, attrs, text); }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function when(iso) { return iso ? iso.slice(0, 16).replace("T", " ") : "\u2013"; }
  function short(iso) { return iso ? iso.slice(5, 16).replace("T", " ") : "\u2013"; }
  function niceMax(n) {
    if (n <= 4) return Math.max(n, 1);
    var p = Math.pow(10, Math.floor(Math.log10(n))), m = n / p;
    var steps = [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    for (var i = 0; i < steps.length; i++) { if (m <= steps[i]) return steps[i] * p; }
    return 10 * p;
  }
  function yAxis(g, x0, x1, top, bottom, max) {
    [0, max / 2, max].forEach(function (v) {
      var y = bottom - (bottom - top) * v / max;
      g.appendChild(svg("line", {x1: x0, x2: x1, y1: y, y2: y, "class": "grid"}));
      g.appendChild(svg("text", {x: x0 - 6, y: y + 4, "text-anchor": "end"}, Number.isInteger(v) ? v : v.toFixed(1)));
    });
  }

  function drawHourly(h) {
    var el = clear(byId("hourly-chart"));
    var W = 1200, H = 170, L = 44, R = 10, T = 10, B = 26;
    el.setAttribute("viewBox", "0 0 " + W + " " + H);
    var n = h.buckets.length, band = (W - L - R) / n, bw = Math.max(1, Math.min(band * 0.8, 40));
    var totals = h.buckets.map(function (_, i) { return ROUTES.reduce(function (s, r) { return s + h.routes[r][i]; }, 0); });
    var max = niceMax(Math.max.apply(null, totals.concat([1])));
    yAxis(el, L, W - R, T, H - B, max);
    var step = Math.ceil(n / 12);
    h.buckets.forEach(function (bucket, i) {
      var x = L + i * band + (band - bw) / 2, y = H - B;
      ROUTES.forEach(function (r) {
        var c = h.routes[r][i];
        if (!c) return;
        var bh = (H - B - T) * c / max;
        y -= bh;
        var rect = svg("rect", {x: x, y: y, width: bw, height: bh, fill: COLORS[r],
          "data-testid": "hourly-bar", "data-bucket": bucket, "data-route": r, "data-count": c});
        rect.appendChild(svg("title", {}, when(bucket) + " UTC \u00b7 " + r + ": " + c));
        el.appendChild(rect);
      });
      if (i % step === 0) {
        var hour = bucket.slice(11, 16), label = (i === 0 || hour === "00:00") ? bucket.slice(5, 10) + " " + hour : hour;
        el.appendChild(svg("text", {x: L + i * band + band / 2, y: H - B + 16, "text-anchor": "middle"}, label));
      }
    });
    setText("hourly-range", when(h.start) + " \u2192 " + when(h.end) + " UTC, per hour");
  }

  function drawHistogram(hist, th) {
    var el = clear(byId("score-histogram"));
    var W = 560, H = 260, L = 44, R = 12, T = 40, B = 34;
    el.setAttribute("viewBox", "0 0 " + W + " " + H);
    var bins = hist.bins, lo = bins[0].low, hi = bins[bins.length - 1].high;
    function sx(v) { return L + (W - L - R) * (v - lo) / (hi - lo); }
    var totals = bins.map(function (b) { return ROUTES.reduce(function (s, r) { return s + b.counts[r]; }, 0); });
    var max = niceMax(Math.max.apply(null, totals.concat([1])));
    yAxis(el, L, W - R, T, H - B, max);
    bins.forEach(function (b) {
      var x = sx(b.low) + 1, bw = Math.max(1, sx(b.high) - sx(b.low) - 2), y = H - B;
      ROUTES.forEach(function (r) {
        var c = b.counts[r];
        if (!c) return;
        var bh = (H - B - T) * c / max;
        y -= bh;
        var rect = svg("rect", {x: x, y: y, width: bw, height: bh, fill: COLORS[r],
          "data-testid": "hist-bar", "data-low": b.low.toFixed(2), "data-route": r, "data-count": c});
        rect.appendChild(svg("title", {}, b.low.toFixed(2) + "\u2013" + b.high.toFixed(2) + " \u00b7 " + r + ": " + c));
        el.appendChild(rect);
      });
    });
    for (var t = Math.ceil(lo * 10 - 1e-9); t <= hi * 10 + 1e-9; t++) {
      el.appendChild(svg("text", {x: sx(t / 10), y: H - B + 16, "text-anchor": "middle"}, (t / 10).toFixed(1)));
    }
    el.appendChild(svg("text", {x: (W + L) / 2, y: H - 4, "text-anchor": "middle"}, "best cosine similarity"));
    // a label line per threshold above the plot, centred on its line, kept inside the chart
    [["suggest", th.suggest], ["duplicate", th.duplicate]].forEach(function (p, k) {
      var x = sx(p[1]), y = 13 + 13 * k;
      el.appendChild(svg("line", {x1: x, x2: x, y1: y + 3, y2: H - B, stroke: COLORS[p[0]],
        "stroke-width": 2, "stroke-dasharray": "5 3", "data-testid": "threshold-line",
        "data-kind": p[0], "data-value": p[1]}));
      var label = svg("text", {x: x, y: y, "text-anchor": "middle", fill: COLORS[p[0]],
        "data-testid": "threshold-label-" + p[0]}, p[0] + " \u2265 " + p[1].toFixed(2));
      el.appendChild(label);
      var w = label.getComputedTextLength ? label.getComputedTextLength() : 0;
      label.setAttribute("x", String(Math.min(Math.max(x, L + w / 2), W - R - w / 2)));
    });
    var none = ROUTES.reduce(function (s, r) { return s + hist.noScore[r]; }, 0);
    setText("no-score-total", none);
  }

  function drawClusters(clusters) {
    var tb = clear(byId("clusters-body"));
    if (!clusters.length) {
      tb.appendChild(html("tr", {}, "")).appendChild(html("td", {colspan: 5, "class": "muted"}, "No duplicates yet."));
      return;
    }
    clusters.forEach(function (c) {
      var tr = html("tr", {"data-testid": "cluster-row", "data-source": c.source, "data-ticket-id": c.ticket_id});
      var td = html("td");
      td.appendChild(html("a", {href: base + "/clusters/" + encodeURIComponent(c.source) + "/" + encodeURIComponent(c.ticket_id),
        "data-testid": "cluster-link"}, c.subject || "(no subject)"));
      tr.appendChild(td);
      tr.appendChild(html("td", {"data-testid": "cluster-key"}, c.source + ":" + c.ticket_id));
      tr.appendChild(html("td", {"class": "num", "data-testid": "cluster-size"}, c.size));
      tr.appendChild(html("td", {"data-testid": "cluster-first-seen", "data-value": c.first_seen, title: when(c.first_seen)}, short(c.first_seen)));
      tr.appendChild(html("td", {"data-testid": "cluster-last-seen", "data-value": c.last_seen, title: when(c.last_seen)}, short(c.last_seen)));
      tb.appendChild(tr);
    });
  }

  function drawFailures(failures) {
    var tb = clear(byId("failures-body"));
    if (!failures.length) {
      tb.appendChild(html("tr")).appendChild(html("td", {colspan: 3, "class": "muted"}, "No failures."));
      return;
    }
    failures.forEach(function (f) {
      var tr = html("tr", {"data-testid": "failure-row", "data-error-type": f.error_type});
      tr.appendChild(html("td", {"data-testid": "failure-type"}, f.error_type));
      tr.appendChild(html("td", {"class": "num", "data-testid": "failure-count"}, f.failures));
      tr.appendChild(html("td", {"data-testid": "failure-last", "data-value": f.last_failed_at}, when(f.last_failed_at)));
      tb.appendChild(tr);
    });
  }

  function drawDeliveries(d) {
    ["pending", "sending", "failed", "dead", "delivered", "dry-run"].forEach(function (st) {
      setText("deliveries-" + st, d.totals[st] || 0);
    });
    setText("deliveries-shown", d.failing.length);
    var tb = clear(byId("deliveries-body"));
    if (!d.failing.length) {
      tb.appendChild(html("tr")).appendChild(html("td", {colspan: 7, "class": "muted"}, "No failed deliveries."));
      return;
    }
    d.failing.forEach(function (a) {
      var tr = html("tr", {"data-testid": "delivery-row", "data-action-id": a.action_id, "data-status": a.status});
      tr.appendChild(html("td", {"data-testid": "delivery-ticket"}, a.source + ":" + a.ticket_id));
      tr.appendChild(html("td", null, a.kind));
      tr.appendChild(html("td", {"data-testid": "delivery-target"}, a.target));
      tr.appendChild(html("td", {"class": "status-" + a.status}, a.status));
      tr.appendChild(html("td", {"class": "num", "data-testid": "delivery-attempts"}, a.attempts));
      tr.appendChild(html("td", {"data-testid": "delivery-error", title: a.last_error || ""},
        (a.last_status === null ? "" : a.last_status + " ") + (a.last_error || "").slice(0, 120)));
      tr.appendChild(html("td", {"data-value": a.next_attempt_at || ""}, a.next_attempt_at ? when(a.next_attempt_at) : "\u2013"));
      tb.appendChild(tr);
    });
  }

  function pct(p) { return p === null ? "\u2013" : (100 * p).toFixed(1) + " %"; }
  function reviewRow(kind, route, label, n, low) {
    var tr = html("tr", {"data-testid": "precision-" + kind, "data-route": route, "data-low": low,
      "data-shown": n.shown, "data-judged": n.judged, "data-confirmed": n.confirmed,
      "data-precision": n.precision === null ? "" : n.precision});
    tr.appendChild(html("td", {"class": kind === "band" ? "band" : "route-" + route}, label));
    [n.shown, n.judged, n.confirmed, n.vetoed].forEach(function (v) { tr.appendChild(html("td", {"class": "num"}, v)); });
    tr.appendChild(html("td", {"class": "num"}, pct(n.precision)));
    return tr;
  }

  function drawReview(r) {
    var tb = clear(byId("precision-body"));
    ["duplicate", "suggest"].forEach(function (route) {
      var s = r.routes[route];
      tb.appendChild(reviewRow("route", route, route + " (\u2265 " + s.threshold.toFixed(2) + ")", s, null));
      s.bands.forEach(function (b) {
        tb.appendChild(reviewRow("band", route, b.low.toFixed(2) + "\u2013" + b.high.toFixed(2), b, b.low));
      });
    });
    setText("review-awaiting", r.awaiting);
    setText("review-verdicts", r.verdicts);
    setText("review-tied", r.tied);
    setText("review-band-width", r.band_width.toFixed(2));
  }

  function render(d) {
    setText("total-decisions", d.totals.decisions);
    ["duplicate", "suggest", "manual"].forEach(function (r) { setText("route-total-" + r, d.totals.routes[r]); });
    setText("failures-total", d.totals.failures);
    setText("queue-depth", d.queue_depth === null ? "unknown" : d.queue_depth);
    setText("threshold-duplicate", d.thresholds.duplicate.toFixed(2));
    setText("threshold-suggest", d.thresholds.suggest.toFixed(2));
    drawHourly(d.hourly);
    drawHistogram({bins: d.histogram.bins, noScore: d.totals.no_score}, d.thresholds);
    drawClusters(d.clusters);
    drawFailures(d.failures);
    drawReview(d.review);
    drawDeliveries(d.deliveries);
    setText("updated-at", d.generated_at.slice(0, 19).replace("T", " ") + " UTC");
  }

  var timer = null;
  function status(text) { setText("live-status", text); }
  function refresh() {
    fetch(base + "/data", {credentials: "same-origin", cache: "no-store", headers: {Accept: "application/json"}})
      .then(function (r) {
        if (r.status === 401) { clearInterval(timer); status("signed out \u2013 reload to sign in"); return null; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (d) {
        if (!d) return;
        render(d);
        refreshes += 1;
        body.setAttribute("data-refreshes", String(refreshes));
        status("live \u00b7 every " + (REFRESH_MS / 1000) + " s");
      })
      .catch(function (e) { status("stale (" + e.message + ")"); });
  }
  var REFRESH_MS = Number(body.getAttribute("data-refresh-ms"));
  render(JSON.parse(document.getElementById("initial-data").textContent));
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
})();
