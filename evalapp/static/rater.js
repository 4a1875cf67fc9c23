/* MedSynth rater page: answers bound to their pair, keyboard control, reading-room tools.
   Keys: Up/Down move between questions; 1-5 answer the highlighted question; L/R answer "which image is
   generated?" (head-to-head studies: L/R/E answer the highlighted preference, or the first unanswered one,
   left / right / no difference); Enter submits; [ and ] open the full-resolution view of the left/right image; X compares both
   at the same zoom; C comment; N cannot assess; Esc leaves a text box or closes a view; P pauses; T switches
   dark/light; ? shows the instructions.

   Binding: every answer is given for one display (the header's data-display). From a submission until the
   next pair's images are on screen and its form is blank, answer keys are queued (and replayed on the new
   pair's first question) and clicks on the form are ignored; the submission carries the display id its
   answers were given for, and the server refuses answers given for another display.
   Nothing here knows anything about the images. */
(function () {
  "use strict";
  if (window.msRaterInstalled) return;
  window.msRaterInstalled = true;

  var focusIndex = 0;
  var shownAt = null;
  var ready = false; // the form on screen belongs to currentDisplay and may take answers
  var currentDisplay = "";
  var answersFor = ""; // the display the form's answers were given for
  var waiting = null; // {display, seq, since}: a submission is on its way
  var queue = []; // keys pressed while not ready
  var prefetched = {}; // image URL -> blob: URL of the next pair's image, fetched and decoded while the rater answers
  var decoded = {}; // image URL -> the decoded Image holding that blob (kept so the swap shows at once)
  var shownBlobs = []; // blob: URLs on screen now (released when the next pair replaces them)
  var tickQueued = false;
  var QUEUE_KEYS = /^([1-9]|l|L|r|R|e|E|ArrowUp|ArrowDown)$/;
  var STORE = window.localStorage || { getItem: function () { return null; }, setItem: function () {} };

  function $(sel) { return document.querySelector(sel); }
  function questions() { // the questions of the study on screen (the other study's are hidden)
    return Array.prototype.slice.call(document.querySelectorAll("#ms-form .ms-q-scale, #ms-form .ms-q-choice"))
      .filter(function (q) { return q.offsetParent !== null; });
  }
  function radios(block) {
    return Array.prototype.slice.call(block.querySelectorAll('input[type="radio"]'));
  }
  function answered(block) {
    return radios(block).some(function (r) { return r.checked; });
  }
  function formVisible() {
    var form = document.getElementById("ms-form");
    return !!(form && form.offsetParent !== null);
  }
  function head() { return $("#ms-header .ms-head"); }
  function displayOnScreen() {
    var h = head();
    return h ? h.getAttribute("data-display") || "" : "";
  }
  function messageSeq() {
    var m = $("#ms-message .ms-message");
    return m ? m.getAttribute("data-seq") || "" : "";
  }
  function images() {
    return Array.prototype.slice.call(document.querySelectorAll("#ms-form .ms-img"));
  }
  function references() { // a head-to-head study's reference image above the pair, if it shows one
    return Array.prototype.slice.call(document.querySelectorAll("#ms-form .ms-ref-img"));
  }
  function imagesShown() {
    var imgs = images();
    return imgs.length === 2 && imgs.concat(references()).every(function (i) { return i.complete && i.naturalWidth > 0; });
  }
  function formBlank() {
    return !document.querySelector("#ms-form input[type=radio]:checked") &&
      !document.querySelector("#ms-form input[type=checkbox]:checked");
  }
  function setFocus(i, scroll) {
    var qs = questions();
    if (!qs.length) return;
    focusIndex = Math.max(0, Math.min(i, qs.length - 1));
    qs.forEach(function (q, n) { q.classList.toggle("ms-focus", n === focusIndex); });
    if (scroll !== false) qs[focusIndex].scrollIntoView({ block: "nearest" });
  }
  function nextUnanswered(from) {
    var qs = questions();
    for (var n = from + 1; n < qs.length; n++) if (!answered(qs[n])) return n;
    for (var m = 0; m < qs.length; m++) if (!answered(qs[m])) return m;
    return -1;
  }
  function clearMissing(block) {
    if (!block || !block.classList.contains("ms-missing")) return;
    block.classList.remove("ms-missing");
    if (!document.querySelector("#ms-form .ms-missing")) {
      var m = $("#ms-message .ms-message-alert");
      if (m) m.textContent = "";
    }
  }
  function answerGiven(block) {
    answersFor = currentDisplay;
    clearMissing(block);
  }
  function answer(block, index) {
    var rs = radios(block);
    if (index < 0 || index >= rs.length) return false;
    rs[index].click();
    answerGiven(block);
    return true;
  }
  function advance() {
    var next = nextUnanswered(focusIndex);
    if (next >= 0) setFocus(next);
    else {
      var send = document.getElementById("ms-submit");
      if (send) send.scrollIntoView({ block: "nearest" });
    }
  }
  function textField(id) {
    var root = document.getElementById(id);
    return root ? root.querySelector("textarea, input[type='text']") : null;
  }
  function click(id) {
    var el = document.getElementById(id);
    if (el) el.click();
  }

  /* ---- the pair on screen: ready only when its images are shown and its form is blank ---- */
  function becomeReady(display, fresh) {
    ready = true;
    waiting = null;
    if (fresh) {
      currentDisplay = display;
      answersFor = "";
      shownAt = performance.now();
      setFocus(0, false);
      window.scrollTo({ top: 0 });
      var left = $("#ms-img-left .ms-img");
      window.msReadyFor = left ? left.getAttribute("src") : "";
      document.querySelectorAll("#ms-form .ms-missing").forEach(function (b) { b.classList.remove("ms-missing"); });
      applyWindow();
      applyThemeDefault();
      maybeIntro();
      prefetchNext();
    }
    var keys = queue;
    queue = [];
    keys.forEach(function (k) { handleKey(k, null); });
  }
  function usePrefetched() {
    // a new pair's images (and a head-to-head reference) come with data-src only: show the prefetched,
    // decoded copy, else load the URL
    images().concat(references()).forEach(function (img) {
      if (img.hasAttribute("src")) return;
      var url = img.getAttribute("data-src") || "";
      var blob = prefetched[url];
      if (!blob) { img.setAttribute("src", url); return; }
      releaseUnshown();
      shownBlobs.push(blob);
      delete prefetched[url];
      delete decoded[url];
      img.setAttribute("src", blob);
    });
  }
  function releaseUnshown() { // free the blobs of images no longer on the page (the pair just replaced)
    var onPage = images().concat(references()).map(function (i) { return i.getAttribute("src"); });
    shownBlobs = shownBlobs.filter(function (u) {
      if (onPage.indexOf(u) >= 0) return true;
      URL.revokeObjectURL(u);
      return false;
    });
  }
  function tickSoon() { // many DOM changes arrive per response: one check per frame, not one per change
    if (tickQueued) return;
    tickQueued = true;
    requestAnimationFrame(function () { tickQueued = false; tick(); });
  }
  function ended() { // the thank-you, refusal or practice-feedback screen came as a submission's answer:
    // hide the form (submit no longer sends the form's visibility; the next screen's load shows it again)
    var end = !!document.querySelector("#ms-status .ms-status-done, #ms-status .ms-status-refused, #ms-status .ms-status-feedback");
    if (document.body && document.body.classList.contains("ms-ended") !== end) document.body.classList.toggle("ms-ended", end);
  }
  function tick() {
    ended();
    // Nothing new on screen (the common case, 60 times a second): return before formVisible(), whose
    // offsetParent forces a layout while Gradio is still changing the page.
    var onScreen = displayOnScreen();
    // (While waiting, it still looks once after 1.5 s: the one resend below.)
    if (onScreen && waiting && onScreen === waiting.display && messageSeq() === waiting.seq &&
        performance.now() - waiting.since <= (waiting.retried ? 10000 : 1500)) return;
    if (onScreen && !waiting && ready && onScreen === currentDisplay) return;
    if (!formVisible()) {
      if (ready || currentDisplay) { ready = false; currentDisplay = ""; }
      if (waiting && performance.now() - waiting.since > 10000) waiting = null;
      return;
    }
    var shown = displayOnScreen();
    usePrefetched();
    if (waiting) {
      if (shown && shown !== waiting.display) {
        if (imagesShown() && formBlank()) becomeReady(shown, true);
      } else if (messageSeq() !== waiting.seq || performance.now() - waiting.since > 10000) {
        becomeReady(shown, false); // refused (missing answers): the same pair, its answers kept
      } else if (!waiting.retried && performance.now() - waiting.since > 1500) {
        // nothing came back: a submit (typed, or replayed from queued keys) can reach Gradio while it still
        // finishes the previous event and be dropped ("once"); send it again once (same display and
        // submission id: stored once; if the first is still pending, Gradio drops this one instead)
        var first = waiting;
        ready = true;
        click("ms-submit");
        if (waiting) { waiting.retried = true; waiting.seq = first.seq; }
      }
      return;
    }
    if (!shown) return;
    if (shown !== currentDisplay) {
      ready = false;
      if (imagesShown() && formBlank()) becomeReady(shown, true);
    }
  }
  setInterval(tick, 15);
  new MutationObserver(function () {
    usePrefetched(); // at once: before the browser asks the server for the URL the prefetch already holds
    tickSoon();
    if (document.body && document.body.classList.contains("ms-grey") !== greyStudy()) applyWindow();
  }).observe(document.documentElement, {
    subtree: true, childList: true, attributes: true, attributeFilter: ["data-display", "data-seq", "data-grey", "src", "data-src"],
  });
  document.addEventListener("load", function () { tick(); }, true);

  /* ---- prefetch: the next pair's images, held as decoded blob: URLs (the served copies are no-store) ---- */
  function prefetchNext() {
    var h = head();
    var next = h ? (h.getAttribute("data-next") || "").split(" ").filter(Boolean) : [];
    var keep = {};
    var keepDecoded = {};
    next.forEach(function (url) {
      if (url in prefetched) { keep[url] = prefetched[url]; keepDecoded[url] = decoded[url]; return; }
      keep[url] = "";
      fetch(url, { cache: "no-store", credentials: "same-origin" }).then(function (r) {
        if (!r.ok) throw new Error("no image");
        return r.blob();
      }).then(function (data) {
        if (!(url in prefetched)) return; // no longer the next pair
        var blob = URL.createObjectURL(data);
        var img = new Image();
        img.src = blob;
        var done = function () { if (url in prefetched) { prefetched[url] = blob; decoded[url] = img; } else URL.revokeObjectURL(blob); };
        if (img.decode) img.decode().then(done, done); else done();
      }).catch(function () { delete prefetched[url]; });
    });
    Object.keys(prefetched).forEach(function (url) {
      if (!(url in keep) && prefetched[url]) URL.revokeObjectURL(prefetched[url]);
    });
    prefetched = keep;
    decoded = keepDecoded;
  }

  window.msBeforeSubmit = function (args, at) { // at: index of client ms, then client time, display id
    var out = args.slice();
    var i = typeof at === "number" ? at : out.length - 3;
    out[i] = shownAt === null ? "" : String(Math.round(performance.now() - shownAt));
    out[i + 1] = new Date().toISOString();
    out[i + 2] = answersFor;
    return out;
  };

  /* ---- theme: dark reading room or light, kept by the rater ---- */
  function setTheme(dark, keep) {
    document.body.classList.toggle("dark", dark);
    document.body.classList.toggle("ms-dark", dark);
    document.body.classList.toggle("ms-light", !dark);
    if (keep) STORE.setItem("ms-theme", dark ? "dark" : "light");
  }
  function applyThemeDefault() {
    var kept = STORE.getItem("ms-theme");
    if (kept) { setTheme(kept === "dark", false); return; }
    var h = head();
    setTheme(!!(h && h.getAttribute("data-grey") === "1"), false);
  }
  function toggleTheme() { setTheme(!document.body.classList.contains("ms-dark"), true); }
  (function early() {
    var kept = STORE.getItem("ms-theme");
    if (document.body) setTheme(kept === "dark", false);
    else document.addEventListener("DOMContentLoaded", early);
  })();

  /* ---- instructions ---- */
  function intro() { return document.getElementById("ms-intro"); }
  function introOpen() { var i = intro(); return !!(i && !i.hidden); }
  function showIntro(open) {
    var i = intro();
    if (!i) return;
    i.hidden = !open;
    if (open) { var b = document.getElementById("ms-intro-start"); if (b) b.focus(); }
  }
  function maybeIntro() {
    var i = intro();
    if (!i || i.getAttribute("data-seen") === "1") return;
    i.setAttribute("data-seen", "1");
    if (i.getAttribute("data-first") === "1") showIntro(true);
  }

  /* ---- window / level (grey-scale studies): one setting for both images ---- */
  var win = { c: 1, b: 1 };
  var PRESETS = { default: { c: 1, b: 1 }, soft: { c: 1.4, b: 1.05 }, bright: { c: 1, b: 1.35 }, contrast: { c: 2, b: 0.95 } };
  function greyStudy() { var h = head(); return !!(h && h.getAttribute("data-grey") === "1"); }
  function filterText() { return win.c === 1 && win.b === 1 ? "" : "brightness(" + win.b.toFixed(3) + ") contrast(" + win.c.toFixed(3) + ")"; }
  function applyWindow() {
    document.body.classList.toggle("ms-grey", greyStudy());
    var f = greyStudy() ? filterText() : "";
    document.querySelectorAll(".ms-img, .ms-ref-img, #ms-zoom img").forEach(function (img) { img.style.filter = f; });
    var label = document.getElementById("ms-wl-value");
    if (label) label.textContent = "W " + win.c.toFixed(2) + " · L " + win.b.toFixed(2);
  }
  function preset(name) { var p = PRESETS[name]; if (p) { win = { c: p.c, b: p.b }; applyWindow(); } }
  var wlDrag = null;
  document.addEventListener("contextmenu", function (ev) {
    if (greyStudy() && ev.target.closest && ev.target.closest(".ms-img, #ms-zoom img")) ev.preventDefault();
  });
  document.addEventListener("pointerdown", function (ev) {
    if (!greyStudy() || !ev.target.closest || !ev.target.closest(".ms-img, #ms-zoom img")) return;
    if (ev.button === 2 || ev.shiftKey) {
      wlDrag = { x: ev.clientX, y: ev.clientY, c: win.c, b: win.b };
      ev.preventDefault();
    }
  }, true);
  document.addEventListener("pointermove", function (ev) {
    if (!wlDrag) return;
    win.c = Math.max(0.2, Math.min(5, wlDrag.c * Math.exp((ev.clientX - wlDrag.x) / 200)));
    win.b = Math.max(0.2, Math.min(3, wlDrag.b * Math.exp(-(ev.clientY - wlDrag.y) / 200)));
    applyWindow();
  });
  document.addEventListener("pointerup", function () { wlDrag = null; });

  /* ---- full-resolution view: pan, zoom, which side, side-by-side and flicker at equal zoom ---- */
  var overlay = null;
  var view = { scale: 1, x: 0, y: 0, side: "left", both: false };
  var pan = null;
  function zoomSrc(side) {
    var img = $("#ms-img-" + side + " .ms-img");
    return img ? img.getAttribute("data-zoom") : "";
  }
  function closeZoom() {
    if (overlay) { overlay.remove(); overlay = null; }
  }
  function sideName(side) { return side === "left" ? "Left image" : "Right image"; }
  function pane() {
    return '<div class="ms-zoom-pane"><span class="ms-zoom-label"></span><img alt="Enlarged image" draggable="false"></div>';
  }
  function renderZoom() {
    if (!overlay) return;
    var stage = overlay.querySelector(".ms-zoom-stage");
    var want = view.both ? 2 : 1;
    if (stage.children.length !== want) stage.innerHTML = view.both ? pane() + pane() : pane();
    Array.prototype.forEach.call(stage.children, function (p, n) {
      var side = view.both ? (n === 0 ? "left" : "right") : view.side;
      var img = p.querySelector("img");
      var src = zoomSrc(side);
      if (img.getAttribute("src") !== src) img.setAttribute("src", src);
      if (img.naturalWidth) img.style.width = img.naturalWidth / (window.devicePixelRatio || 1) + "px"; // 100% = native
      else img.onload = renderZoom;
      img.style.transform = "translate(" + view.x + "px," + view.y + "px) scale(" + view.scale + ")";
      img.style.imageRendering = view.scale > 1 ? "pixelated" : ""; // magnified: each image pixel a crisp block
      p.querySelector(".ms-zoom-label").textContent = sideName(side);
    });
    var pct = Math.round(view.scale * 100);
    overlay.querySelector(".ms-zoom-state").textContent =
      (view.both ? "Both images side by side" : sideName(view.side)) + " · " + pct + "%" +
      (view.scale === 1 ? " (1 image pixel = 1 screen pixel)" : "");
    applyWindow();
  }
  function openZoom(side, both) {
    closeZoom();
    if (!zoomSrc(side)) return;
    view = { scale: 1, x: 0, y: 0, side: side, both: !!both };
    overlay = document.createElement("div");
    overlay.id = "ms-zoom";
    overlay.setAttribute("role", "dialog");
    overlay.innerHTML =
      '<div class="ms-zoom-bar"><span class="ms-zoom-state"></span>' +
      '<span class="ms-zoom-help">drag to pan · wheel or + / − to zoom · 0 actual pixels · Space flicker · ' +
      "X side by side · Esc close</span></div>" +
      '<div class="ms-zoom-stage"></div>';
    overlay.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      zoomBy(ev.deltaY < 0 ? 1.25 : 1 / 1.25);
    }, { passive: false });
    overlay.addEventListener("pointerdown", function (ev) {
      if (ev.button !== 0 || ev.shiftKey) return;
      pan = { x: ev.clientX - view.x, y: ev.clientY - view.y };
      ev.preventDefault();
    });
    overlay.addEventListener("pointermove", function (ev) {
      if (!pan) return;
      view.x = ev.clientX - pan.x; view.y = ev.clientY - pan.y; renderZoom();
    });
    overlay.addEventListener("pointerup", function () { pan = null; });
    document.body.appendChild(overlay);
    renderZoom();
  }
  function zoomBy(f) {
    if (!overlay) return;
    view.scale = Math.max(0.25, Math.min(16, view.scale * f));
    if (Math.abs(view.scale - 1) < 0.02) view.scale = 1;
    renderZoom();
  }

  /* ---- keys ---- */
  function choiceFor(qs, block) {
    // the question L / R / E answer: "which image is generated?", or (head-to-head) the highlighted
    // preference, else the first unanswered one
    var choices = qs.filter(function (q) { return q.classList.contains("ms-q-choice"); });
    if (choices.length <= 1) return choices[0] || null;
    if (block && choices.indexOf(block) >= 0) return block;
    return choices.filter(function (q) { return !answered(q); })[0] || null;
  }
  function handleKey(key, ev) {
    function stop() { if (ev) ev.preventDefault(); }
    var qs = questions();
    var block = qs[focusIndex];
    if (key >= "1" && key <= "9" && key.length === 1) {
      if (block && answer(block, parseInt(key, 10) - 1)) { stop(); advance(); }
    } else if (/^[lLrReE]$/.test(key)) {
      var which = choiceFor(qs, block);
      var pick = { l: 0, r: 1, e: 2 }[key.toLowerCase()];
      if (which && answer(which, pick)) { // "E" on a left/right question has no third choice: nothing
        stop();
        focusIndex = qs.indexOf(which);
        advance();
      }
    } else if (key === "ArrowDown") {
      setFocus(focusIndex + 1); stop();
    } else if (key === "ArrowUp") {
      setFocus(focusIndex - 1); stop();
    } else if (key === "Enter") {
      stop(); click("ms-submit");
    }
  }

  document.addEventListener("click", function (ev) {
    var t = ev.target;
    if (!t || !t.closest) return;
    if (t.closest("#ms-intro-start")) { showIntro(false); return; }
    if (t.closest("#ms-help")) { showIntro(true); return; }
    if (t.closest("#ms-theme")) { toggleTheme(); return; }
    if (t.closest("#ms-compare")) { openZoom("left", true); return; }
    var wl = t.closest(".ms-wl");
    if (wl) { preset(wl.getAttribute("data-wl")); return; }
    var form = t.closest("#ms-form");
    if (form && !ready && t.closest(".ms-q, #ms-submit")) {
      ev.preventDefault(); ev.stopPropagation(); // the pair is changing: this click belongs to no display
      return;
    }
    if (t.closest("#ms-submit")) {
      ready = false;
      waiting = { display: currentDisplay, seq: messageSeq(), since: performance.now() };
      return;
    }
    var zoom = t.closest(".ms-zoom, .ms-img");
    if (zoom && !ev.shiftKey) {
      openZoom(zoom.closest(".ms-right") ? "right" : "left", false);
      return;
    }
    var q = t.closest(".ms-q");
    if (q && form) {
      var i = questions().indexOf(q);
      if (i >= 0) setFocus(i, false);
      if (t.closest("input, label")) answerGiven(q);
    }
  }, true);
  document.addEventListener("input", function (ev) {
    var q = ev.target && ev.target.closest && ev.target.closest("#ms-form .ms-q");
    if (q && ready) answerGiven(q);
  }, true);

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var key = ev.key;
    if (introOpen()) {
      if (key === "Escape" || key === "Enter" || key === "?") { showIntro(false); ev.preventDefault(); }
      return;
    }
    if (overlay) {
      if (key === "Escape") closeZoom();
      else if (key === "+" || key === "=") zoomBy(1.25);
      else if (key === "-") zoomBy(1 / 1.25);
      else if (key === "0") { view.scale = 1; view.x = 0; view.y = 0; renderZoom(); }
      else if (key === " " || key === "f" || key === "F") { view.side = view.side === "left" ? "right" : "left"; view.both = false; renderZoom(); }
      else if (key === "[") { view.side = "left"; view.both = false; renderZoom(); }
      else if (key === "]") { view.side = "right"; view.both = false; renderZoom(); }
      else if (key === "x" || key === "X") { view.both = !view.both; renderZoom(); }
      else return;
      ev.preventDefault();
      return;
    }
    if (!formVisible()) {
      if (key === "Enter" || key === "p" || key === "P") {
        var resume = document.getElementById("ms-resume");
        if (resume && resume.offsetParent !== null) { resume.click(); ev.preventDefault(); }
      }
      return;
    }
    var target = ev.target;
    var typing = target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text"));
    if (typing) {
      if (key === "Escape") { target.blur(); ev.preventDefault(); }
      else if (key === "Enter" && !ev.shiftKey) { ev.preventDefault(); target.blur(); setTimeout(function () { click("ms-submit"); }, 60); }
      return;
    }
    if (!ready) {
      // the pair is changing: answers wait for the new pair's first question; Enter only after them
      if (QUEUE_KEYS.test(key) || (key === "Enter" && queue.length)) { queue.push(key); ev.preventDefault(); }
      else if (key === "Enter") ev.preventDefault();
      return;
    }
    if (key === "?") { showIntro(true); ev.preventDefault(); }
    else if (key === "[") { openZoom("left", false); ev.preventDefault(); }
    else if (key === "]") { openZoom("right", false); ev.preventDefault(); }
    else if (key === "x" || key === "X") { openZoom("left", true); ev.preventDefault(); }
    else if (key === "t" || key === "T") { toggleTheme(); ev.preventDefault(); }
    else if (key === "c" || key === "C") {
      var c = textField("q-comment"); if (c) { ev.preventDefault(); c.focus(); }
    } else if (key === "n" || key === "N") {
      var box = document.querySelector("#q-cannot_assess input[type='checkbox']");
      if (box) {
        ev.preventDefault(); box.click(); answerGiven(document.getElementById("q-cannot_assess"));
        setTimeout(function () { if (box.checked) { var r = textField("q-cannot_assess_reason"); if (r) r.focus(); } }, 30);
      }
    } else if (key === "p" || key === "P") {
      ev.preventDefault(); click("ms-pause");
    } else {
      handleKey(key, ev);
    }
  });
})();
