// rankwise console: keyboard help only — every page works without it.
// "/" puts the cursor in the page's query box (as on most search pages).
document.addEventListener("keydown", (event) => {
  const box = document.getElementById("q");
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement?.tagName);
  if (event.key === "/" && box && !typing) { event.preventDefault(); box.focus(); box.select(); }
});
