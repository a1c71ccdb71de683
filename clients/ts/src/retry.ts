/**
 * Retries with jittered exponential backoff, only for UNAVAILABLE.
 *
 * UNAVAILABLE means the server could not be reached or is shutting down (connection refused, a
 * GOAWAY while draining); nothing else is retried: INVALID_ARGUMENT and friends would fail again,
 * DEADLINE_EXCEEDED means the time budget is spent, and RESOURCE_EXHAUSTED is the server asking to
 * back off, which is the caller's decision. Every unary Servewise RPC computes an answer from its
 * request, so repeating one is safe. The Control stream is never retried.
 */
import { status as Status } from "@grpc/grpc-js";

export interface RetryPolicy {
  /** Total attempts including the first; 1 disables retries. */
  maxAttempts: number;
  /** Backoff before the first retry, in ms. */
  initialBackoffMs: number;
  /** Cap on any one backoff, in ms. */
  maxBackoffMs: number;
  /** Growth of the backoff from one retry to the next. */
  multiplier: number;
  /** Relative jitter in [0, 1]: each backoff is drawn uniformly from b·(1 ± jitter). */
  jitter: number;
}

export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 4,
  initialBackoffMs: 100,
  maxBackoffMs: 2_000,
  multiplier: 2,
  jitter: 0.2,
});

export const NO_RETRY: Readonly<RetryPolicy> = Object.freeze({ ...DEFAULT_RETRY_POLICY, maxAttempts: 1 });

/** The status codes a call is retried on. */
export const RETRYABLE_CODES: ReadonlySet<Status> = new Set([Status.UNAVAILABLE]);

/** A complete policy from a partial one (`false` disables retries); checks every field. */
export function resolveRetryPolicy(
  retry: Partial<RetryPolicy> | false | undefined,
  base: Readonly<RetryPolicy> = DEFAULT_RETRY_POLICY,
): RetryPolicy {
  if (retry === false) return { ...NO_RETRY };
  // Fields given as undefined keep the base value, as if omitted.
  const given = Object.fromEntries(Object.entries(retry ?? {}).filter(([, value]) => value !== undefined));
  const policy: RetryPolicy = { ...base, ...given };
  const check = (ok: boolean, what: string) => {
    if (!ok) throw new RangeError(`retry.${what}`);
  };
  check(Number.isInteger(policy.maxAttempts) && policy.maxAttempts >= 1, "maxAttempts must be an integer >= 1");
  check(Number.isFinite(policy.initialBackoffMs) && policy.initialBackoffMs >= 0, "initialBackoffMs must be >= 0");
  check(
    Number.isFinite(policy.maxBackoffMs) && policy.maxBackoffMs >= policy.initialBackoffMs,
    "maxBackoffMs must be >= initialBackoffMs",
  );
  check(Number.isFinite(policy.multiplier) && policy.multiplier >= 1, "multiplier must be >= 1");
  check(policy.jitter >= 0 && policy.jitter <= 1, "jitter must be in [0, 1]");
  return policy;
}

/**
 * The backoff before retry number `retry` (1 for the first retry), in ms:
 * min(maxBackoffMs, initialBackoffMs · multiplier^(retry-1)), jittered by ±jitter.
 * `random` returns a number in [0, 1) (Math.random by default; tests pass a fixed one).
 */
export function backoffMs(retry: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const base = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** (retry - 1));
  return base * (1 - policy.jitter + 2 * policy.jitter * random());
}

/** Whether a failed attempt with this code may be retried. */
export function isRetryable(code: Status): boolean {
  return RETRYABLE_CODES.has(code);
}
