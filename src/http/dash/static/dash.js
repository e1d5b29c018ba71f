// Live updates only: every page works without this file.
// The job page's log follows new fragments through server-sent events; text is added
// as text nodes, never as HTML.
(function () {
  "use strict";
  var log = document.getElementById("log");
  if (!log || !window.EventSource) { return; }
  var url = log.getAttribute("data-follow") + "?start_fragment=" + encodeURIComponent(log.getAttribute("data-next") || "0");
  var source = new EventSource(url);
  source.addEventListener("fragment", function (event) {
    var fragment = JSON.parse(event.data);
    log.appendChild(document.createTextNode(fragment.text));
  });
  source.addEventListener("end", function () { source.close(); });
  source.onerror = function () { source.close(); };
})();
