// Validate Flux scripts with InfluxData's own parser and type checker (flux-lsp-browser,
// WASM). The package is built for bundlers (it imports its .wasm as an ES module), so the
// glue module is loaded with its wasm handle injected here.
// Usage: node fluxcheck.mjs <package dir> < scripts.json   ->   JSON results on stdout
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const pkg = process.argv[2];
let glue = readFileSync(join(pkg, 'flux-lsp-browser_bg.js'), 'utf8');
glue = glue.replace(/^import \* as wasm from .*$/m, 'let wasm; export function __setWasm(w) { wasm = w; cachedInt32Memory0 = new Int32Array(wasm.memory.buffer); cachedUint8Memory0 = new Uint8Array(wasm.memory.buffer); }');
glue = glue.replace(/^cachedInt32Memory0 = new Int32Array\(wasm\.memory\.buffer\);$/m, '');
glue = glue.replace(/^cachedUint8Memory0 = new Uint8Array\(wasm\.memory\.buffer\);$/m, '');
const dir = mkdtempSync(join(tmpdir(), 'fluxcheck-'));
const gluePath = join(dir, 'glue.mjs');
writeFileSync(gluePath, glue);
const mod = await import(pathToFileURL(gluePath).href);
const { instance } = await WebAssembly.instantiate(
  readFileSync(join(pkg, 'flux-lsp-browser_bg.wasm')),
  { './flux-lsp-browser_bg.js': mod },
);
mod.__setWasm(instance.exports);

const scripts = JSON.parse(readFileSync(0, 'utf8'));
const out = {};
for (const [name, script] of Object.entries(scripts)) {
  const ast = mod.parse(script);
  const errors = [];
  const walk = (node) => {
    if (node && typeof node === 'object') {
      if (Array.isArray(node.errors)) for (const e of node.errors) errors.push(typeof e === 'string' ? e : JSON.stringify(e));
      for (const v of Object.values(node)) walk(v);
    }
  };
  walk(ast);
  const flux = new mod.Flux(script);
  out[name] = { syntax_errors: errors, semantically_valid: flux.is_valid() };
}
process.stdout.write(JSON.stringify(out));
