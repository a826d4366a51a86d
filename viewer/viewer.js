// ichseg results viewer. Plain browser JavaScript (no build step, no libraries).
//
// Data: GET /v1/scans/{job} gives presigned links: report.json, and per slice its plain windowed
// frame (JPEG) and mask (0/255 PNG). The outline is drawn here, from the mask, so it can be turned
// off or faded. Images come from S3 without CORS, so the canvas may be "tainted": nothing here
// reads pixels back; the outline is made with canvas compositing (dilate by shifted copies, XOR
// with the mask, tint), which works on any image.
"use strict";

(function () {
  const OUTLINE_RGB = "rgb(255, 40, 40)"; // ichseg.render.HEMORRHAGE_RGB, as in overlay.mp4
  const FILL_SHARE = 0.35; // the fill is fainter than the outline, as in overlay.mp4
  const PRELOAD_IN_FLIGHT = 6; // a browser's connections per host over HTTP/1.1
  const ZOOM_STEP = 1.25;
  const MAX_ZOOM = 16;

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const jobId = params.get("job") || "";
  // The API, the only server the token is ever sent to: config.js names it ("" there: the origin
  // that serves /viewer/, as the local stack's front does). A link cannot choose another one.
  const api = configuredApi(params.get("api"));
  const apiBase = api.base;

  const state = {
    slices: [], // [{id, probability, area_px, area_mm2, frame: Image, mask: Image, ready: bool}]
    index: 0,
    overlay: true,
    opacity: 1,
    playing: null, // interval id while playing
    zoom: 1,
    panX: 0,
    panY: 0,
    expiresAt: null,
  };

  // {base: the API's base URL without a trailing slash} or {error: why this page calls no API}.
  // A link's ?api= naming another origin is refused, never used: whoever crafts a link must not get
  // the user's token (or show them a fake result). Naming the configured API itself is accepted,
  // which keeps links that carry ?api=<ApiUrl> working.
  function configuredApi(asked) {
    const config = window.ICHSEG_VIEWER_CONFIG;
    if (!config || typeof config.api !== "string") {
      return { error: "This viewer is not configured: config.js names no API." };
    }
    let base;
    try {
      base = new URL(config.api || "..", location.href);
    } catch (error) {
      return { error: `This viewer is misconfigured: config.js's API (${config.api}) is not a URL.` };
    }
    // The token must not cross the network in clear text to another host.
    if (base.origin !== location.origin && base.protocol !== "https:") {
      return { error: `This viewer is misconfigured: its API (${base.origin}) is not HTTPS.` };
    }
    if (asked !== null) {
      let origin = null;
      try {
        origin = new URL(asked).origin;
      } catch (error) {
        origin = null;
      }
      if (origin !== base.origin) {
        return {
          error:
            `Refused: this link asks the viewer to use another API (${asked}). The viewer only ` +
            `calls its own API (${base.origin}), the only server it sends your sign-in to; ` +
            "open the scan from the app instead.",
        };
      }
    }
    return { base: base.href.replace(/\/+$/, "") };
  }

  function tokenFromFragment() {
    const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
    const token = fragment.get("token");
    if (token) {
      // Out of the address bar, the history and any screenshot of the page.
      history.replaceState(null, "", location.pathname + location.search);
    }
    return token;
  }

  function say(text, isError) {
    const message = $("message");
    message.textContent = text;
    message.className = isError ? "error" : "";
  }

  async function start(token) {
    if (!/^[0-9a-z-]{8,64}$/.test(jobId)) {
      say("No job in the link: open the viewer as /viewer/?job=<job id>.", true);
      return;
    }
    say("Loading the scan ...");
    let response;
    try {
      response = await fetch(`${apiBase}/v1/scans/${encodeURIComponent(jobId)}`, {
        headers: { Authorization: `Bearer ${token}` },
        cache: "no-store",
      });
    } catch (error) {
      say(`The API cannot be reached (${error.message}).`, true);
      return;
    }
    if (response.status === 401 || response.status === 403) {
      say("The sign-in has expired or is not valid: sign in again.", true);
      showSignin();
      return;
    }
    if (response.status === 404) {
      say("No such scan for this account.", true);
      return;
    }
    if (!response.ok) {
      say(`The API answered ${response.status}.`, true);
      return;
    }
    const status = await response.json();
    if (status.state === "FAILED") {
      // A FAILED job never becomes DONE: say why, and what to do instead of reloading.
      const reason = status.error ? `: ${status.error.reason}` : "";
      say(`The scan FAILED${reason}. Upload it again once the cause is fixed, or give ops the job id ${jobId}.`, true);
      return;
    }
    if (status.state !== "DONE") {
      say(`The scan is ${status.state}. Reload when it is DONE.`, false);
      return;
    }
    if (!status.slices || !status.results || !status.results.report) {
      say("This scan's results have no viewer data (processed before the viewer existed).", true);
      return;
    }
    const report = await (await fetch(status.results.report, { cache: "no-store" })).json();
    state.expiresAt = Date.now() + 1000 * (status.results_expire_in || 0);
    show(report, status.slices);
  }

  function showSignin() {
    const form = $("signin");
    form.hidden = false;
    form.addEventListener(
      "submit",
      (event) => {
        event.preventDefault();
        form.hidden = true;
        start($("token-input").value.trim());
      },
      { once: true },
    );
  }

  // ------------------------------------------------------------------ the page, once data is here

  function show(report, links) {
    const byId = new Map(links.map((link) => [link.id, link]));
    state.slices = report.slices.map((slice) => ({ ...slice, link: byId.get(slice.id), frame: null, mask: null }));
    if (state.slices.some((slice) => !slice.link)) {
      say("The report and the slice links disagree; reload the page.", true);
      return;
    }
    say("");
    $("viewer").hidden = false;
    showFacts(report);
    drawChart(report);
    const slider = $("slider");
    slider.max = String(state.slices.length - 1);
    bindControls();
    // Open on the most likely slice: what the radiologist wants to see first.
    const best = state.slices.reduce((b, s, i) => (s.probability > state.slices[b].probability ? i : b), 0);
    goTo(best);
    preload(best);
  }

  function showFacts(report) {
    $("finding").textContent = report.finding;
    $("finding").className = report.finding === "Normal" ? "normal" : "positive";
    $("probability").textContent = report.hemorrhage_probability.toFixed(2);
    $("positive").textContent = `${report.slices_with_hemorrhage.length} of ${report.slices.length}`;
    $("volume").textContent =
      report.volume_ml === null || report.volume_ml === undefined ? "not known (no voxel size)" : `${report.volume_ml.toFixed(1)} mL`;
    $("volume-note-row").hidden = !report.volume_note;
    $("volume-note").textContent = report.volume_note || "";
    // Where the scan head's finding and the slice head's flags disagree, the report says which slices to read.
    $("finding-note-row").hidden = !report.finding_note;
    $("finding-note").textContent = report.finding_note || "";
    const warnings = report.warnings || [];
    $("warnings").replaceChildren(
      ...warnings.map((warning) => {
        const item = document.createElement("li");
        item.dataset.code = warning.code;
        item.textContent = warning.message;
        return item;
      })
    );
    $("warnings").hidden = !warnings.length;
    $("model").textContent =
      `${report.model.name} ${report.model.version}` +
      (report.scan_model ? `, read as a scan by ${report.scan_model.name} ${report.scan_model.version}` : "");
    const t = report.thresholds;
    $("thresholds").textContent = `scan ${t.scan}, slice ${t.slice}, pixel ${t.pixel}`;
    const body = $("subtypes").tBodies[0];
    body.replaceChildren();
    const subtypes = Object.entries(report.subtypes || {}).sort((a, b) => b[1] - a[1]);
    for (const [name, probability] of subtypes) {
      const row = body.insertRow();
      row.insertCell().textContent = name;
      row.insertCell().textContent = probability.toFixed(2);
    }
    if (!subtypes.length) body.insertRow().insertCell().textContent = "not given by this model";
    showSeries(report.series);
    showSpacing(report.spacing_profile);
    $("report-disclaimer").textContent = report.disclaimer || "";
    $("expiry").textContent = state.expiresAt ? `at ${new Date(state.expiresAt).toLocaleTimeString()}` : "soon";
  }

  // Millimetres as reports give them: 4 -> "4.0", 5.5 -> "5.5", 0.625 -> "0.63".
  function mm(value) {
    return `${value.toFixed(2).replace(/0$/, "")} mm`;
  }

  // "Series 2 · H30s · 5.5 mm · 12 images": by number, never by description (free text that may
  // name the patient; the report carries none).
  function seriesLine(series) {
    const numbered = series.series_number !== null && series.series_number !== undefined;
    const parts = [numbered ? `Series ${series.series_number}` : "Unnumbered series"];
    if (series.kernel) parts.push(series.kernel);
    if (typeof series.thickness_mm === "number") parts.push(mm(series.thickness_mm));
    parts.push(`${series.images} image${series.images === 1 ? "" : "s"}`);
    return parts.join(" · ");
  }

  // DICOM uploads: the series segmented, then the ones skipped with the reason each lost.
  function showSeries(series) {
    const block = $("series-block");
    block.hidden = !series;
    if (!series) return;
    const chosen = $("series-chosen");
    chosen.textContent = `${seriesLine(series.chosen)} (segmented)`;
    chosen.title = `SeriesInstanceUID ${series.chosen.series_instance_uid}`;
    const skipped = series.skipped || [];
    const details = $("series-skipped");
    details.hidden = !skipped.length;
    // A few are listed open; a long list (a whole study's reconstructions) stays folded.
    details.open = skipped.length > 0 && skipped.length <= 3;
    $("series-skipped-summary").textContent = `${skipped.length} other series skipped`;
    const list = $("series-skipped-list");
    list.replaceChildren();
    for (const entry of skipped) {
      const item = document.createElement("li");
      item.dataset.reason = entry.reason;
      item.title = `SeriesInstanceUID ${entry.series_instance_uid}`;
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = entry.detail || entry.reason;
      item.append(document.createTextNode(seriesLine(entry)), reason);
      list.appendChild(item);
    }
    const others = series.non_image_objects || 0;
    const nonImage = $("series-non-image");
    nonImage.hidden = others <= 0;
    nonImage.textContent = `${others} non-image object${others === 1 ? "" : "s"} (directory files, dose reports...) skipped.`;
  }

  // Runs of slices sharing one extent, numbered as the slider numbers them (1..n); the report's
  // slice ids are in each run's tooltip.
  function showSpacing(profile) {
    const block = $("spacing-block");
    block.hidden = !profile || !profile.length;
    const list = $("spacing-runs");
    list.replaceChildren();
    if (block.hidden) return;
    const position = new Map(state.slices.map((slice, index) => [slice.id, index + 1]));
    for (const run of profile) {
      const first = position.get(run.first) ?? run.first;
      const last = position.get(run.last) ?? run.last;
      const item = document.createElement("li");
      item.dataset.extent = String(run.extent_mm);
      item.title = `slice ids ${run.first}–${run.last}`;
      const where = run.count === 1 ? `Slice ${first}` : `Slices ${first}–${last}`;
      item.textContent = `${where}: ${mm(run.extent_mm)} (${run.count} slice${run.count === 1 ? "" : "s"})`;
      list.appendChild(item);
    }
  }

  function drawChart(report) {
    const svg = $("chart");
    const ns = "http://www.w3.org/2000/svg";
    const n = state.slices.length;
    const width = Math.max(n, 1) * 10;
    const height = 100;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.replaceChildren();
    state.slices.forEach((slice, index) => {
      // A full-height hit area per slice, so a slice with probability 0 can be clicked too.
      const hit = document.createElementNS(ns, "rect");
      Object.entries({ x: index * 10, y: 0, width: 10, height, class: "hit", "data-index": index }).forEach(([k, v]) =>
        hit.setAttribute(k, String(v)),
      );
      const bar = document.createElementNS(ns, "rect");
      const h = Math.max(1, slice.probability * height);
      Object.entries({
        x: index * 10 + 1,
        y: height - h,
        width: 8,
        height: h,
        class: slice.hemorrhage ? "bar positive" : "bar",
        "data-index": index,
      }).forEach(([k, v]) => bar.setAttribute(k, String(v)));
      const title = document.createElementNS(ns, "title");
      title.textContent = `slice ${index + 1}: ${slice.probability.toFixed(2)}`;
      hit.appendChild(title);
      svg.append(hit, bar);
    });
    const y = height - report.thresholds.slice * height;
    const line = document.createElementNS(ns, "line");
    Object.entries({ x1: 0, x2: width, y1: y, y2: y, class: "threshold" }).forEach(([k, v]) => line.setAttribute(k, String(v)));
    svg.appendChild(line);
    const cursor = document.createElementNS(ns, "rect");
    Object.entries({ id: "chart-cursor", x: 0, y: 0, width: 10, height, class: "cursor" }).forEach(([k, v]) =>
      cursor.setAttribute(k, String(v)),
    );
    svg.appendChild(cursor);
    svg.addEventListener("click", (event) => {
      const index = event.target.getAttribute && event.target.getAttribute("data-index");
      if (index !== null && index !== undefined) goTo(Number(index));
    });
  }

  // ------------------------------------------------------------------ images

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.decoding = "async";
      image.onload = () => resolve(image);
      image.onerror = () => reject(new Error("an image did not load (expired link?)"));
      image.src = url;
    });
  }

  function load(index) {
    const slice = state.slices[index];
    if (!slice.loading) {
      slice.loading = Promise.all([loadImage(slice.link.frame), loadImage(slice.link.mask)]).then(([frame, mask]) => {
        slice.frame = frame;
        slice.mask = mask;
        if (index === state.index) draw();
      });
      slice.loading.catch((error) => say(`${error.message} Reload the page for fresh links.`, true));
    }
    return slice.loading;
  }

  // Every slice, nearest to the first shown first, a few at a time: the first slice appears
  // after two small requests, and stepping through the scan soon needs no network.
  async function preload(from) {
    const order = state.slices.map((_, i) => i).sort((a, b) => Math.abs(a - from) - Math.abs(b - from));
    const workers = Array.from({ length: PRELOAD_IN_FLIGHT }, async () => {
      while (order.length) {
        await load(order.shift()).catch(() => undefined);
      }
    });
    await Promise.all(workers);
  }

  // ------------------------------------------------------------------ drawing

  const scratch = { ring: document.createElement("canvas"), red: document.createElement("canvas"), cut: document.createElement("canvas") };

  function sized(canvas, w, h) {
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    const ctx = canvas.getContext("2d");
    ctx.globalCompositeOperation = "source-over";
    ctx.globalAlpha = 1;
    return ctx;
  }

  // White-on-black shape -> drawn onto ctx in the outline colour with this alpha, without reading
  // pixels: multiply by (colour where the shape is, white elsewhere) to take out the other
  // channels, then add the colour.
  function tint(ctx, shape, alpha) {
    const w = shape.width;
    const h = shape.height;
    const red = sized(scratch.red, w, h);
    red.drawImage(shape, 0, 0);
    red.globalCompositeOperation = "multiply";
    red.fillStyle = OUTLINE_RGB;
    red.fillRect(0, 0, w, h);
    const cut = sized(scratch.cut, w, h);
    cut.fillStyle = "white";
    cut.fillRect(0, 0, w, h);
    cut.globalCompositeOperation = "difference";
    cut.drawImage(shape, 0, 0); // black where the shape is
    cut.globalCompositeOperation = "lighter";
    cut.drawImage(scratch.red, 0, 0); // the colour where the shape is
    ctx.save();
    ctx.globalAlpha = alpha;
    ctx.globalCompositeOperation = "multiply";
    ctx.drawImage(scratch.cut, 0, 0);
    ctx.globalCompositeOperation = "lighter";
    ctx.drawImage(scratch.red, 0, 0);
    ctx.restore();
  }

  function ringOf(mask) {
    const w = mask.naturalWidth;
    const h = mask.naturalHeight;
    const ring = sized(scratch.ring, w, h);
    ring.fillStyle = "black";
    ring.fillRect(0, 0, w, h);
    ring.globalCompositeOperation = "lighten"; // max: the mask dilated by one pixel
    for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) ring.drawImage(mask, dx, dy);
    ring.globalCompositeOperation = "difference"; // minus the mask itself: its outer edge
    ring.drawImage(mask, 0, 0);
    return scratch.ring;
  }

  function draw() {
    const slice = state.slices[state.index];
    const canvas = $("slice");
    if (!slice || !slice.frame) return;
    const w = slice.frame.naturalWidth;
    const h = slice.frame.naturalHeight;
    const ctx = sized(canvas, w, h);
    ctx.drawImage(slice.frame, 0, 0);
    const outlined = state.overlay && state.opacity > 0 && slice.area_px > 0;
    if (outlined) {
      const shape = sized(document.createElement("canvas"), w, h).canvas;
      shape.getContext("2d").drawImage(slice.mask, 0, 0);
      tint(ctx, shape, state.opacity * FILL_SHARE);
      tint(ctx, ringOf(slice.mask), state.opacity);
    }
    canvas.dataset.slice = String(state.index);
    canvas.dataset.drawn = outlined ? "outlined" : "plain";
  }

  // ------------------------------------------------------------------ navigation and controls

  function goTo(index) {
    const n = state.slices.length;
    state.index = ((index % n) + n) % n;
    const slice = state.slices[state.index];
    $("slider").value = String(state.index);
    $("slice-label").textContent = `Slice ${state.index + 1} / ${n}`;
    $("slice-probability").textContent = slice.probability.toFixed(2) + (slice.hemorrhage ? " (hemorrhage)" : "");
    $("slice-area").textContent =
      slice.area_mm2 !== null && slice.area_mm2 !== undefined ? `${slice.area_mm2.toFixed(0)} mm²` : `${slice.area_px} px`;
    $("slice-note-row").hidden = !slice.outline_note;
    $("slice-note").textContent = slice.outline_note || "";
    const extent = typeof slice.extent_mm === "number" ? slice.extent_mm : null;
    $("slice-extent-row").hidden = extent === null;
    $("slice-extent").textContent = extent === null ? "" : mm(extent);
    $("chart-cursor").setAttribute("x", String(state.index * 10));
    if (slice.frame) draw();
    else load(state.index);
  }

  function setPlaying(on) {
    if (state.playing !== null) clearInterval(state.playing);
    state.playing = on ? setInterval(() => goTo(state.index + 1), 1000 / Number($("speed").value)) : null;
    $("play").textContent = on ? "Pause" : "Play";
    $("play").setAttribute("aria-pressed", String(on));
  }

  function applyZoom() {
    const canvas = $("slice");
    canvas.style.transform = `translate(${state.panX}px, ${state.panY}px) scale(${state.zoom})`;
    canvas.dataset.zoom = state.zoom.toFixed(3);
  }

  function zoomBy(factor) {
    state.zoom = Math.min(MAX_ZOOM, Math.max(1, state.zoom * factor));
    if (state.zoom === 1) state.panX = state.panY = 0;
    applyZoom();
  }

  function bindControls() {
    $("prev").addEventListener("click", () => goTo(state.index - 1));
    $("next").addEventListener("click", () => goTo(state.index + 1));
    $("play").addEventListener("click", () => setPlaying(state.playing === null));
    $("speed").addEventListener("change", () => state.playing !== null && setPlaying(true));
    $("slider").addEventListener("input", (event) => goTo(Number(event.target.value)));
    $("overlay").addEventListener("change", (event) => {
      state.overlay = event.target.checked;
      $("slice").dataset.overlay = state.overlay ? "on" : "off";
      draw();
    });
    $("opacity").addEventListener("input", (event) => {
      state.opacity = Number(event.target.value) / 100;
      draw();
    });
    $("zoom-in").addEventListener("click", () => zoomBy(ZOOM_STEP));
    $("zoom-out").addEventListener("click", () => zoomBy(1 / ZOOM_STEP));
    $("zoom-reset").addEventListener("click", () => zoomBy(0));
    document.addEventListener("keydown", (event) => {
      // A focused slider already moves with the arrows (and fires "input"); typing in a field is not navigation.
      const tag = event.target.tagName;
      if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
      // Space on a focused button is that button's click; toggling play here as well would undo it.
      if (tag === "BUTTON" && event.key === " ") return;
      const keys = {
        ArrowLeft: () => goTo(state.index - 1),
        ArrowRight: () => goTo(state.index + 1),
        ArrowUp: () => goTo(state.index - 1),
        ArrowDown: () => goTo(state.index + 1),
        " ": () => setPlaying(state.playing === null),
        "+": () => zoomBy(ZOOM_STEP),
        "-": () => zoomBy(1 / ZOOM_STEP),
        0: () => zoomBy(0),
      };
      const action = keys[event.key];
      if (action) {
        event.preventDefault();
        action();
      }
    });
    const box = $("frame-box");
    box.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        zoomBy(event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP);
      },
      { passive: false },
    );
    let drag = null;
    box.addEventListener("pointerdown", (event) => {
      drag = { x: event.clientX - state.panX, y: event.clientY - state.panY };
      box.setPointerCapture(event.pointerId);
    });
    box.addEventListener("pointermove", (event) => {
      if (!drag || state.zoom === 1) return;
      state.panX = event.clientX - drag.x;
      state.panY = event.clientY - drag.y;
      applyZoom();
    });
    box.addEventListener("pointerup", () => (drag = null));
    applyZoom();
  }

  // ------------------------------------------------------------------ start

  const token = tokenFromFragment(); // read (and dropped from the address bar) even when refused below
  if (api.error) say(api.error, true);
  else if (token) start(token);
  else {
    say("Sign in: paste the app's ID token (links from the app carry it in #token=...).");
    showSignin();
  }
})();
