/**
 * ServewiseClient: a thin, Promise-based wrapper over the generated grpc-js client.
 *
 * Every unary RPC is an async method taking a plain object (anything the generated
 * `Message.fromPartial` accepts: omitted fields take their proto defaults, uint64 fields take a
 * bigint, number or decimal string) and resolving to the generated response type. Calls carry a
 * deadline, are retried only on UNAVAILABLE, and fail with a ServewiseError.
 */
import {
  type CallCredentials,
  type CallOptions as GrpcCallOptions,
  type ChannelOptions,
  type ClientDuplexStream,
  type Deadline,
  Metadata,
  status as Status,
} from "@grpc/grpc-js";

import { type CredentialOptions, resolveCredentials } from "./credentials.js";
import { ServewiseError, toServewiseError } from "./errors.js";
import {
  ControlRequest,
  type ControlResponse,
  type DeepPartial,
  EvaluateSwitchRequest,
  type EvaluateSwitchResponse,
  GetDeploymentRequest,
  type GetDeploymentResponse,
  ListDeploymentsRequest,
  type ListDeploymentsResponse,
  type MessageFns,
  OptimizeBatchRequest,
  type OptimizeBatchResponse,
  PlanResourcesRequest,
  type PlanResourcesResponse,
  RegisterDeploymentRequest,
  type RegisterDeploymentResponse,
  RouteRequest,
  type RouteResponse,
  SelectModeRequest,
  type SelectModeResponse,
  ServewiseServiceClient,
  ServewiseServiceService,
  SimulateRequest,
  type SimulateResponse,
} from "./gen/servewise/v1/servewise.js";
import { backoffMs, isRetryable, resolveRetryPolicy, type RetryPolicy } from "./retry.js";

/** Per-call deadline when neither the client nor the call sets one. */
export const DEFAULT_TIMEOUT_MS = 30_000;

export interface ConnectOptions extends CredentialOptions {
  /** Where the server listens: `host:port`, or any grpc-js target (`dns:///host:port`, ...). */
  address: string;
  /**
   * Default deadline of each unary call in ms, retries included (30 s unless set).
   * `Infinity` for none. Streams have no default deadline.
   */
  timeoutMs?: number;
  /** Default retry policy; `false` disables retries. Only UNAVAILABLE is ever retried. */
  retry?: Partial<RetryPolicy> | false;
  /** Extra grpc-js channel options (keepalive, message sizes, ...). */
  channelOptions?: ChannelOptions;
}

export type MetadataInit = Metadata | Record<string, string | string[]>;

export interface CallOptions {
  /** Deadline of this call in ms, retries and backoff included; overrides the client's default. */
  timeoutMs?: number;
  /** Retry policy of this call, merged over the client's; `false` disables retries. */
  retry?: Partial<RetryPolicy> | false;
  /** Extra request metadata (headers). */
  metadata?: MetadataInit;
  /** Cancels the call (and any pending retry) when aborted; the call fails with CANCELLED. */
  signal?: AbortSignal;
}

export interface StreamOptions {
  /** Deadline of the whole stream in ms; none unless given (streams are long-lived). */
  timeoutMs?: number;
  metadata?: MetadataInit;
  /** Cancels the stream when aborted. */
  signal?: AbortSignal;
}

/** What the wrapper needs from one generated unary method definition. */
interface UnaryDefinition<Req, Res> {
  readonly path: string;
  readonly requestSerialize: (value: Req) => Buffer;
  readonly responseDeserialize: (value: Buffer) => Res;
}

/** `OptimizeBatch` from `/servewise.v1.ServewiseService/OptimizeBatch`. */
/**
 * RPCs that write state, never repeated: an UNAVAILABLE may follow a write that happened, and
 * repeating EvaluateSwitch could log its decision twice.
 */
const NOT_RETRIED: ReadonlySet<string> = new Set(["EvaluateSwitch", "RegisterDeployment"]);

function methodName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

function toMetadata(init: MetadataInit | undefined): Metadata {
  if (init instanceof Metadata) return init.clone();
  const metadata = new Metadata();
  for (const [key, value] of Object.entries(init ?? {})) {
    for (const item of Array.isArray(value) ? value : [value]) metadata.add(key, item);
  }
  return metadata;
}

function checkTimeout(timeoutMs: number, what: string): number {
  if (!(timeoutMs > 0)) throw new RangeError(`${what} must be > 0 ms (or Infinity for none); got ${timeoutMs}`);
  return timeoutMs;
}

function cancelledError(method: string, attempts: number, reason: unknown): ServewiseError {
  return new ServewiseError({
    method,
    code: Status.CANCELLED,
    details: "cancelled by the caller's AbortSignal",
    attempts,
    cause: reason,
  });
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export class ServewiseClient {
  /** The generated grpc-js client, for anything the wrapper does not cover. */
  readonly raw: ServewiseServiceClient;
  readonly address: string;
  /** Whether the channel uses TLS. */
  readonly secure: boolean;
  private readonly callCredentials: CallCredentials | undefined;
  private readonly timeoutMs: number;
  private readonly retry: RetryPolicy;

  /**
   * Creates the channel; it connects on the first call (or `waitForReady`). Throws a TypeError for
   * contradictory settings, such as a token over plaintext without `allowInsecureToken`.
   */
  constructor(options: ConnectOptions) {
    if (!options.address) throw new TypeError("address is required (host:port)");
    const resolved = resolveCredentials(options);
    this.address = options.address;
    this.secure = resolved.secure;
    this.callCredentials = resolved.call;
    this.timeoutMs = checkTimeout(options.timeoutMs ?? DEFAULT_TIMEOUT_MS, "timeoutMs");
    this.retry = resolveRetryPolicy(options.retry);
    this.raw = new ServewiseServiceClient(options.address, resolved.channel, {
      ...options.channelOptions,
      ...resolved.channelOptions,
    });
  }

  /** Resolves once the channel is connected; rejects (UNAVAILABLE) if it is not within timeoutMs. */
  waitForReady(timeoutMs: number = this.timeoutMs): Promise<void> {
    const deadline = Date.now() + checkTimeout(timeoutMs, "timeoutMs");
    return new Promise((resolve, reject) => {
      this.raw.waitForReady(deadline, (error) => {
        if (!error) resolve();
        else
          reject(
            new ServewiseError({
              method: "waitForReady",
              code: Status.UNAVAILABLE,
              details: `${this.address} not ready within ${timeoutMs} ms: ${error.message}`,
              cause: error,
            }),
          );
      });
    });
  }

  /** Closes the channel; calls in flight are cancelled. */
  close(): void {
    this.raw.close();
  }

  /** The cheapest (instance type, max batch size, max queue delay, replicas) meeting the SLO. */
  optimizeBatch(request: DeepPartial<OptimizeBatchRequest>, options?: CallOptions): Promise<OptimizeBatchResponse> {
    return this.unary(ServewiseServiceService.optimizeBatch, OptimizeBatchRequest, request, options);
  }

  /** Real-time, dynamic batching, offline batch or hybrid, with a plan for each. */
  selectMode(request: DeepPartial<SelectModeRequest>, options?: CallOptions): Promise<SelectModeResponse> {
    return this.unary(ServewiseServiceService.selectMode, SelectModeRequest, request, options);
  }

  /** Replicas over a day: dedicated, autoscaled or shared, with exports. */
  planResources(request: DeepPartial<PlanResourcesRequest>, options?: CallOptions): Promise<PlanResourcesResponse> {
    return this.unary(ServewiseServiceService.planResources, PlanResourcesRequest, request, options);
  }

  /** Given recent metrics, hold or switch. */
  evaluateSwitch(request: DeepPartial<EvaluateSwitchRequest>, options?: CallOptions): Promise<EvaluateSwitchResponse> {
    return this.unary(ServewiseServiceService.evaluateSwitch, EvaluateSwitchRequest, request, options);
  }

  /** Create a deployment (stateVersion 0) or update it at its current state version; a stale version fails with FAILED_PRECONDITION. */
  registerDeployment(request: DeepPartial<RegisterDeploymentRequest>, options?: CallOptions): Promise<RegisterDeploymentResponse> {
    return this.unary(ServewiseServiceService.registerDeployment, RegisterDeploymentRequest, request, options);
  }

  /** One deployment with its state version; NOT_FOUND when unknown. */
  getDeployment(request: DeepPartial<GetDeploymentRequest>, options?: CallOptions): Promise<GetDeploymentResponse> {
    return this.unary(ServewiseServiceService.getDeployment, GetDeploymentRequest, request, options);
  }

  /** Every deployment, by id, a page at a time. */
  listDeployments(request: DeepPartial<ListDeploymentsRequest>, options?: CallOptions): Promise<ListDeploymentsResponse> {
    return this.unary(ServewiseServiceService.listDeployments, ListDeploymentsRequest, request, options);
  }

  /** Which pool a request goes to. */
  route(request: DeepPartial<RouteRequest>, options?: CallOptions): Promise<RouteResponse> {
    return this.unary(ServewiseServiceService.route, RouteRequest, request, options);
  }

  /** Discrete-event simulation of exactly one plan and workload. */
  simulate(request: DeepPartial<SimulateRequest>, options?: CallOptions): Promise<SimulateResponse> {
    return this.unary(ServewiseServiceService.simulate, SimulateRequest, request, options);
  }

  /**
   * Opens the Control stream: metric samples in (`send`, `write`, `pipeFrom`, then `end`),
   * control events out (`for await (const event of stream)`). Never retried.
   */
  control(options: StreamOptions = {}): ControlStream {
    const definition = ServewiseServiceService.control;
    const callOptions: Partial<GrpcCallOptions> = {};
    if (options.timeoutMs !== undefined) {
      callOptions.deadline = Date.now() + checkTimeout(options.timeoutMs, "timeoutMs");
    }
    if (this.callCredentials) callOptions.credentials = this.callCredentials;
    const call = this.raw.makeBidiStreamRequest(
      definition.path,
      definition.requestSerialize,
      definition.responseDeserialize,
      toMetadata(options.metadata),
      callOptions,
    );
    return new ControlStream(call, methodName(definition.path), options.signal);
  }

  private async unary<Req, Res>(
    definition: UnaryDefinition<Req, Res>,
    type: MessageFns<Req>,
    request: DeepPartial<Req>,
    options: CallOptions = {},
  ): Promise<Res> {
    const method = methodName(definition.path);
    const message = type.fromPartial(request as Parameters<MessageFns<Req>["fromPartial"]>[0]);
    const timeoutMs = checkTimeout(options.timeoutMs ?? this.timeoutMs, "timeoutMs");
    const deadline = Date.now() + timeoutMs;
    const policy = options.retry === undefined ? this.retry : resolveRetryPolicy(options.retry, this.retry);
    const metadata = toMetadata(options.metadata);
    for (let attempt = 1; ; attempt++) {
      if (options.signal?.aborted) throw cancelledError(method, attempt - 1, options.signal.reason);
      try {
        return await this.attempt(definition, message, metadata.clone(), deadline, options.signal);
      } catch (caught) {
        const error = toServewiseError(caught, method, attempt);
        if (!isRetryable(error.code) || attempt >= policy.maxAttempts || NOT_RETRIED.has(method)) {
          throw error;
        }
        const wait = backoffMs(attempt, policy);
        // The deadline covers the retries: give up when the next attempt could not start in time.
        if (Date.now() + wait >= deadline) throw error;
        try {
          await sleep(wait, options.signal);
        } catch (reason) {
          throw cancelledError(method, attempt, reason);
        }
      }
    }
  }

  private attempt<Req, Res>(
    definition: UnaryDefinition<Req, Res>,
    message: Req,
    metadata: Metadata,
    deadline: Deadline,
    signal: AbortSignal | undefined,
  ): Promise<Res> {
    const callOptions: Partial<GrpcCallOptions> = { deadline };
    if (this.callCredentials) callOptions.credentials = this.callCredentials;
    return new Promise((resolve, reject) => {
      const call = this.raw.makeUnaryRequest(
        definition.path,
        definition.requestSerialize,
        definition.responseDeserialize,
        message,
        metadata,
        callOptions,
        (error, response) => {
          signal?.removeEventListener("abort", onAbort);
          if (error) reject(error);
          else if (response === undefined) reject(new Error("the server sent no response message"));
          else resolve(response);
        },
      );
      // grpc-js reports a cancelled call as CANCELLED through the callback above.
      const onAbort = () => call.cancel();
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }
}

/**
 * One Control stream: a duplex of ControlRequest in and ControlResponse out.
 *
 * Iterate it (`for await`) for the responses; a non-OK end of the stream is thrown from the loop
 * as a ServewiseError. Write with `send`/`write` or hand an (async) iterable to `pipeFrom`, and
 * `end` the request side when done.
 */
export class ControlStream implements AsyncIterable<ControlResponse> {
  /** The underlying grpc-js duplex stream. */
  readonly call: ClientDuplexStream<ControlRequest, ControlResponse>;
  private readonly method: string;
  private error: ServewiseError | undefined;

  constructor(call: ClientDuplexStream<ControlRequest, ControlResponse>, method: string, signal?: AbortSignal) {
    this.call = call;
    this.method = method;
    // Keep the failure for the iterator: with no 'error' listener an early status would be thrown
    // as an uncaught exception before the caller starts reading.
    call.on("error", (error: unknown) => {
      this.error ??= toServewiseError(error, method);
    });
    if (signal) {
      const onAbort = () => call.cancel();
      if (signal.aborted) onAbort();
      else {
        signal.addEventListener("abort", onAbort, { once: true });
        call.on("close", () => signal.removeEventListener("abort", onAbort));
      }
    }
  }

  /** Queues one request; returns false when the caller should wait (see `write`). */
  send(request: DeepPartial<ControlRequest>): boolean {
    return this.call.write(ControlRequest.fromPartial(request));
  }

  /** Writes one request, waiting for the stream to drain when its buffer is full. */
  async write(request: DeepPartial<ControlRequest>): Promise<void> {
    if (!this.send(request)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.call.off("drain", done);
          this.call.off("close", done);
          resolve();
        };
        this.call.once("drain", done);
        this.call.once("close", done);
      });
    }
  }

  /** Writes every request from `requests`, then ends the request side. */
  async pipeFrom(
    requests: AsyncIterable<DeepPartial<ControlRequest>> | Iterable<DeepPartial<ControlRequest>>,
  ): Promise<void> {
    for await (const request of requests) {
      if (this.error || this.call.destroyed) break;
      await this.write(request);
    }
    this.end();
  }

  /** Ends the request side (half-close); responses keep arriving until the server ends. */
  end(): void {
    if (!this.call.writableEnded && !this.call.destroyed) this.call.end();
  }

  /** Cancels the stream; iteration then ends with CANCELLED. */
  cancel(): void {
    this.call.cancel();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ControlResponse> {
    try {
      for await (const response of this.call) yield response as ControlResponse;
    } catch (error) {
      throw this.error ?? toServewiseError(error, this.method);
    }
    if (this.error) throw this.error;
  }
}
