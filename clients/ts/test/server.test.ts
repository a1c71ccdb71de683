/**
 * The client against the real Python server (started by scripts/test through with_test_server,
 * which exports SERVEWISE_TEST_ADDRESS). Skipped, with the reason, when no server is given.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import {
  BindingConstraint,
  type Candidate,
  type DeepPartial,
  type OptimizeBatchResponse,
  type PlanAssessment,
  Pool,
  ResourceStrategy,
  ServewiseClient,
  ServewiseError,
  ServewiseServiceService,
  ServiceTimeBasis,
  ServingMode,
  Status,
  SwitchDecision,
} from "../src/index.js";
import {
  close,
  G4DN_XLARGE,
  NEEDS_SERVER,
  optimizeRequest,
  P3_2XLARGE,
  REPO_ROOT,
  SERVER_ADDRESS,
  simulateRequest,
  t4LinearCandidate,
  v100Candidate,
} from "./helpers.js";

const PRICES: Record<string, number> = {
  [P3_2XLARGE.name]: P3_2XLARGE.pricePerHour,
  [G4DN_XLARGE.name]: G4DN_XLARGE.pricePerHour,
};

/** s(b) in ms as the server models it: linear, or interpolated between measured points. */
function serviceTimeMs(candidate: DeepPartial<Candidate>, batch: number, basis: ServiceTimeBasis): number {
  const linear = candidate.profile?.linear;
  if (linear) return (linear.baseMs ?? 0) + (linear.perItemMs ?? 0) * batch;
  const points = (candidate.profile?.points?.points ?? []).map((p) => ({
    b: p.batchSize ?? 0,
    s: basis === ServiceTimeBasis.SERVICE_TIME_BASIS_P99 ? (p.p99LatencyMs ?? p.latencyMs ?? 0) : (p.latencyMs ?? 0),
  }));
  for (let i = 0; i < points.length; i++) {
    const hi = points[i]!;
    if (hi.b === batch) return hi.s;
    if (hi.b > batch && i > 0) {
      const lo = points[i - 1]!;
      return lo.s + ((hi.s - lo.s) * (batch - lo.b)) / (hi.b - lo.b);
    }
  }
  throw new Error(`batch ${batch} outside the profile`);
}

function candidateFor(name: string): DeepPartial<Candidate> {
  const candidate = [v100Candidate(), t4LinearCandidate()].find((c) => c.instanceType?.name === name);
  assert.ok(candidate, `the answer names an instance type that was not a candidate: ${name}`);
  return candidate;
}

/** Cost and capacity figures of one assessment follow from its plan (ARCHITECTURE.md section 2). */
function assertPlanArithmetic(assessment: PlanAssessment, rate: number, basis: ServiceTimeBasis): void {
  const plan = assessment.plan;
  assert.ok(plan, "assessment without a plan");
  const price = PRICES[plan.instanceType];
  assert.ok(price !== undefined, `unknown instance type ${plan.instanceType}`);
  assert.ok(close(assessment.costPerHour, plan.replicas * price), `cost ${assessment.costPerHour} != ${plan.replicas} x ${price}`);
  assert.ok(close(assessment.costPerMillionRequests, (assessment.costPerHour / (rate * 3600)) * 1e6));
  const s = serviceTimeMs(candidateFor(plan.instanceType), plan.maxBatchSize, basis);
  const capacity = (plan.replicas * plan.maxBatchSize * 1000) / s;
  assert.ok(close(assessment.capacityPerS, capacity, 1e-6), `capacity ${assessment.capacityPerS} != N*B/s(B) = ${capacity}`);
  assert.ok(close(assessment.utilisation, rate / assessment.capacityPerS, 1e-9));
}

async function rejection(promise: Promise<unknown>): Promise<ServewiseError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ServewiseError, `expected a ServewiseError, got ${String(error)}`);
    return error;
  }
  assert.fail("the call succeeded; expected it to fail");
}

describe("against the live server", { skip: NEEDS_SERVER }, () => {
  let client: ServewiseClient;
  let optimized: OptimizeBatchResponse;

  before(async () => {
    client = new ServewiseClient({ address: SERVER_ADDRESS!, timeoutMs: 60_000 });
    await client.waitForReady(10_000);
    optimized = await client.optimizeBatch(optimizeRequest());
  });
  after(() => client?.close());

  // -------------------------------------------------------------------------------------------
  // Implemented RPCs: OptimizeBatch and Simulate.

  test("OptimizeBatch recommends a plan whose own simulation meets the SLO, within the limits", () => {
    const request = optimizeRequest();
    assert.equal(optimized.feasible, true);
    const rec = optimized.recommended;
    assert.ok(rec?.plan && rec.simulated?.latency);
    assert.equal(rec.meetsSlo, true);
    const slo = request.slo!.latencyMs!;
    const simulatedP99 = rec.simulated.latency.sloPercentileMs;
    assert.ok(simulatedP99 !== undefined && simulatedP99 <= slo, `simulated p99 ${simulatedP99} > SLO ${slo} ms`);
    assert.equal(rec.simulated.latency.p99Ms, simulatedP99, "the SLO percentile is p99");
    assert.ok(rec.predictedLatency!.sloPercentileMs! <= slo);
    assert.equal(rec.simulated.stable, true, rec.simulated.stabilityReason);
    assert.ok(rec.simulated.requestsSimulated > 0n);
    assert.ok(request.limits!.allowedBatchSizes!.includes(rec.plan.maxBatchSize));
    assert.ok(rec.plan.maxQueueDelayMs <= request.limits!.maxQueueDelayMs!);
    assert.ok(rec.plan.replicas >= 1 && rec.plan.replicas <= request.limits!.maxReplicas!);
    assert.ok(rec.capacityPerS > request.workload!.ratePerS!, "a recommended plan is stable");
    assert.ok(optimized.plansConsidered > 0n);
    assert.notEqual(optimized.bindingConstraint, BindingConstraint.BINDING_CONSTRAINT_UNSPECIFIED);
    assert.match(optimized.bindingReason, /\d/, "the binding reason carries its numbers");
  });

  test("OptimizeBatch figures follow from the plan: cost = replicas x price, capacity = N*B/s(B)", () => {
    const rate = optimizeRequest().workload!.ratePerS!;
    const basis = ServiceTimeBasis.SERVICE_TIME_BASIS_P99;
    for (const assessment of [optimized.recommended, optimized.realtimeBaseline, optimized.currentPlan]) {
      assert.ok(assessment);
      assertPlanArithmetic(assessment, rate, basis);
    }
  });

  test("OptimizeBatch assesses the real-time baseline and the current plan, with savings as differences", () => {
    const rec = optimized.recommended!;
    const realtime = optimized.realtimeBaseline;
    assert.ok(realtime?.plan, optimized.realtimeBaselineNote);
    assert.equal(realtime.plan.maxBatchSize, 1);
    assert.equal(realtime.plan.maxQueueDelayMs, 0);
    assert.equal(realtime.meetsSlo, true);
    assert.ok(rec.costPerHour <= realtime.costPerHour, "batching is never dearer than its real-time special case");
    assert.ok(close(optimized.savingVsRealtimePerHour!, realtime.costPerHour - rec.costPerHour));
    assert.ok(close(optimized.savingVsRealtimeFraction!, optimized.savingVsRealtimePerHour! / realtime.costPerHour));

    const current = optimized.currentPlan;
    assert.deepEqual(current?.plan, { instanceType: P3_2XLARGE.name, maxBatchSize: 1, maxQueueDelayMs: 0, replicas: 6 });
    assert.ok(close(current!.costPerHour, 6 * P3_2XLARGE.pricePerHour));
    assert.ok(close(optimized.savingVsCurrentPerHour!, current!.costPerHour - rec.costPerHour));
    assert.ok(close(optimized.savingVsCurrentFraction!, optimized.savingVsCurrentPerHour! / current!.costPerHour));
  });

  test("OptimizeBatch frontier is cheapest first and Pareto: each dearer point is faster", () => {
    const frontier = optimized.frontier;
    assert.ok(frontier.length >= 2, "a frontier of at least two points");
    for (let i = 1; i < frontier.length; i++) {
      assert.ok(frontier[i]!.costPerHour > frontier[i - 1]!.costPerHour, `frontier not cheapest first at ${i}`);
      assert.ok(frontier[i]!.latencyMs < frontier[i - 1]!.latencyMs, `frontier point ${i} is dearer but not faster`);
    }
    const rec = optimized.recommended!;
    assert.ok(frontier.some((p) => p.meetsSlo && close(p.costPerHour, rec.costPerHour)), "the recommendation is on it");
    assert.ok(
      frontier.filter((p) => p.meetsSlo).every((p) => p.costPerHour >= rec.costPerHour - 1e-9),
      "nothing on the frontier meets the SLO for less than the recommendation",
    );
  });

  test("OptimizeBatch is reproducible: the same request and seed give the same answer", async () => {
    // Everything but the note that reports how long the search took.
    const timeless = (answer: OptimizeBatchResponse) => ({
      ...answer,
      notes: answer.notes.map((note) => note.replace(/ in [\d.]+ ms$/, " in (elapsed) ms")),
    });
    assert.deepEqual(timeless(await client.optimizeBatch(optimizeRequest())), timeless(optimized));
  });

  test("Simulate runs exactly the requested plan: requests, seed, capacity N*B/s(B), throughput at the rate", async () => {
    const request = simulateRequest();
    const answer = await client.simulate(request);
    const result = answer.result;
    assert.ok(result?.latency);
    assert.equal(result.requestsSimulated, 20_000n);
    assert.equal(result.seed, 11n);
    // 2 replicas x batch 8 over the V100 table's average for batch 8 (typical basis).
    const s8 = serviceTimeMs(request.candidate!, 8, ServiceTimeBasis.SERVICE_TIME_BASIS_TYPICAL);
    assert.ok(close(answer.capacityPerS, (2 * 8 * 1000) / s8, 1e-9), `capacity ${answer.capacityPerS}`);
    assert.ok(close(result.throughputPerS, 300, 0.05), `throughput ${result.throughputPerS} vs 300/s`);
    assert.ok(close(result.simulatedDurationS, 20_000 / 300, 0.05), `duration ${result.simulatedDurationS} s`);
    assert.ok(result.meanBatchSize >= 1 && result.meanBatchSize <= 8);
    assert.ok(result.utilisation > 0 && result.utilisation <= 1);
    assert.equal(result.stable, true, result.stabilityReason);
    const l = result.latency;
    assert.ok(l.p50Ms <= l.p90Ms && l.p90Ms <= l.p95Ms && l.p95Ms <= l.p99Ms && l.p99Ms <= l.p999Ms, "percentiles ordered");
    assert.equal(l.sloPercentileMs, l.p99Ms);
    // No request finishes faster than the quickest batch in the table, nor waits past T + s(8).
    assert.ok(l.p50Ms >= 10.24, `p50 ${l.p50Ms} below the fastest measured batch`);
    assert.equal(answer.meetsSlo, l.p99Ms <= request.slo!.latencyMs!);
  });

  test("Simulate confirms OptimizeBatch's recommendation on a fresh arrival sample", async () => {
    const request = optimizeRequest();
    const plan = optimized.recommended!.plan!;
    const answer = await client.simulate({
      candidate: candidateFor(plan.instanceType),
      plan,
      workload: request.workload,
      numRequests: 50_000n,
      seed: 12_345n,
      serviceTimeBasis: request.serviceTimeBasis,
      slo: request.slo,
    });
    assert.equal(answer.meetsSlo, true, `p99 ${answer.result?.latency?.p99Ms} ms on a fresh sample`);
    assert.equal(answer.result?.requestsSimulated, 50_000n);
  });

  test("a bearer token sent as call credentials (allowed over plaintext here) reaches a real call", async () => {
    const withToken = new ServewiseClient({ address: SERVER_ADDRESS!, token: "t0ken", allowInsecureToken: true });
    try {
      const answer = await withToken.simulate(simulateRequest());
      assert.equal(answer.result?.requestsSimulated, 20_000n);
    } finally {
      withToken.close();
    }
  });

  // -------------------------------------------------------------------------------------------
  // Invalid requests: INVALID_ARGUMENT with google.rpc.BadRequest field violations.

  test("an invalid field is INVALID_ARGUMENT naming its path, decoded from grpc-status-details-bin; not retried", async () => {
    const request = optimizeRequest();
    request.workload!.ratePerS = -5;
    const error = await rejection(client.optimizeBatch(request));
    assert.equal(error.code, Status.INVALID_ARGUMENT);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.equal(error.method, "OptimizeBatch");
    assert.deepEqual(error.fields, ["workload.rate_per_s"]);
    assert.match(error.fieldViolations[0]!.description, /> 0/);
    assert.match(error.details, /workload\.rate_per_s/);
    assert.equal(error.attempts, 1);
    assert.ok(error.statusDetails.some((d) => d.typeUrl.endsWith("/google.rpc.BadRequest")));
  });

  test("every invalid field is reported, with indices into repeated fields", async () => {
    const request = simulateRequest();
    request.candidate!.profile!.points!.points![2]!.latencyMs = -1;
    request.slo!.latencyMs = 0;
    const error = await rejection(client.simulate(request));
    assert.equal(error.code, Status.INVALID_ARGUMENT);
    assert.deepEqual(new Set(error.fields), new Set(["candidate.profile.points.points[2].latency_ms", "slo.latency_ms"]));
  });

  test("SelectMode answers a plan for every mode and chooses the cheapest feasible one", async () => {
    const response = await client.selectMode({
      trafficClasses: [
        { name: "chat", ratePerS: 40, slo: { latencyMs: 60 } },
        { name: "backfill", backlogRequests: 100_000, deadlineS: 3600 },
      ],
      candidates: [v100Candidate(), t4LinearCandidate()],
      seed: 5,
    });
    assert.deepEqual(
      response.modes.map((m) => m.mode),
      [
        ServingMode.SERVING_MODE_REALTIME,
        ServingMode.SERVING_MODE_DYNAMIC_BATCHING,
        ServingMode.SERVING_MODE_OFFLINE_BATCH,
        ServingMode.SERVING_MODE_HYBRID,
      ],
    );
    const feasible = response.modes.filter((m) => m.feasible);
    const chosen = response.modes.find((m) => m.mode === response.chosenMode);
    assert.ok(chosen?.feasible, "the chosen mode is feasible");
    assert.equal(chosen.objectivePerMillionRequests, Math.min(...feasible.map((m) => m.objectivePerMillionRequests)));
    for (const m of response.modes.filter((m) => !m.feasible)) assert.ok(m.reason.length > 0, "infeasible modes say why");
    assert.equal(response.chosenMode, ServingMode.SERVING_MODE_HYBRID);
  });

  test("SelectMode rejects a bad traffic class naming its path", async () => {
    const error = await rejection(
      client.selectMode({
        trafficClasses: [{ name: "chat", ratePerS: -1, slo: { latencyMs: 60 } }],
        candidates: [v100Candidate()],
      }),
    );
    assert.equal(error.code, Status.INVALID_ARGUMENT);
    assert.deepEqual(error.fields, ["traffic_classes[0].rate_per_s"]);
  });

  test("PlanResources compares dedicated and autoscaled replicas and exports the HPA", async () => {
    const response = await client.planResources({
      deployments: [
        {
          name: "resnet",
          candidates: [t4LinearCandidate()],
          slo: { latencyMs: 300 },
          rateProfile: [300, 1700, 1000, 500].map((ratePerS, i) => ({ timeS: i * 21600, ratePerS })),
        },
      ],
      seed: 5,
    });
    const [deployment] = response.deployments;
    assert.ok(deployment);
    assert.deepEqual(
      deployment.strategies.map((s) => s.strategy),
      [ResourceStrategy.RESOURCE_STRATEGY_DEDICATED, ResourceStrategy.RESOURCE_STRATEGY_AUTOSCALED],
    );
    const dedicated = deployment.strategies[0]!;
    assert.ok(Math.abs(dedicated.costPerDay - dedicated.peakReplicas * 0.526 * 24) < 1e-9);
    const autoscaler = deployment.recommendedAutoscaler!;
    assert.ok(autoscaler.minReplicas >= 1 && autoscaler.maxReplicas >= autoscaler.minReplicas);
    assert.match(deployment.exports!.hpaYaml, new RegExp(`maxReplicas: ${autoscaler.maxReplicas}\\b`));
    assert.notEqual(response.recommendedStrategy, ResourceStrategy.RESOURCE_STRATEGY_UNSPECIFIED);
  });

  test("PlanResources rejects a time that does not increase, naming its path", async () => {
    const error = await rejection(
      client.planResources({
        deployments: [
          {
            name: "resnet",
            candidates: [t4LinearCandidate()],
            slo: { latencyMs: 300 },
            rateProfile: [
              { timeS: 60, ratePerS: 10 },
              { timeS: 60, ratePerS: 20 },
            ],
          },
        ],
      }),
    );
    assert.equal(error.code, Status.INVALID_ARGUMENT);
    assert.deepEqual(error.fields, ["deployments[0].rate_profile[1].time_s"]);
  });

  // -------------------------------------------------------------------------------------------
  // Deployments and EvaluateSwitch.

  test("a registered deployment reads back, rejects a stale write and answers EvaluateSwitch", async () => {
    const deploymentId = `ts-client-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
    const deployment = {
      deploymentId,
      candidates: [
        {
          instanceType: { name: "g4dn.xlarge", pricePerHour: 0.526, maxBatchSize: 64 },
          profile: { linear: { baseMs: 5.24, perItemMs: 2.288 } },
        },
      ],
      slo: { latencyMs: 100 },
      currentPlan: { instanceType: "g4dn.xlarge", maxBatchSize: 8, maxQueueDelayMs: 5, replicas: 2 },
      plannedRatePerS: 200,
    };
    const created = await client.registerDeployment({ deployment });
    assert.equal(Number(created.deployment?.stateVersion), 1);
    const got = await client.getDeployment({ deploymentId });
    assert.equal(got.deployment?.plannedRatePerS, 200);
    const stale = await rejection(client.registerDeployment({ deployment }));
    assert.equal(stale.code, Status.FAILED_PRECONDITION, stale.message);
    const missing = await rejection(client.getDeployment({ deploymentId: `${deploymentId}-missing` }));
    assert.equal(missing.code, Status.NOT_FOUND, missing.message);
    const answer = await client.evaluateSwitch({
      deploymentId,
      samples: [
        { timestampS: 0, ratePerS: 205 },
        { timestampS: 60, ratePerS: 195 },
      ],
    });
    assert.equal(answer.decision, SwitchDecision.SWITCH_DECISION_HOLD, answer.reason);
    assert.equal(Number(answer.decisionSeq), 1);
    const listed = await client.listDeployments({ pageSize: 1000 });
    assert.ok(listed.deployments.some((d) => d.deploymentId === deploymentId));
  });

  test("Route sends a batching deployment's keys to the batch pool at its state version", async () => {
    const deploymentId = `ts-route-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
    await client.registerDeployment({
      deployment: {
        deploymentId,
        candidates: [
          {
            instanceType: { name: "g4dn.xlarge", pricePerHour: 0.526, maxBatchSize: 64 },
            profile: { linear: { baseMs: 5.24, perItemMs: 2.288 } },
          },
        ],
        slo: { latencyMs: 100 },
        currentPlan: { instanceType: "g4dn.xlarge", maxBatchSize: 8, maxQueueDelayMs: 5, replicas: 2 },
        plannedRatePerS: 200,
      },
    });
    for (const requestKey of ["r1", "r2", "r3"]) {
      const routed = await client.route({ deploymentId, requestKey, trafficClass: "" });
      assert.equal(routed.pool, Pool.POOL_BATCH);
      assert.equal(Number(routed.stateVersion), 1);
    }
    const missing = await rejection(client.route({ deploymentId: `${deploymentId}-missing`, requestKey: "r1", trafficClass: "" }));
    assert.equal(missing.code, Status.NOT_FOUND, missing.message);
    const invalid = await rejection(client.route({ deploymentId, requestKey: "", trafficClass: "" }));
    assert.equal(invalid.code, Status.INVALID_ARGUMENT, invalid.message);
    assert.deepEqual(invalid.fields, ["request_key"]);
  });

  // -------------------------------------------------------------------------------------------
  // Not implemented yet. When an RPC lands, move it from here to IMPLEMENTED with a test of its
  // answer above; the coverage test below keeps the two lists equal to the service's RPCs.

  const IMPLEMENTED = [
    "OptimizeBatch",
    "Simulate",
    "SelectMode",
    "PlanResources",
    "RegisterDeployment",
    "GetDeployment",
    "ListDeployments",
    "EvaluateSwitch",
    "Control",
    "Route",
  ];
  const NOT_YET_IMPLEMENTED: Record<string, (c: ServewiseClient) => Promise<unknown>> = {};

  for (const [name, call] of Object.entries(NOT_YET_IMPLEMENTED)) {
    test(`${name} answers UNIMPLEMENTED (until its issue lands)`, async () => {
      const error = await rejection(call(client));
      assert.equal(error.code, Status.UNIMPLEMENTED, error.message);
      assert.equal(error.method, name);
      assert.equal(error.attempts, 1, "UNIMPLEMENTED is not retried");
    });
  }

  test("Control answers a sample for an unknown deployment with a rejection event, not an abort", async () => {
    const stream = client.control({ timeoutMs: 10_000 });
    stream.send({
      deploymentId: "",
      wantHoldEvents: false,
      sample: {
        deploymentId: "ts-client-no-such",
        timestampS: 1,
        ratePerS: 1,
        p50Ms: 0,
        p99Ms: 0,
        queueDepth: 0n,
        utilisation: 0,
        errorRate: 0,
      },
    });
    stream.end();
    const events = [];
    for await (const event of stream) events.push(event);
    assert.equal(events.length, 1);
    assert.equal(events[0]!.sampleRejected?.unknownDeployment, true);
  });

  test("every RPC of the service is tested, as implemented or as UNIMPLEMENTED", () => {
    const rpcs = Object.values(ServewiseServiceService).map((d) => d.path.slice(d.path.lastIndexOf("/") + 1));
    assert.deepEqual([...IMPLEMENTED, ...Object.keys(NOT_YET_IMPLEMENTED)].sort(), rpcs.sort());
  });

  // -------------------------------------------------------------------------------------------
  // The example program.

  test("examples/optimize.ts prints a plan for ResNet-50 on T4 that meets the SLO", async () => {
    const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", "examples/optimize.ts", SERVER_ADDRESS!], {
      cwd: `${REPO_ROOT}/clients/ts`,
      timeout: 60_000,
    });
    assert.match(stdout, /feasible: +yes/);
    assert.match(stdout, /plan: +\d+ x g4dn\.xlarge, max batch \d+/);
    assert.match(stdout, /meets the SLO: yes/);
    assert.match(stdout, /batching saves \$\d/);
  });
});
