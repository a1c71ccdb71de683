/**
 * Shared test helpers: the live server's address, valid requests built from the real published
 * data in shared/data (the same requests as tests/api/api_builders.py), and an in-process fake
 * grpc-js server for the tests that need no Servewise server (retries, credentials).
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import {
  Metadata,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type sendUnaryData,
  type ServerDuplexStream,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";

import {
  type Candidate,
  type DeepPartial,
  type OptimizeBatchRequest,
  ServewiseServiceService,
  ServiceTimeBasis,
  ServiceTimeDistribution,
  type SimulateRequest,
} from "../src/index.js";

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(HERE, "../../..");
export const TLS_DIR = join(HERE, "fixtures", "tls");

// ---------------------------------------------------------------------------------------------
// The live server (scripts/lib/server.sh: with_test_server exports SERVEWISE_TEST_ADDRESS).

export const SERVER_ADDRESS = process.env.SERVEWISE_TEST_ADDRESS;

/** `skip` option for tests that need the live server: a reason when it is not there. */
export const NEEDS_SERVER: string | false = SERVER_ADDRESS
  ? false
  : "SERVEWISE_TEST_ADDRESS is unset: run through scripts/test (with_test_server) or point it at a running server";

// ---------------------------------------------------------------------------------------------
// Real published data (shared/data/README.md).

/** shared/data: $SERVEWISE_DATA_DIR, else shared/ beside the checkout, else /work/shared/data. */
export function dataDir(): string {
  const candidates = [
    process.env.SERVEWISE_DATA_DIR,
    join(REPO_ROOT, "..", "shared", "data"),
    "/work/shared/data",
  ].filter((dir): dir is string => Boolean(dir));
  const found = candidates.find((dir) => existsSync(join(dir, "profiles.json")));
  if (!found) throw new Error(`shared/data/profiles.json not found in: ${candidates.join(", ")}`);
  return found;
}

interface PublishedPoint {
  batch_size: number;
  latency_ms_avg: number;
  latency_ms_p99: number;
}

interface PublishedProfile {
  id: string;
  source: string;
  source_table: string;
  points: PublishedPoint[];
}

export function profile(id: string): PublishedProfile {
  const all = JSON.parse(readFileSync(join(dataDir(), "profiles.json"), "utf8")) as PublishedProfile[];
  const found = all.find((p) => p.id === id);
  if (!found) throw new Error(`profile ${id} not in profiles.json`);
  return found;
}

export const RESNET50_V100_FP32 = "dle-pt-resnet-50-v1-5-v100-16gb-fp32";
export const RESNET50_T4_FP32 = "dle-pt-resnet-50-v1-5-t4-fp32";

// AWS on-demand us-east-1 (shared/data/prices.json): p3.2xlarge (1x V100 16GB), g4dn.xlarge (T4).
export const P3_2XLARGE = { name: "p3.2xlarge", pricePerHour: 3.06 } as const;
export const G4DN_XLARGE = { name: "g4dn.xlarge", pricePerHour: 0.526 } as const;

export function measuredPoints(id: string) {
  return profile(id).points.map((p) => ({
    batchSize: p.batch_size,
    latencyMs: p.latency_ms_avg,
    p99LatencyMs: p.latency_ms_p99,
  }));
}

/** p3.2xlarge with the measured ResNet-50 FP32 profile and a memory model capping B at 100. */
export function v100Candidate(): DeepPartial<Candidate> {
  return {
    instanceType: {
      ...P3_2XLARGE,
      // 16 GB device, 1 GB model, 150 MB per item: floor(15e9 / 150e6) = 100.
      memory: { modelBytes: 1_000_000_000n, bytesPerItem: 150_000_000n, deviceMemoryBytes: 16_000_000_000n },
      coldStartS: 45,
    },
    profile: { points: { points: measuredPoints(RESNET50_V100_FP32) } },
  };
}

/** Least-squares fit of the published T4 FP32 averages for batch 1..64: s(b) = 5.24 + 2.288 b ms. */
export const T4_LINEAR = { baseMs: 5.24, perItemMs: 2.288 } as const;

/** g4dn.xlarge with the linear T4 FP32 fit, range set by the instance cap (64). */
export function t4LinearCandidate(): DeepPartial<Candidate> {
  return {
    instanceType: { ...G4DN_XLARGE, maxBatchSize: 64 },
    profile: { linear: { ...T4_LINEAR, maxBatchSize: 0 } },
  };
}

/** A valid OptimizeBatch request exercising every optional field (api_builders.optimize_request). */
export function optimizeRequest(): DeepPartial<OptimizeBatchRequest> {
  return {
    candidates: [v100Candidate(), t4LinearCandidate()],
    workload: { ratePerS: 400, arrivalCv: 1.5 },
    slo: { percentile: 99, latencyMs: 60 },
    limits: { maxReplicas: 64, allowedBatchSizes: [1, 2, 4, 8, 16, 32], maxQueueDelayMs: 20 },
    serviceTimeBasis: ServiceTimeBasis.SERVICE_TIME_BASIS_P99,
    currentPlan: { instanceType: P3_2XLARGE.name, maxBatchSize: 1, maxQueueDelayMs: 0, replicas: 6 },
    seed: 7n,
  };
}

/** A valid, small Simulate request exercising every optional field (api_builders.simulate_request). */
export function simulateRequest(): DeepPartial<SimulateRequest> {
  return {
    candidate: v100Candidate(),
    plan: { maxBatchSize: 8, maxQueueDelayMs: 5, replicas: 2 },
    workload: { ratePerS: 300, arrivalCv: 1 },
    numRequests: 20_000n,
    seed: 11n,
    serviceTimeBasis: ServiceTimeBasis.SERVICE_TIME_BASIS_TYPICAL,
    serviceTimeDistribution: ServiceTimeDistribution.SERVICE_TIME_DISTRIBUTION_DETERMINISTIC,
    slo: { percentile: 99, latencyMs: 50 },
  };
}

/** |actual - expected| <= tolerance · max(1, |expected|). */
export function close(actual: number, expected: number, tolerance = 1e-9): boolean {
  return Math.abs(actual - expected) <= tolerance * Math.max(1, Math.abs(expected));
}

// ---------------------------------------------------------------------------------------------
// In-process fake server: the generated service definition with test-supplied handlers.

export type UnaryHandler = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => void;
export type BidiHandler = (call: ServerDuplexStream<unknown, unknown>) => void;

export interface FakeServer {
  address: string;
  port: number;
  /** Request metadata of every call received, in order. */
  calls: { method: string; metadata: Metadata }[];
  stop(): Promise<void>;
}

export interface FakeServerOptions {
  credentials?: ServerCredentials;
  handlers: Partial<Record<keyof typeof ServewiseServiceService, UnaryHandler | BidiHandler>>;
}

export async function startFakeServer(options: FakeServerOptions): Promise<FakeServer> {
  const server = new Server();
  const calls: FakeServer["calls"] = [];
  const implementation: UntypedServiceImplementation = {};
  for (const [name, handler] of Object.entries(options.handlers)) {
    const record = (metadata: Metadata) => calls.push({ method: name, metadata });
    const definition = ServewiseServiceService[name as keyof typeof ServewiseServiceService];
    implementation[name] = definition.requestStream
      ? (call: ServerDuplexStream<unknown, unknown>) => {
          record(call.metadata);
          (handler as BidiHandler)(call);
        }
      : (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
          record(call.metadata);
          (handler as UnaryHandler)(call, callback);
        };
  }
  server.addService(ServewiseServiceService, implementation);
  const port = await new Promise<number>((resolvePort, reject) =>
    server.bindAsync("127.0.0.1:0", options.credentials ?? ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolvePort(bound),
    ),
  );
  return {
    address: `127.0.0.1:${port}`,
    port,
    calls,
    // Force: some tests leave calls hanging on purpose (deadlines, cancellation).
    stop: async () => server.forceShutdown(),
  };
}

export function tlsFile(name: string): Buffer {
  return readFileSync(join(TLS_DIR, name));
}
