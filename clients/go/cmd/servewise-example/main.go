// Command servewise-example asks a Servewise server how to serve ResNet-50 on NVIDIA T4 GPUs
// (AWS g4dn.xlarge) at 1000 images/s with a p99 latency of at most 100 ms, and prints the plan.
//
//	go run ./cmd/servewise-example -addr localhost:50051 -plaintext
//
// The latency profile is the published one in NVIDIA DeepLearningExamples,
// PyTorch/Classification/ConvNets/resnet50v1.5/README.md, table "Inference performance:
// NVIDIA T4 / FP32 Inference Latency" (average and p99 ms per batch, batch 1..256), as
// collected in /work/shared/data/profiles.json (id "dle-pt-resnet-50-v1-5-t4-fp32"). The price
// is the AWS us-east-1 on-demand price of g4dn.xlarge (1x T4), $0.526/h, from the SkyPilot
// catalog (skypilot-org/skypilot-catalog catalogs/v8/aws/vms.csv, in /work/shared/data/prices.json).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/servewise/servewise/clients/go/servewise"
	pb "github.com/servewise/servewise/clients/go/servewisev1"
)

// resnet50T4FP32 holds (batch size, average ms, p99 ms) per batch, from the table cited above.
var resnet50T4FP32 = []struct {
	batch    uint32
	avg, p99 float64
}{
	{1, 10.7, 16.71},
	{2, 11.26, 16.99},
	{4, 12.73, 18.03},
	{8, 22.41, 22.9},
	{16, 39.77, 40.23},
	{32, 77.62, 77.28},
	{64, 152.73, 153.02},
	{128, 309.26, 305.13},
	{256, 635.98, 625.21},
}

// Request is the OptimizeBatch request the example sends.
func Request(ratePerS, sloMs float64) *pb.OptimizeBatchRequest {
	points := make([]*pb.ProfilePoint, 0, len(resnet50T4FP32))
	for _, p := range resnet50T4FP32 {
		points = append(points, &pb.ProfilePoint{
			BatchSize: p.batch, LatencyMs: p.avg, P99LatencyMs: &p.p99,
		})
	}
	percentile := 99.0
	return &pb.OptimizeBatchRequest{
		Candidates: []*pb.Candidate{{
			InstanceType: &pb.InstanceType{Name: "g4dn.xlarge", PricePerHour: 0.526},
			Profile: &pb.LatencyProfile{Kind: &pb.LatencyProfile_Points{
				Points: &pb.PointsProfile{Points: points},
			}},
		}},
		Workload: &pb.Workload{RatePerS: ratePerS},
		Slo:      &pb.Slo{Percentile: &percentile, LatencyMs: sloMs},
		// Plan with each batch's measured p99 as its service time: conservative.
		ServiceTimeBasis: pb.ServiceTimeBasis_SERVICE_TIME_BASIS_P99,
	}
}

func main() {
	addr := flag.String("addr", "localhost:50051", "Servewise server address (host:port)")
	plaintext := flag.Bool("plaintext", false, "connect without TLS")
	caFile := flag.String("ca", "", "PEM CA file to verify the server (TLS)")
	token := flag.String("token", os.Getenv("SERVEWISE_TOKEN"), "bearer token (default $SERVEWISE_TOKEN)")
	rate := flag.Float64("rate", 1000, "arrival rate, requests per second")
	slo := flag.Float64("slo-ms", 100, "p99 latency bound, milliseconds")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of the call, retries included")
	flag.Parse()

	opts := []servewise.Option{}
	if *plaintext {
		opts = append(opts, servewise.WithPlaintext())
	}
	if *caFile != "" {
		opts = append(opts, servewise.WithCAFile(*caFile))
	}
	if *token != "" {
		opts = append(opts, servewise.WithBearerToken(*token))
	}
	if err := run(*addr, opts, Request(*rate, *slo), *timeout, os.Stdout); err != nil {
		var serr *servewise.Error
		if errors.As(err, &serr) && len(serr.FieldViolations) > 0 {
			// INVALID_ARGUMENT: one line per bad field of the request.
			fmt.Fprintf(os.Stderr, "servewise-example: %s: %s\n", serr.Code, serr.Message)
			for _, v := range serr.FieldViolations {
				fmt.Fprintf(os.Stderr, "  %s: %s\n", v.Field, v.Description)
			}
		} else {
			fmt.Fprintln(os.Stderr, "servewise-example:", err)
		}
		os.Exit(1)
	}
}

func run(addr string, opts []servewise.Option, req *pb.OptimizeBatchRequest, timeout time.Duration, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client, err := servewise.Dial(ctx, addr, opts...)
	if err != nil {
		return err
	}
	defer client.Close()
	resp, err := client.OptimizeBatch(ctx, req)
	if err != nil {
		return err
	}
	PrintPlan(out, req, resp)
	return nil
}

// PrintPlan writes the recommendation in a few readable lines.
func PrintPlan(w io.Writer, req *pb.OptimizeBatchRequest, resp *pb.OptimizeBatchResponse) {
	slo := req.GetSlo()
	fmt.Fprintf(w, "workload: %.0f req/s, SLO p%g <= %.0f ms\n",
		req.GetWorkload().GetRatePerS(), slo.GetPercentile(), slo.GetLatencyMs())
	rec := resp.GetRecommended()
	if !resp.GetFeasible() {
		fmt.Fprintf(w, "infeasible: %s\n", resp.GetBindingReason())
		if rec.GetPlan() == nil {
			return
		}
		fmt.Fprintln(w, "closest plan:")
	}
	plan := rec.GetPlan()
	fmt.Fprintf(w, "plan:       %d x %s, max batch %d, max queue delay %.2f ms\n",
		plan.GetReplicas(), plan.GetInstanceType(), plan.GetMaxBatchSize(), plan.GetMaxQueueDelayMs())
	pred := rec.GetPredictedLatency()
	fmt.Fprintf(w, "predicted:  p50 %.1f ms, p90 %.1f ms, p99 %.1f ms\n",
		pred.GetP50Ms(), pred.GetP90Ms(), pred.GetP99Ms())
	if sim := rec.GetSimulated(); sim != nil {
		fmt.Fprintf(w, "simulated:  p50 %.1f ms, p90 %.1f ms, p99 %.1f ms over %d requests (mean batch %.1f)\n",
			sim.GetLatency().GetP50Ms(), sim.GetLatency().GetP90Ms(), sim.GetLatency().GetP99Ms(),
			sim.GetRequestsSimulated(), sim.GetMeanBatchSize())
	}
	fmt.Fprintf(w, "capacity:   %.0f req/s (utilisation %.0f%%)\n",
		rec.GetCapacityPerS(), 100*rec.GetUtilisation())
	fmt.Fprintf(w, "cost:       $%.3f/h, $%.3f per million requests\n",
		rec.GetCostPerHour(), rec.GetCostPerMillionRequests())
	if rt := resp.GetRealtimeBaseline(); rt != nil && resp.SavingVsRealtimePerHour != nil {
		fmt.Fprintf(w, "real-time:  %d replicas, $%.3f/h; batching saves $%.3f/h (%.0f%%)\n",
			rt.GetPlan().GetReplicas(), rt.GetCostPerHour(),
			resp.GetSavingVsRealtimePerHour(), 100*resp.GetSavingVsRealtimeFraction())
	} else if note := resp.GetRealtimeBaselineNote(); note != "" {
		fmt.Fprintf(w, "real-time:  %s\n", note)
	}
	fmt.Fprintf(w, "binding:    %s (%s)\n", resp.GetBindingConstraint(), resp.GetBindingReason())
	fmt.Fprintf(w, "considered: %d plans; frontier of %d\n", resp.GetPlansConsidered(), len(resp.GetFrontier()))
}
