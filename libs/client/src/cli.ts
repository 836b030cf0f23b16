#!/usr/bin/env node
import * as readline from 'node:readline';
import { Command, InvalidArgumentError as CommanderArgumentError, Option } from 'commander';
import { SwitchboardError } from '@switchboard/errors';
import { commonV1, framesV1, messagingV1 } from '@switchboard/proto';
import { SwitchboardClient, type ClientLogger, type TokenSource } from './client';
import type { Encoding } from './codec';
import { DEV_JWT_SECRET, mintDevToken } from './token';

interface GlobalOptions {
  url: string;
  token?: string;
  secret: string;
  tenant?: string;
  user?: string;
  device?: string;
  encoding: Encoding;
  timeout: number;
  verbose?: boolean;
}

interface SendOptions {
  to?: string;
  conversation?: string;
  text: string;
  clientMessageId?: string;
}

const HELP = `commands:
  send <userId> <text…>             direct message (the conversation is created on first message)
  to <conversationId> <text…>       message to a conversation
  history <conversationId> [fromSeq] newest messages, or those after fromSeq
  convs                              your conversations
  read <conversationId> <seq>        mark read up to seq
  ping                               round trip to the gateway
  help | quit (or Ctrl-D)`;

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new CommanderArgumentError('must be a positive integer');
  return n;
}

export function buildProgram(): Command {
  const program = new Command('sb-client')
    .description('Talk to a Switchboard gateway over its WebSocket protocol')
    .option('--url <url>', 'gateway WebSocket URL', process.env.SB_URL ?? 'ws://127.0.0.1:8080/ws')
    .option('--token <jwt>', 'JWT to authenticate with (default: mint one from --secret/--tenant/--user)', process.env.SB_TOKEN)
    .option('--secret <secret>', 'HS256 secret for minting a dev token', process.env.SB_JWT_SECRET ?? DEV_JWT_SECRET)
    .option('--tenant <tenantId>', 'tenant id for a minted token')
    .option('--user <userId>', 'user id for a minted token')
    .option('--device <deviceId>', 'device id for a minted token')
    .addOption(new Option('--encoding <encoding>', 'wire encoding').choices(['json', 'proto']).default('json'))
    .option('--timeout <ms>', 'request timeout', positiveInt, 10_000)
    .option('-v, --verbose', 'log connection events to stderr')
    .showHelpAfterError()
    .action(async (_opts: unknown, cmd: Command) => {
      process.exitCode = await interactive(cmd.optsWithGlobals<GlobalOptions>());
    });

  program
    .command('send')
    .description('connect, send one message, print the acknowledgement as JSON and exit')
    .option('--to <userId>', 'recipient of a direct message')
    .option('--conversation <conversationId>', 'conversation to send to (instead of --to)')
    .requiredOption('--text <text>', 'message text')
    .option('--client-message-id <id>', 'idempotency key (default: random)')
    .action(async (_opts: unknown, cmd: Command) => {
      process.exitCode = await sendOnce(cmd.optsWithGlobals<GlobalOptions & SendOptions>());
    });

  return program;
}

function tokenSource(opts: GlobalOptions): TokenSource {
  if (opts.token) return opts.token;
  if (!opts.tenant || !opts.user) {
    throw new Error('give --token, or --tenant and --user (with --secret) to mint a dev token');
  }
  const { secret, tenant, user, device } = opts;
  // A fresh token for every (re)connect.
  return () => mintDevToken({ secret, tenantId: tenant, userId: user, ...(device ? { deviceId: device } : {}) });
}

function stderrLogger(verbose: boolean | undefined): ClientLogger | undefined {
  if (!verbose) return undefined;
  const log = (level: string) => (obj: object, msg?: string) => {
    const fields = Object.entries(obj)
      .map(([k, v]) => `${k}=${v instanceof Error ? v.message : typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
      .join(' ');
    process.stderr.write(`[${level}] ${msg ?? ''}${fields ? ` ${fields}` : ''}\n`);
  };
  return { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };
}

function makeClient(opts: GlobalOptions, reconnect: boolean): SwitchboardClient {
  const logger = stderrLogger(opts.verbose);
  return new SwitchboardClient({
    url: opts.url,
    token: tokenSource(opts),
    encoding: opts.encoding,
    requestTimeoutMs: opts.timeout,
    // A send may be retried (same client_message_id), but the whole of it stays within --timeout.
    sendDeadlineMs: opts.timeout,
    reconnect: { enabled: reconnect },
    ...(logger ? { logger } : {}),
  });
}

export function describeError(err: unknown): string {
  if (err instanceof SwitchboardError) {
    const code = commonV1.errorCodeToJSON(err.code).replace(/^ERROR_CODE_/, '');
    const extra = [err.field ? `field=${err.field}` : '', err.retryAfterMs ? `retry_after_ms=${err.retryAfterMs}` : '']
      .filter(Boolean)
      .join(' ');
    return `${code}: ${err.message}${extra ? ` (${extra})` : ''}`;
  }
  return err instanceof Error ? err.message : String(err);
}

async function sendOnce(opts: GlobalOptions & SendOptions): Promise<number> {
  if (!!opts.to === !!opts.conversation) {
    process.stderr.write('sb-client: give exactly one of --to or --conversation\n');
    return 2;
  }
  let client: SwitchboardClient | undefined;
  try {
    client = makeClient(opts, false);
    await client.connect();
    const ack = await client.sendMessage({
      ...(opts.to ? { recipientUserId: opts.to } : { conversationId: opts.conversation! }),
      text: opts.text,
      ...(opts.clientMessageId ? { clientMessageId: opts.clientMessageId } : {}),
    });
    process.stdout.write(`${JSON.stringify(messagingV1.MessageAck.toJSON(ack))}\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`sb-client: ${describeError(err)}\n`);
    return 1;
  } finally {
    await client?.close();
  }
}

export function formatMessage(m: messagingV1.Message): string {
  const time = m.createdAt ? m.createdAt.toISOString().slice(11, 19) : '--:--:--';
  const text = m.deleted ? '(deleted)' : m.text;
  const attachments = m.attachments.length ? ` [${m.attachments.length} attachment(s)]` : '';
  return `${time} [${m.conversationId} #${m.seq}] ${m.senderId}: ${text}${attachments}${m.editedAt ? ' (edited)' : ''}`;
}

export function formatAck(ack: messagingV1.MessageAck): string {
  return `ack conversation=${ack.conversationId} seq=${ack.seq} message=${ack.messageId}${ack.duplicate ? ' (duplicate)' : ''}`;
}

async function interactive(opts: GlobalOptions): Promise<number> {
  let client: SwitchboardClient;
  try {
    client = makeClient(opts, true);
  } catch (err) {
    process.stderr.write(`sb-client: ${describeError(err)}\n`);
    return 2;
  }
  // Until the readline interface exists, lines print plainly.
  let rl: readline.Interface | undefined;
  const print = (line: string, stream: NodeJS.WriteStream = process.stdout) => {
    if (rl?.terminal) {
      readline.clearLine(process.stdout, 0);
      readline.cursorTo(process.stdout, 0);
    }
    stream.write(`${line}\n`);
    if (rl?.terminal) rl.prompt(true);
  };

  client.on('message', (m) => print(formatMessage(m)));
  client.on('frame', (frame) => {
    const kind = frame.kind;
    if (!kind || kind.$case === 'message' || kind.$case === 'welcome') return;
    print(`${kind.$case} ${JSON.stringify(framesV1.ServerFrame.toJSON(frame))}`);
  });
  client.on('welcome', (w) => print(`connected as ${w.userId}@${w.tenantId}${w.deviceId ? ` (device ${w.deviceId})` : ''} via ${w.gatewayId} [${client.encoding}]`, process.stderr));
  client.on('disconnected', (e) => print(`disconnected ${e.code}${e.reason ? ` ${e.reason}` : ''}${e.willReconnect ? ', reconnecting' : ''}`, process.stderr));
  client.on('reconnecting', (e) => print(`reconnecting in ${e.delayMs} ms (attempt ${e.attempt})`, process.stderr));
  client.on('synced', (e) => print(`resumed: ${e.messages} message(s) from ${e.pages} sync page(s)`, process.stderr));
  client.on('reconnect-requested', (e) => print(`server asked to reconnect (${e.reason}) within ${e.reconnectWithinMs} ms`, process.stderr));
  client.on('error', (err) => print(`error: ${describeError(err)}`, process.stderr));

  let exitCode = 0;
  client.on('closed', (e) => {
    if (e.error) {
      exitCode = 1;
      rl?.close();
    }
  });

  try {
    await client.connect();
  } catch (err) {
    process.stderr.write(`sb-client: ${describeError(err)}\n`);
    await client.close();
    return 1;
  }

  // Created only now, so no line (piped input arrives at once) is read before anyone listens.
  rl = readline.createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY === true });
  const input = rl;
  const ended = new Promise<void>((resolve) => input.once('close', resolve));
  input.setPrompt('> ');
  if (input.terminal) print(HELP, process.stderr);
  // Commands run one after another, so piped scripts behave deterministically.
  let queue = Promise.resolve();
  let quitting = false;
  input.on('line', (line) => {
    queue = queue.then(async () => {
      if (quitting) return;
      const done = await runCommand(client, line, print);
      if (done) {
        quitting = true;
        input.close();
      }
    });
  });
  if (input.terminal) input.prompt();
  await ended;
  await queue;
  await client.close();
  return exitCode;
}

/** Runs one interactive command; true when the session should end. */
export async function runCommand(client: SwitchboardClient, line: string, print: (line: string) => void): Promise<boolean> {
  const trimmed = line.trim();
  if (!trimmed) return false;
  const [command = '', ...args] = trimmed.split(/\s+/);
  const rest = (n: number) => trimmed.replace(new RegExp(`^(\\S+\\s+){${n}}`), '');
  try {
    switch (command) {
      case 'send':
      case 'to': {
        if (args.length < 2) {
          print(`usage: ${command} <${command === 'send' ? 'userId' : 'conversationId'}> <text…>`);
          return false;
        }
        const target = command === 'send' ? { recipientUserId: args[0]! } : { conversationId: args[0]! };
        print(formatAck(await client.sendMessage({ ...target, text: rest(2) })));
        return false;
      }
      case 'history': {
        if (args.length < 1) {
          print('usage: history <conversationId> [fromSeq]');
          return false;
        }
        const fromSeq = args[1] === undefined ? 0 : Number(args[1]);
        if (!Number.isInteger(fromSeq) || fromSeq < 0) {
          print('fromSeq must be a non-negative integer');
          return false;
        }
        const page = await client.getHistory({
          conversationId: args[0]!,
          fromSeq,
          direction: args[1] === undefined ? messagingV1.Direction.DIRECTION_BACKWARD : messagingV1.Direction.DIRECTION_FORWARD,
          limit: 50,
        });
        const messages = [...page.messages].sort((a, b) => a.seq - b.seq);
        for (const m of messages) print(formatMessage(m));
        print(`(${messages.length} message(s)${page.hasMore ? ', more available' : ''})`);
        return false;
      }
      case 'convs': {
        const list = await client.listConversations();
        for (const c of list.conversations) {
          const kind = messagingV1.conversationKindToJSON(c.kind).replace(/^CONVERSATION_KIND_/, '').toLowerCase();
          print(`${c.conversationId} ${kind} last_seq=${c.lastSeq} members=${c.memberIds.join(',')}`);
        }
        print(`(${list.conversations.length} conversation(s)${list.page?.nextPageToken ? ', more available' : ''})`);
        return false;
      }
      case 'read': {
        const seq = Number(args[1]);
        if (!args[0] || !Number.isInteger(seq) || seq < 0) {
          print('usage: read <conversationId> <seq>');
          return false;
        }
        const state = await client.markRead(args[0], seq);
        print(`read conversation=${state.conversationId} delivered_seq=${state.deliveredSeq} read_seq=${state.readSeq}`);
        return false;
      }
      case 'ping': {
        const pong = await client.ping();
        print(`pong rtt=${pong.rttMs}ms server_time=${new Date(pong.serverTimeMs).toISOString()}`);
        return false;
      }
      case 'help':
        print(HELP);
        return false;
      case 'quit':
      case 'exit':
        return true;
      default:
        print(`unknown command ${JSON.stringify(command)}; try help`);
        return false;
    }
  } catch (err) {
    print(`error: ${describeError(err)}`);
    return false;
  }
}

if (require.main === module) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((err: unknown) => {
      process.stderr.write(`sb-client: ${describeError(err)}\n`);
      process.exitCode = 1;
    });
}
