/*
 * A background job's page: poll the job's progress endpoint (data-poll-url) every half second,
 * move the bar, the counts and the status, and once the job has finished put its result in place
 * (HTML rendered and escaped by the server, in the viewer's language). Needs jobs/progress.js.
 */
(function () {
  "use strict";

  const FINISHED = ["done", "failed"];

  function start() {
    const root = document.getElementById("job");
    if (!root || FINISHED.includes(root.dataset.status)) {
      return;
    }
    const progress = window.SpillwayProgress;
    const find = (testid) => root.querySelector(`[data-testid="${testid}"]`);

    function show(job) {
      progress.setBar(find("job-progress"), find("job-progress-text"), job.percent);
      find("job-counts").textContent = job.counts;
      const status = find("job-status");
      status.textContent = job.status_label;
      status.dataset.status = job.status;
      status.className = `job-status job-status-${job.status}`;
      root.dataset.status = job.status;
      if (!job.finished) {
        return false;
      }
      find("job-finished-at").textContent = job.finished_at;
      if (job.error) {
        const error = find("job-error");
        error.textContent = job.error;
        error.hidden = false;
      }
      find("job-result").innerHTML = job.result_html;
      return true;
    }

    progress.poll({
      url: root.dataset.pollUrl,
      interval: parseInt(root.dataset.pollInterval, 10) || 500,
      onData: show,
      onGiveUp: () => {
        find("job-poll-error").hidden = false;
      },
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
