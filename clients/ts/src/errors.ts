/** ServewiseError: every failed call, with its gRPC code and decoded field violations. */
import { Metadata, status as Status, type ServiceError } from "@grpc/grpc-js";

import {
  type AnyDetail,
  decodeStatus,
  type FieldViolation,
  fieldViolationsOf,
  STATUS_DETAILS_KEY,
} from "./status.js";

export { Status };

/** The name of a gRPC status code, e.g. `INVALID_ARGUMENT` for 3. */
export function statusName(code: number): string {
  return Status[code] ?? `CODE_${code}`;
}

export interface ServewiseErrorInit {
  /** The RPC that failed, e.g. `OptimizeBatch`. */
  method: string;
  code: Status;
  /** The server's one-line status message. */
  details: string;
  metadata?: Metadata | undefined;
  fieldViolations?: FieldViolation[];
  statusDetails?: AnyDetail[];
  /** How many attempts the client made (more than 1 after retries on UNAVAILABLE). */
  attempts?: number;
  cause?: unknown;
}

/**
 * A call that ended with a non-OK status.
 *
 * `code` is the gRPC status code (compare with `Status.INVALID_ARGUMENT` etc.), `details` the
 * server's message, and `fieldViolations` the google.rpc.BadRequest violations the server attached
 * (empty when it attached none). `statusDetails` keeps every google.rpc.Status detail, decoded or
 * not, for callers that know other detail types.
 */
export class ServewiseError extends Error {
  override readonly name = "ServewiseError";
  readonly method: string;
  readonly code: Status;
  readonly codeName: string;
  readonly details: string;
  readonly metadata: Metadata;
  readonly fieldViolations: readonly FieldViolation[];
  readonly statusDetails: readonly AnyDetail[];
  readonly attempts: number;

  constructor(init: ServewiseErrorInit) {
    const codeName = statusName(init.code);
    super(`${init.method}: ${codeName}: ${init.details}`, { cause: init.cause });
    this.method = init.method;
    this.code = init.code;
    this.codeName = codeName;
    this.details = init.details;
    this.metadata = init.metadata ?? new Metadata();
    this.fieldViolations = init.fieldViolations ?? [];
    this.statusDetails = init.statusDetails ?? [];
    this.attempts = init.attempts ?? 1;
  }

  /** The field paths of every violation, e.g. `["workload.rate_per_s"]`. */
  get fields(): string[] {
    return this.fieldViolations.map((v) => v.field);
  }
}

function isServiceError(error: unknown): error is ServiceError {
  return (
    error instanceof Error &&
    typeof (error as Partial<ServiceError>).code === "number" &&
    (error as Partial<ServiceError>).metadata instanceof Metadata
  );
}

/**
 * The ServewiseError for whatever a grpc-js call failed with. A status without a decodable
 * `grpc-status-details-bin` trailer still becomes a ServewiseError, with no field violations.
 * `attempts` records how many attempts the call made (1 unless retried).
 */
export function toServewiseError(error: unknown, method: string, attempts = 1): ServewiseError {
  if (error instanceof ServewiseError) return error;
  if (!isServiceError(error)) {
    return new ServewiseError({
      method,
      code: Status.UNKNOWN,
      details: error instanceof Error ? error.message : String(error),
      attempts,
      cause: error,
    });
  }
  let fieldViolations: FieldViolation[] = [];
  let statusDetails: AnyDetail[] = [];
  const raw = error.metadata.get(STATUS_DETAILS_KEY)[0];
  if (raw instanceof Uint8Array) {
    try {
      const rich = decodeStatus(raw);
      statusDetails = rich.details;
      fieldViolations = fieldViolationsOf(rich);
    } catch {
      // A malformed trailer must not hide the status itself.
    }
  }
  return new ServewiseError({
    method,
    code: error.code,
    details: error.details,
    metadata: error.metadata,
    fieldViolations,
    statusDetails,
    attempts,
    cause: error,
  });
}
