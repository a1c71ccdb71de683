/**
 * @servewise/client: the TypeScript client of servewise.v1.ServewiseService.
 *
 * `ServewiseClient` is the wrapper; the generated message types, enums and the raw grpc-js client
 * (ts-proto output in ./gen) are re-exported so callers need only this one import.
 */
export {
  type CallOptions,
  type ConnectOptions,
  ControlStream,
  DEFAULT_TIMEOUT_MS,
  type MetadataInit,
  ServewiseClient,
  type StreamOptions,
} from "./client.js";
export { bearerTokenCredentials, type Pem, type TlsOptions, type TokenSource } from "./credentials.js";
export { ServewiseError, Status, statusName, toServewiseError } from "./errors.js";
export {
  backoffMs,
  DEFAULT_RETRY_POLICY,
  isRetryable,
  NO_RETRY,
  resolveRetryPolicy,
  RETRYABLE_CODES,
  type RetryPolicy,
} from "./retry.js";
export {
  type AnyDetail,
  decodeBadRequest,
  decodeStatus,
  type FieldViolation,
  fieldViolationsOf,
  type RichStatus,
  STATUS_DETAILS_KEY,
} from "./status.js";

export * from "./gen/servewise/v1/types.js";
export * from "./gen/servewise/v1/servewise.js";
// Both generated modules define these names; the service file's win (the helper types are
// identical; protobufFileName is then "servewise/v1/servewise.proto").
export {
  type DeepPartial,
  type Exact,
  type MessageFns,
  protobufFileName,
  protobufPackage,
} from "./gen/servewise/v1/servewise.js";
