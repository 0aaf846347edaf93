// Live rollout progress (edgefleet.cloud.dashboard.live): polls the deployment's progress as JSON while it
// is open and writes it into the page with textContent only. No library, no markup from the server.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  const source = live.dataset.src;
  const text = (element, value) => { if (element && element.textContent !== value) element.textContent = value; };
  const counts = (c) => Object.keys(c).map((state) => state + " " + c[state]).join(", ");

  function apply(p) {
    text(document.querySelector("#summary .state"), p.state);
    text(document.querySelector("#summary .approved"), p.approved ? " (approved)" : "");
    text(document.querySelector("#summary .wave"), String(p.current_wave));
    text(document.querySelector("#summary .reason"), p.reason ? " · " + p.reason : "");
    for (const w of p.waves) {
      const row = document.getElementById("wave-" + w.wave);
      if (!row) continue;
      text(row.querySelector(".status"), w.status);
      text(row.querySelector(".counts"), counts(w.counts));
      text(row.querySelector(".finished"), w.finished + " of " + w.size);
      const bar = row.querySelector("progress");
      if (bar) { bar.max = w.size; bar.value = w.finished; }
    }
    const rows = new Map();
    for (const row of document.querySelectorAll("#rollout-devices tr[data-device]")) rows.set(row.dataset.device, row);
    for (const d of p.devices) {
      const row = rows.get(d.device);
      if (!row) continue;
      text(row.querySelector(".state"), d.state);
      text(row.querySelector(".reason"), d.reason);
    }
    for (const [name, shown] of Object.entries(p.actions)) {
      const form = document.querySelector("form." + name);
      if (form) form.hidden = !shown;
    }
  }

  let polls = 0;
  async function poll() {
    let p;
    try {
      const answer = await fetch(source, {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (!answer.ok || !(answer.headers.get("content-type") || "").startsWith("application/json")) {
        text(live, "live updates stopped (" + answer.status + "): reload the page");
        return;
      }
      p = await answer.json();
    } catch (err) {
      text(live, "live updates paused: the cloud did not answer; retrying");
      setTimeout(poll, 5000);
      return;
    }
    apply(p);
    polls += 1;
    live.dataset.polls = String(polls);
    text(live, p.open ? "live · updated " + new Date().toLocaleTimeString() : "finished: " + p.state);
    if (p.open) setTimeout(poll, p.poll_seconds * 1000);
  }
  poll();
})();
