// Builds the demo app into ../gateway/demo/ (index.html, app.css, app.js), which the
// gateway embeds at compile time. The build is deterministic (same sources and
// esbuild version: same bytes), so the built files are committed and
// `--check` verifies that rebuilding reproduces them exactly.
//
//   node scripts/build-demo.mjs          write gateway/demo/
//   node scripts/build-demo.mjs --check  build in memory, compare, exit 1 on a difference

import { build } from 'esbuild';
import { readFileSync, readdirSync, mkdirSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const out = resolve(root, '../gateway/demo');
const check = process.argv.includes('--check');

async function bundle() {
  const r = await build({
    absWorkingDir: root,
    entryPoints: ['demo/main.tsx'],
    bundle: true,
    write: false,
    outfile: 'app.js',
    format: 'esm',
    platform: 'browser',
    target: ['es2020'],
    minify: true,
    jsx: 'automatic',
    charset: 'utf8',
    legalComments: 'none',
    sourcemap: false,
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'warning',
  });
  if (r.outputFiles.length !== 1) throw new Error(`expected one output file, got ${r.outputFiles.length}`);
  return r.outputFiles[0].contents;
}

const files = {
  'index.html': readFileSync(join(root, 'demo/index.html')),
  'app.css': readFileSync(join(root, 'demo/app.css')),
  'app.js': await bundle(),
};

if (check) {
  const problems = [];
  const present = existsSync(out) ? readdirSync(out).filter((f) => !f.startsWith('.')) : [];
  for (const f of present) if (!(f in files)) problems.push(`${f}: in gateway/demo/ but not built`);
  for (const [name, bytes] of Object.entries(files)) {
    const p = join(out, name);
    if (!existsSync(p)) problems.push(`${name}: missing from gateway/demo/`);
    else if (!Buffer.from(bytes).equals(readFileSync(p))) problems.push(`${name}: differs from a fresh build`);
  }
  if (problems.length) {
    console.error(`gateway/demo/ is not what the sources build:\n  ${problems.join('\n  ')}\nRun: npm run build:demo`);
    process.exit(1);
  }
  console.log(`gateway/demo/ matches a fresh build (${Object.keys(files).join(', ')})`);
} else {
  mkdirSync(out, { recursive: true });
  // The gateway embeds every file there: leave nothing stale behind.
  for (const f of readdirSync(out)) if (!(f in files) && !f.startsWith('.')) rmSync(join(out, f));
  for (const [name, bytes] of Object.entries(files)) writeFileSync(join(out, name), bytes);
  const sizes = Object.entries(files).map(([n, b]) => `${n} ${(b.length / 1024).toFixed(1)} KiB`);
  console.log(`wrote gateway/demo/: ${sizes.join(', ')}`);
}
