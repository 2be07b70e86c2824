// An exported model in the browser: its contract read from the file's metadata, and onnxruntime-web runs.
//
// The model's own metadata says what it takes (input name, dtype, shape) and what its outputs mean (class
// names in output order); onnxruntime-web does not expose custom metadata, so it is read from the bytes by
// the module shared with the Node.js example. A file that is not ONNX, or lacks that metadata, is refused
// with a message that says so, before any inference.
import { readMetadata } from "../common/onnx_metadata.mjs";

// Served from this folder (npm ci in examples/web), never from a CDN.
const ORT_DIST = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url);
const OUTPUT = "probabilities";

let ortModule = null;

/** onnxruntime-web's wasm build, single-threaded: no cross-origin isolation headers are needed. */
export async function loadRuntime() {
  if (ortModule) return ortModule;
  let ort;
  try {
    ort = await import(new URL("ort.wasm.min.mjs", ORT_DIST).href);
  } catch (err) {
    throw new Error("onnxruntime-web is not installed next to the page: run `make web-example` " +
                    `(npm ci in examples/web), then reload (${err.message})`);
  }
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = ORT_DIST.href;
  ortModule = ort;
  return ort;
}

function jsonField(metadata, key, label) {
  if (!(key in metadata)) {
    throw new Error(`${label}: the model has no "${key}" metadata; export it with this project's export ` +
                    "stage (`dvc repro export`), which writes class names and the input format into the file");
  }
  try {
    return JSON.parse(metadata[key]);
  } catch {
    throw new Error(`${label}: the "${key}" metadata is not JSON`);
  }
}

/** The input and output contract from the metadata; throws with the reason when the page cannot use it. */
export function contractOf(metadata, label) {
  const classNames = jsonField(metadata, "class_names", label);
  const input = jsonField(metadata, "input", label);
  if (!Array.isArray(classNames) || classNames.length < 2 || !classNames.every((n) => typeof n === "string")) {
    throw new Error(`${label}: "class_names" metadata is not a list of names`);
  }
  const shape = input?.shape;
  if (input?.dtype !== "uint8" || !Array.isArray(shape) || shape.length !== 3 || !(shape[1] > 0) || !(shape[2] > 0)) {
    throw new Error(`${label}: the page needs a uint8 input [batch, rows, columns]; the model takes ` +
                    `${JSON.stringify(input)}`);
  }
  // Optional: files exported before calibration have none, and their probabilities are softmax(logits).
  const temperature = "temperature" in metadata ? jsonField(metadata, "temperature", label) : null;
  return { classNames, inputName: input.name ?? "pixels", rows: shape[1], columns: shape[2],
           polarity: input.polarity ?? "", temperature: typeof temperature === "number" ? temperature : null };
}

/**
 * Load a model from its bytes; `label` names it in messages (a file name or URL).
 * @returns {Promise<{label, session, metadata, classNames, inputName, rows, columns, polarity, temperature}>}
 */
export async function loadModel(bytes, label) {
  const metadata = (() => {
    try {
      return readMetadata(bytes);
    } catch (err) {
      throw new Error(`${label}: ${err.message}`);
    }
  })();
  const contract = contractOf(metadata, label);
  const ort = await loadRuntime();
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  } catch (err) {
    throw new Error(`${label}: onnxruntime-web cannot load it (${err.message ?? err})`);
  }
  if (!session.inputNames.includes(contract.inputName) || !session.outputNames.includes(OUTPUT)) {
    throw new Error(`${label}: the graph has inputs ${session.inputNames} and outputs ${session.outputNames}; ` +
                    `the page needs input "${contract.inputName}" and output "${OUTPUT}"`);
  }
  return { label, session, metadata, ...contract };
}

/**
 * Class probabilities for one image, and the top k classes.
 * @param {Uint8Array} pixels rows*columns bytes, row-major, in the model's polarity
 */
export async function classify(model, pixels, k = 3) {
  const ort = await loadRuntime();
  if (pixels.length !== model.rows * model.columns) {
    throw new Error(`the model takes ${model.rows}x${model.columns} pixels, got ${pixels.length} values`);
  }
  const input = new ort.Tensor("uint8", pixels, [1, model.rows, model.columns]);
  const outputs = await model.session.run({ [model.inputName]: input });
  const probabilities = Float32Array.from(outputs[OUTPUT].data);
  if (probabilities.length !== model.classNames.length) {
    throw new Error(`${model.label}: ${probabilities.length} outputs for ${model.classNames.length} class names`);
  }
  const order = [...probabilities.keys()].sort((a, b) => probabilities[b] - probabilities[a]);
  const top = order.slice(0, k).map((index) => ({ index, name: model.classNames[index],
                                                  probability: probabilities[index] }));
  return { probabilities, top };
}
