/**
 * The Control stream as an async-iterable duplex, against an in-process fake server (the real one
 * answers UNIMPLEMENTED until the live-control issue lands; server.test.ts checks that).
 */
import assert from "node:assert/strict";
import { setTimeout as delay } from "node:timers/promises";
import { after, before, describe, test } from "node:test";

import { Metadata, type ServerDuplexStream } from "@grpc/grpc-js";

import {
  type ControlRequest,
  ControlResponse,
  ServewiseClient,
  ServewiseError,
  Status,
} from "../src/index.js";
import { type FakeServer, startFakeServer } from "./helpers.js";

type Call = ServerDuplexStream<ControlRequest, ControlResponse>;

/** How the fake server behaves, chosen per stream by the `x-behaviour` request header. */
const behaviours: Record<string, (call: Call) => void> = {
  // One response per request; the server ends when the client does.
  echo: (call) => {
    call.on("data", () => call.write(ControlResponse.fromPartial({})));
    call.on("end", () => call.end());
  },
  // One response, then FAILED_PRECONDITION.
  failAfterOne: (call) => {
    call.once("data", () => {
      call.write(ControlResponse.fromPartial({}));
      setTimeout(() => call.emit("error", { code: Status.FAILED_PRECONDITION, details: "stale state version" }), 10);
    });
  },
  // A status before the client has read anything.
  failAtOnce: (call) => {
    call.emit("error", { code: Status.NOT_FOUND, details: "unknown deployment", metadata: new Metadata() });
  },
  // Never answers: deadlines and cancellation end it.
  hang: () => {},
};

describe("Control stream", () => {
  let server: FakeServer;
  const seen: string[] = [];

  before(async () => {
    server = await startFakeServer({
      handlers: {
        control: (call: ServerDuplexStream<unknown, unknown>) => {
          const typed = call as Call;
          typed.on("data", (request: ControlRequest) => seen.push(request.deploymentId));
          const name = String(typed.metadata.get("x-behaviour")[0] ?? "echo");
          behaviours[name]!(typed);
        },
      },
    });
  });
  after(() => server.stop());

  function client(): ServewiseClient {
    return new ServewiseClient({ address: server.address, token: "stream-token", allowInsecureToken: true });
  }

  async function drain(iterable: AsyncIterable<ControlResponse>): Promise<{ events: number; error?: ServewiseError }> {
    let events = 0;
    try {
      for await (const _ of iterable) events++;
    } catch (error) {
      assert.ok(error instanceof ServewiseError, String(error));
      return { events, error };
    }
    return { events };
  }

  test("requests in, events out: pipeFrom an async generator and iterate the responses", async () => {
    const c = client();
    seen.length = 0;
    try {
      const stream = c.control({ metadata: { "x-behaviour": "echo" } });
      async function* samples() {
        for (const id of ["dep-a", "dep-b", "dep-c"]) {
          await delay(5);
          yield { deploymentId: id };
        }
      }
      const [result] = await Promise.all([drain(stream), stream.pipeFrom(samples())]);
      assert.deepEqual(result, { events: 3 });
      assert.deepEqual(seen, ["dep-a", "dep-b", "dep-c"]);
      assert.deepEqual(server.calls.at(-1)!.metadata.get("authorization"), ["Bearer stream-token"]);
    } finally {
      c.close();
    }
  });

  test("send and write one at a time, then end", async () => {
    const c = client();
    seen.length = 0;
    try {
      const stream = c.control({ metadata: { "x-behaviour": "echo" } });
      const reading = drain(stream);
      stream.send({ deploymentId: "one" });
      await stream.write({ deploymentId: "two" });
      stream.end();
      assert.deepEqual(await reading, { events: 2 });
      assert.deepEqual(seen, ["one", "two"]);
    } finally {
      c.close();
    }
  });

  test("a status mid-stream ends the iteration with a ServewiseError after the events before it", async () => {
    const c = client();
    try {
      const stream = c.control({ metadata: { "x-behaviour": "failAfterOne" } });
      stream.send({ deploymentId: "dep-1" });
      const { events, error } = await drain(stream);
      assert.equal(events, 1);
      assert.equal(error?.code, Status.FAILED_PRECONDITION);
      assert.equal(error?.details, "stale state version");
      assert.equal(error?.method, "Control");
    } finally {
      c.close();
    }
  });

  test("a status that arrives before anyone reads is kept for the iterator, not thrown as uncaught", async () => {
    const c = client();
    try {
      const stream = c.control({ metadata: { "x-behaviour": "failAtOnce" } });
      await delay(100); // the status arrives while nobody listens
      const { events, error } = await drain(stream);
      assert.equal(events, 0);
      assert.equal(error?.code, Status.NOT_FOUND);
    } finally {
      c.close();
    }
  });

  test("cancel() ends the iteration with CANCELLED", async () => {
    const c = client();
    try {
      const stream = c.control({ metadata: { "x-behaviour": "hang" } });
      setTimeout(() => stream.cancel(), 50);
      assert.equal((await drain(stream)).error?.code, Status.CANCELLED);
    } finally {
      c.close();
    }
  });

  test("an AbortSignal cancels the stream", async () => {
    const c = client();
    try {
      const stream = c.control({ metadata: { "x-behaviour": "hang" }, signal: AbortSignal.timeout(50) });
      assert.equal((await drain(stream)).error?.code, Status.CANCELLED);
    } finally {
      c.close();
    }
  });

  test("timeoutMs is the whole stream's deadline", async () => {
    const c = client();
    try {
      const started = Date.now();
      const stream = c.control({ metadata: { "x-behaviour": "hang" }, timeoutMs: 100 });
      assert.equal((await drain(stream)).error?.code, Status.DEADLINE_EXCEEDED);
      assert.ok(Date.now() - started < 2_000);
    } finally {
      c.close();
    }
  });
});
