#!/usr/bin/env node
// Dev credentials for NATS, called by infra.sh before nats-server starts:
//   node libs/devenv/dist/nats-auth.js <nats dir>
// writes one user nkey seed per service (and `tools` for tests) to
// <nats dir>/credentials/<user>.nk, once (mode 0600, git-ignored under .data/),
// and <nats dir>/authorization.conf, the server's users with their public keys
// and the permissions of libs/nats NATS_PERMISSIONS, on every call (so a
// changed permission takes effect on the next `infra.sh up`).
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { natsAuthorizationConfig, NATS_USERS, nkeys, readNkeySeed, type NkeyReferences } from '@switchboard/nats';

export function natsCredentialsDir(natsDir: string): string {
  return path.join(natsDir, 'credentials');
}

export function writeNatsAuthorization(natsDir: string): void {
  const dir = natsCredentialsDir(natsDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const publicKeys = {} as NkeyReferences;
  for (const user of NATS_USERS) {
    const file = path.join(dir, `${user}.nk`);
    if (!existsSync(file)) {
      writeFileSync(file, `${new TextDecoder().decode(nkeys.createUser().getSeed())}\n`, { mode: 0o600 });
    }
    chmodSync(file, 0o600);
    publicKeys[user] = nkeys.fromSeed(readNkeySeed(file)).getPublicKey();
  }
  writeFileSync(path.join(natsDir, 'authorization.conf'), `# Written by infra.sh (libs/devenv/src/nats-auth.ts) on every start.\n${natsAuthorizationConfig(publicKeys)}`);
}

if (require.main === module) {
  const natsDir = process.argv[2];
  if (!natsDir) {
    process.stderr.write('usage: nats-auth.js <nats data dir>\n');
    process.exit(2);
  }
  writeNatsAuthorization(path.resolve(natsDir));
}
