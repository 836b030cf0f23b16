import type { Logger } from '@switchboard/logging';
import { newEnvelope, publishEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import type { notificationV1 } from '@switchboard/proto';

/** In-app delivery: what a user's connected devices hear on `sb.<t>.user.<userId>`. */
export class NotificationEvents {
  constructor(
    private readonly nats: NatsConnection,
    private readonly logger: Logger,
  ) {}

  created(tenantId: string, notifications: notificationV1.Notification[]): void {
    for (const n of notifications) {
      this.publish(tenantId, n.userId, {
        $case: 'notificationCreated',
        value: { notificationId: n.notificationId, userId: n.userId, kind: n.kind, title: n.title, body: n.body, data: n.data, createdAt: n.createdAt },
      });
    }
  }

  /** Sent when reading lowers the count, so the user's other devices clear their badge too. */
  badge(tenantId: string, userId: string, unread: number): void {
    this.publish(tenantId, userId, { $case: 'badgeCountChanged', value: { userId, unread } });
  }

  private publish(tenantId: string, userId: string, event: Parameters<typeof newEnvelope>[1]): void {
    try {
      publishEnvelope(this.nats, subjects.user(tenantId, userId), newEnvelope(tenantId, event));
    } catch (err) {
      // Stored is what counts: clients list their notifications on reconnect.
      this.logger.warn({ err, tenant: tenantId, userId }, 'could not publish a notification event');
    }
  }
}
