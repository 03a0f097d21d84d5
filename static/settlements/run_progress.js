/*
 * A settlement run's page: poll GET /api/v1/settlements/runs/<id>/ (the admin's session cookie)
 * every half second, move the progress bar, and once the run is done or failed list the statements
 * it produced (from its summary). Everything it needs comes from data- attributes and a
 * json_script block, so the page works under a strict Content-Security-Policy. The polling and
 * the bar are jobs/progress.js's, shared with the background job page.
 */
(function () {
  "use strict";

  const FINISHED = ["done", "failed"];
  // "YYYY-MM-DD HH:MM:SS" in Asia/Shanghai, as the server writes times (Sweden's format is ISO-like).
  const SHANGHAI_TIME = new Intl.DateTimeFormat("sv-SE", {
    timeZone: "Asia/Shanghai",
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hour12: false,
  });

  function start() {
    const root = document.getElementById("settlement-run");
    if (!root || FINISHED.includes(root.dataset.status)) {
      return;
    }
    const labels = JSON.parse(document.getElementById(root.dataset.labelsId).textContent);
    const pollUrl = root.dataset.pollUrl;
    const interval = parseInt(root.dataset.pollInterval, 10) || 500;
    const statementUrl = root.dataset.statementUrl;
    const find = (testid) => root.querySelector(`[data-testid="${testid}"]`);
    const progress = window.SpillwayProgress;

    function showProgress(run) {
      progress.setBar(find("run-progress"), find("run-progress-text"), (Number(run.progress) || 0) * 100);
      const status = find("run-status");
      status.textContent = labels.run_status[run.status] || run.status;
      status.dataset.status = run.status;
      status.className = `run-status run-status-${run.status}`;
      root.dataset.status = run.status;
    }

    function statementItem(item) {
      const li = document.createElement("li");
      li.dataset.partner = item.partner;
      li.dataset.statement = item.statement;
      const link = document.createElement("a");
      link.href = statementUrl.replace("__id__", encodeURIComponent(item.statement));
      link.dataset.testid = "run-statement-link";
      link.textContent = `${item.partner} ${root.querySelector('[data-testid="run-period-value"]').textContent}`;
      li.appendChild(link);
      let text = ` — ${labels.statement_status[item.status] || item.status}`;
      if (!item.computed) {
        text += ` (${labels.not_computed})`;
      }
      text += ` · ${labels.lines}: ${item.lines} · ${labels.gross}: ${item.gross}`;
      li.appendChild(document.createTextNode(text));
      return li;
    }

    function showFinished(run) {
      find("run-finished-at").textContent = run.finished_at
        ? SHANGHAI_TIME.format(new Date(run.finished_at))
        : "—";
      if (run.error) {
        const error = find("run-error");
        error.textContent = run.error;
        error.hidden = false;
      }
      const list = find("run-statements");
      list.replaceChildren();
      const items = (run.summary || []).filter((item) => item && item.statement);
      if (items.length === 0) {
        const li = document.createElement("li");
        li.className = "run-no-statements";
        li.textContent = labels.no_statements;
        list.appendChild(li);
      }
      items.forEach((item) => list.appendChild(statementItem(item)));
      find("run-waiting").hidden = true;
      list.hidden = false;
    }

    progress.poll({
      url: pollUrl,
      interval,
      onData: (run) => {
        showProgress(run);
        if (!FINISHED.includes(run.status)) {
          return false;
        }
        showFinished(run);
        return true;
      },
      onGiveUp: () => {
        const error = find("run-poll-error");
        error.textContent = labels.poll_failed;
        error.hidden = false;
      },
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
