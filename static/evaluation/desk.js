// Keyboard shortcuts for the reviewers' desk (queue and handoff pages).
(function () {
  "use strict";
  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.tagName === "SELECT" || target.isContentEditable);
  }
  function click(selector) {
    var el = document.querySelector(selector);
    if (el) { el.click(); return true; }
    return false;
  }
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("[data-keyboard-list] tr[data-href]")); }
  function move(step) {
    var all = rows();
    if (!all.length) return;
    var current = all.findIndex(function (r) { return r.classList.contains("selected"); });
    var next = Math.max(0, Math.min(all.length - 1, current + step));
    all.forEach(function (r) { r.classList.remove("selected"); });
    all[next].classList.add("selected");
    all[next].scrollIntoView({block: "nearest"});
  }
  document.addEventListener("keydown", function (event) {
    if (event.altKey) return;
    var target = event.target;
    if (target && target.id === "final_text" && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      click("[data-testid=approve]");
      return;
    }
    if (event.key === "Escape" && typing(target)) { target.blur(); return; }
    if (typing(target) || event.ctrlKey || event.metaKey) return;
    var handled = true;
    switch (event.key) {
      case "c": handled = click("[data-testid=claim]"); break;
      case "a": handled = click("[data-testid=approve]"); break;
      case "e": var box = document.getElementById("final_text"); if (box) { box.focus(); } else { handled = false; } break;
      case "r": var reason = document.getElementById("reject_reason"); if (reason) { reason.focus(); } else { handled = false; } break;
      case "n": var form = document.getElementById("claim-next-form"); if (form) { form.submit(); } else { handled = false; } break;
      case "j": move(1); break;
      case "k": move(-1); break;
      case "Enter":
        var selected = document.querySelector("[data-keyboard-list] tr.selected");
        if (selected) { window.location = selected.getAttribute("data-href"); } else { handled = false; }
        break;
      default: handled = false;
    }
    if (handled) event.preventDefault();
  });
})();
