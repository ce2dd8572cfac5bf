// rankwise console: keyboard help only — every page works without it.
// "/" puts the cursor in the page's query box (as on most search pages).
document.addEventListener("keydown", (event) => {
  const box = document.getElementById("q");
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement?.tagName);
  if (event.key === "/" && box && !typing) { event.preventDefault(); box.focus(); box.select(); }
});

// Labelling: a digit presses that label's button; arrows follow the previous/next links.
document.addEventListener("keydown", (event) => {
  if (!document.querySelector(".labelling") || event.ctrlKey || event.metaKey || event.altKey) return;
  if (["INPUT", "TEXTAREA"].includes(document.activeElement?.tagName)) return;
  const target = document.querySelector(`.labelling [data-key="${CSS.escape(event.key)}"]`);
  if (target) { event.preventDefault(); target.click(); }
});
