// Encodes every line of the given text files with the npm package gpt-3-encoder (GPT-2's
// byte-level BPE in JavaScript, a port of OpenAI's encoder.py) and writes the ids as JSON.
//
// usage: node encode_lines.js OUT.json FILE...
// output: [{"path": FILE, "ids": [[id, ...] for each line]}, ...]
// Lines are the pieces of the file split on "\n" (a trailing newline gives a last, empty line).
const fs = require('fs');
const { encode } = require('gpt-3-encoder');

const [outPath, ...files] = process.argv.slice(2);
if (!outPath || files.length === 0) {
  console.error('usage: node encode_lines.js OUT.json FILE...');
  process.exit(2);
}
const result = files.map(path => ({
  path,
  ids: fs.readFileSync(path, 'utf-8').split('\n').map(line => encode(line)),
}));
fs.writeFileSync(outPath, JSON.stringify(result));
