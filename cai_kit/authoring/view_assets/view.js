// Filters for `cai view` pages. Every row carries data-KEY attributes holding a JSON list of values;
// a <select data-filter="KEY"> keeps the rows whose list holds its value ("!ok": any value but "ok").
// The state lives in the URL hash (#principle=harm&status=ok&q=word), so a filtered view can be linked.
(function () {
  const rows = Array.from(document.querySelectorAll(".row"));
  const selects = Array.from(document.querySelectorAll("select[data-filter]"));
  const search = document.getElementById("search");
  const count = document.getElementById("count");

  function matches(row, key, value) {
    const values = JSON.parse(row.dataset[key] || "[]");
    return value === "!ok" ? values.some((v) => v !== "ok") : values.includes(value);
  }

  function apply() {
    const wanted = selects.filter((s) => s.value !== "").map((s) => [s.dataset.filter, s.value]);
    const needle = search ? search.value.trim().toLowerCase() : "";
    let shown = 0;
    for (const row of rows) {
      const keep = wanted.every(([key, value]) => matches(row, key, value)) &&
        (!needle || row.textContent.toLowerCase().includes(needle));
      row.hidden = !keep;
      if (keep) shown += 1;
    }
    count.textContent = shown + " of " + rows.length + " rows shown";
    const params = new URLSearchParams(wanted);
    if (needle) params.set("q", needle);
    try {
      history.replaceState(null, "", params.toString() ? "#" + params.toString() : location.pathname);
    } catch (err) {
      // Some browsers refuse replaceState on file:// pages; the filter still works, only the link does not follow.
    }
  }

  function fromHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    for (const select of selects) select.value = params.get(select.dataset.filter) || "";
    if (search) search.value = params.get("q") || "";
  }

  for (const select of selects) select.addEventListener("change", apply);
  if (search) search.addEventListener("input", apply);
  window.addEventListener("hashchange", () => { fromHash(); apply(); });
  fromHash();
  apply();
})();
