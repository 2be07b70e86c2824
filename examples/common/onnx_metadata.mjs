// Read an ONNX file's custom metadata (ModelProto.metadata_props) straight from its bytes.
//
// onnxruntime-node and onnxruntime-web expose no custom metadata, and the exported models keep their class
// names and input contract there. This module is shared by examples/node/classify.mjs and the browser page
// in examples/web/; it runs unchanged in both (plain Uint8Array input, TextDecoder, no Node.js APIs).
//
// Only the top level of the protobuf is walked: field 14 (metadata_props) is decoded as
// StringStringEntryProto {1: key, 2: value}; every other field is skipped by its wire type, so the graph and
// its weights are never parsed.

const METADATA_PROPS = 14;
const IR_VERSION = 1;
const GRAPH = 7;

export class NotOnnxError extends Error {
  constructor(detail) {
    super(`not an ONNX model file (${detail})`);
    this.name = "NotOnnxError";
  }
}

/**
 * The metadata_props of an ONNX ModelProto, as {key: value} strings (values are as stored; the exported
 * models JSON-encode theirs). Throws NotOnnxError when the bytes are not a well-formed ModelProto.
 * @param {Uint8Array} bytes the whole .onnx file
 * @returns {Record<string, string>}
 */
export function readMetadata(bytes) {
  if (!(bytes instanceof Uint8Array)) throw new TypeError("readMetadata expects a Uint8Array");
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  let pos = 0;

  const varint = (end) => {
    let result = 0;
    for (let shift = 0; shift < 64; shift += 7) {
      if (pos >= end) throw new NotOnnxError(`truncated varint at byte ${pos}`);
      const b = bytes[pos++];
      result += (b & 0x7f) * 2 ** shift; // arithmetic, not <<: lengths and tags stay exact past 2^31
      if (b < 0x80) return result;
    }
    throw new NotOnnxError(`varint longer than 10 bytes at byte ${pos}`);
  };

  // Calls visit(field, wire, start, end) for each field in bytes[pos, end); length-delimited fields
  // (wire type 2) span [start, end), the others are skipped.
  const fields = (end, visit) => {
    while (pos < end) {
      const tag = varint(end);
      const field = Math.floor(tag / 8);
      const wire = tag % 8;
      if (field === 0) throw new NotOnnxError(`field number 0 at byte ${pos}`);
      if (wire === 0) {
        varint(end);
        visit(field, wire, pos, pos);
        continue;
      }
      let length;
      if (wire === 1) length = 8;
      else if (wire === 5) length = 4;
      else if (wire === 2) length = varint(end);
      else throw new NotOnnxError(`unsupported protobuf wire type ${wire} at byte ${pos}`);
      if (pos + length > end) throw new NotOnnxError(`field ${field} runs past the end of the data`);
      const start = pos;
      pos += length;
      visit(field, wire, start, pos);
    }
  };

  const text = (start, end, what) => {
    try {
      return utf8.decode(bytes.subarray(start, end));
    } catch {
      throw new NotOnnxError(`${what} is not UTF-8`);
    }
  };

  const metadata = {};
  const seen = new Set();
  fields(bytes.length, (field, wire, start, end) => {
    seen.add(field);
    if (field !== METADATA_PROPS || wire !== 2) return;
    const resume = pos;
    pos = start;
    const entry = { 1: "", 2: "" };
    fields(end, (f, w, s, e) => {
      if ((f === 1 || f === 2) && w === 2) entry[f] = text(s, e, "a metadata entry");
    });
    pos = resume;
    metadata[entry[1]] = entry[2];
  });
  // Any byte string can happen to parse as protobuf; an ONNX model always states its IR version and a graph.
  if (!seen.has(IR_VERSION) || !seen.has(GRAPH)) throw new NotOnnxError("no ir_version or no graph");
  return metadata;
}
