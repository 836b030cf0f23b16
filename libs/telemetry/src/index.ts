import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  context,
  metrics,
  propagation,
  SpanKind,
  SpanStatusCode,
  trace,
  type Context,
  type Counter,
  type Histogram,
  type Meter,
  type Span,
  type Tracer,
} from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { BatchSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from '@opentelemetry/semantic-conventions';

export { SpanKind, SpanStatusCode, context, metrics, trace, type Context, type Counter, type Histogram, type Meter, type Span, type Tracer };

/** Latency buckets in seconds, from 1 ms to 10 s: fine where the budgets are (50 ms p99 end to end). */
export const LATENCY_BUCKETS_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export interface TelemetryOptions {
  serviceName: string;
  serviceVersion?: string;
  /** OTLP/HTTP traces endpoint (OTEL_EXPORTER_OTLP_ENDPOINT); without it spans still exist for log correlation but are not exported. */
  otlpEndpoint?: string | undefined;
  attributes?: Record<string, string>;
}

export interface Telemetry {
  tracer: Tracer;
  meter: Meter;
  /** Serves the Prometheus text format; mount it on the ops server's /metrics. */
  metricsHandler(req: IncomingMessage, res: ServerResponse): void;
  shutdown(): Promise<void>;
}

/**
 * Starts tracing (W3C trace context, OTLP export when configured) and metrics
 * (Prometheus pull through the service's own ops server). Call it first in a
 * service's start sequence.
 */
export function startTelemetry(options: TelemetryOptions): Telemetry {
  const resource = resourceFromAttributes({
    [ATTR_SERVICE_NAME]: options.serviceName,
    [ATTR_SERVICE_VERSION]: options.serviceVersion ?? '0.1.0',
    ...options.attributes,
  });

  const spanProcessors: SpanProcessor[] = [];
  if (options.otlpEndpoint) {
    spanProcessors.push(new BatchSpanProcessor(new OTLPTraceExporter({ url: `${options.otlpEndpoint.replace(/\/$/, '')}/v1/traces` })));
  }
  const tracerProvider = new NodeTracerProvider({ resource, spanProcessors });
  tracerProvider.register({
    contextManager: new AsyncLocalStorageContextManager(),
    propagator: new W3CTraceContextPropagator(),
  });

  const prometheus = new PrometheusExporter({ preventServerStart: true });
  const meterProvider = new MeterProvider({ resource, readers: [prometheus] });
  metrics.setGlobalMeterProvider(meterProvider);
  const meter = meterProvider.getMeter(options.serviceName);

  // Process memory, so dashboards and alerts can see it without a sidecar.
  meter
    .createObservableGauge('process_memory_bytes', { description: 'Process memory by kind (rss, heap_total: the V8 heap reserved, heap_used, external)', unit: 'By' })
    .addCallback((result) => {
      const usage = process.memoryUsage();
      result.observe(usage.rss, { kind: 'rss' });
      result.observe(usage.heapTotal, { kind: 'heap_total' });
      result.observe(usage.heapUsed, { kind: 'heap_used' });
      result.observe(usage.external, { kind: 'external' });
    });

  return {
    tracer: trace.getTracer(options.serviceName),
    meter,
    metricsHandler: (req, res) => prometheus.getMetricsRequestHandler(req, res),
    async shutdown() {
      await Promise.allSettled([tracerProvider.shutdown(), meterProvider.shutdown()]);
    },
  };
}

/** Writes the active (or given) trace context into message headers: NATS, Kafka, gRPC metadata. */
export function injectTraceContext(carrier: Record<string, string>, ctx: Context = context.active()): Record<string, string> {
  propagation.inject(ctx, carrier);
  return carrier;
}

/** Reads a trace context from message headers (missing headers give the root context). */
export function extractTraceContext(carrier: Record<string, string | undefined>): Context {
  return propagation.extract(context.active(), carrier, {
    get: (c, key) => c[key],
    keys: (c) => Object.keys(c),
  });
}

/**
 * Runs `fn` inside a new span (child of `parent` when given), records an
 * exception and error status when it throws, and always ends the span.
 */
export async function withSpan<T>(
  name: string,
  options: { kind?: SpanKind; parent?: Context; attributes?: Record<string, string | number | boolean> },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const tracer = trace.getTracer('switchboard');
  const parent = options.parent ?? context.active();
  return tracer.startActiveSpan(name, { kind: options.kind ?? SpanKind.INTERNAL, attributes: options.attributes ?? {} }, parent, async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      span.recordException(err as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
      throw err;
    } finally {
      span.end();
    }
  });
}

/**
 * A counter for hot paths: `add` only bumps a number kept here per value of
 * one label, and the sums reach the SDK at collection time through an
 * observable counter. A per-event `Counter.add` costs the SDK's attribute
 * hashing and storage lookup on every frame; this costs a Map lookup. The
 * exported series are the same (a monotonic sum per label value).
 */
export class HotCounter {
  private readonly sums = new Map<string, number>();

  constructor(meter: Meter, name: string, options: { description: string }, private readonly label?: string) {
    meter.createObservableCounter(name, options).addCallback((result) => {
      for (const [value, sum] of this.sums) result.observe(sum, this.label === undefined ? {} : { [this.label]: value });
    });
  }

  /** Adds to the sum of `labelValue` (ignored for a counter without a label). */
  add(amount: number, labelValue = ''): void {
    this.sums.set(labelValue, (this.sums.get(labelValue) ?? 0) + amount);
  }
}
