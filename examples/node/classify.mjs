// Classify Fashion-MNIST test images with an exported model, using only onnxruntime-node.
//
//   node classify.mjs MODEL.onnx IMAGES_IDX LABELS_IDX [--limit N] [--json]
//
// IDX files may be gzipped (.gz) or plain. The model takes raw uint8 pixels [batch, 28, 28]:
// the normalization is inside the graph, and the class names are in its metadata.
import { readFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import * as ort from "onnxruntime-node";

function readIdx(path) {
  let bytes = readFileSync(path);
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) bytes = gunzipSync(bytes);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0);
  if (magic >> 8 !== 0x08) throw new Error(`${path}: not an IDX ubyte file (magic 0x${magic.toString(16)})`);
  const ndim = magic & 0xff;
  const shape = Array.from({ length: ndim }, (_, i) => view.getUint32(4 + 4 * i));
  const offset = 4 + 4 * ndim;
  return { shape, data: bytes.subarray(offset) };
}

// onnxruntime-node exposes no custom metadata, so read ModelProto.metadata_props (field 14) from the
// file's top-level protobuf fields directly; everything else is skipped by its wire type.
function readMetadata(bytes) {
  let pos = 0;
  const varint = () => {
    let result = 0n;
    for (let shift = 0n; ; shift += 7n) {
      const b = bytes[pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return Number(result);
    }
  };
  const fields = (end, visit) => {
    while (pos < end) {
      const tag = varint();
      const [field, wire] = [tag >>> 3, tag & 7];
      if (wire === 0) varint();
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else if (wire === 2) {
        const length = varint();
        const stop = pos + length;
        visit(field, stop);
        pos = stop;
      } else throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  };
  const metadata = {};
  fields(bytes.length, (field, stop) => {
    if (field !== 14) return;
    const entry = {};
    fields(stop, (f, end) => { entry[f] = bytes.subarray(pos, end).toString("utf8"); });
    metadata[entry[1]] = entry[2];
  });
  return metadata;
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
  const [count, rows, cols] = images.shape;
  const n = Math.min(count, labels.shape[0], limit);

  const modelBytes = readFileSync(modelPath);
  const metadata = readMetadata(modelBytes);
  const classNames = metadata.class_names ? JSON.parse(metadata.class_names) : null;
  const session = await ort.InferenceSession.create(modelBytes);
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
