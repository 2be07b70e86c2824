// Classify Fashion-MNIST test images with an exported model, using only onnxruntime-node.
//
//   node classify.mjs MODEL.onnx IMAGES_IDX LABELS_IDX [--limit N] [--json]
//
// IDX files may be gzipped (.gz) or plain. The model takes raw uint8 pixels [batch, 28, 28]:
// the normalization is inside the graph, and the class names are in its metadata.
import { readFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import * as ort from "onnxruntime-node";

// onnxruntime-node exposes no custom metadata: the class names are read from the file's bytes.
import { readMetadata } from "../common/onnx_metadata.mjs";

// The largest IDX file this reads decompressed (Fashion-MNIST's training images are 47 MB): a gzip bomb stops here.
const MAX_IDX_BYTES = 1 << 30;

function readIdx(path) {
  let bytes = readFileSync(path);
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = gunzipSync(bytes, { maxOutputLength: MAX_IDX_BYTES });
    } catch (err) {
      throw new Error(`${path}: not a gzip file of an IDX file under ${MAX_IDX_BYTES} bytes (${err.message})`);
    }
  }
  if (bytes.length < 8) throw new Error(`${path}: not an IDX ubyte file (${bytes.length} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0);
  if (magic >> 8 !== 0x08) throw new Error(`${path}: not an IDX ubyte file (magic 0x${magic.toString(16)})`);
  const ndim = magic & 0xff;
  const shape = Array.from({ length: ndim }, (_, i) => view.getUint32(4 + 4 * i));
  const offset = 4 + 4 * ndim;
  return { shape, data: bytes.subarray(offset) };
}

async function main() {
  const args = process.argv.slice(2);
  const json = args.includes("--json");
  const limitAt = args.indexOf("--limit");
  const limit = limitAt >= 0 ? Number(args[limitAt + 1]) : Infinity;
  const positional = args.filter((a, i) => !a.startsWith("--") && !(limitAt >= 0 && i === limitAt + 1));
  const [modelPath, imagesPath, labelsPath] = positional;
  if (!modelPath || !imagesPath || !labelsPath) {
    console.error("usage: node classify.mjs MODEL.onnx IMAGES_IDX LABELS_IDX [--limit N] [--json]");
    process.exit(2);
  }
  const images = readIdx(imagesPath);
  const labels = readIdx(labelsPath);
  if (images.shape.length !== 3 || images.shape[1] !== 28 || images.shape[2] !== 28) {
    throw new Error(`${imagesPath}: images of shape [${images.shape}], expected [count, 28, 28]`);
  }
  if (labels.shape.length !== 1) throw new Error(`${labelsPath}: labels of shape [${labels.shape}], expected [count]`);
  const [count, rows, cols] = images.shape;
  const n = Math.min(count, labels.shape[0], limit);

  const modelBytes = readFileSync(modelPath);
  const metadata = readMetadata(modelBytes);
  const classNames = metadata.class_names ? JSON.parse(metadata.class_names) : null;
  const session = await ort.InferenceSession.create(modelBytes);
  // The contract of the exported models, checked once before any image (onnxruntime's own error would come at
  // the first batch, and not say what a classifier of this project takes).
  if (session.inputNames.length !== 1 || session.inputNames[0] !== "pixels" || !session.outputNames.includes("logits")) {
    throw new Error(`${modelPath}: not a classifier of this project: inputs [${session.inputNames}], outputs ` +
                    `[${session.outputNames}]; expected one input "pixels" (uint8 [batch, 28, 28]) and an output "logits"`);
  }
  const batch = 256;
  let correct = 0;
  const first = [];
  for (let start = 0; start < n; start += batch) {
    const size = Math.min(batch, n - start);
    const pixels = images.data.subarray(start * rows * cols, (start + size) * rows * cols);
    const input = new ort.Tensor("uint8", Uint8Array.from(pixels), [size, rows, cols]);
    const { logits } = await session.run({ pixels: input });
    for (let i = 0; i < size; i++) {
      const row = logits.data.subarray(i * 10, i * 10 + 10);
      let best = 0;
      for (let c = 1; c < 10; c++) if (row[c] > row[best]) best = c;
      if (best === labels.data[start + i]) correct++;
      if (first.length < 5) first.push(classNames ? classNames[best] : best);
    }
  }
  const accuracy = correct / n;
  if (json) {
    console.log(JSON.stringify({ model: modelPath, images: n, correct, accuracy, first_predictions: first }));
  } else {
    console.log(`${modelPath}: ${correct}/${n} correct, accuracy ${(100 * accuracy).toFixed(2)}%`);
    console.log(`first predictions: ${first.join(", ")}`);
  }
}

main().catch((err) => {
  console.error(`classify.mjs: error: ${err.message}`);
  process.exit(1);
});
