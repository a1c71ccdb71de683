/**
 * examples/optimize.ts cites real data: its embedded table must be the published one (as stored
 * in shared/data/profiles.json) and its request must be valid. server.test.ts runs it for real.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { G4DN_XLARGE as EXAMPLE_PRICE, RESNET50_T4_FP32, resnet50T4Request } from "../examples/optimize.js";
import { OptimizeBatchRequest } from "../src/index.js";
import { dataDir, G4DN_XLARGE, profile, RESNET50_T4_FP32 as T4_ID } from "./helpers.js";

test("the example's T4 table is the published ResNet-50 v1.5 FP32 T4 table, point for point", () => {
  const published = profile(T4_ID);
  assert.match(published.source, /resnet50v1\.5\/README\.md$/);
  assert.equal(published.source_table, "Inference performance: NVIDIA T4 / FP32 Inference Latency");
  assert.deepEqual(
    RESNET50_T4_FP32.map(([b, avg, p99]) => [b, avg, p99]),
    published.points.map((p) => [p.batch_size, p.latency_ms_avg, p.latency_ms_p99]),
  );
});

test("the example prices g4dn.xlarge at the catalog's on-demand price (shared/data/prices.json)", () => {
  const prices = JSON.parse(readFileSync(join(dataDir(), "prices.json"), "utf8")) as {
    instances: { instance_type: string; region: string; on_demand_usd_per_hour: number }[];
  };
  const g4dn = prices.instances.find((i) => i.instance_type === "g4dn.xlarge" && i.region === "us-east-1");
  assert.equal(EXAMPLE_PRICE.pricePerHour, g4dn?.on_demand_usd_per_hour);
  assert.deepEqual({ ...EXAMPLE_PRICE }, { ...G4DN_XLARGE });
});

test("the example's request encodes: one candidate with every published point", () => {
  const bytes = OptimizeBatchRequest.encode(OptimizeBatchRequest.fromPartial(resnet50T4Request())).finish();
  const request = OptimizeBatchRequest.decode(bytes);
  assert.equal(request.candidates.length, 1);
  assert.equal(request.candidates[0]!.profile!.points!.points.length, 9);
  assert.equal(request.slo!.latencyMs, 100);
});
