/**
 * Deadlines, retries and cancellation, against an in-process fake server (no Servewise server).
 */
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, before, describe, test } from "node:test";

import { type sendUnaryData, type ServerUnaryCall, status } from "@grpc/grpc-js";

import {
  backoffMs,
  DEFAULT_RETRY_POLICY,
  isRetryable,
  resolveRetryPolicy,
  type RetryPolicy,
  ServewiseClient,
  ServewiseError,
  SimulateResponse,
  Status,
} from "../src/index.js";
import { type FakeServer, startFakeServer } from "./helpers.js";

const FAST: Partial<RetryPolicy> = { initialBackoffMs: 5, maxBackoffMs: 20, jitter: 0 };

const ok = SimulateResponse.fromPartial({ capacityPerS: 42, result: { requestsSimulated: 7n } });

async function rejection(promise: Promise<unknown>): Promise<ServewiseError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ServewiseError, `expected a ServewiseError, got ${String(error)}`);
    return error;
  }
  assert.fail("the call succeeded; expected it to fail");
}

/** A port nothing listens on: bound, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  assert.ok(address && typeof address === "object");
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return address.port;
}

describe("backoff and retry policy", () => {
  test("backoff grows by the multiplier from the initial value and stops at the cap", () => {
    const policy = resolveRetryPolicy({ initialBackoffMs: 100, maxBackoffMs: 1000, multiplier: 2, jitter: 0 });
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6].map((retry) => backoffMs(retry, policy)),
      [100, 200, 400, 800, 1000, 1000],
    );
  });

  test("jitter spreads each backoff uniformly over b*(1 +- jitter)", () => {
    const policy = resolveRetryPolicy({ initialBackoffMs: 100, multiplier: 2, jitter: 0.2 });
    assert.equal(backoffMs(2, policy, () => 0), 160);
    assert.equal(backoffMs(2, policy, () => 0.5), 200);
    assert.ok(Math.abs(backoffMs(2, policy, () => 0.999999) - 240) < 1e-3);
    for (let i = 0; i < 1000; i++) {
      const wait = backoffMs(1, policy);
      assert.ok(wait >= 80 && wait < 120, `backoff ${wait} outside 100 +- 20%`);
    }
  });

  test("only UNAVAILABLE is retryable", () => {
    const retryable = Object.values(status)
      .filter((code): code is status => typeof code === "number")
      .filter(isRetryable);
    assert.deepEqual(retryable, [Status.UNAVAILABLE]);
  });

  test("defaults: 4 attempts, 100 ms doubling to at most 2 s, 20% jitter; false means one attempt", () => {
    assert.deepEqual(resolveRetryPolicy(undefined), { ...DEFAULT_RETRY_POLICY });
    assert.equal(resolveRetryPolicy(false).maxAttempts, 1);
    assert.equal(resolveRetryPolicy({ maxAttempts: 7 }).maxAttempts, 7);
    assert.deepEqual(resolveRetryPolicy({ maxAttempts: undefined }), { ...DEFAULT_RETRY_POLICY });
  });

  test("a policy that makes no sense is refused, naming the field", () => {
    assert.throws(() => resolveRetryPolicy({ maxAttempts: 0 }), /retry\.maxAttempts/);
    assert.throws(() => resolveRetryPolicy({ maxAttempts: 1.5 }), /retry\.maxAttempts/);
    assert.throws(() => resolveRetryPolicy({ initialBackoffMs: -1 }), /retry\.initialBackoffMs/);
    assert.throws(() => resolveRetryPolicy({ initialBackoffMs: 500, maxBackoffMs: 100 }), /retry\.maxBackoffMs/);
    assert.throws(() => resolveRetryPolicy({ multiplier: 0.5 }), /retry\.multiplier/);
    assert.throws(() => resolveRetryPolicy({ jitter: 2 }), /retry\.jitter/);
    assert.throws(() => new ServewiseClient({ address: "127.0.0.1:1", retry: { maxAttempts: 0 } }), RangeError);
  });
});

describe("retries against a fake server", () => {
  let server: FakeServer;
  /** What the fake Simulate answers, attempt by attempt (the last entry repeats). */
  let script: (status | "ok" | "slow" | "hang")[] = [];
  let attempts = 0;

  before(async () => {
    server = await startFakeServer({
      handlers: {
        evaluateSwitch: (_call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
          attempts++;
          callback({ code: Status.UNAVAILABLE, details: "scripted UNAVAILABLE" });
        },
        simulate: (_call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
          const step = script[Math.min(attempts, script.length - 1)];
          attempts++;
          if (step === "ok") callback(null, ok);
          else if (step === "slow") setTimeout(() => callback(null, ok), 300);
          else if (step === "hang") return; // never answers: the client's deadline or cancel ends it
          else callback({ code: step, details: `scripted ${Status[step!]}` });
        },
      },
    });
  });
  after(() => server.stop());

  function client(options: { retry?: Partial<RetryPolicy> | false; timeoutMs?: number } = {}) {
    attempts = 0;
    return new ServewiseClient({ address: server.address, retry: options.retry ?? FAST, timeoutMs: options.timeoutMs });
  }

  test("UNAVAILABLE twice, then an answer: the call succeeds on the third attempt", async () => {
    script = [Status.UNAVAILABLE, Status.UNAVAILABLE, "ok"];
    const c = client();
    try {
      const answer = await c.simulate({});
      assert.equal(answer.capacityPerS, 42);
      assert.equal(answer.result?.requestsSimulated, 7n);
      assert.equal(attempts, 3);
    } finally {
      c.close();
    }
  });

  test("UNAVAILABLE every time: gives up after maxAttempts with the last UNAVAILABLE", async () => {
    script = [Status.UNAVAILABLE];
    const c = client({ retry: { ...FAST, maxAttempts: 3 } });
    try {
      const error = await rejection(c.simulate({}));
      assert.equal(error.code, Status.UNAVAILABLE);
      assert.equal(error.details, "scripted UNAVAILABLE");
      assert.equal(error.attempts, 3);
      assert.equal(attempts, 3);
    } finally {
      c.close();
    }
  });

  for (const code of [
    Status.INVALID_ARGUMENT,
    Status.DEADLINE_EXCEEDED,
    Status.RESOURCE_EXHAUSTED,
    Status.INTERNAL,
    Status.UNIMPLEMENTED,
    Status.FAILED_PRECONDITION,
  ]) {
    test(`${Status[code]} is not retried`, async () => {
      script = [code, "ok"];
      const c = client({ retry: { ...FAST, maxAttempts: 5 } });
      try {
        const error = await rejection(c.simulate({}));
        assert.equal(error.code, code);
        assert.equal(error.attempts, 1);
        assert.equal(attempts, 1);
      } finally {
        c.close();
      }
    });
  }

  test("EvaluateSwitch writes a decision: UNAVAILABLE is not retried", async () => {
    const c = client({ retry: { ...FAST, maxAttempts: 5 } });
    try {
      const error = await rejection(c.evaluateSwitch({ deploymentId: "d" }));
      assert.equal(error.code, Status.UNAVAILABLE);
      assert.equal(error.attempts, 1);
      assert.equal(attempts, 1);
    } finally {
      c.close();
    }
  });

  test("retry: false on the client disables retries; a call can turn them back on", async () => {
    script = [Status.UNAVAILABLE, "ok"];
    const c = client({ retry: false });
    try {
      assert.equal((await rejection(c.simulate({}))).attempts, 1);
      attempts = 0;
      const answer = await c.simulate({}, { retry: { ...FAST, maxAttempts: 2 } });
      assert.equal(answer.capacityPerS, 42);
      assert.equal(attempts, 2);
    } finally {
      c.close();
    }
  });

  test("the per-call timeout is the call's deadline: DEADLINE_EXCEEDED, not retried", async () => {
    script = ["hang"];
    const c = client({ timeoutMs: 10_000 });
    try {
      const started = Date.now();
      const error = await rejection(c.simulate({}, { timeoutMs: 150 }));
      const elapsed = Date.now() - started;
      assert.equal(error.code, Status.DEADLINE_EXCEEDED);
      assert.equal(error.attempts, 1);
      assert.ok(elapsed >= 140 && elapsed < 2_000, `deadline hit after ${elapsed} ms`);
    } finally {
      c.close();
    }
  });

  test("the client's default timeout applies when the call sets none", async () => {
    script = ["hang"];
    const c = client({ timeoutMs: 100 });
    try {
      assert.equal((await rejection(c.simulate({}))).code, Status.DEADLINE_EXCEEDED);
    } finally {
      c.close();
    }
  });

  test("timeoutMs: Infinity sets no deadline for the call", async () => {
    script = ["slow"];
    const c = client({ timeoutMs: 100 });
    try {
      assert.equal((await rejection(c.simulate({}))).code, Status.DEADLINE_EXCEEDED, "the default applies");
      assert.equal((await c.simulate({}, { timeoutMs: Infinity })).capacityPerS, 42);
    } finally {
      c.close();
    }
  });

  test("the deadline covers retries: no attempt starts after it", async () => {
    script = [Status.UNAVAILABLE];
    const c = client({ retry: { maxAttempts: 100, initialBackoffMs: 40, maxBackoffMs: 40, jitter: 0 } });
    try {
      const started = Date.now();
      const error = await rejection(c.simulate({}, { timeoutMs: 200 }));
      const elapsed = Date.now() - started;
      assert.equal(error.code, Status.UNAVAILABLE, "the last real failure, not a made-up deadline error");
      // At most 200/40 + 1 attempts fit; without the deadline there would be 100 (4 s of backoff).
      assert.ok(error.attempts <= 6, `${error.attempts} attempts in 200 ms at 40 ms apart`);
      assert.equal(attempts, error.attempts);
      assert.ok(elapsed < 1_000, `gave up after ${elapsed} ms`);
    } finally {
      c.close();
    }
  });

  test("an AbortSignal cancels a call in flight: CANCELLED", async () => {
    script = ["hang"];
    const c = client();
    try {
      const controller = new AbortController();
      setTimeout(() => controller.abort(), 50);
      const error = await rejection(c.simulate({}, { signal: controller.signal, timeoutMs: 10_000 }));
      assert.equal(error.code, Status.CANCELLED);
    } finally {
      c.close();
    }
  });

  test("an AbortSignal cancels the wait between retries", async () => {
    script = [Status.UNAVAILABLE];
    const c = client({ retry: { maxAttempts: 5, initialBackoffMs: 5_000, maxBackoffMs: 5_000, jitter: 0 } });
    try {
      const controller = new AbortController();
      setTimeout(() => controller.abort(), 100);
      const started = Date.now();
      const error = await rejection(c.simulate({}, { signal: controller.signal, timeoutMs: 20_000 }));
      assert.equal(error.code, Status.CANCELLED);
      assert.equal(error.attempts, 1);
      assert.ok(Date.now() - started < 2_000);
    } finally {
      c.close();
    }
  });

  test("an already aborted signal makes no attempt", async () => {
    script = ["ok"];
    const c = client();
    try {
      const error = await rejection(c.simulate({}, { signal: AbortSignal.abort() }));
      assert.equal(error.code, Status.CANCELLED);
      assert.equal(attempts, 0);
    } finally {
      c.close();
    }
  });
});

test("nothing listening: UNAVAILABLE, retried maxAttempts times with backoff", async () => {
  const c = new ServewiseClient({
    address: `127.0.0.1:${await closedPort()}`,
    retry: { maxAttempts: 3, initialBackoffMs: 50, maxBackoffMs: 50, jitter: 0 },
  });
  try {
    const started = Date.now();
    const error = await rejection(c.optimizeBatch({}));
    assert.equal(error.code, Status.UNAVAILABLE);
    assert.equal(error.method, "OptimizeBatch");
    assert.equal(error.attempts, 3);
    assert.ok(Date.now() - started >= 100, "two backoffs of 50 ms between three attempts");
    await assert.rejects(c.waitForReady(200), (e: unknown) => e instanceof ServewiseError && e.code === Status.UNAVAILABLE);
  } finally {
    c.close();
  }
});
