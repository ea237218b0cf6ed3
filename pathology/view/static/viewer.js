// pathology view: one slide in OpenSeadragon with its overlays, all in level-0 pixels.
//
// The slide's JSON (/api/slides/<id>) gives its size, µm/px, calls, score layers (a picture
// laid over the whole slide, its colour bar and the boxes at both ends), tissue outline and
// shapes; for IHC the nuclei by class (a second tiled image on the slide's own DeepZoom grid), the
// scored ROI and the Ki-67 hotspot. Viewport units are level-0 pixels / slide width, whatever
// picture the tiles come from.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const state = { ready: false, layer: -1, layerImage: null, selected: null, shapes: {}, nuclei: null,
                  nucleiWanted: false };
  window.viewerState = state;   // read by the tests and handy in the browser console

  function element(tag, attrs, text) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function note(text, cls) {
    $("notes").appendChild(element("div", cls ? { class: cls } : {}, text));
  }

  fetch(config.info)
    .then((r) => (r.ok ? r.json() : r.text().then((t) => Promise.reject(new Error(t.trim())))))
    .then(start)
    .catch((err) => note(String(err.message || err), "error"));

  function start(info) {
    const W = info.dimensions[0];
    info.calls.forEach((c) => {
      const line = element("div");
      line.appendChild(element("b", {}, c.name + ": "));
      line.appendChild(element("span", c.tone ? { class: c.tone } : {}, c.text));
      $("calls").appendChild(line);
    });
    if (info.message) note(info.message, "error");
    info.notes.forEach((n) => note(n));
    if (info.ihc) ihcSummary(info.ihc);

    const viewer = OpenSeadragon({
      element: $("osd"), prefixUrl: config.static + "openseadragon/images/", tileSources: config.dzi,
      drawer: "canvas", showNavigator: true, navigatorPosition: "TOP_RIGHT", maxZoomPixelRatio: 4,
      visibilityRatio: 0.3, showRotationControl: false, timeout: 60000,
    });
    state.viewer = viewer;
    state.width = W;
    const canvas = element("canvas", { id: "vectors" });
    const scalebar = element("div", { id: "scalebar" });
    scalebar.appendChild(element("div", { class: "line" }));
    scalebar.appendChild(element("div", { class: "text" }));
    viewer.addHandler("open", () => {
      viewer.canvas.appendChild(canvas);
      viewer.addControl(scalebar, { anchor: OpenSeadragon.ControlAnchor.BOTTOM_LEFT });
      state.ready = true;
      // an IHC slide opens on its nuclei; the tile scores are one pick away
      showLayer(info.layers.length && !info.nuclei ? 0 : -1);
      select.value = String(state.layer);
      if (info.nuclei) showNuclei($("show-nuclei").checked);
    });
    viewer.addHandler("open-failed", (e) => note("cannot open the slide's tiles: " + e.message, "error"));
    viewer.addHandler("update-viewport", redraw);
    viewer.addHandler("resize", redraw);

    // level-0 pixel -> viewer pixel: x * s + ox (no rotation)
    function transform() {
      const o = viewer.viewport.pixelFromPoint(new OpenSeadragon.Point(0, 0), true);
      const one = viewer.viewport.pixelFromPoint(new OpenSeadragon.Point(1, 0), true);
      return { s: (one.x - o.x) / W, ox: o.x, oy: o.y };
    }

    // -- score layers ---------------------------------------------------------------------------
    const select = $("layer");
    select.appendChild(element("option", { value: "-1" }, "none"));
    info.layers.forEach((l, i) => {
      const label = l.group === "attention" ? l.name + " attention" : l.name;
      select.appendChild(element("option", { value: String(i) }, label));
    });
    if (info.layers.length || info.tissue.length || info.shapes.length || info.roi) $("controls").hidden = false;
    if (info.roi) {
      $("roi-row").hidden = false;
      $("show-tissue").checked = false;     // the ROI is what was scored
      $("show-roi").addEventListener("change", redraw);
    }
    select.addEventListener("change", () => showLayer(Number(select.value)));
    $("opacity").addEventListener("input", redraw);
    $("show-tissue").addEventListener("change", redraw);
    $("show-boxes").addEventListener("change", redraw);
    const opacity = () => Number($("opacity").value) / 100;

    const SCALE_NAMES = { percentile: "linear, p1–p99 of the slide", rank: "rank within the slide" };
    $("scale").addEventListener("change", () => {
      state.scale = $("scale").value;
      showLayer(state.layer);
    });

    function showLayer(i) {
      state.layer = i;
      state.layerImage = null;
      state.selected = null;
      const layer = info.layers[i];
      const scale = layer && (layer.scales.find((s) => s.name === state.scale) || layer.scales[0]);
      $("scale-row").hidden = !layer || layer.scales.length < 2;
      $("show-boxes").parentElement.hidden = !layer;     // the boxes are a layer's
      if (layer) {
        $("scale").replaceChildren(...layer.scales.map((s) => element("option", { value: s.name },
                                                                      SCALE_NAMES[s.name] || s.name)));
        $("scale").value = scale.name;
      }
      colourBar(layer, scale);
      extremes(layer);
      redraw();
      if (!layer) return;
      const image = new Image();
      image.onload = () => {
        if (state.layer !== i || state.shown !== scale.picture) return;
        state.layerImage = image;
        redraw();
      };
      image.onerror = () => note("cannot load the " + layer.name + " overlay", "error");
      state.shown = scale.picture;
      image.src = scale.picture;
    }

    function colourBar(layer, scale) {
      const bar = $("colourbar");
      bar.hidden = !layer;
      if (!layer) return;
      bar.querySelector(".bar").style.background = "linear-gradient(to right, " + layer.colours.join(", ") + ")";
      const ticks = bar.querySelector(".ticks");
      ticks.replaceChildren(...scale.ticks.map(([pos, text]) => {
        const t = element("span", {}, text);
        t.style.left = pos * 100 + "%";
        return t;
      }));
      bar.querySelector(".label").textContent = scale.label;
    }

    function extremes(layer) {
      const box = $("extremes");
      box.replaceChildren();
      if (!layer) return;
      [["top", layer.ends[0], "#e53935"], ["bottom", layer.ends[1], "#1e88e5"]].forEach(([key, title, colour]) => {
        const h = element("h2");
        const sw = element("span", { class: "swatch" });
        sw.style.borderColor = colour;
        h.append(sw, title);
        const list = element("ol");
        layer[key].forEach((b) => {
          const li = element("li", {}, `#${b.rank} · ${fmt(b.value)} · (${b.x}, ${b.y})`);
          li.addEventListener("click", () => jump(b, li));
          b.item = li;
          list.appendChild(li);
        });
        box.append(h, list);
      });
    }

    function fmt(v) {
      if (v !== 0 && Math.abs(v) < 1e-3) return v.toExponential(2);
      return Math.abs(v) >= 100 ? v.toFixed(0) : Number(v.toPrecision(3)).toString();
    }

    function jump(b, li) {
      document.querySelectorAll("#extremes li.selected").forEach((e) => e.classList.remove("selected"));
      if (li) li.classList.add("selected");
      state.selected = b;
      // the box and two of its sides of context around it
      fit(b.x - b.w, b.y - b.h, 3 * b.w, 3 * b.h);
    }

    function fit(x, y, w, h) {   // level-0 pixels
      viewer.viewport.fitBounds(new OpenSeadragon.Rect(x / W, y / W, w / W, h / W));
      redraw();
    }

    viewer.addHandler("canvas-click", (e) => {
      const layer = info.layers[state.layer];
      if (!e.quick || !layer || !$("show-boxes").checked) return;
      const t = transform();
      const x = (e.position.x - t.ox) / t.s, y = (e.position.y - t.oy) / t.s;
      const hit = layer.top.concat(layer.bottom).find((b) => x >= b.x && x < b.x + b.w && y >= b.y && y < b.y + b.h);
      if (hit) {
        e.preventDefaultAction = true;
        jump(hit, hit.item);
      }
    });

    // -- nuclei by class (IHC): transparent PNG tiles on the slide's grid, drawn by OpenSeadragon ----------
    if (info.nuclei) nucleiPanel(info.nuclei);

    function nucleiPanel(nuclei) {
      const box = $("nuclei");
      const label = element("label", { class: "row" });
      const toggle = element("input", { type: "checkbox", id: "show-nuclei", checked: "" });
      label.append(toggle, "nuclei by class");
      box.appendChild(label);
      nuclei.classes.forEach((c) => {
        const line = element("div", { class: "legend" });
        const dot = element("span", { class: "dot" });
        dot.style.background = c.colour;
        line.append(dot, `${c.name}: ${c.count === null || c.count === undefined ? "?" : c.count}`);
        box.appendChild(line);
      });
      box.appendChild(element("div", { class: "help" }, "Zoomed out, a pixel shows the mix of the nuclei in it."));
      toggle.addEventListener("change", () => showNuclei(toggle.checked));
    }

    function showNuclei(on) {
      state.nucleiWanted = on;
      if (state.nuclei) {
        viewer.world.removeItem(state.nuclei);
        state.nuclei = null;
      }
      if (!on) return;
      const failed = (message) => {
        state.nucleiWanted = false;
        $("show-nuclei").checked = false;
        note("no nuclei overlay: " + message, "error");
      };
      // the descriptor first: a cells table the server cannot read says why
      fetch(info.nuclei.dzi)
        .then((r) => (r.ok ? null : r.text().then((t) => Promise.reject(new Error(t.trim())))))
        .then(() => viewer.addTiledImage({
          tileSource: info.nuclei.dzi, x: 0, y: 0, width: 1,
          success: (e) => {
            if (state.nucleiWanted && !state.nuclei) state.nuclei = e.item;
            else viewer.world.removeItem(e.item);     // switched off (or on twice) meanwhile
          },
          error: (e) => failed(e.message),
        }))
        .catch((err) => failed(String(err.message || err)));
    }

    // -- shapes (IHC GeoJSON outputs) ------------------------------------------------------------
    info.shapes.forEach((shape) => {
      const label = element("label", { class: "row" });
      const box = element("input", { type: "checkbox" });
      box.addEventListener("change", () => {
        if (!box.checked) { delete state.shapes[shape.name]; redraw(); return; }
        fetch(shape.url).then((r) => r.json()).then((g) => { state.shapes[shape.name] = g.features || []; redraw(); })
          .catch((err) => note("cannot load " + shape.name + ": " + err, "error"));
      });
      label.append(box, shape.name);
      $("shapes").appendChild(label);
    });

    function colourOf(feature) {
      const p = feature.properties || {};
      const c = (p.classification && p.classification.color) || p.color;
      return Array.isArray(c) ? `rgb(${c[0]}, ${c[1]}, ${c[2]})` : "#ffb300";
    }

    // -- vectors on a canvas over the slide, redrawn with the viewport ------------------------------
    function redraw() {
      if (!state.ready) return;
      const dpr = window.devicePixelRatio || 1;
      const w = viewer.container.clientWidth, h = viewer.container.clientHeight;
      if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
        canvas.width = Math.round(w * dpr);
        canvas.height = Math.round(h * dpr);
        canvas.style.width = w + "px";
        canvas.style.height = h + "px";
      }
      const ctx = canvas.getContext("2d");
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      const t = transform();
      ctx.setTransform(dpr * t.s, 0, 0, dpr * t.s, dpr * t.ox, dpr * t.oy);
      const px = 1 / t.s;   // one screen pixel in level-0 pixels
      const layer = info.layers[state.layer];
      if (layer && state.layerImage) {
        // one picture pixel is a square of level-0 pixels: drawn as squares, not blurred
        const img = state.layerImage;
        ctx.imageSmoothingEnabled = false;
        ctx.globalAlpha = opacity();
        ctx.drawImage(img, 0, 0, layer.width0, layer.width0 * img.naturalHeight / img.naturalWidth);
        ctx.globalAlpha = 1;
      }
      if ($("show-tissue").checked && info.tissue.length) {
        ctx.strokeStyle = "#00c853";
        ctx.lineWidth = 2 * px;
        ctx.beginPath();
        info.tissue.forEach((ring) => path(ctx, ring));
        ctx.stroke();
      }
      if (info.roi && $("show-roi").checked) {
        ctx.strokeStyle = info.roi.colour;
        ctx.lineWidth = 3 * px;
        ctx.beginPath();
        info.roi.rings.forEach((ring) => path(ctx, ring));
        ctx.stroke();
      }
      const spot = info.ihc && info.ihc.hotspot;
      if (spot && $("show-hotspot").checked) {
        ctx.strokeStyle = spot.colour;
        ctx.lineWidth = 3 * px;
        ctx.beginPath();
        ctx.arc(spot.x, spot.y, spot.r, 0, 2 * Math.PI);
        ctx.stroke();
      }
      Object.values(state.shapes).forEach((features) => features.forEach((f) => drawFeature(ctx, f, px)));
      if (layer && $("show-boxes").checked) {
        [[layer.top, "#e53935"], [layer.bottom, "#1e88e5"]].forEach(([boxes, colour]) => {
          ctx.strokeStyle = colour;
          boxes.forEach((b) => {
            ctx.lineWidth = (b === state.selected ? 4 : 2) * px;
            ctx.strokeRect(b.x, b.y, b.w, b.h);
          });
          ctx.fillStyle = colour;
          ctx.font = `${12 * px}px system-ui, sans-serif`;
          if (layer.top[0] && layer.top[0].w / px > 24) {
            boxes.forEach((b) => ctx.fillText("#" + b.rank, b.x + 3 * px, b.y + 13 * px));
          }
        });
      }
      scaleBar(t.s);
    }

    function path(ctx, ring) {
      ring.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
    }

    function drawFeature(ctx, f, px) {
      const g = f.geometry || {};
      const colour = colourOf(f);
      ctx.strokeStyle = colour;
      ctx.fillStyle = colour;
      ctx.lineWidth = 2 * px;
      const points = g.type === "Point" ? [g.coordinates] : g.type === "MultiPoint" ? g.coordinates : null;
      if (points) {
        ctx.beginPath();
        points.forEach(([x, y]) => { ctx.moveTo(x + 3 * px, y); ctx.arc(x, y, 3 * px, 0, 2 * Math.PI); });
        ctx.fill();
        return;
      }
      const polygons = g.type === "Polygon" ? [g.coordinates] : g.type === "MultiPolygon" ? g.coordinates : [];
      ctx.beginPath();
      polygons.forEach((rings) => rings.forEach((ring) => path(ctx, ring)));
      if (g.type === "LineString") g.coordinates.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.stroke();
    }

    // -- scale bar: a round length of about 120 screen pixels --------------------------------------
    function scaleBar(s) {
      const text = scalebar.querySelector(".text");
      if (!info.mpp) { text.textContent = "no µm/px"; return; }
      const pxPerUm = s / info.mpp;
      const want = 120 / pxPerUm;
      const p = Math.pow(10, Math.floor(Math.log10(want)));
      const um = [5, 2, 1].map((m) => m * p).find((v) => v <= want) || p;
      scalebar.querySelector(".line").style.width = Math.round(um * pxPerUm) + "px";
      text.textContent = um >= 1000 ? um / 1000 + " mm" : (um >= 1 ? um : um.toPrecision(1)) + " µm";
    }

    function ihcSummary(s) {
      const box = $("ihc");
      box.appendChild(element("h2", {}, s.marker || "IHC"));
      if (s.call) box.appendChild(element("div", {}, "call: " + s.call));
      if (s.cells !== null && s.cells !== undefined) box.appendChild(element("div", {}, s.cells + " cells"));
      if (!info.nuclei) {   // otherwise the nuclei legend shows the counts
        Object.entries(s.class_counts || {}).forEach(([k, v]) => box.appendChild(element("div", {}, k + ": " + v)));
      }
      if (s.hotspot) hotspotEntry(s.hotspot);
      (s.pictures || []).forEach((p) => {
        const line = element("div");
        line.appendChild(element("a", { href: p.url, target: "_blank" }, p.name + " picture"));
        box.appendChild(line);
      });
      (s.warnings || []).forEach((w) => note(w));
      $("controls").hidden = false;
    }

    function hotspotEntry(h) {
      const label = element("label", { class: "row" });
      const toggle = element("input", { type: "checkbox", id: "show-hotspot", checked: "" });
      toggle.addEventListener("change", redraw);
      label.append(toggle, "Ki-67 hotspot");
      const entry = element("div", { id: "hotspot", class: "jump", title: "go to the hotspot" });
      const ring = element("span", { class: "swatch round" });
      ring.style.borderColor = h.colour;
      const where = h.equals_global ? " (all nuclei: = global index)" : "";
      entry.append(ring, `index ${h.index}% · ${h.positive} of ${h.cells} nuclei in ${h.area_mm2} mm²${where}`);
      // the circle and a fifth of its diameter of context around it
      entry.addEventListener("click", () => fit(h.x - 1.2 * h.r, h.y - 1.2 * h.r, 2.4 * h.r, 2.4 * h.r));
      $("ihc").append(label, entry);
    }

    // the tests wait for this: the slide and the overlay shown are drawn in full
    state.idle = () => {
      if (!state.ready || viewer.world.getItemCount() === 0) return false;
      if (state.layer >= 0 && !state.layerImage) return false;
      if (state.nucleiWanted && !state.nuclei) return false;
      for (let i = 0; i < viewer.world.getItemCount(); i++) {
        if (!viewer.world.getItemAt(i).getFullyLoaded()) return false;
      }
      const v = viewer.viewport, now = v.getCenter(true), target = v.getCenter();
      return Math.abs(v.getZoom(true) - v.getZoom()) < 1e-6 && Math.abs(now.x - target.x) < 1e-9 &&
        Math.abs(now.y - target.y) < 1e-9;
    };
  }
})();
