// Matches Hugging Face pre-tokenizer patterns with JavaScript's RegExp in Unicode mode ("u": code
// points, Unicode property classes) and writes each match's span in code points.
//
// usage: node regex_spans.js IN.json OUT.json
// IN.json: {"patterns": [PATTERN, ...], "texts": [TEXT, ...]}
// OUT.json: [[[[startCodePoint, endCodePoint], ...] per text] per pattern]
// Oniguruma syntax JavaScript lacks is rewritten first: \x{HHHH} -> \u{HHHH}, and the scoped
// case-insensitive group (?i:...) -> explicit upper/lower-case classes for its letters.
const fs = require('fs');

const [inPath, outPath] = process.argv.slice(2);
const { patterns, texts } = JSON.parse(fs.readFileSync(inPath, 'utf-8'));

function toJs(pattern) {
  let p = pattern.replace(/\\x\{([0-9A-Fa-f]+)\}/g, '\\u{$1}');
  return p.replace(/\(\?i:([^()]*)\)/g, (_, body) =>
    '(?:' + body.replace(/[A-Za-z]/g, c => `[${c.toLowerCase()}${c.toUpperCase()}]`) + ')');
}

const result = patterns.map(pattern => {
  const re = new RegExp(toJs(pattern), 'gu');
  return texts.map(text => {
    // UTF-16 index -> code point index
    const cpIndex = new Array(text.length + 1);
    let cp = 0;
    for (let i = 0; i < text.length; i++) {
      cpIndex[i] = cp;
      const c = text.charCodeAt(i);
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
        const d = text.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) { cpIndex[i + 1] = cp; i++; }
      }
      cp++;
    }
    cpIndex[text.length] = cp;
    const spans = [];
    for (const m of text.matchAll(re)) spans.push([cpIndex[m.index], cpIndex[m.index + m[0].length]]);
    return spans;
  });
});
fs.writeFileSync(outPath, JSON.stringify(result));
