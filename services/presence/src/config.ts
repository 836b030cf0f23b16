import { env, infraSettings, loadConfig, serviceSettings } from '@switchboard/config';

export function readConfig(source: NodeJS.ProcessEnv = process.env) {
  return loadConfig(
    {
      ...serviceSettings({ grpcPort: 50053, opsPort: 9103 }),
      ...infraSettings.redis(),
      ...infraSettings.nats(),
      /** A gateway's connections stay online this long after its last RefreshLeases (gateways refresh every third of it). */
      LEASE_TTL_MS: env.positiveInt(15_000),
      /** A gateway whose heartbeats stop for this long is declared dead and all its connections go offline. */
      GATEWAY_HEARTBEAT_TIMEOUT_MS: env.positiveInt(1000),
      /**
       * When a gateway's link (AttachGateway) closes without presence closing
       * it — its process died — it has only this long to attach again instead
       * of the whole heartbeat timeout. A live gateway whose link broke
       * attaches again within milliseconds.
       */
      GATEWAY_LINK_GRACE_MS: env.positiveInt(300),
      /**
       * A dead gateway's drop is claimed by one replica for this long, renewed
       * after every batch; a replica that dies or loses Redis mid-drop lets it
       * lapse, and any replica's reaper then resumes what is left.
       */
      GATEWAY_DROP_CLAIM_MS: env.positiveInt(2000),
      /** How often dead gateways are looked for (two script calls; part of the 2 s a crash may take to show). */
      REAPER_INTERVAL_MS: env.positiveInt(100),
      /** How often users whose presence changes with time (auto-away, expiries) are recomputed. */
      SWEEP_INTERVAL_MS: env.positiveInt(500),
      /** Idle time after which a user counts as away, unless they set their own. */
      AUTO_AWAY_MS: env.positiveInt(10 * 60_000),
      /** How long status transitions are kept for GetPresenceHistory. */
      HISTORY_RETENTION_MS: env.positiveInt(7 * 24 * 3600_000),
      /** Most users on one watch-list. */
      MAX_WATCHED: env.positiveInt(500),
      /** A typing start shows this long unless renewed. */
      TYPING_TTL_MS: env.positiveInt(6000),
      /** Typing starts one user may send per conversation per TYPING_RATE_WINDOW_S. */
      TYPING_RATE_POINTS: env.positiveInt(10),
      TYPING_RATE_WINDOW_S: env.positiveInt(10),
      /** At most one occupancy count per conversation per this window is published. */
      OCCUPANCY_THROTTLE_MS: env.positiveInt(500),
      /** Most users one GetPresence call may ask about (the contract promises at least 500). */
      MAX_PRESENCE_BATCH: env.positiveInt(500),
      /** Most connections one DisconnectDevices call may drop (gateways send at most 1,000). */
      MAX_DISCONNECT_BATCH: env.positiveInt(5000),
      /** Longest custom status message, in characters. */
      MAX_CUSTOM_MESSAGE_LENGTH: env.positiveInt(140),
      /** A user's presence keys are dropped after this long without any change. */
      STATE_RETENTION_S: env.positiveInt(30 * 24 * 3600),
    },
    source,
  );
}

export type PresenceConfig = ReturnType<typeof readConfig>;
