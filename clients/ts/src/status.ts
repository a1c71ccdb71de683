/**
 * Decoding of the rich error model (google.rpc.Status in the `grpc-status-details-bin` trailer).
 *
 * The server reports invalid requests as INVALID_ARGUMENT with a google.rpc.Status whose details
 * hold a google.rpc.BadRequest (one field violation per bad field). Those messages are not part of
 * the servewise.v1 protos, so there is no generated code for them; generating them would need the
 * googleapis protos (not vendored here, and buf's remote dependencies need the network). They are
 * three tiny, frozen messages, so this module reads them by hand with the same wire reader the
 * generated code uses (@bufbuild/protobuf/wire):
 *
 *   google.rpc.Status             { int32 code = 1; string message = 2; repeated Any details = 3; }
 *   google.protobuf.Any           { string type_url = 1; bytes value = 2; }
 *   google.rpc.BadRequest         { repeated FieldViolation field_violations = 1; }
 *   BadRequest.FieldViolation     { string field = 1; string description = 2; string reason = 3; }
 *
 * Field numbers from googleapis google/rpc/status.proto, google/rpc/error_details.proto and
 * protobuf's google/protobuf/any.proto. Unknown fields are skipped, so newer senders still decode.
 */
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

/** The trailer that carries a serialized google.rpc.Status. */
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";

export const BAD_REQUEST_TYPE_URL = "type.googleapis.com/google.rpc.BadRequest";

/** One invalid field of a request, as the server named it (proto field names, e.g. `slo.latency_ms`). */
export interface FieldViolation {
  /** Path of the field: proto field names joined by dots, `[i]` for repeated elements. */
  field: string;
  description: string;
  /** Stable UPPER_SNAKE reason code, when the server sends one. */
  reason: string;
}

/** A google.protobuf.Any: the detail's type URL and its serialized bytes. */
export interface AnyDetail {
  typeUrl: string;
  value: Uint8Array;
}

/** A decoded google.rpc.Status. */
export interface RichStatus {
  code: number;
  message: string;
  details: AnyDetail[];
}

/** Decode a serialized google.rpc.Status. Throws on malformed bytes. */
export function decodeStatus(bytes: Uint8Array): RichStatus {
  const reader = new BinaryReader(bytes);
  const status: RichStatus = { code: 0, message: "", details: [] };
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    if (fieldNo === 1 && wireType === WireType.Varint) {
      status.code = reader.int32();
    } else if (fieldNo === 2 && wireType === WireType.LengthDelimited) {
      status.message = reader.string();
    } else if (fieldNo === 3 && wireType === WireType.LengthDelimited) {
      status.details.push(decodeAny(reader.bytes()));
    } else {
      reader.skip(wireType, fieldNo);
    }
  }
  return status;
}

function decodeAny(bytes: Uint8Array): AnyDetail {
  const reader = new BinaryReader(bytes);
  const any: AnyDetail = { typeUrl: "", value: new Uint8Array(0) };
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    if (fieldNo === 1 && wireType === WireType.LengthDelimited) {
      any.typeUrl = reader.string();
    } else if (fieldNo === 2 && wireType === WireType.LengthDelimited) {
      any.value = reader.bytes();
    } else {
      reader.skip(wireType, fieldNo);
    }
  }
  return any;
}

/** Decode a serialized google.rpc.BadRequest into its field violations. */
export function decodeBadRequest(bytes: Uint8Array): FieldViolation[] {
  const reader = new BinaryReader(bytes);
  const violations: FieldViolation[] = [];
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    if (fieldNo === 1 && wireType === WireType.LengthDelimited) {
      violations.push(decodeFieldViolation(reader.bytes()));
    } else {
      reader.skip(wireType, fieldNo);
    }
  }
  return violations;
}

function decodeFieldViolation(bytes: Uint8Array): FieldViolation {
  const reader = new BinaryReader(bytes);
  const violation: FieldViolation = { field: "", description: "", reason: "" };
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    if (wireType === WireType.LengthDelimited && fieldNo >= 1 && fieldNo <= 3) {
      const text = reader.string();
      if (fieldNo === 1) violation.field = text;
      else if (fieldNo === 2) violation.description = text;
      else violation.reason = text;
    } else {
      reader.skip(wireType, fieldNo);
    }
  }
  return violation;
}

/** The message name of a type URL: whatever follows its last "/". */
export function typeName(typeUrl: string): string {
  return typeUrl.slice(typeUrl.lastIndexOf("/") + 1);
}

/** Every BadRequest field violation among a status's details, in order. */
export function fieldViolationsOf(status: RichStatus): FieldViolation[] {
  return status.details
    .filter((detail) => typeName(detail.typeUrl) === "google.rpc.BadRequest")
    .flatMap((detail) => decodeBadRequest(detail.value));
}
