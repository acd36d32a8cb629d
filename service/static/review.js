// The review queue (service/templates/review.html): select a decision with j / k or a click,
// confirm it with c, veto it with v (or the buttons). A verdict is POSTed to
// <base>/review/feedback with the page's CSRF token; the row leaves the page when it is
// stored, and the next page of the queue is appended as the rows run out. No reload.
(function () {
  "use strict";
  var body = document.body;
  var base = body.getAttribute("data-base");
  var canReview = body.getAttribute("data-can-review") === "true";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";
  var list = q("review-list");
  var LOW_WATER = 5;  // rows left on the page when the next page is fetched
  var selected = null, active = false, loading = false, reviewed = 0;

  function q(id) { return document.querySelector('[data-testid="' + id + '"]'); }
  function status(text) { q("review-status").textContent = text; }
  function rows() {
    return Array.prototype.slice.call(list.querySelectorAll('[data-testid="review-item"]:not(.pending)'));
  }
  function label(el) { return el.getAttribute("data-source") + ":" + el.getAttribute("data-ticket-id"); }

  function select(el) {
    if (selected) { selected.classList.remove("selected"); selected.removeAttribute("aria-current"); }
    selected = el;
    if (!el) return;
    el.classList.add("selected");
    el.setAttribute("aria-current", "true");
    el.focus({preventScroll: true});
    el.scrollIntoView({block: "nearest"});
  }

  function move(step) {
    var all = rows();
    if (!all.length) return;
    var i = all.indexOf(selected);
    var next = i < 0 ? (step > 0 ? 0 : all.length - 1) : Math.min(Math.max(i + step, 0), all.length - 1);
    select(all[next]);
  }

  function setWaiting(delta) {
    var el = q("review-waiting");
    el.textContent = String(Math.max(0, Number(el.textContent) + delta));
  }

  function empty() {
    var none = !rows().length && !list.querySelector('[data-testid="review-item"]') && !nextUrl();
    q("review-empty").hidden = !none;
  }

  function nextUrl() {
    var pages = list.querySelectorAll('[data-testid="review-page"]');
    var last = pages[pages.length - 1];
    return last ? last.getAttribute("data-next") : null;
  }

  // Keyset pages: the next one starts after the last row of the last page fetched, so the
  // rows reviewed meanwhile do not shift it.
  function loadMore() {
    var url = nextUrl();
    if (loading || !url || rows().length >= LOW_WATER) return;
    loading = true;
    fetch(url, {credentials: "same-origin", cache: "no-store", headers: {Accept: "text/html"}})
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var page = doc.querySelector('[data-testid="review-page"]');
        var pages = list.querySelectorAll('[data-testid="review-page"]');
        var last = pages[pages.length - 1];
        last.removeAttribute("data-next");
        var older = last.querySelector('[data-testid="review-older"]');
        if (older) older.parentNode.removeChild(older);
        // a decision already on the page (a verdict still in flight) is not shown twice
        var have = {};
        list.querySelectorAll('[data-testid="review-item"]').forEach(function (el) { have[label(el)] = true; });
        page.querySelectorAll('[data-testid="review-item"]').forEach(function (el) {
          if (have[label(el)]) el.parentNode.removeChild(el);
        });
        list.appendChild(document.adoptNode(page));
        loading = false;
        if (active && !selected) move(1);
        empty();
        loadMore();
      })
      .catch(function (e) { loading = false; status("Could not load more decisions (" + e.message + ")."); });
  }

  function decide(el, verdict) {
    if (!el || el.classList.contains("pending")) return;
    if (!canReview) { status("This token has no feedback scope: you can look, not review."); return; }
    var i = rows().indexOf(el);
    el.classList.add("pending");
    el.setAttribute("aria-busy", "true");
    if (el === selected) {
      // the next decision is selected at once: the agent goes on while this one is stored
      var rest = rows();
      select(rest.length ? rest[Math.min(i, rest.length - 1)] : null);
    }
    var name = verdict === "confirm" ? "confirmed" : "not a duplicate";
    fetch(base + "/review/feedback", {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: {"Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify({
        source: el.getAttribute("data-source"),
        ticket_id: el.getAttribute("data-ticket-id"),
        verdict: verdict
      })
    })
      .then(function (r) {
        if (r.status === 201) return null;
        return r.json().then(
          function (d) { return typeof d.detail === "string" ? d.detail : "HTTP " + r.status; },
          function () { return "HTTP " + r.status; });
      })
      .then(function (problem) {
        if (problem === null) {
          el.parentNode.removeChild(el);
          reviewed += 1;
          body.setAttribute("data-reviewed", String(reviewed));
          setWaiting(-1);
          status(label(el) + ": " + name + ".");
        } else {
          el.classList.remove("pending");
          el.removeAttribute("aria-busy");
          el.querySelector('[data-testid="review-msg"]').textContent = problem;
          status(label(el) + " was not stored: " + problem);
        }
        loadMore();
        empty();
      })
      .catch(function (e) {
        el.classList.remove("pending");
        el.removeAttribute("aria-busy");
        status(label(el) + " was not stored (" + e.message + ").");
      });
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(t.tagName))) return;
    var key = e.key;
    if (key === "j" || key === "k") {
      active = true;
      move(key === "j" ? 1 : -1);
    } else if ((key === "c" || key === "v") && !e.repeat) {
      active = true;
      if (!selected) { status("Select a decision first: j / k."); return; }
      decide(selected, key === "c" ? "confirm" : "veto");
    } else {
      return;
    }
    e.preventDefault();
  });

  list.addEventListener("click", function (e) {
    var item = e.target.closest('[data-testid="review-item"]');
    if (!item || item.classList.contains("pending")) return;
    var button = e.target.closest("button[data-verdict]");
    if (button) {
      select(item);
      decide(item, button.getAttribute("data-verdict"));
    } else if (!e.target.closest("a")) {
      select(item);
    }
  });

  empty();
  loadMore();
})();
