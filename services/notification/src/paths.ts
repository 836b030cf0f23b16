import * as nodePath from 'node:path';

/** Files shipped beside the compiled code. */
export const path = {
  migrations: nodePath.join(__dirname, '..', 'migrations'),
};
