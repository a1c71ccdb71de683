/**
 * The rich error model: google.rpc.Status / BadRequest decoding and ServewiseError, from bytes
 * made here and from a fake server's trailer (no Servewise server).
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { Metadata, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";

import {
  decodeBadRequest,
  decodeStatus,
  fieldViolationsOf,
  ServewiseClient,
  ServewiseError,
  STATUS_DETAILS_KEY,
  Status,
  statusName,
  toServewiseError,
} from "../src/index.js";
import { startFakeServer } from "./helpers.js";

interface Violation {
  field: string;
  description: string;
  reason?: string;
}

/** A serialized google.rpc.BadRequest; an extra unknown field checks that decoding skips it. */
function badRequest(violations: Violation[]): Uint8Array {
  const writer = new BinaryWriter();
  for (const v of violations) {
    writer.uint32((1 << 3) | 2).fork();
    writer.uint32((1 << 3) | 2).string(v.field);
    writer.uint32((2 << 3) | 2).string(v.description);
    if (v.reason) writer.uint32((3 << 3) | 2).string(v.reason);
    writer.uint32((9 << 3) | 0).int32(77); // unknown varint field
    writer.join();
  }
  return writer.finish();
}

/** A serialized google.rpc.Status with the given details (type URL, bytes). */
function richStatus(code: number, message: string, details: [string, Uint8Array][]): Uint8Array {
  const writer = new BinaryWriter();
  writer.uint32((1 << 3) | 0).int32(code);
  writer.uint32((2 << 3) | 2).string(message);
  for (const [typeUrl, value] of details) {
    writer.uint32((3 << 3) | 2).fork();
    writer.uint32((1 << 3) | 2).string(typeUrl);
    writer.uint32((2 << 3) | 2).bytes(value);
    writer.join();
  }
  writer.uint32((15 << 3) | 2).string("unknown length-delimited field");
  return writer.finish();
}

const VIOLATIONS: Violation[] = [
  { field: "workload.rate_per_s", description: "must be finite and > 0 (got -5.0)" },
  { field: "candidates[1].profile.linear.per_item_ms", description: "must be >= 0", reason: "NEGATIVE" },
];

const ERROR_INFO_URL = "type.googleapis.com/google.rpc.ErrorInfo";

test("a google.rpc.Status with BadRequest and other details decodes, skipping unknown fields", () => {
  const bytes = richStatus(3, "invalid request: 2 field violations", [
    [ERROR_INFO_URL, new Uint8Array([10, 3, 65, 66, 67])],
    ["type.googleapis.com/google.rpc.BadRequest", badRequest(VIOLATIONS)],
  ]);
  const status = decodeStatus(bytes);
  assert.equal(status.code, 3);
  assert.equal(status.message, "invalid request: 2 field violations");
  assert.deepEqual(
    status.details.map((d) => d.typeUrl),
    [ERROR_INFO_URL, "type.googleapis.com/google.rpc.BadRequest"],
  );
  assert.deepEqual(fieldViolationsOf(status), [
    { ...VIOLATIONS[0], reason: "" },
    { ...VIOLATIONS[1] },
  ]);
});

test("BadRequest is recognised by its message name whatever the type URL's host", () => {
  const status = decodeStatus(richStatus(3, "", [["example.com/google.rpc.BadRequest", badRequest(VIOLATIONS)]]));
  assert.equal(fieldViolationsOf(status).length, 2);
});

test("an empty BadRequest and an empty status decode to nothing", () => {
  assert.deepEqual(decodeBadRequest(new Uint8Array(0)), []);
  assert.deepEqual(decodeStatus(new Uint8Array(0)), { code: 0, message: "", details: [] });
});

test("truncated bytes throw rather than decode to something wrong", () => {
  const bytes = richStatus(3, "x", [["type.googleapis.com/google.rpc.BadRequest", badRequest(VIOLATIONS)]]);
  assert.throws(() => decodeStatus(bytes.subarray(0, bytes.length - 40)));
});

test("toServewiseError keeps code, message and trailer violations of a grpc-js error", () => {
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(richStatus(3, "bad", [["type.googleapis.com/google.rpc.BadRequest", badRequest(VIOLATIONS)]])));
  const grpcError = Object.assign(new Error("3 INVALID_ARGUMENT: bad"), { code: Status.INVALID_ARGUMENT, details: "bad", metadata });
  const error = toServewiseError(grpcError, "OptimizeBatch");
  assert.ok(error instanceof ServewiseError && error instanceof Error);
  assert.equal(error.name, "ServewiseError");
  assert.equal(error.message, "OptimizeBatch: INVALID_ARGUMENT: bad");
  assert.equal(error.code, Status.INVALID_ARGUMENT);
  assert.deepEqual(error.fields, ["workload.rate_per_s", "candidates[1].profile.linear.per_item_ms"]);
  assert.equal(error.cause, grpcError);
  assert.equal(error.attempts, 1);
  assert.equal(toServewiseError(grpcError, "OptimizeBatch", 3).attempts, 3);
});

test("a malformed trailer still gives the status, without violations", () => {
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from([0x1a, 0xff, 0xff, 0xff]));
  const grpcError = Object.assign(new Error("x"), { code: Status.INVALID_ARGUMENT, details: "bad", metadata });
  const error = toServewiseError(grpcError, "Simulate");
  assert.equal(error.code, Status.INVALID_ARGUMENT);
  assert.deepEqual(error.fieldViolations, []);
});

test("anything that is not a gRPC status becomes UNKNOWN, keeping the original as the cause", () => {
  const original = new TypeError("boom");
  const error = toServewiseError(original, "Route");
  assert.equal(error.code, Status.UNKNOWN);
  assert.equal(error.details, "boom");
  assert.equal(error.cause, original);
  assert.equal(toServewiseError(error, "Other"), error, "a ServewiseError passes through");
});

test("status names: every code by name, unknown codes spelled out", () => {
  assert.equal(statusName(Status.INVALID_ARGUMENT), "INVALID_ARGUMENT");
  assert.equal(statusName(Status.UNAVAILABLE), "UNAVAILABLE");
  assert.equal(statusName(99), "CODE_99");
});

test("a server's grpc-status-details-bin trailer arrives decoded on the ServewiseError", async () => {
  const server = await startFakeServer({
    handlers: {
      optimizeBatch: (_call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
        const metadata = new Metadata();
        metadata.set(
          STATUS_DETAILS_KEY,
          Buffer.from(richStatus(3, "invalid request", [["type.googleapis.com/google.rpc.BadRequest", badRequest(VIOLATIONS)]])),
        );
        callback({ code: Status.INVALID_ARGUMENT, details: "invalid request", metadata });
      },
    },
  });
  const client = new ServewiseClient({ address: server.address });
  try {
    const error = await client.optimizeBatch({}).then(
      () => assert.fail("expected INVALID_ARGUMENT"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof ServewiseError);
    assert.equal(error.code, Status.INVALID_ARGUMENT);
    assert.equal(error.details, "invalid request");
    assert.deepEqual(error.fieldViolations.map((v) => v.reason), ["", "NEGATIVE"]);
    assert.deepEqual(error.fields, ["workload.rate_per_s", "candidates[1].profile.linear.per_item_ms"]);
  } finally {
    client.close();
    await server.stop();
  }
});
