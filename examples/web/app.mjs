// The page: pick a model, give it an image (a file, a drawing or a shipped test image), show what it sees,
// its top 3 classes with their calibrated probabilities, and "unsure" where the top one is below the threshold. Every input goes through preprocess.mjs; each step's failure is shown in the page
// and the next input is handled as usual.
import { classify, loadModel } from "./classifier.mjs";
import { SIZE, checkSize, toPixels } from "./preprocess.mjs";

const $ = (id) => document.getElementById(id);
const ui = {
  modelSelect: $("model-select"), modelFile: $("model-file"), modelStatus: $("model-status"),
  imageFile: $("image-file"), dropZone: $("drop-zone"), darkOnLight: $("dark-on-light"),
  sketch: $("sketch"), clear: $("clear"), samples: $("sample-list"), samplesNote: $("samples-note"),
  result: $("result"), modelInput: $("model-input"), source: $("source"), top: $("top"), error: $("error"),
  verdict: $("verdict"), minConfidence: $("min-confidence"),
};
const SAMPLES_URL = new URL("../../models/onnx/samples.json", document.baseURI);

let model = null; // the model in use; a model that fails to load leaves it in place
let lastInput = null; // re-run when the model or the dark-on-light box changes
let lastTop = null; // judged again when the threshold changes
let queue = Promise.resolve(); // one task at a time, in the order the user asked

function enqueue(task) {
  queue = queue.then(task).catch(showError);
  return queue;
}

function showError(err) {
  ui.error.textContent = `Error: ${err.message ?? err}`;
  ui.error.hidden = false;
  ui.result.dataset.errors = String(Number(ui.result.dataset.errors ?? 0) + 1);
  ui.result.dataset.state = "error";
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

// --- models -------------------------------------------------------------------------------------------

async function useModel(bytesPromise, label) {
  ui.modelStatus.textContent = `Loading ${label}…`;
  try {
    const loaded = await loadModel(await bytesPromise, label);
    model = loaded;
    clearError();
    if (lastInput) await run(lastInput);
  } finally {
    ui.modelStatus.textContent = model
      ? `Model: ${model.label} (${model.metadata.model_name ?? "?"}, ${model.classNames.length} classes; ` +
        `input ${model.inputName} uint8 [1, ${model.rows}, ${model.columns}], ${model.polarity || "polarity not stated"}; ` +
        (model.temperature === null ? "probabilities not calibrated: no temperature in the file)"
          : `probabilities calibrated with temperature ${model.temperature.toFixed(3)})`)
      : "No model loaded.";
    ui.result.dataset.model = model ? model.label : "";
  }
}

async function fetchBytes(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new Error(`${url}: cannot fetch (${err.message})`);
  }
  if (!response.ok) {
    throw new Error(`${url}: HTTP ${response.status}; serve the page with \`make web\` after ` +
                    "`make repro` (or `dvc pull` from a team's DVC remote), which writes models/onnx/");
  }
  return new Uint8Array(await response.arrayBuffer());
}

ui.modelSelect.addEventListener("change", () => {
  const option = ui.modelSelect.selectedOptions[0];
  if (option.dataset.local) return; // a file picked earlier: already loaded when it was picked
  const url = new URL(ui.modelSelect.value, document.baseURI).href;
  enqueue(() => useModel(fetchBytes(url), option.value.split("/").pop()).catch((err) => {
    restoreSelection();
    throw err;
  }));
});

ui.modelFile.addEventListener("change", () => {
  const file = ui.modelFile.files[0];
  if (!file) return;
  enqueue(async () => {
    await useModel(file.arrayBuffer().then((b) => new Uint8Array(b)), file.name);
    const option = new Option(`your file: ${file.name}`, `local:${file.name}`, true, true);
    option.dataset.local = "1";
    ui.modelSelect.add(option);
  }).finally(() => { ui.modelFile.value = ""; });
});

function restoreSelection() {
  for (const option of ui.modelSelect.options) {
    if (model && (option.value.split("/").pop() === model.label || option.value === `local:${model.label}`)) {
      option.selected = true;
    }
  }
}

// --- inputs -------------------------------------------------------------------------------------------

/**
 * Decode a file with the browser, EXIF orientation applied as Pillow's exif_transpose does (Chromium always
 * applies it; the option asks other browsers to), colour profiles ignored as Pillow's convert ignores them.
 */
async function decode(file) {
  try {
    return await createImageBitmap(file, { imageOrientation: "from-image", colorSpaceConversion: "none" });
  } catch {
    throw new Error(`${file.name}: not an image the browser can decode (PNG, JPEG, ...)`);
  }
}

/**
 * RGBA of a drawable flattened onto an opaque background: its transparent parts become the background,
 * as `to_pixels` composites them onto black (white for dark-on-light).
 */
function flattened(drawable, width, height, background) {
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.fillStyle = background;
  context.fillRect(0, 0, width, height);
  context.drawImage(drawable, 0, 0);
  return context.getImageData(0, 0, width, height, { colorSpace: "srgb" }).data;
}

async function pixelsOf(input) {
  if (input.kind === "file") {
    const darkOnLight = ui.darkOnLight.checked;
    const bitmap = await decode(input.file);
    try {
      try {
        checkSize(bitmap.width, bitmap.height); // before the canvas copies it: as fmnist-predict refuses it
      } catch (err) {
        throw new Error(`${input.file.name}: image refused: ${err.message}`);
      }
      const rgba = flattened(bitmap, bitmap.width, bitmap.height, darkOnLight ? "#fff" : "#000");
      return { pixels: toPixels(rgba, bitmap.width, bitmap.height, { darkOnLight }),
               source: `${input.file.name} (${bitmap.width}×${bitmap.height}` +
                       `${darkOnLight ? ", dark on light: inverted" : ""})` };
    } finally {
      bitmap.close();
    }
  }
  if (input.kind === "drawing") { // drawn light on dark: the dataset's polarity, never inverted
    const { width, height } = ui.sketch;
    return { pixels: toPixels(flattened(ui.sketch, width, height, "#000"), width, height),
             source: `your drawing (${width}×${height})` };
  }
  // a shipped test image: already 28x28 grey, so the same path hands its bytes on unchanged
  const rgba = new Uint8ClampedArray(SIZE * SIZE * 4);
  input.sample.pixels.forEach((v, i) => rgba.set([v, v, v, 255], 4 * i));
  return { pixels: toPixels(rgba, SIZE, SIZE),
           source: `test image #${input.sample.index}, true class: ${input.sample.className}` };
}

async function run(input) {
  ui.result.dataset.state = "busy";
  if (!model) throw new Error("no model is loaded: choose one above");
  const { pixels, source } = await pixelsOf(input);
  if (model.rows !== SIZE || model.columns !== SIZE) {
    throw new Error(`${model.label} takes ${model.rows}×${model.columns} images; the page makes ${SIZE}×${SIZE}`);
  }
  const { probabilities, top } = await classify(model, pixels);
  clearError();
  render(pixels, source, top);
  lastTop = top;
  judge(top);
  ui.result.dataset.pixels = btoa(String.fromCharCode(...pixels));
  ui.result.dataset.probabilities = JSON.stringify(Array.from(probabilities));
  ui.result.dataset.predicted = String(top[0].index);
  ui.result.dataset.count = String(Number(ui.result.dataset.count ?? 0) + 1);
  ui.result.dataset.state = "done";
  lastInput = input; // only an input that worked is re-run
}

function render(pixels, source, top) {
  const context = ui.modelInput.getContext("2d");
  const image = context.createImageData(SIZE, SIZE);
  pixels.forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
  context.putImageData(image, 0, 0);
  ui.source.textContent = `${source} → ${model.label}`;
  ui.top.replaceChildren(...top.map(({ name, probability }) => {
    const row = document.createElement("li");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * probability).toFixed(1)}%`;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * probability).toFixed(1)}%`;
    const track = document.createElement("span");
    track.className = "track";
    track.append(bar);
    row.append(label, track, value);
    return row;
  }));
}

/** The threshold in the box, or null (and the box marked invalid) when it is not a number from 0 to 1. */
function threshold() {
  const value = ui.minConfidence.valueAsNumber;
  const valid = value >= 0 && value <= 1;
  ui.minConfidence.setCustomValidity(valid ? "" : "a probability from 0 to 1");
  return valid ? value : null;
}

/** The answer, or "unsure" where the top class's calibrated probability is below the threshold. */
function judge(top) {
  const min = threshold();
  const confidence = `${(100 * top[0].probability).toFixed(1)}%`;
  const unsure = min !== null && top[0].probability < min;
  ui.verdict.textContent = min === null ? "The threshold must be a probability from 0 to 1."
    : unsure ? `Unsure: the best guess, ${top[0].name}, has a calibrated confidence of ${confidence}, below ${min}.`
    : `${top[0].name}, calibrated confidence ${confidence}.`;
  ui.verdict.classList.toggle("unsure", unsure);
  ui.top.classList.toggle("unsure", unsure);
  ui.result.dataset.answer = unsure ? "unsure" : top[0].name;
  ui.result.dataset.threshold = min === null ? "" : String(min);
}

ui.minConfidence.addEventListener("input", () => { if (lastTop) judge(lastTop); });

function classifyFile(file) {
  if (file) enqueue(() => run({ kind: "file", file }));
}

ui.imageFile.addEventListener("change", () => {
  classifyFile(ui.imageFile.files[0]);
  queue.finally(() => { ui.imageFile.value = ""; }); // picking the same file again classifies it again
});
// A file dropped beside the zone would make the browser leave the page to show it.
for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
ui.dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  ui.dropZone.classList.add("over");
});
ui.dropZone.addEventListener("dragleave", () => ui.dropZone.classList.remove("over"));
ui.dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.dropZone.classList.remove("over");
  classifyFile(event.dataTransfer.files[0]);
});
ui.darkOnLight.addEventListener("change", () => {
  if (lastInput?.kind === "file") enqueue(() => run(lastInput));
});

// --- drawing ------------------------------------------------------------------------------------------

const pen = ui.sketch.getContext("2d", { willReadFrequently: true });
function clearSketch() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, ui.sketch.width, ui.sketch.height);
}
clearSketch();
let drawing = false;
function point(event) {
  const box = ui.sketch.getBoundingClientRect();
  return [(event.clientX - box.left) * ui.sketch.width / box.width,
          (event.clientY - box.top) * ui.sketch.height / box.height];
}
ui.sketch.addEventListener("pointerdown", (event) => {
  drawing = true;
  ui.sketch.setPointerCapture(event.pointerId);
  Object.assign(pen, { strokeStyle: "#fff", lineWidth: ui.sketch.width / 12, lineCap: "round", lineJoin: "round" });
  pen.beginPath();
  pen.moveTo(...point(event));
  pen.lineTo(...point(event));
  pen.stroke();
});
ui.sketch.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  pen.lineTo(...point(event));
  pen.stroke();
});
ui.sketch.addEventListener("pointerup", () => {
  if (!drawing) return;
  drawing = false;
  enqueue(() => run({ kind: "drawing" }));
});
ui.clear.addEventListener("click", clearSketch);

// --- shipped test images ------------------------------------------------------------------------------

async function loadSamples() {
  let document_;
  try {
    const response = await fetch(SAMPLES_URL);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    document_ = await response.json();
  } catch (err) {
    ui.samplesNote.textContent = `No test images (${SAMPLES_URL.pathname}: ${err.message}); the export stage ` +
                                 "writes them with the models.";
    return;
  }
  const [rows, columns] = document_.image_shape ?? [];
  if (document_.format !== "fmnist-seq-samples" || rows !== SIZE || columns !== SIZE) {
    ui.samplesNote.textContent = `${SAMPLES_URL.pathname}: not a version 1 samples file of 28×28 images`;
    return;
  }
  ui.samplesNote.textContent = `${document_.samples.length} images from the test set; click one to classify it.`;
  for (const entry of document_.samples) {
    const pixels = Uint8Array.from(atob(entry.pixels), (c) => c.charCodeAt(0));
    const sample = { index: entry.index, label: entry.label, className: document_.class_names[entry.label], pixels };
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.title = `#${entry.index}: ${sample.className}`;
    button.dataset.index = String(entry.index);
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = SIZE;
    const image = new ImageData(SIZE, SIZE);
    pixels.forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
    canvas.getContext("2d").putImageData(image, 0, 0);
    button.append(canvas);
    button.addEventListener("click", () => enqueue(() => run({ kind: "sample", sample })));
    ui.samples.append(button);
  }
}

// --- start --------------------------------------------------------------------------------------------

ui.result.dataset.count = "0";
ui.result.dataset.errors = "0";
const first = ui.modelSelect.value;
enqueue(() => useModel(fetchBytes(new URL(first, document.baseURI).href), first.split("/").pop()))
  .finally(() => { document.body.dataset.ready = "1"; });
loadSamples();
