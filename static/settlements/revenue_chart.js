/*
 * The revenue chart: monthly gross revenue per partner as stacked bars, drawn with the local
 * Chart.js (static/vendor/chart.umd.min.js). The figures come from a json_script block named by the
 * canvas's data-data-id (amounts as exact decimal strings), so the page needs no inline script.
 */
(function () {
  "use strict";

  const PALETTE = [
    "#417690", "#d9822b", "#5b8c3a", "#a33b3b", "#7a5ea8",
    "#2f9c95", "#c2a03a", "#8c564b", "#e377c2", "#7f7f7f",
  ];

  function draw() {
    const canvas = document.getElementById("revenue-chart");
    if (!canvas || typeof window.Chart === "undefined") {
      return;
    }
    const data = JSON.parse(document.getElementById(canvas.dataset.dataId).textContent);
    const labels = JSON.parse(document.getElementById(canvas.dataset.labelsId).textContent);
    const money = new Intl.NumberFormat("zh-CN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    const chart = new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: data.datasets.map((dataset, index) => ({
          label: dataset.label,
          data: dataset.data.map(Number),
          backgroundColor: PALETTE[index % PALETTE.length],
          stack: "revenue",
        })),
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true },
          y: { stacked: true, ticks: { callback: (value) => money.format(value) } },
        },
        plugins: {
          tooltip: {
            callbacks: {
              label: (item) => `${item.dataset.label}: ${money.format(item.parsed.y)} ${labels.currency}`,
              footer: (items) =>
                `${labels.total}: ${money.format(items.reduce((sum, item) => sum + item.parsed.y, 0))} ${labels.currency}`,
            },
          },
        },
      },
    });
    canvas.dataset.ready = "true";
    return chart;
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
