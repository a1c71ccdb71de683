/** Channel and call credentials from ConnectOptions: plaintext, TLS, mutual TLS, bearer token. */
import {
  CallCredentials,
  type ChannelCredentials,
  type ChannelOptions,
  credentials,
  Metadata,
} from "@grpc/grpc-js";

/** PEM text, or its bytes. */
export type Pem = string | Uint8Array;

export interface TlsOptions {
  /** CA certificate(s) that signed the server's certificate; the system's roots when omitted. */
  ca?: Pem;
  /** This client's certificate chain, for mutual TLS; give `key` with it. */
  cert?: Pem;
  /** This client's private key, for mutual TLS; give `cert` with it. */
  key?: Pem;
  /**
   * The name to check the server's certificate against (and send as the authority) when it differs
   * from the host in the address, e.g. connecting to an IP whose certificate names a DNS name.
   */
  serverName?: string;
}

/** A bearer token, or a function returning the current one (called before every call). */
export type TokenSource = string | (() => string | Promise<string>);

export interface CredentialOptions {
  /** TLS settings; `true` for TLS with the system's roots. Omitted or `false`: plaintext. */
  tls?: TlsOptions | boolean;
  /** Sent as `authorization: Bearer <token>` on every call. Needs TLS unless allowInsecureToken. */
  token?: TokenSource;
  /**
   * Send the token over plaintext. Only for a hop nobody else can read (a sidecar, a test);
   * without it a token on a plaintext connection is refused, since anyone on the path could copy it.
   */
  allowInsecureToken?: boolean;
}

export interface ResolvedCredentials {
  channel: ChannelCredentials;
  /** Applied to every call (grpc-js adds them per call, on TLS and, when allowed, plaintext). */
  call: CallCredentials | undefined;
  /** Channel options the TLS settings need (target name override). */
  channelOptions: ChannelOptions;
  secure: boolean;
}

function toBuffer(pem: Pem | undefined): Buffer | null {
  if (pem === undefined) return null;
  return typeof pem === "string" ? Buffer.from(pem, "utf8") : Buffer.from(pem);
}

/** The bearer-token call credentials: one `authorization` header per call, fetched per call. */
export function bearerTokenCredentials(token: TokenSource): CallCredentials {
  const source = typeof token === "string" ? () => token : token;
  return CallCredentials.createFromMetadataGenerator((_params, callback) => {
    Promise.resolve()
      .then(source)
      .then((value) => {
        if (!value) throw new Error("the token source returned an empty token");
        return value;
      })
      .then(
        (value) => {
          const metadata = new Metadata();
          metadata.set("authorization", `Bearer ${value}`);
          callback(null, metadata);
        },
        (error: unknown) => callback(error instanceof Error ? error : new Error(String(error))),
      );
  });
}

/** Channel credentials, call credentials and channel options for the given settings. */
export function resolveCredentials(options: CredentialOptions): ResolvedCredentials {
  const tls = options.tls === true ? {} : options.tls || undefined;
  const channelOptions: ChannelOptions = {};
  let channel: ChannelCredentials;
  if (tls) {
    if ((tls.cert === undefined) !== (tls.key === undefined)) {
      throw new TypeError("tls.cert and tls.key go together: give both for mutual TLS, or neither");
    }
    channel = credentials.createSsl(toBuffer(tls.ca), toBuffer(tls.key), toBuffer(tls.cert));
    if (tls.serverName) {
      channelOptions["grpc.ssl_target_name_override"] = tls.serverName;
      channelOptions["grpc.default_authority"] = tls.serverName;
    }
  } else {
    channel = credentials.createInsecure();
  }
  let call: CallCredentials | undefined;
  if (options.token !== undefined) {
    if (!tls && !options.allowInsecureToken) {
      throw new TypeError(
        "refusing to send a bearer token over plaintext: connect with tls, " +
          "or set allowInsecureToken for a hop nobody else can read",
      );
    }
    call = bearerTokenCredentials(options.token);
  }
  return { channel, call, channelOptions, secure: Boolean(tls) };
}
