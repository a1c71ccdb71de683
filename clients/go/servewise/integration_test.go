package servewise_test

// Integration tests against a real Servewise server: scripts/test runs them under
// with_test_server (scripts/steps/50-go.sh), which sets SERVEWISE_TEST_ADDRESS. Without it they
// skip. Run them by hand with
//
//	SERVEWISE_TEST_ADDRESS=127.0.0.1:50051 go test ./...

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/servewise/servewise/clients/go/servewise"
	pb "github.com/servewise/servewise/clients/go/servewisev1"
)

// Published ResNet-50 v1.5 FP32 latencies (ms per batch: average, p99) from NVIDIA
// DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "Inference
// performance" tables, as collected in /work/shared/data/profiles.json.
type point struct {
	batch    uint32
	avg, p99 float64
}

var (
	// id dle-pt-resnet-50-v1-5-t4-fp32: NVIDIA T4 / FP32 Inference Latency.
	resnet50T4 = []point{
		{1, 10.7, 16.71}, {2, 11.26, 16.99}, {4, 12.73, 18.03}, {8, 22.41, 22.9},
		{16, 39.77, 40.23}, {32, 77.62, 77.28}, {64, 152.73, 153.02},
		{128, 309.26, 305.13}, {256, 635.98, 625.21},
	}
	// id dle-pt-resnet-50-v1-5-v100-16gb-fp32: NVIDIA DGX-1 (1x V100 16GB) / FP32 Inference Latency.
	resnet50V100 = []point{
		{1, 10.37, 11.73}, {2, 10.24, 12.89}, {4, 10.46, 11.75}, {8, 11.5, 13.12},
		{16, 16.07, 15.97}, {32, 29.37, 28.67}, {64, 55.4, 53.71},
		{128, 109.26, 104.34}, {256, 214.48, 202.88},
	}
	// AWS us-east-1 on-demand USD/hour (/work/shared/data/prices.json, SkyPilot catalog).
	prices = map[string]float64{"g4dn.xlarge": 0.526, "p3.2xlarge": 3.06}
	tables = map[string][]point{"g4dn.xlarge": resnet50T4, "p3.2xlarge": resnet50V100}
)

func candidate(instance string) *pb.Candidate {
	var points []*pb.ProfilePoint
	for _, p := range tables[instance] {
		points = append(points, &pb.ProfilePoint{BatchSize: p.batch, LatencyMs: p.avg, P99LatencyMs: proto.Float64(p.p99)})
	}
	return &pb.Candidate{
		InstanceType: &pb.InstanceType{Name: instance, PricePerHour: prices[instance]},
		Profile:      &pb.LatencyProfile{Kind: &pb.LatencyProfile_Points{Points: &pb.PointsProfile{Points: points}}},
	}
}

// serviceTimeMs is s(b) as the serving model defines it: linear interpolation between measured
// points, on the p99 column for SERVICE_TIME_BASIS_P99.
func serviceTimeMs(instance string, b uint32, useP99 bool) float64 {
	pts := tables[instance]
	pick := func(p point) float64 {
		if useP99 {
			return p.p99
		}
		return p.avg
	}
	for i, p := range pts {
		if p.batch == b {
			return pick(p)
		}
		if p.batch > b && i > 0 {
			lo := pts[i-1]
			frac := float64(b-lo.batch) / float64(p.batch-lo.batch)
			return pick(lo) + frac*(pick(p)-pick(lo))
		}
	}
	return math.Inf(1)
}

func optimizeRequest() *pb.OptimizeBatchRequest {
	return &pb.OptimizeBatchRequest{
		Candidates:       []*pb.Candidate{candidate("g4dn.xlarge"), candidate("p3.2xlarge")},
		Workload:         &pb.Workload{RatePerS: 1000},
		Slo:              &pb.Slo{Percentile: proto.Float64(99), LatencyMs: 100},
		ServiceTimeBasis: pb.ServiceTimeBasis_SERVICE_TIME_BASIS_P99,
		Seed:             7,
	}
}

// dialServer connects to the server scripts/test started, or skips the test.
func dialServer(t *testing.T) (*servewise.Client, context.Context) {
	t.Helper()
	addr := os.Getenv("SERVEWISE_TEST_ADDRESS")
	if addr == "" {
		t.Skip("SERVEWISE_TEST_ADDRESS is not set: integration tests need a running server " +
			"(scripts/test starts one; or set it to host:port of `python -m servewise serve`)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	client, err := servewise.Dial(ctx, addr, servewise.WithPlaintext(), servewise.WithBlock())
	if err != nil {
		t.Fatalf("Dial %s: %v", addr, err)
	}
	t.Cleanup(func() { client.Close() })
	return client, ctx
}

func near(a, b float64) bool {
	return math.Abs(a-b) <= 1e-9*math.Max(1, math.Max(math.Abs(a), math.Abs(b)))
}

// checkCost pins the cost arithmetic of section 2 of ARCHITECTURE.md on one assessed plan.
func checkCost(t *testing.T, what string, a *pb.PlanAssessment, ratePerS float64, useP99 bool) {
	t.Helper()
	plan := a.GetPlan()
	price, ok := prices[plan.GetInstanceType()]
	if !ok {
		t.Fatalf("%s: unknown instance type %q", what, plan.GetInstanceType())
	}
	n, b := float64(plan.GetReplicas()), plan.GetMaxBatchSize()
	if !near(a.GetCostPerHour(), n*price) {
		t.Errorf("%s: cost_per_hour %v, want replicas*price = %v", what, a.GetCostPerHour(), n*price)
	}
	if want := n * price / (ratePerS * 3600) * 1e6; !near(a.GetCostPerMillionRequests(), want) {
		t.Errorf("%s: cost_per_million_requests %v, want %v", what, a.GetCostPerMillionRequests(), want)
	}
	capacity := n * float64(b) / (serviceTimeMs(plan.GetInstanceType(), b, useP99) / 1000)
	if math.Abs(a.GetCapacityPerS()-capacity) > 1e-6*capacity {
		t.Errorf("%s: capacity %v, want N*B/s(B) = %v", what, a.GetCapacityPerS(), capacity)
	}
	if !near(a.GetUtilisation(), ratePerS/a.GetCapacityPerS()) || a.GetUtilisation() >= 1 {
		t.Errorf("%s: utilisation %v, want rate/capacity = %v < 1", what, a.GetUtilisation(), ratePerS/a.GetCapacityPerS())
	}
}

// TestOptimizeBatch pins that the recommended plan meets the SLO in its own simulated figures
// and that its cost, capacity, baseline and frontier follow from the request.
func TestOptimizeBatch(t *testing.T) {
	client, ctx := dialServer(t)
	req := optimizeRequest()
	resp, err := client.OptimizeBatch(ctx, req)
	if err != nil {
		t.Fatalf("OptimizeBatch: %v", err)
	}
	rec := resp.GetRecommended()
	if !resp.GetFeasible() || !rec.GetMeetsSlo() {
		t.Fatalf("infeasible: %s", resp.GetBindingReason())
	}
	t.Logf("recommended %v at $%.3f/h; simulated p99 %.1f ms", rec.GetPlan(), rec.GetCostPerHour(),
		rec.GetSimulated().GetLatency().GetSloPercentileMs())

	sim := rec.GetSimulated()
	if sim == nil || sim.GetLatency().SloPercentileMs == nil {
		t.Fatal("the recommendation carries no confirming simulation at the SLO percentile")
	}
	if got := sim.GetLatency().GetSloPercentileMs(); got > req.GetSlo().GetLatencyMs() || got != sim.GetLatency().GetP99Ms() {
		t.Errorf("simulated p99 %v ms (slo_percentile_ms %v): want = p99 and <= %v ms",
			sim.GetLatency().GetP99Ms(), got, req.GetSlo().GetLatencyMs())
	}
	if !sim.GetStable() || sim.GetRequestsSimulated() == 0 {
		t.Errorf("confirming simulation stable=%v over %d requests (%s)", sim.GetStable(), sim.GetRequestsSimulated(), sim.GetStabilityReason())
	}
	if pred := rec.GetPredictedLatency(); pred.GetP50Ms() > pred.GetP90Ms() || pred.GetP90Ms() > pred.GetP99Ms() {
		t.Errorf("predicted percentiles out of order: %v", pred)
	}
	checkCost(t, "recommended", rec, req.GetWorkload().GetRatePerS(), true)

	// Real-time baseline: B = 1, T = 0, dearer than batching, and the saving is the difference.
	rt := resp.GetRealtimeBaseline()
	if rt.GetPlan().GetMaxBatchSize() != 1 || rt.GetPlan().GetMaxQueueDelayMs() != 0 || !rt.GetMeetsSlo() {
		t.Fatalf("real-time baseline %v (meets SLO %v)", rt.GetPlan(), rt.GetMeetsSlo())
	}
	checkCost(t, "real-time baseline", rt, req.GetWorkload().GetRatePerS(), true)
	saving := rt.GetCostPerHour() - rec.GetCostPerHour()
	if resp.SavingVsRealtimePerHour == nil || !near(resp.GetSavingVsRealtimePerHour(), saving) || saving < 0 {
		t.Errorf("saving_vs_realtime_per_hour %v, want %v >= 0", resp.SavingVsRealtimePerHour, saving)
	}
	if !near(resp.GetSavingVsRealtimeFraction(), saving/rt.GetCostPerHour()) {
		t.Errorf("saving_vs_realtime_fraction %v, want %v", resp.GetSavingVsRealtimeFraction(), saving/rt.GetCostPerHour())
	}

	// Frontier: cheapest first, and nothing on it that meets the SLO is cheaper than the pick.
	frontier := resp.GetFrontier()
	if len(frontier) == 0 {
		t.Fatal("empty frontier")
	}
	if !slices.IsSortedFunc(frontier, func(a, b *pb.FrontierPoint) int { return cmpFloat(a.GetCostPerHour(), b.GetCostPerHour()) }) {
		t.Error("frontier is not sorted cheapest first")
	}
	for _, p := range frontier {
		if p.GetMeetsSlo() && p.GetCostPerHour() < rec.GetCostPerHour()-1e-9 {
			t.Errorf("frontier point %v meets the SLO at $%v/h, below the recommendation's $%v/h", p.GetPlan(), p.GetCostPerHour(), rec.GetCostPerHour())
		}
	}
	if resp.GetPlansConsidered() == 0 || resp.GetBindingConstraint() == pb.BindingConstraint_BINDING_CONSTRAINT_UNSPECIFIED {
		t.Errorf("plans_considered %d, binding %v", resp.GetPlansConsidered(), resp.GetBindingConstraint())
	}

	// Same request and seed, same answer (the notes may report how long the search took).
	again, err := client.OptimizeBatch(ctx, req)
	if err != nil {
		t.Fatalf("repeated OptimizeBatch: %v", err)
	}
	first := proto.CloneOf(resp)
	first.Notes, again.Notes = nil, nil
	if !proto.Equal(first, again) {
		t.Errorf("a repeated request answered differently:\n%v\n%v", prototext.Format(first), prototext.Format(again))
	}
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestOptimizeBatchInfeasibleIsAnAnswer pins that an SLO below the fastest batch is a response
// saying why, not an error.
func TestOptimizeBatchInfeasibleIsAnAnswer(t *testing.T) {
	client, ctx := dialServer(t)
	req := optimizeRequest()
	req.Slo.LatencyMs = 5 // both GPUs take > 10 ms for a batch of one
	resp, err := client.OptimizeBatch(ctx, req)
	if err != nil {
		t.Fatalf("OptimizeBatch: %v", err)
	}
	if resp.GetFeasible() || resp.GetBindingConstraint() != pb.BindingConstraint_BINDING_CONSTRAINT_SERVICE_TIME || resp.GetBindingReason() == "" {
		t.Fatalf("feasible=%v binding=%v (%q); want infeasible, SERVICE_TIME", resp.GetFeasible(), resp.GetBindingConstraint(), resp.GetBindingReason())
	}
	if resp.GetRecommended().GetMeetsSlo() {
		t.Error("the closest plan of an infeasible answer claims to meet the SLO")
	}
}

func simulateRequest() *pb.SimulateRequest {
	return &pb.SimulateRequest{
		Candidate:        candidate("p3.2xlarge"),
		Plan:             &pb.ServingPlan{MaxBatchSize: 8, MaxQueueDelayMs: 5, Replicas: 2},
		Workload:         &pb.Workload{RatePerS: 300},
		NumRequests:      20_000,
		Seed:             11,
		ServiceTimeBasis: pb.ServiceTimeBasis_SERVICE_TIME_BASIS_TYPICAL,
		Slo:              &pb.Slo{Percentile: proto.Float64(99), LatencyMs: 50},
	}
}

// TestSimulate pins the figures of a simulation against what the serving model implies.
func TestSimulate(t *testing.T) {
	client, ctx := dialServer(t)
	req := simulateRequest()
	resp, err := client.Simulate(ctx, req)
	if err != nil {
		t.Fatalf("Simulate: %v", err)
	}
	res, lat := resp.GetResult(), resp.GetResult().GetLatency()
	t.Logf("p50 %.2f p99 %.2f ms, mean batch %.2f, utilisation %.3f", lat.GetP50Ms(), lat.GetP99Ms(), res.GetMeanBatchSize(), res.GetUtilisation())

	if res.GetRequestsSimulated() != req.GetNumRequests() || res.GetSeed() != req.GetSeed() {
		t.Errorf("simulated %d requests with seed %d, want %d and %d", res.GetRequestsSimulated(), res.GetSeed(), req.GetNumRequests(), req.GetSeed())
	}
	// Capacity = N*B/s(B) with s(8) = 11.5 ms measured on the V100.
	if want := 2 * 8 / 0.0115; math.Abs(resp.GetCapacityPerS()-want) > 1e-6*want {
		t.Errorf("capacity %v, want %v", resp.GetCapacityPerS(), want)
	}
	if !res.GetStable() || math.Abs(res.GetThroughputPerS()-300)/300 > 0.05 {
		t.Errorf("stable=%v throughput %v req/s; a stable run at 300 req/s carries ~300", res.GetStable(), res.GetThroughputPerS())
	}
	ordered := []float64{lat.GetP50Ms(), lat.GetP90Ms(), lat.GetP95Ms(), lat.GetP99Ms(), lat.GetP999Ms()}
	if !slices.IsSorted(ordered) || lat.GetMeanMs() > lat.GetP999Ms() {
		t.Errorf("latency percentiles out of order: %v", lat)
	}
	// Every request waits at least the fastest batch (10.24 ms at batch 2) and at most the
	// delay bound plus the service time it queues behind; the median is well under 5 + 2*11.5.
	if lat.GetP50Ms() < 10.24 || lat.GetP50Ms() > 5+2*11.5 {
		t.Errorf("median %v ms outside [10.24, 28]", lat.GetP50Ms())
	}
	if mb := res.GetMeanBatchSize(); mb < 1 || mb > 8 {
		t.Errorf("mean batch %v outside [1, 8]", mb)
	}
	if u := res.GetUtilisation(); u <= 0 || u >= 1 {
		t.Errorf("utilisation %v outside (0, 1)", u)
	}
	if resp.MeetsSlo == nil || lat.SloPercentileMs == nil ||
		resp.GetMeetsSlo() != (lat.GetSloPercentileMs() <= req.GetSlo().GetLatencyMs()) || lat.GetSloPercentileMs() != lat.GetP99Ms() {
		t.Errorf("meets_slo %v with p99 %v ms against %v ms", resp.MeetsSlo, lat.SloPercentileMs, req.GetSlo().GetLatencyMs())
	}

	// Same seed, same figures; another seed, another sample.
	again, err := client.Simulate(ctx, req)
	if err != nil || !proto.Equal(resp, again) {
		t.Errorf("same seed answered differently (err %v)", err)
	}
	req.Seed = 12
	other, err := client.Simulate(ctx, req)
	if err != nil || other.GetResult().GetLatency().GetMeanMs() == lat.GetMeanMs() {
		t.Errorf("seed 12 gave the same mean as seed 11 (err %v)", err)
	}
}

// TestSimulateOverloadIsUnstable pins that a rate above capacity is reported unstable.
func TestSimulateOverloadIsUnstable(t *testing.T) {
	client, ctx := dialServer(t)
	req := simulateRequest()
	req.Workload.RatePerS = 2000 // capacity is 2*8/11.5 ms = 1391 req/s
	resp, err := client.Simulate(ctx, req)
	if err != nil {
		t.Fatalf("Simulate: %v", err)
	}
	if resp.GetResult().GetStable() || resp.GetResult().GetStabilityReason() == "" {
		t.Errorf("stable=%v (%q) at 2000 req/s over %v req/s capacity", resp.GetResult().GetStable(), resp.GetResult().GetStabilityReason(), resp.GetCapacityPerS())
	}
}

// TestSimulateConfirmsTheRecommendation pins the optimizer against the simulator: its plan,
// simulated on a longer run with another seed, still meets the SLO (within 10%, since a fresh
// sample of a tail percentile varies).
func TestSimulateConfirmsTheRecommendation(t *testing.T) {
	client, ctx := dialServer(t)
	opt := optimizeRequest()
	plan, err := client.OptimizeBatch(ctx, opt)
	if err != nil {
		t.Fatalf("OptimizeBatch: %v", err)
	}
	rec := plan.GetRecommended().GetPlan()
	resp, err := client.Simulate(ctx, &pb.SimulateRequest{
		Candidate:        candidate(rec.GetInstanceType()),
		Plan:             rec,
		Workload:         opt.GetWorkload(),
		NumRequests:      100_000,
		Seed:             99,
		ServiceTimeBasis: opt.GetServiceTimeBasis(),
		Slo:              opt.GetSlo(),
	})
	if err != nil {
		t.Fatalf("Simulate: %v", err)
	}
	p99 := resp.GetResult().GetLatency().GetP99Ms()
	t.Logf("plan %v: simulated p99 %.1f ms on a fresh 100k sample", rec, p99)
	if p99 > 1.1*opt.GetSlo().GetLatencyMs() || !resp.GetResult().GetStable() {
		t.Errorf("recommended plan simulates to p99 %v ms (stable %v) against a %v ms SLO", p99, resp.GetResult().GetStable(), opt.GetSlo().GetLatencyMs())
	}
}

// TestInvalidRequestNamesTheFields pins INVALID_ARGUMENT with a BadRequest field violation per
// bad field, and that it is not retried into something else.
func TestInvalidRequestNamesTheFields(t *testing.T) {
	client, ctx := dialServer(t)
	req := optimizeRequest()
	req.Workload.RatePerS = -1
	req.Slo.LatencyMs = 0
	_, err := client.OptimizeBatch(ctx, req)
	var serr *servewise.Error
	if !errors.As(err, &serr) || serr.Code != codes.InvalidArgument {
		t.Fatalf("err = %v, want INVALID_ARGUMENT", err)
	}
	var fields []string
	for _, v := range serr.FieldViolations {
		fields = append(fields, v.Field)
		if v.Description == "" {
			t.Errorf("violation of %s has no description", v.Field)
		}
	}
	for _, want := range []string{"workload.rate_per_s", "slo.latency_ms"} {
		if !slices.Contains(fields, want) {
			t.Errorf("violations %v lack %s", fields, want)
		}
	}

	sim := simulateRequest()
	sim.Plan.Replicas = 0
	_, err = client.Simulate(ctx, sim)
	if servewise.Code(err) != codes.InvalidArgument || !slices.ContainsFunc(servewise.FieldViolations(err), func(v servewise.FieldViolation) bool {
		return v.Field == "plan.replicas"
	}) {
		t.Errorf("Simulate with 0 replicas: %v, want INVALID_ARGUMENT naming plan.replicas", err)
	}
}

// TestDeadlineExceeded pins that a deadline too short for the work ends the call with
// DEADLINE_EXCEEDED, and that the server keeps serving.
func TestDeadlineExceeded(t *testing.T) {
	client, ctx := dialServer(t)
	short, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	req := simulateRequest()
	req.NumRequests = 2_000_000
	if _, err := client.Simulate(short, req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DEADLINE_EXCEEDED", err)
	}
	health, err := healthpb.NewHealthClient(client.Conn()).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || health.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after a cancelled call: %v, %v", health.GetStatus(), err)
	}
}

// TestSelectMode pins that SelectMode answers a plan for every mode and chooses the cheapest
// feasible one: an urgent class and a backlog are served by a hybrid of a pool and a job.
func TestSelectMode(t *testing.T) {
	client, ctx := dialServer(t)
	resp, err := client.SelectMode(ctx, &pb.SelectModeRequest{
		TrafficClasses: []*pb.TrafficClass{
			{Name: "chat", Volume: &pb.TrafficClass_RatePerS{RatePerS: 40}, Requirement: &pb.TrafficClass_Slo{Slo: &pb.Slo{LatencyMs: 60}}},
			{Name: "backfill", Volume: &pb.TrafficClass_BacklogRequests{BacklogRequests: 100_000}, Requirement: &pb.TrafficClass_DeadlineS{DeadlineS: 3600}},
		},
		Candidates: []*pb.Candidate{candidate("g4dn.xlarge"), candidate("p3.2xlarge")},
		Seed:       5,
	})
	if err != nil {
		t.Fatalf("SelectMode: %v", err)
	}
	if len(resp.GetModes()) != 4 {
		t.Fatalf("got %d mode plans, want 4", len(resp.GetModes()))
	}
	best := math.Inf(1)
	var chosen *pb.ModePlan
	for _, m := range resp.GetModes() {
		if m.GetFeasible() {
			best = math.Min(best, m.GetObjectivePerMillionRequests())
		} else if m.GetReason() == "" {
			t.Errorf("%v is infeasible without a reason", m.GetMode())
		}
		if m.GetMode() == resp.GetChosenMode() {
			chosen = m
		}
	}
	if chosen == nil || !chosen.GetFeasible() || chosen.GetObjectivePerMillionRequests() != best {
		t.Fatalf("chosen %v is not the cheapest feasible mode (best objective %g)", resp.GetChosenMode(), best)
	}
	if resp.GetChosenMode() != pb.ServingMode_SERVING_MODE_HYBRID {
		t.Errorf("chosen %v, want SERVING_MODE_HYBRID; reasons: %v", resp.GetChosenMode(), resp.GetReasons())
	}
}

// TestPlanResources pins that PlanResources compares dedicated and autoscaled replicas over a
// rate profile (a day in four steps), recommends the cheaper within the SLO-risk bound and
// exports an autoscaling/v2 HPA with the recommended autoscaler's bounds.
func TestPlanResources(t *testing.T) {
	client, ctx := dialServer(t)
	var profile []*pb.RatePoint
	for i, rate := range []float64{60, 340, 200, 100} {
		profile = append(profile, &pb.RatePoint{TimeS: float64(i) * 21600, RatePerS: rate})
	}
	resp, err := client.PlanResources(ctx, &pb.PlanResourcesRequest{
		Deployments: []*pb.DeploymentSpec{{
			Name:        "resnet",
			Candidates:  []*pb.Candidate{candidate("g4dn.xlarge")},
			Slo:         &pb.Slo{LatencyMs: 100},
			RateProfile: profile,
		}},
		Seed: 5,
	})
	if err != nil {
		t.Fatalf("PlanResources: %v", err)
	}
	d := resp.GetDeployments()[0]
	if len(d.GetStrategies()) != 2 {
		t.Fatalf("got %d strategies, want dedicated and autoscaled", len(d.GetStrategies()))
	}
	dedicated, autoscaled := d.GetStrategies()[0], d.GetStrategies()[1]
	if dedicated.GetStrategy() != pb.ResourceStrategy_RESOURCE_STRATEGY_DEDICATED ||
		autoscaled.GetStrategy() != pb.ResourceStrategy_RESOURCE_STRATEGY_AUTOSCALED {
		t.Fatalf("strategies %v, %v", dedicated.GetStrategy(), autoscaled.GetStrategy())
	}
	want := float64(dedicated.GetPeakReplicas()) * prices["g4dn.xlarge"] * 24
	if math.Abs(dedicated.GetCostPerDay()-want) > 1e-9*want {
		t.Errorf("dedicated cost per day %g, want peak replicas x price x 24 = %g", dedicated.GetCostPerDay(), want)
	}
	a := d.GetRecommendedAutoscaler()
	if a.GetMinReplicas() < 1 || a.GetMaxReplicas() < a.GetMinReplicas() {
		t.Errorf("recommended autoscaler min %d max %d", a.GetMinReplicas(), a.GetMaxReplicas())
	}
	if !strings.Contains(d.GetExports().GetHpaYaml(), fmt.Sprintf("maxReplicas: %d", a.GetMaxReplicas())) {
		t.Errorf("HPA export lacks maxReplicas %d:\n%s", a.GetMaxReplicas(), d.GetExports().GetHpaYaml())
	}
	if resp.GetRecommendedStrategy() == pb.ResourceStrategy_RESOURCE_STRATEGY_UNSPECIFIED {
		t.Errorf("no recommended strategy; reasons %v", resp.GetReasons())
	}
}

// TestDeployments registers a deployment, reads it back, rejects a stale update, and asks
// EvaluateSwitch about it: a rate inside the hysteresis band holds and is logged.
func TestDeployments(t *testing.T) {
	client, ctx := dialServer(t)
	id := fmt.Sprintf("go-client-%d", time.Now().UnixNano())
	dep := &pb.Deployment{
		DeploymentId: id,
		Candidates: []*pb.Candidate{{
			InstanceType: &pb.InstanceType{Name: "g4dn.xlarge", PricePerHour: 0.526, MemoryCap: &pb.InstanceType_MaxBatchSize{MaxBatchSize: 64}},
			Profile:      &pb.LatencyProfile{Kind: &pb.LatencyProfile_Linear{Linear: &pb.LinearProfile{BaseMs: 5.24, PerItemMs: 2.288}}},
		}},
		Slo:             &pb.Slo{LatencyMs: 100},
		CurrentPlan:     &pb.ServingPlan{InstanceType: "g4dn.xlarge", MaxBatchSize: 8, MaxQueueDelayMs: 5, Replicas: 2},
		PlannedRatePerS: 200,
	}
	created, err := client.RegisterDeployment(ctx, &pb.RegisterDeploymentRequest{Deployment: dep})
	if err != nil {
		t.Fatalf("RegisterDeployment: %v", err)
	}
	if created.GetDeployment().GetStateVersion() != 1 {
		t.Fatalf("state version %d, want 1", created.GetDeployment().GetStateVersion())
	}
	if created.GetDeployment().GetCurrentMode() != pb.ServingMode_SERVING_MODE_DYNAMIC_BATCHING {
		t.Errorf("mode %v, want derived DYNAMIC_BATCHING", created.GetDeployment().GetCurrentMode())
	}
	got, err := client.GetDeployment(ctx, &pb.GetDeploymentRequest{DeploymentId: id})
	if err != nil || got.GetDeployment().GetPlannedRatePerS() != 200 {
		t.Fatalf("GetDeployment: %v, %v", got, err)
	}
	// Creating it again names version 0, which is stale now.
	if _, err := client.RegisterDeployment(ctx, &pb.RegisterDeploymentRequest{Deployment: dep}); servewise.Code(err) != codes.FailedPrecondition {
		t.Fatalf("stale register: err = %v, want FAILED_PRECONDITION", err)
	}
	if _, err := client.GetDeployment(ctx, &pb.GetDeploymentRequest{DeploymentId: id + "-missing"}); servewise.Code(err) != codes.NotFound {
		t.Fatalf("unknown deployment: err = %v, want NOT_FOUND", err)
	}
	samples := []*pb.MetricSample{{TimestampS: 0, RatePerS: 205}, {TimestampS: 60, RatePerS: 195}}
	eval, err := client.EvaluateSwitch(ctx, &pb.EvaluateSwitchRequest{DeploymentId: id, Samples: samples})
	if err != nil {
		t.Fatalf("EvaluateSwitch: %v", err)
	}
	if eval.GetDecision() != pb.SwitchDecision_SWITCH_DECISION_HOLD || eval.GetDecisionSeq() != 1 {
		t.Errorf("decision %v seq %d (%s), want HOLD logged as 1", eval.GetDecision(), eval.GetDecisionSeq(), eval.GetReason())
	}
	list, err := client.ListDeployments(ctx, &pb.ListDeploymentsRequest{PageSize: 1000})
	if err != nil {
		t.Fatalf("ListDeployments: %v", err)
	}
	found := false
	for _, d := range list.GetDeployments() {
		found = found || d.GetDeploymentId() == id
	}
	if !found {
		t.Errorf("ListDeployments lacks %s", id)
	}
}

// unimplemented lists the RPCs the server does not implement yet. When an issue implements
// one, delete its entry here and give it a test of its own like TestSimulate.
var unimplemented = map[string]func(context.Context, *servewise.Client) error{}

// TestRoute registers a batching deployment and routes to it: every key goes to the batch pool
// at the deployment's state version; an unknown deployment is NOT_FOUND and an empty request key
// INVALID_ARGUMENT.
func TestRoute(t *testing.T) {
	client, ctx := dialServer(t)
	id := fmt.Sprintf("go-route-%d", time.Now().UnixNano())
	dep := &pb.Deployment{
		DeploymentId: id,
		Candidates: []*pb.Candidate{{
			InstanceType: &pb.InstanceType{Name: "g4dn.xlarge", PricePerHour: 0.526, MemoryCap: &pb.InstanceType_MaxBatchSize{MaxBatchSize: 64}},
			Profile:      &pb.LatencyProfile{Kind: &pb.LatencyProfile_Linear{Linear: &pb.LinearProfile{BaseMs: 5.24, PerItemMs: 2.288}}},
		}},
		Slo:             &pb.Slo{LatencyMs: 100},
		CurrentPlan:     &pb.ServingPlan{InstanceType: "g4dn.xlarge", MaxBatchSize: 8, MaxQueueDelayMs: 5, Replicas: 2},
		PlannedRatePerS: 200,
	}
	if _, err := client.RegisterDeployment(ctx, &pb.RegisterDeploymentRequest{Deployment: dep}); err != nil {
		t.Fatalf("RegisterDeployment: %v", err)
	}
	for _, key := range []string{"r1", "r2", "r3"} {
		got, err := client.Route(ctx, &pb.RouteRequest{DeploymentId: id, RequestKey: key})
		if err != nil {
			t.Fatalf("Route: %v", err)
		}
		if got.GetPool() != pb.Pool_POOL_BATCH || got.GetStateVersion() != 1 {
			t.Fatalf("Route(%s) = %v, want POOL_BATCH at version 1", key, got)
		}
	}
	if _, err := client.Route(ctx, &pb.RouteRequest{DeploymentId: id + "-missing", RequestKey: "r1"}); servewise.Code(err) != codes.NotFound {
		t.Fatalf("unknown deployment: err = %v, want NOT_FOUND", err)
	}
	if _, err := client.Route(ctx, &pb.RouteRequest{DeploymentId: id}); servewise.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty request key: err = %v, want INVALID_ARGUMENT", err)
	}
}

// TestControlRejectsUnknownDeployment sends a sample for a deployment that is not registered
// and gets a SampleRejected event on the stream (not an abort); the stream then ends cleanly.
func TestControlRejectsUnknownDeployment(t *testing.T) {
	client, ctx := dialServer(t)
	stream, err := client.Control(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sample := &pb.MetricSample{DeploymentId: "go-client-no-such", TimestampS: 1, RatePerS: 1}
	if err := stream.Send(&pb.ControlRequest{Kind: &pb.ControlRequest_Sample{Sample: sample}}); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var events []*pb.ControlResponse
	for {
		event, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		events = append(events, event)
	}
	if len(events) != 1 || !events[0].GetSampleRejected().GetUnknownDeployment() {
		t.Fatalf("events = %v, want one SampleRejected for an unknown deployment", events)
	}
}

// TestUnimplementedRPCs pins that each RPC not implemented yet answers UNIMPLEMENTED (and is
// not retried).
func TestUnimplementedRPCs(t *testing.T) {
	client, ctx := dialServer(t)
	for name, call := range unimplemented {
		t.Run(name, func(t *testing.T) {
			if err := call(ctx, client); servewise.Code(err) != codes.Unimplemented {
				t.Fatalf("%s: err = %v, want UNIMPLEMENTED", name, err)
			}
		})
	}
}
