/* Regent — lineage graph: when the graph is larger than its frame, scroll the frame so
   "this version" starts in view (ancestors are to its left, descendants to its right).
   An enhancement only: without it the frame starts at the top-left and scrolls by hand. */
(function () {
  "use strict";

  function showFocus(frame) {
    var focus = frame.querySelector(".lineage-focus");
    if (!focus) return;
    var wider = frame.scrollWidth > frame.clientWidth;
    var taller = frame.scrollHeight > frame.clientHeight;
    if (!wider && !taller) return;
    var box = frame.getBoundingClientRect();
    var node = focus.getBoundingClientRect();
    if (wider) frame.scrollLeft += node.left + node.width / 2 - (box.left + box.width / 2);
    if (taller) frame.scrollTop += node.top + node.height / 2 - (box.top + box.height / 2);
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll(".lineage-frame"), showFocus);
  });
})();
