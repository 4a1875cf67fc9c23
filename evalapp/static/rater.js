/* MedSynth rater page: keyboard control, focus highlight, full-size view, client response time.
   Keys: Up/Down move between questions; 1-5 answer the highlighted question; L/R answer "which image is
   generated?"; Enter submits; [ and ] enlarge the left/right image; C comment; N cannot assess; Esc leaves a
   text box or closes the enlarged view; P pauses. Nothing here knows anything about the images. */
(function () {
  "use strict";
  if (window.msRaterInstalled) return;
  window.msRaterInstalled = true;

  var focusIndex = 0;
  var shownAt = null;
  var lastSrc = "";

  function questions() {
    return Array.prototype.slice.call(document.querySelectorAll(".ms-q-scale, .ms-q-choice"));
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
  function setFocus(i, scroll) {
    var qs = questions();
    if (!qs.length) return;
    focusIndex = Math.max(0, Math.min(i, qs.length - 1));
    qs.forEach(function (q, n) { q.classList.toggle("ms-focus", n === focusIndex); });
    if (scroll !== false) qs[focusIndex].scrollIntoView({ block: "nearest", behavior: "smooth" });
  }
  function nextUnanswered(from) {
    var qs = questions();
    for (var n = from + 1; n < qs.length; n++) if (!answered(qs[n])) return n;
    for (var m = 0; m < qs.length; m++) if (!answered(qs[m])) return m;
    return -1;
  }
  function answer(block, index) {
    var rs = radios(block);
    if (index < 0 || index >= rs.length) return false;
    rs[index].click();
    return true;
  }
  function advance() {
    var next = nextUnanswered(focusIndex);
    if (next >= 0) setFocus(next);
    else {
      var send = document.getElementById("ms-submit");
      if (send) send.scrollIntoView({ block: "nearest", behavior: "smooth" });
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

  /* ---- full-size view ---- */
  var overlay = null;
  var scale = 1;
  function closeZoom() {
    if (overlay) { overlay.remove(); overlay = null; }
  }
  function openZoom(src) {
    closeZoom();
    if (!src) return;
    scale = 1;
    overlay = document.createElement("div");
    overlay.id = "ms-zoom";
    overlay.setAttribute("role", "dialog");
    overlay.innerHTML = '<div class="ms-zoom-bar">Full size · scroll or + / − to zoom · Esc to close</div>' +
      '<div class="ms-zoom-stage"><img alt="Enlarged image"></div>';
    var img = overlay.querySelector("img");
    img.src = src;
    overlay.addEventListener("click", function (ev) { if (ev.target === overlay || ev.target.classList.contains("ms-zoom-stage")) closeZoom(); });
    overlay.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      zoomBy(ev.deltaY < 0 ? 1.15 : 1 / 1.15);
    }, { passive: false });
    document.body.appendChild(overlay);
  }
  function zoomBy(f) {
    if (!overlay) return;
    scale = Math.max(0.5, Math.min(8, scale * f));
    overlay.querySelector("img").style.transform = "scale(" + scale + ")";
  }
  function zoomSide(side) {
    var img = document.querySelector("#ms-img-" + side + " .ms-img");
    if (img) openZoom(img.getAttribute("data-zoom"));
  }

  /* ---- a new pair: reset focus and start the client clock ---- */
  document.addEventListener("load", function (ev) {
    var t = ev.target;
    if (!t || !t.classList || !t.classList.contains("ms-img")) return;
    var left = document.querySelector("#ms-img-left .ms-img");
    var src = left ? left.getAttribute("src") : "";
    if (src && src !== lastSrc) {
      lastSrc = src;
      shownAt = performance.now();
      setFocus(0, false);
      window.scrollTo({ top: 0 });
      window.msReadyFor = src;
    }
  }, true);

  window.msBeforeSubmit = function (args) {
    var out = args.slice();
    var n = out.length;
    out[n - 2] = shownAt === null ? "" : String(Math.round(performance.now() - shownAt));
    out[n - 1] = new Date().toISOString();
    return out;
  };

  document.addEventListener("click", function (ev) {
    var t = ev.target;
    if (!t || !t.closest) return;
    var zoom = t.closest(".ms-zoom, .ms-img");
    if (zoom) { openZoom(zoom.getAttribute("data-zoom")); return; }
    var q = t.closest(".ms-q-scale, .ms-q-choice");
    if (q) {
      var i = questions().indexOf(q);
      if (i >= 0) setFocus(i, false);
    }
  }, true);

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var key = ev.key;
    if (overlay) {
      if (key === "Escape") { closeZoom(); ev.preventDefault(); }
      else if (key === "+" || key === "=") { zoomBy(1.25); ev.preventDefault(); }
      else if (key === "-") { zoomBy(1 / 1.25); ev.preventDefault(); }
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
    var qs = questions();
    var block = qs[focusIndex];
    if (key >= "1" && key <= "9") {
      if (block && answer(block, parseInt(key, 10) - 1)) { ev.preventDefault(); advance(); }
    } else if (key === "l" || key === "L" || key === "r" || key === "R") {
      var which = document.getElementById("q-which_generated");
      if (which && answer(which, key.toLowerCase() === "l" ? 0 : 1)) {
        ev.preventDefault();
        focusIndex = qs.indexOf(which);
        advance();
      }
    } else if (key === "ArrowDown") {
      setFocus(focusIndex + 1); ev.preventDefault();
    } else if (key === "ArrowUp") {
      setFocus(focusIndex - 1); ev.preventDefault();
    } else if (key === "Enter") {
      ev.preventDefault(); click("ms-submit");
    } else if (key === "[") {
      zoomSide("left"); ev.preventDefault();
    } else if (key === "]") {
      zoomSide("right"); ev.preventDefault();
    } else if (key === "c" || key === "C") {
      var c = textField("q-comment"); if (c) { ev.preventDefault(); c.focus(); }
    } else if (key === "n" || key === "N") {
      var box = document.querySelector("#q-cannot_assess input[type='checkbox']");
      if (box) {
        ev.preventDefault(); box.click();
        setTimeout(function () { if (box.checked) { var r = textField("q-cannot_assess_reason"); if (r) r.focus(); } }, 30);
      }
    } else if (key === "p" || key === "P") {
      ev.preventDefault(); click("ms-pause");
    }
  });
})();
