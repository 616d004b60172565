// Validates openapi.yaml (OpenAPI 3.1, @apidevtools/swagger-parser) and asyncapi.yaml
// (AsyncAPI 3, @asyncapi/parser) with their standard validators, then prints both
// documents, fully dereferenced, as one JSON object on stdout:
//   {"openapi": {...}, "asyncapi": {...}}
// gateway/tests/api_contracts.rs runs it and replays every example against a gateway.
// Exit status 1 (with the validators' messages on stderr) when either is invalid.
// Usage: node validate.mjs [openapi.yaml [asyncapi.yaml]] (default: the files here)
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import SwaggerParser from '@apidevtools/swagger-parser';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';
import YAML from 'yaml';

const here = dirname(fileURLToPath(import.meta.url));
let failed = false;

// --- OpenAPI 3.1 -----------------------------------------------------------------
const openapiPath = process.argv[2] ?? join(here, 'openapi.yaml');
let openapi;
try {
  await SwaggerParser.validate(openapiPath); // schema + semantic validation (3.1 schema)
  openapi = await SwaggerParser.dereference(openapiPath);
  if (!String(openapi.openapi).startsWith('3.1')) throw new Error(`openapi is ${openapi.openapi}, want 3.1.x`);
} catch (e) {
  failed = true;
  console.error(`openapi.yaml is invalid: ${e.message}`);
}

// --- AsyncAPI 3 --------------------------------------------------------------------
const asyncapiText = await readFile(process.argv[3] ?? join(here, 'asyncapi.yaml'), 'utf8');
const parser = new Parser();
const { document, diagnostics } = await parser.parse(asyncapiText);
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
for (const d of diagnostics) {
  if (d.severity <= DiagnosticSeverity.Warning) {
    console.error(`asyncapi.yaml ${d.severity === DiagnosticSeverity.Error ? 'error' : 'warning'}: ${d.message} at ${d.path.join('.')}`);
  }
}
if (!document || errors.length > 0) {
  failed = true;
  console.error(`asyncapi.yaml is invalid (${errors.length} errors)`);
} else if (!String(document.version()).startsWith('3.')) {
  failed = true;
  console.error(`asyncapi is ${document.version()}, want 3.x`);
}

if (failed) process.exit(1);
// The raw AsyncAPI document (YAML) with its $refs resolved by the parser's own copy.
const asyncapi = document.json();
console.log(JSON.stringify({ openapi, asyncapi, asyncapiRaw: YAML.parse(asyncapiText) }));
