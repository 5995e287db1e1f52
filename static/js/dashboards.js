// Draws every Plotly figure placed by the dashboard templates: on page load and whenever
// htmx swaps new content in (filters changed, 30 s refresh, stack switch).
(function () {
  "use strict";
  var config = { displayModeBar: false, responsive: true };

  function draw(root) {
    if (!window.Plotly) { return; }
    var scope = root && root.querySelectorAll ? root : document;
    var plots = scope.querySelectorAll("[data-figure]");
    if (scope.matches && scope.matches("[data-figure]")) { plots = [scope]; }
    Array.prototype.forEach.call(plots, function (el) {
      var source = document.getElementById(el.getAttribute("data-figure"));
      if (!source) { return; }
      var figure = JSON.parse(source.textContent);
      window.Plotly.react(el, figure.data, figure.layout, config);
      el.setAttribute("data-drawn", "1");
    });
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:load", function (event) { draw(event.target); });
  // Purge charts that are about to be replaced, so Plotly releases their listeners.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (window.Plotly && target && target.querySelectorAll) {
      Array.prototype.forEach.call(target.querySelectorAll("[data-drawn]"), function (el) {
        window.Plotly.purge(el);
      });
    }
  });
  window.switchyardDraw = draw;
})();
