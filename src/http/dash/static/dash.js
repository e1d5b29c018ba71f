// Live updates and a confirmation: every page works without this file.
// The job page's cancel button asks first: one click used to cancel a running job.
(function () {
  "use strict";
  var button = document.getElementById("cancel");
  if (!button || !button.form) { return; }
  button.form.addEventListener("submit", function (event) {
    if (!window.confirm("Cancel this job? Its agent stops it at its next check.")) {
      event.preventDefault();
    }
  });
})();
// The job page's log follows new fragments through server-sent events; text is added
// as text nodes, never as HTML. A stream the server ends unfinished (its time limit, a
// restart) or that breaks is opened again from the next fragment number, after a pause
// that doubles up to a minute while it keeps failing; it stops once the job finished.
(function () {
  "use strict";
  var log = document.getElementById("log");
  if (!log || !window.EventSource) { return; }
  var base = log.getAttribute("data-follow");
  var next = Number(log.getAttribute("data-next") || "0");
  var pause = 1000;
  function follow() {
    var source = new EventSource(base + "?start_fragment=" + encodeURIComponent(String(next)));
    function again() {
      source.close();
      window.setTimeout(follow, pause);
      pause = Math.min(pause * 2, 60000);
    }
    source.addEventListener("open", function () { pause = 1000; });
    source.addEventListener("fragment", function (event) {
      var fragment = JSON.parse(event.data);
      log.appendChild(document.createTextNode(fragment.text));
      next = Math.max(next, fragment.last_fragment_number + 1);
    });
    source.addEventListener("end", function (event) {
      var end = JSON.parse(event.data);
      if (end.finished) { source.close(); return; }
      if (typeof end.next_fragment === "number") { next = Math.max(next, end.next_fragment); }
      pause = 1000;
      again();
    });
    source.onerror = again;
  }
  follow();
})();
