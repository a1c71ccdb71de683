/**
 * Ask Servewise for the cheapest way to serve ResNet-50 on T4 GPUs at 800 images/s with a p99 of
 * at most 100 ms, and print the plan.
 *
 *   npm run example                       # server at localhost:50051
 *   npm run example -- 127.0.0.1:50052    # or SERVEWISE_ADDRESS=127.0.0.1:50052
 *
 * Data (real, published figures; also in the repository's shared/data):
 * - Latency of one batch against batch size, ResNet-50 v1.5 FP32 on one NVIDIA T4 (average and
 *   p99 in ms): NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md,
 *   table "Inference performance: NVIDIA T4 / FP32 Inference Latency" (profiles.json id
 *   dle-pt-resnet-50-v1-5-t4-fp32).
 * - Price: AWS g4dn.xlarge (one T4), on-demand us-east-1, 0.526 USD/hour, from the SkyPilot
 *   catalog (skypilot-org/skypilot-catalog, catalogs/v8/aws/vms.csv; prices.json).
 */
import { pathToFileURL } from "node:url";

import {
  type OptimizeBatchRequest,
  type DeepPartial,
  type PlanAssessment,
  ServewiseClient,
  ServewiseError,
  ServiceTimeBasis,
  bindingConstraintToJSON,
} from "../src/index.js";

/** [batch size, average ms, p99 ms] of one batch: the published T4 FP32 table. */
export const RESNET50_T4_FP32: ReadonlyArray<readonly [number, number, number]> = [
  [1, 10.7, 16.71],
  [2, 11.26, 16.99],
  [4, 12.73, 18.03],
  [8, 22.41, 22.9],
  [16, 39.77, 40.23],
  [32, 77.62, 77.28],
  [64, 152.73, 153.02],
  [128, 309.26, 305.13],
  [256, 635.98, 625.21],
];

export const G4DN_XLARGE = { name: "g4dn.xlarge", pricePerHour: 0.526 } as const;

export function resnet50T4Request(): DeepPartial<OptimizeBatchRequest> {
  return {
    candidates: [
      {
        instanceType: { ...G4DN_XLARGE, coldStartS: 60 },
        profile: {
          points: {
            points: RESNET50_T4_FP32.map(([batchSize, latencyMs, p99LatencyMs]) => ({
              batchSize,
              latencyMs,
              p99LatencyMs,
            })),
          },
        },
      },
    ],
    workload: { ratePerS: 800, arrivalCv: 1 },
    slo: { percentile: 99, latencyMs: 100 },
    // The table's p99 per batch, not its average: the safe reading of a noisy published table.
    serviceTimeBasis: ServiceTimeBasis.SERVICE_TIME_BASIS_P99,
  };
}

const ms = (value: number | undefined) => (value === undefined ? "-" : `${value.toFixed(1)} ms`);
const usd = (value: number) => `$${value.toFixed(3)}`;

function describe(assessment: PlanAssessment): string {
  const plan = assessment.plan;
  if (!plan) return "(no plan)";
  return (
    `${plan.replicas} x ${plan.instanceType}, max batch ${plan.maxBatchSize}, ` +
    `max queue delay ${plan.maxQueueDelayMs.toFixed(1)} ms`
  );
}

async function main(): Promise<void> {
  const address = process.argv[2] ?? process.env.SERVEWISE_ADDRESS ?? "localhost:50051";
  const client = new ServewiseClient({ address, timeoutMs: 60_000 });
  try {
    const request = resnet50T4Request();
    const answer = await client.optimizeBatch(request);
    const rec = answer.recommended;
    console.log("ResNet-50 v1.5 FP32 on g4dn.xlarge (T4), 800 req/s, p99 <= 100 ms");
    console.log(`feasible:      ${answer.feasible ? "yes" : "no"}`);
    if (!rec) throw new Error("the answer carries no recommended plan");
    console.log(`plan:          ${describe(rec)}`);
    const predicted = rec.predictedLatency;
    const simulated = rec.simulated?.latency;
    console.log(`predicted:     p50 ${ms(predicted?.p50Ms)}  p90 ${ms(predicted?.p90Ms)}  p99 ${ms(predicted?.p99Ms)}`);
    console.log(`simulated:     p50 ${ms(simulated?.p50Ms)}  p90 ${ms(simulated?.p90Ms)}  p99 ${ms(simulated?.p99Ms)}`);
    console.log(
      `capacity:      ${rec.capacityPerS.toFixed(0)} req/s (utilisation ${(100 * rec.utilisation).toFixed(0)}%, ` +
        `mean batch ${rec.meanBatchSize.toFixed(1)})`,
    );
    console.log(`cost:          ${usd(rec.costPerHour)}/hour, ${usd(rec.costPerMillionRequests)} per million requests`);
    console.log(`meets the SLO: ${rec.meetsSlo ? "yes" : "no"}`);
    console.log(`binding:       ${bindingConstraintToJSON(answer.bindingConstraint)}: ${answer.bindingReason}`);
    if (answer.realtimeBaseline) {
      const saving = answer.savingVsRealtimePerHour ?? 0;
      const fraction = answer.savingVsRealtimeFraction ?? 0;
      console.log(
        `real-time:     ${describe(answer.realtimeBaseline)}, ${usd(answer.realtimeBaseline.costPerHour)}/hour; ` +
          `batching saves ${usd(saving)}/hour (${(100 * fraction).toFixed(0)}%)`,
      );
    } else {
      console.log(`real-time:     ${answer.realtimeBaselineNote}`);
    }
    console.log("frontier (cost/hour, p99, plan):");
    for (const point of answer.frontier) {
      const plan = point.plan;
      console.log(
        `  ${usd(point.costPerHour).padStart(8)}  ${ms(point.latencyMs).padStart(9)}  ` +
          `${plan?.replicas} x B=${plan?.maxBatchSize} T=${plan?.maxQueueDelayMs.toFixed(1)} ms` +
          `${point.meetsSlo ? "" : "  (misses the SLO)"}`,
      );
    }
    for (const note of answer.notes) console.log(`note: ${note}`);
  } finally {
    client.close();
  }
}

// Run only as a script (the tests import the request builder above).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error: unknown) => {
    if (error instanceof ServewiseError) {
      console.error(`error: ${error.message}`);
      for (const v of error.fieldViolations) console.error(`  ${v.field}: ${v.description}`);
    } else {
      console.error(error);
    }
    process.exit(1);
  });
}
