import { env, infraSettings, loadConfig, serviceSettings } from '@switchboard/config';

export function readConfig(source: NodeJS.ProcessEnv = process.env) {
  return loadConfig(
    {
      ...serviceSettings({ grpcPort: 50054, opsPort: 9104 }),
      ...infraSettings.postgres(),
      ...infraSettings.nats(),
      /** Largest page a list call returns. */
      MAX_PAGE_SIZE: env.positiveInt(200),
      /** The tenant-wide member limit of a room; a room's own limit may only be lower. */
      MAX_ROOM_MEMBERS: env.positiveInt(10_000),
      /** Most members CreateRoom adds at once. */
      MAX_INITIAL_MEMBERS: env.positiveInt(500),
    },
    source,
  );
}

export type RoomConfig = ReturnType<typeof readConfig>;
