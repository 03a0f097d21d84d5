/*
 * The dashboard charts on the admin landing page, drawn with the local Chart.js
 * (static/vendor/chart.umd.min.js). Every <canvas data-chart="ID"> gets the chart described by the
 * json_script block with that id: {type, labels, datasets: [{label, data}], stacked}. Amounts may
 * come as exact decimal strings; they are made numbers here. No inline script on the page.
 */
(function () {
  "use strict";

  const PALETTE = [
    "#417690", "#d9822b", "#5b8c3a", "#a33b3b", "#7a5ea8",
    "#2f9c95", "#c2a03a", "#8c564b", "#e377c2", "#7f7f7f",
  ];

  function number(value) {
    return value === null || value === undefined ? null : Number(value);
  }

  function drawOne(canvas) {
    const source = document.getElementById(canvas.dataset.chart);
    if (!source) {
      return;
    }
    const spec = JSON.parse(source.textContent);
    const stacked = Boolean(spec.stacked);
    const line = spec.type === "line";
    new window.Chart(canvas, {
      type: spec.type || "bar",
      data: {
        labels: spec.labels,
        datasets: spec.datasets.map((dataset, index) => ({
          label: dataset.label,
          data: dataset.data.map(number),
          backgroundColor: PALETTE[index % PALETTE.length],
          borderColor: PALETTE[index % PALETTE.length],
          fill: false,
          tension: line ? 0.2 : 0,
          stack: stacked ? "stack" : undefined,
        })),
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { display: spec.datasets.length > 1 } },
        scales: {
          x: { stacked: stacked },
          y: { stacked: stacked, beginAtZero: true },
        },
      },
    });
    canvas.dataset.ready = "true";
  }

  function draw() {
    if (typeof window.Chart === "undefined") {
      return;
    }
    document.querySelectorAll("canvas[data-chart]").forEach(drawOne);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
