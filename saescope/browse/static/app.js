// saescope browser: the only script. Pages work without it; it adds client-side sorting and
// filtering of latent tables (useful in the static export) and token selection on the prompt page.
"use strict";

function sortTable(th) {
  const table = th.closest("table");
  const col = Array.from(th.parentNode.children).indexOf(th);
  const body = table.tBodies[0];
  const desc = th.dataset.dir !== "desc";
  th.dataset.dir = desc ? "desc" : "asc";
  const key = (tr) => {
    const text = tr.children[col].dataset.v ?? tr.children[col].textContent;
    const n = parseFloat(text);
    return isNaN(n) ? text.toLowerCase() : n;
  };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0) * (desc ? -1 : 1));
  rows.forEach((r) => body.appendChild(r));
}

function filterTable(input) {
  const needle = input.value.toLowerCase();
  const table = document.getElementById(input.dataset.table);
  for (const tr of table.tBodies[0].rows) {
    tr.style.display = tr.textContent.toLowerCase().includes(needle) ? "" : "none";
  }
}

function selectToken(span) {
  document.querySelectorAll("tr.selected").forEach((tr) => tr.classList.remove("selected"));
  const row = document.getElementById("tokrow-" + span.dataset.i);
  if (row) {
    row.classList.add("selected");
    row.scrollIntoView({ block: "nearest" });
  }
}

document.addEventListener("click", (e) => {
  const th = e.target.closest("th.sortable");
  if (th) sortTable(th);
  const tok = e.target.closest(".prompt-tokens .tok");
  if (tok) selectToken(tok);
});
document.addEventListener("input", (e) => {
  if (e.target.matches("input.filter")) filterTable(e.target);
});
