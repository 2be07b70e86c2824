// An image's RGBA pixels -> the model's input: uint8 [28, 28], light item on a dark background.
//
// This is `to_pixels` in src/fmnist_seq/predict.py (what `fmnist-predict` does), step for step, with Pillow's
// integer arithmetic, so the same opaque image gives the model the same bytes in the browser as in Python:
//   transparency flattened onto black (white with dark-on-light)  -> done by the caller's canvas, see app.mjs
//   greyscale with Pillow's "L" weights (299/587/114 per mille, fixed point)           -> grey()
//   optional invert for a dark item on a light background                             -> invert()
//   padded to a centred square with 0, resized to 28x28 with Pillow's LANCZOS         -> resizePadded()
//     (no resampling when the square is 28x28 already), computed without building the square, so a
//     1x100000 strip costs its own pixels, not 10 GB; within the same limits as fmnist-predict  -> checkSize()
// Decoding and EXIF orientation are the browser's (createImageBitmap in app.mjs). Nothing here touches the
// DOM, so Node.js can import it too.

export const SIZE = 28;
// src/fmnist_seq/images.py: MAX_PIXELS (Pillow's decompression-bomb limit) and MAX_SIDE.
export const MAX_PIXELS = 89_478_485;
export const MAX_SIDE = 131_072;

/** Throws when fmnist-predict would refuse an image of this size, before any memory is spent on it. */
export function checkSize(width, height) {
  if (width < 1 || height < 1) throw new Error("the image is empty");
  if (width * height > MAX_PIXELS) {
    throw new Error(`${width}x${height} is ${(width * height).toLocaleString("en-US")} pixels, over the limit ` +
                    `of ${MAX_PIXELS.toLocaleString("en-US")}`);
  }
  if (Math.max(width, height) > MAX_SIDE) {
    throw new Error(`${width}x${height}: a side over ${MAX_SIDE.toLocaleString("en-US")} pixels`);
  }
}

/**
 * Greyscale as Pillow's convert("L"): L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, i.e. 299/587/114
 * per mille in 16-bit fixed point with rounding. Alpha is ignored: flatten transparency first.
 * @param {Uint8ClampedArray|Uint8Array} rgba width*height*4 bytes
 * @returns {Uint8Array} width*height bytes
 */
export function grey(rgba) {
  const out = new Uint8Array(rgba.length / 4);
  for (let i = 0, j = 0; j < out.length; i += 4, j++) {
    out[j] = (rgba[i] * 19595 + rgba[i + 1] * 38470 + rgba[i + 2] * 7471 + 0x8000) >>> 16;
  }
  return out;
}

/** 255 - value, as Pillow's ImageOps.invert. */
export function invert(pixels) {
  return pixels.map((v) => 255 - v);
}

/**
 * Pad to a square of side max(width, height) with 0, the image centred as Pillow's paste at
 * ((side - width) // 2, (side - height) // 2). Only for a square of the output's size (no resampling).
 * @returns {{pixels: Uint8Array, side: number}}
 */
export function padToSquare(pixels, width, height) {
  const side = Math.max(width, height);
  if (width === side && height === side) return { pixels, side };
  const square = new Uint8Array(side * side);
  const left = Math.floor((side - width) / 2);
  const top = Math.floor((side - height) / 2);
  for (let y = 0; y < height; y++) {
    square.set(pixels.subarray(y * width, (y + 1) * width), (top + y) * side + left);
  }
  return { pixels: square, side };
}

// Pillow's resampling (libImaging/Resample.c) for 8-bit images: a separable filter, horizontal pass then
// vertical pass, each output pixel a weighted sum over a window of input pixels, the weights in fixed point
// with PRECISION_BITS fractional bits and each pass rounded and clipped to 0..255.
const PRECISION_BITS = 32 - 8 - 2;
const LANCZOS_SUPPORT = 3;

function sinc(x) {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

function lanczos(x) {
  return x >= -LANCZOS_SUPPORT && x < LANCZOS_SUPPORT ? sinc(x) * sinc(x / LANCZOS_SUPPORT) : 0;
}

/** Per output pixel: the first input pixel, the window length and its fixed-point weights. */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1); // widen the filter when shrinking (antialiasing)
  const support = LANCZOS_SUPPORT * filterScale;
  const inverseScale = 1 / filterScale; // Pillow multiplies by the reciprocal: same rounding
  const windows = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const weights = new Float64Array(xmax);
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      weights[x] = lanczos((x + xmin - center + 0.5) * inverseScale);
      total += weights[x];
    }
    const fixed = new Int32Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const w = total !== 0 ? weights[x] / total : weights[x];
      fixed[x] = Math.trunc((w < 0 ? -0.5 : 0.5) + w * 2 ** PRECISION_BITS);
    }
    windows.push({ xmin, fixed });
  }
  return windows;
}

function clip8(sum) {
  if (sum >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (sum <= 0) return 0;
  return Math.floor(sum / 2 ** PRECISION_BITS);
}

/**
 * What Pillow's resize to size x size gives for `pixels` (width x height) padded with 0 to a centred square
 * of side max(width, height), without building the square: the padding is zeros, so its share of every sum
 * is zero and only the image's own pixels are visited. A horizontal pass over the image's rows (the padding
 * rows come out of it as 0), then a vertical pass, each rounded and clipped as Pillow does.
 */
export function resizePadded(pixels, width, height, size = SIZE) {
  const side = Math.max(width, height);
  if (side === size) return Uint8Array.from(padToSquare(pixels, width, height).pixels);
  const left = Math.floor((side - width) / 2);
  const top = Math.floor((side - height) / 2);
  const windows = coefficients(side, size);
  const wide = new Uint8Array(height * size);
  for (let x = 0; x < size; x++) {
    const { xmin, fixed } = windows[x];
    const lo = Math.max(xmin, left);
    const hi = Math.min(xmin + fixed.length, left + width);
    for (let y = 0; y < height; y++) {
      let sum = 2 ** (PRECISION_BITS - 1);
      for (let c = lo; c < hi; c++) sum += pixels[y * width + c - left] * fixed[c - xmin];
      wide[y * size + x] = clip8(sum);
    }
  }
  const out = new Uint8Array(size * size);
  for (let yy = 0; yy < size; yy++) {
    const { xmin: ymin, fixed } = windows[yy];
    const lo = Math.max(ymin, top);
    const hi = Math.min(ymin + fixed.length, top + height);
    for (let x = 0; x < size; x++) {
      let sum = 2 ** (PRECISION_BITS - 1);
      for (let r = lo; r < hi; r++) sum += wide[(r - top) * size + x] * fixed[r - ymin];
      out[yy * size + x] = clip8(sum);
    }
  }
  return out;
}

/**
 * Resize a square greyscale image to size x size as Pillow's Image.resize(..., LANCZOS): untouched when
 * it already has that size (Pillow returns a copy), else a horizontal then a vertical pass.
 */
export function resizeLanczos(pixels, side, size = SIZE) {
  return resizePadded(pixels, side, side, size);
}

/**
 * Flattened RGBA (transparency already composited onto the background) -> the model's 28x28 uint8 input.
 * @param {Uint8ClampedArray|Uint8Array} rgba width*height*4 bytes, opaque
 * @param {{darkOnLight?: boolean}} options darkOnLight: invert a dark item on a light background
 */
export function toPixels(rgba, width, height, { darkOnLight = false } = {}) {
  checkSize(width, height);
  let pixels = grey(rgba);
  if (darkOnLight) pixels = invert(pixels);
  return resizePadded(pixels, width, height);
}
