// Draws every Plotly figure placed by a template: <div id="chart-x"> + json_script "chart-x-data".
(function () {
  function draw() {
    if (typeof Plotly === "undefined") return;
    document.querySelectorAll("div.chart[id]").forEach(function (el) {
      var data = document.getElementById(el.id + "-data");
      if (!data || el.dataset.drawn) return;
      var figure = JSON.parse(data.textContent);
      Plotly.newPlot(el, figure.data, figure.layout, {displayModeBar: false, responsive: true});
      el.dataset.drawn = "1";
    });
  }
  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
  draw();
})();
