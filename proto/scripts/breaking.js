#!/usr/bin/env node
// `buf breaking` against the main branch's proto/ (when the repo has one):
// a contract change that would break deployed clients fails the build.
'use strict';
const { execFileSync } = require('node:child_process');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const buf = path.join(root, 'node_modules', '.bin', 'buf');
const repoRoot = path.resolve(root, '..');
const against = process.env.SB_BREAKING_AGAINST ?? 'main';

function hasRef(ref) {
  try {
    execFileSync('git', ['rev-parse', '--verify', '--quiet', `${ref}:proto/buf.yaml`], { cwd: repoRoot, stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

if (!hasRef(against)) {
  console.log(`proto: no '${against}' with proto/buf.yaml to compare against; nothing can break yet`);
  process.exit(0);
}
// The common git dir, so a linked worktree (whose .git is a file) works too.
const gitDir = path.resolve(repoRoot, execFileSync('git', ['rev-parse', '--git-common-dir'], { cwd: repoRoot, encoding: 'utf8' }).trim());
execFileSync(buf, ['breaking', '--against', `${gitDir}#ref=${against},subdir=proto`], { cwd: root, stdio: 'inherit' });
console.log(`proto: no breaking change against ${against}`);
