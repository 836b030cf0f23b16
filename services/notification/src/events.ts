import type { Logger } from '@switchboard/logging';
import { newEnvelope, publishEnvelope, subjects, type NatsConnection } from '@switchboard/nats';
import { notificationV1 } from '@switchboard/proto';

export interface LiveNotification {
  notificationId: string;
  userId: string;
  kind: string;
  title: string;
  body: string;
  data: Record<string, string>;
  createdAt: Date;
  priority: number;
  silent: boolean;
  badgeCount: number;
}

/**
 * In-app delivery: what a user's connected devices hear on
 * `sb.<t>.user.<userId>`. A notification's envelope id is the notification
 * id, so a republish after a crash carries the same id and receivers drop
 * the copy (`Nats-Msg-Id` for JetStream, the id for clients).
 */
export class NotificationEvents {
  constructor(
    private readonly nats: NatsConnection,
    private readonly logger: Logger,
    private readonly flushTimeoutMs = 5000,
  ) {}

  /** Publishes and waits until the server has them; throws when NATS cannot take them now. */
  async created(tenantId: string, notifications: LiveNotification[]): Promise<void> {
    if (notifications.length === 0) return;
    for (const n of notifications) {
      const envelope = newEnvelope(
        tenantId,
        {
          $case: 'notificationCreated',
          value: {
            notificationId: n.notificationId,
            userId: n.userId,
            kind: n.kind,
            title: n.title,
            body: n.body,
            data: n.data,
            createdAt: n.createdAt,
            badgeCount: n.badgeCount,
            silent: n.silent,
            urgent: n.priority === notificationV1.Priority.PRIORITY_URGENT,
          },
        },
        n.notificationId,
      );
      publishEnvelope(this.nats, subjects.user(tenantId, n.userId), envelope);
    }
    await this.flush();
  }

  /** Sent when the unread count changes, so every device of the user shows the same badge. */
  badge(tenantId: string, userId: string, unread: number): void {
    try {
      publishEnvelope(this.nats, subjects.user(tenantId, userId), newEnvelope(tenantId, { $case: 'badgeCountChanged', value: { userId, unread } }));
    } catch (err) {
      // The count is stored: clients read it again on reconnect.
      this.logger.warn({ err, tenant: tenantId, userId }, 'could not publish a badge count');
    }
  }

  private async flush(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.nats.flush(),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error('NATS did not confirm the publish in time')), this.flushTimeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }
}
