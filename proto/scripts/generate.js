#!/usr/bin/env node
// Regenerates src/gen (ts-proto through buf) and descriptors.binpb (for gRPC
// reflection) only when a .proto file or the generator config changed, so
// `pnpm build` stays fast and incremental `tsc --build` keeps its cache.
'use strict';
const { createHash } = require('node:crypto');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const genDir = path.join(root, 'src', 'gen');
const stampFile = path.join(genDir, '.inputs.sha256');
const descriptorFile = path.join(root, 'descriptors.binpb');
const buf = path.join(root, 'node_modules', '.bin', 'buf');

function protoFiles(dir) {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((entry) => {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) return protoFiles(full);
      return entry.name.endsWith('.proto') ? [full] : [];
    })
    .sort();
}

function inputsHash() {
  const hash = createHash('sha256');
  const inputs = [
    ...protoFiles(path.join(root, 'switchboard')),
    path.join(root, 'buf.yaml'),
    path.join(root, 'buf.gen.yaml'),
    path.join(root, 'package.json'),
  ];
  for (const file of inputs) {
    hash.update(path.relative(root, file));
    hash.update(fs.readFileSync(file));
  }
  return hash.digest('hex');
}

const wanted = inputsHash();
const current = fs.existsSync(stampFile) ? fs.readFileSync(stampFile, 'utf8').trim() : '';
if (current === wanted && fs.existsSync(descriptorFile) && !process.argv.includes('--force')) {
  console.log('proto: generated code is up to date');
  process.exit(0);
}

fs.rmSync(genDir, { recursive: true, force: true });
execFileSync(buf, ['generate'], { cwd: root, stdio: 'inherit' });
execFileSync(buf, ['build', '-o', descriptorFile], { cwd: root, stdio: 'inherit' });
fs.writeFileSync(stampFile, `${wanted}\n`);
console.log('proto: regenerated src/gen and descriptors.binpb');
