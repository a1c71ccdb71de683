/**
 * Connection options: plaintext, TLS with a CA, mutual TLS, bearer tokens (and their refusal over
 * plaintext), per-call metadata, against an in-process fake server (no Servewise server). The
 * certificates in fixtures/tls are test-only (fixtures/tls/make-certs.sh).
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { type sendUnaryData, type ServerUnaryCall, ServerCredentials } from "@grpc/grpc-js";

import {
  ServewiseClient,
  ServewiseError,
  ServewiseServiceService,
  SimulateResponse,
  Status,
} from "../src/index.js";
import { type FakeServer, startFakeServer, tlsFile } from "./helpers.js";

const answer = SimulateResponse.fromPartial({ capacityPerS: 1 });
const simulate = (_call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => callback(null, answer);

function authorization(server: FakeServer): (string | Buffer)[] {
  const last = server.calls.at(-1);
  assert.ok(last, "the server saw no call");
  return last.metadata.get("authorization");
}

async function failure(promise: Promise<unknown>): Promise<ServewiseError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ServewiseError, String(error));
    return error;
  }
  assert.fail("the call succeeded; expected it to fail");
}

test("the client has a method for every RPC of the service", () => {
  const client = new ServewiseClient({ address: "127.0.0.1:1" });
  try {
    for (const name of Object.keys(ServewiseServiceService)) {
      assert.equal(typeof (client as unknown as Record<string, unknown>)[name], "function", `no method ${name}`);
    }
  } finally {
    client.close();
  }
});

test("contradictory settings are refused when the client is made", () => {
  assert.throws(() => new ServewiseClient({ address: "" }), /address is required/);
  assert.throws(() => new ServewiseClient({ address: "127.0.0.1:1", timeoutMs: 0 }), /timeoutMs must be > 0/);
  assert.throws(
    () => new ServewiseClient({ address: "127.0.0.1:1", token: "secret" }),
    (error: unknown) => error instanceof TypeError && /refusing to send a bearer token over plaintext/.test(error.message),
  );
  assert.throws(
    () => new ServewiseClient({ address: "127.0.0.1:1", tls: false, token: () => "secret" }),
    /refusing to send a bearer token over plaintext/,
  );
  assert.throws(
    () => new ServewiseClient({ address: "127.0.0.1:1", tls: { cert: tlsFile("client.pem") } }),
    /tls\.cert and tls\.key go together/,
  );
  assert.throws(
    () => new ServewiseClient({ address: "127.0.0.1:1", tls: { key: tlsFile("client.key") } }),
    /tls\.cert and tls\.key go together/,
  );
});

describe("plaintext", () => {
  let server: FakeServer;
  before(async () => {
    server = await startFakeServer({ handlers: { simulate } });
  });
  after(() => server.stop());

  test("a plaintext client sends no authorization header", async () => {
    const client = new ServewiseClient({ address: server.address });
    try {
      assert.equal((await client.simulate({})).capacityPerS, 1);
      assert.equal(client.secure, false);
      assert.deepEqual(authorization(server), []);
    } finally {
      client.close();
    }
  });

  test("with allowInsecureToken the token goes over plaintext as `authorization: Bearer`", async () => {
    const client = new ServewiseClient({ address: server.address, token: "s3cret", allowInsecureToken: true });
    try {
      await client.simulate({});
      assert.deepEqual(authorization(server), ["Bearer s3cret"]);
    } finally {
      client.close();
    }
  });

  test("a token function is asked before every call, so rotated tokens are picked up", async () => {
    let n = 0;
    const client = new ServewiseClient({
      address: server.address,
      token: async () => `token-${++n}`,
      allowInsecureToken: true,
    });
    try {
      await client.simulate({});
      assert.deepEqual(authorization(server), ["Bearer token-1"]);
      await client.simulate({});
      assert.deepEqual(authorization(server), ["Bearer token-2"]);
    } finally {
      client.close();
    }
  });

  test("a token source that fails fails the call without sending it", async () => {
    const client = new ServewiseClient({
      address: server.address,
      token: () => Promise.reject(new Error("vault sealed")),
      allowInsecureToken: true,
      retry: false,
    });
    const before = server.calls.length;
    try {
      const error = await failure(client.simulate({}));
      // grpc-js ends the call with UNKNOWN when the credentials plugin fails (so it is not retried).
      assert.equal(error.code, Status.UNKNOWN);
      assert.match(error.details, /vault sealed/);
      assert.equal(server.calls.length, before);
    } finally {
      client.close();
    }
  });

  test("per-call metadata is sent, alongside the token", async () => {
    const client = new ServewiseClient({ address: server.address, token: "t", allowInsecureToken: true });
    try {
      await client.simulate({}, { metadata: { "x-request-id": "abc-123", "x-tags": ["a", "b"] } });
      const metadata = server.calls.at(-1)!.metadata;
      assert.deepEqual(metadata.get("x-request-id"), ["abc-123"]);
      // Repeated values of one key arrive joined by grpc-js's server, as HTTP/2 allows.
      assert.equal(metadata.get("x-tags").join(", "), "a, b");
      assert.deepEqual(metadata.get("authorization"), ["Bearer t"]);
    } finally {
      client.close();
    }
  });
});

describe("TLS", () => {
  let server: FakeServer;
  let mutual: FakeServer;
  const keyPair = [{ private_key: tlsFile("server.key"), cert_chain: tlsFile("server.pem") }];

  before(async () => {
    server = await startFakeServer({
      handlers: { simulate },
      credentials: ServerCredentials.createSsl(null, keyPair, false),
    });
    // Mutual TLS: the server demands a client certificate signed by the test CA.
    mutual = await startFakeServer({
      handlers: { simulate },
      credentials: ServerCredentials.createSsl(tlsFile("ca.pem"), keyPair, true),
    });
  });
  after(async () => {
    await server.stop();
    await mutual.stop();
  });

  test("TLS with the server's CA connects, and carries the bearer token", async () => {
    const client = new ServewiseClient({
      address: `localhost:${server.port}`,
      tls: { ca: tlsFile("ca.pem") },
      token: "over-tls",
    });
    try {
      assert.equal((await client.simulate({})).capacityPerS, 1);
      assert.equal(client.secure, true);
      assert.deepEqual(authorization(server), ["Bearer over-tls"]);
    } finally {
      client.close();
    }
  });

  test("the CA may be given as PEM text", async () => {
    const client = new ServewiseClient({ address: `localhost:${server.port}`, tls: { ca: tlsFile("ca.pem").toString("utf8") } });
    try {
      assert.equal((await client.simulate({})).capacityPerS, 1);
    } finally {
      client.close();
    }
  });

  test("serverName checks the certificate against another name than the address's host", async () => {
    // The certificate names localhost and 127.0.0.1; connect by IP but verify as localhost.
    const client = new ServewiseClient({
      address: `127.0.0.1:${server.port}`,
      tls: { ca: tlsFile("ca.pem"), serverName: "localhost" },
    });
    try {
      assert.equal((await client.simulate({})).capacityPerS, 1);
    } finally {
      client.close();
    }
  });

  test("a certificate from another CA is rejected: UNAVAILABLE, nothing reaches the server", async () => {
    const before = server.calls.length;
    const client = new ServewiseClient({
      address: `localhost:${server.port}`,
      tls: { ca: tlsFile("other-ca.pem") },
      retry: false,
      timeoutMs: 5_000,
    });
    try {
      const error = await failure(client.simulate({}));
      assert.equal(error.code, Status.UNAVAILABLE);
      assert.equal(server.calls.length, before);
    } finally {
      client.close();
    }
  });

  test("a plaintext client cannot talk to a TLS server", async () => {
    const client = new ServewiseClient({ address: `localhost:${server.port}`, retry: false, timeoutMs: 5_000 });
    try {
      assert.equal((await failure(client.simulate({}))).code, Status.UNAVAILABLE);
    } finally {
      client.close();
    }
  });

  test("mutual TLS: with the client certificate the call succeeds", async () => {
    const client = new ServewiseClient({
      address: `localhost:${mutual.port}`,
      tls: { ca: tlsFile("ca.pem"), cert: tlsFile("client.pem"), key: tlsFile("client.key") },
      token: "mtls",
    });
    try {
      assert.equal((await client.simulate({})).capacityPerS, 1);
      assert.deepEqual(authorization(mutual), ["Bearer mtls"]);
    } finally {
      client.close();
    }
  });

  test("mutual TLS: without a client certificate the server refuses the connection", async () => {
    const before = mutual.calls.length;
    const client = new ServewiseClient({
      address: `localhost:${mutual.port}`,
      tls: { ca: tlsFile("ca.pem") },
      retry: false,
      timeoutMs: 5_000,
    });
    try {
      assert.equal((await failure(client.simulate({}))).code, Status.UNAVAILABLE);
      assert.equal(mutual.calls.length, before);
    } finally {
      client.close();
    }
  });
});
