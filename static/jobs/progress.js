/*
 * The admin's progress bars, shared by the settlement run page (settlements/run_progress.js) and
 * the background job page (jobs/job.js): poll a JSON URL with the admin's session until the
 * caller says the work has finished, and move a <progress> bar and its percentage.
 * Loaded as a file before the page's own script (both deferred), so it works under a strict
 * Content-Security-Policy.
 */
(function () {
  "use strict";

  const MAX_FAILURES = 10;

  /** A whole percentage between 0 and 100. */
  function clampPercent(value) {
    return Math.max(0, Math.min(100, Math.round(Number(value) || 0)));
  }

  /** Show ``percent`` on a <progress max="100"> bar (its fallback text too) and in ``text``. */
  function setBar(bar, text, percent) {
    const value = clampPercent(percent);
    bar.value = value;
    bar.textContent = `${value}%`;
    if (text) {
      text.textContent = `${value}%`;
    }
  }

  /**
   * GET ``url`` every ``interval`` ms and hand each answer to ``onData``, which returns true once
   * the work has finished (polling stops). A failed request is tried again at twice the interval;
   * after ten in a row ``onGiveUp`` is called and polling stops.
   */
  function poll({ url, interval, onData, onGiveUp }) {
    let failures = 0;

    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
        .then((response) => {
          if (!response.ok) {
            throw new Error(`HTTP ${response.status}`);
          }
          return response.json();
        })
        .then((data) => {
          failures = 0;
          if (!onData(data)) {
            window.setTimeout(tick, interval);
          }
        })
        .catch(() => {
          failures += 1;
          if (failures >= MAX_FAILURES) {
            onGiveUp();
            return;
          }
          window.setTimeout(tick, interval * 2);
        });
    }

    tick();
  }

  window.SpillwayProgress = Object.freeze({ clampPercent, setBar, poll });
})();
