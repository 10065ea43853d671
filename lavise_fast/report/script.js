(function () {
  "use strict";
  var box = document.getElementById("cards");
  var cards = Array.prototype.slice.call(box.querySelectorAll("article.card"));
  var search = document.getElementById("search");
  var sort = document.getElementById("sort");
  var shown = document.getElementById("shown");
  function number(card, key) {
    var v = parseFloat(card.getAttribute("data-" + key));
    return isNaN(v) ? -Infinity : v;
  }
  function matches(card, term) {
    if (/^#?[0-9]+$/.test(term) && card.getAttribute("data-filter") === term.replace("#", "")) {
      return true;
    }
    return card.getAttribute("data-words").indexOf(term) >= 0;
  }
  function filter() {
    var terms = search.value.toLowerCase().split(/\s+/).filter(function (t) { return t.length > 0; });
    var count = 0;
    cards.forEach(function (card) {
      var visible = terms.every(function (term) { return matches(card, term); });
      card.hidden = !visible;
      if (visible) { count += 1; }
    });
    shown.textContent = count + " of " + cards.length + " filters shown";
  }
  function order() {
    var key = sort.value;
    var sorted = cards.slice().sort(function (a, b) {
      if (key !== "filter") {
        var x = number(a, key), y = number(b, key);
        if (x > y) { return -1; }
        if (x < y) { return 1; }
      }
      return number(a, "filter") - number(b, "filter");
    });
    var fragment = document.createDocumentFragment();
    sorted.forEach(function (card) { fragment.appendChild(card); });
    box.appendChild(fragment);
  }
  search.addEventListener("input", filter);
  sort.addEventListener("change", order);
  Array.prototype.forEach.call(document.querySelectorAll(".bar-row"), function (row) {
    row.addEventListener("click", function () {
      search.value = row.getAttribute("data-word");
      filter();
      document.getElementById("filters").scrollIntoView();
    });
  });
  order();
  filter();
  document.body.setAttribute("data-ready", "1");
})();
