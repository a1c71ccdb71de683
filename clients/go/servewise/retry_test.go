package servewise

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/servewise/servewise/clients/go/servewisev1"
)

// fastRetry keeps the retry tests quick while exercising real waits.
var fastRetry = RetryPolicy{MaxAttempts: 4, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Multiplier: 2}

// failing returns a Simulate handler failing the first n calls with code.
func failing(n int32, code codes.Code) func(context.Context, int32) (*pb.SimulateResponse, error) {
	return func(_ context.Context, call int32) (*pb.SimulateResponse, error) {
		if call <= n {
			return nil, status.Errorf(code, "attempt %d fails", call)
		}
		return &pb.SimulateResponse{CapacityPerS: float64(call)}, nil
	}
}

// TestRetryRecoversFromUnavailable pins that UNAVAILABLE is retried until a call succeeds.
func TestRetryRecoversFromUnavailable(t *testing.T) {
	f := &fakeServer{simulate: failing(3, codes.Unavailable)}
	c := dialTest(t, serve(t, f), WithPlaintext(), WithRetry(fastRetry))
	resp, err := c.Simulate(testContext(t), &pb.SimulateRequest{})
	if err != nil {
		t.Fatalf("Simulate after 3 UNAVAILABLE: %v", err)
	}
	if got := f.calls.Load(); got != 4 || resp.GetCapacityPerS() != 4 {
		t.Fatalf("calls = %d, answer from call %v; want the 4th call to answer", got, resp.GetCapacityPerS())
	}
}

// TestRetryGivesUpAfterMaxAttempts pins that the last UNAVAILABLE is returned after MaxAttempts.
func TestRetryGivesUpAfterMaxAttempts(t *testing.T) {
	f := &fakeServer{simulate: failing(100, codes.Unavailable)}
	c := dialTest(t, serve(t, f), WithPlaintext(), WithRetry(fastRetry))
	_, err := c.Simulate(testContext(t), &pb.SimulateRequest{})
	if Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want UNAVAILABLE", err)
	}
	if got := f.calls.Load(); got != int32(fastRetry.MaxAttempts) {
		t.Fatalf("calls = %d, want %d", got, fastRetry.MaxAttempts)
	}
}

// TestRetryOnlyUnavailable pins that every other failure is returned after one call.
func TestRetryOnlyUnavailable(t *testing.T) {
	for _, code := range []codes.Code{
		codes.InvalidArgument, codes.Internal, codes.Unknown, codes.DeadlineExceeded,
		codes.ResourceExhausted, codes.FailedPrecondition, codes.NotFound, codes.Aborted,
		codes.Unimplemented, codes.Unauthenticated,
	} {
		t.Run(code.String(), func(t *testing.T) {
			f := &fakeServer{simulate: failing(100, code)}
			c := dialTest(t, serve(t, f), WithPlaintext(), WithRetry(fastRetry))
			_, err := c.Simulate(testContext(t), &pb.SimulateRequest{})
			if Code(err) != code || f.calls.Load() != 1 {
				t.Fatalf("err = %v after %d calls; want %s after 1", err, f.calls.Load(), code)
			}
		})
	}
}

// TestWithoutRetry pins that WithoutRetry makes a single call even on UNAVAILABLE.
func TestWithoutRetry(t *testing.T) {
	f := &fakeServer{simulate: failing(100, codes.Unavailable)}
	c := dialTest(t, serve(t, f), WithPlaintext(), WithoutRetry())
	if _, err := c.Simulate(testContext(t), &pb.SimulateRequest{}); Code(err) != codes.Unavailable || f.calls.Load() != 1 {
		t.Fatalf("err = %v after %d calls; want UNAVAILABLE after 1", err, f.calls.Load())
	}
}

// TestRetryStopsAtDeadline pins that a wait the deadline cannot cover is not started: the call
// returns the real UNAVAILABLE at once instead of sleeping into DEADLINE_EXCEEDED.
func TestRetryStopsAtDeadline(t *testing.T) {
	f := &fakeServer{simulate: failing(100, codes.Unavailable)}
	slow := RetryPolicy{MaxAttempts: 5, InitialBackoff: 10 * time.Second, MaxBackoff: 10 * time.Second, Multiplier: 1}
	c := dialTest(t, serve(t, f), WithPlaintext(), WithRetry(slow))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Simulate(ctx, &pb.SimulateRequest{})
	if Code(err) != codes.Unavailable || f.calls.Load() != 1 {
		t.Fatalf("err = %v after %d calls; want UNAVAILABLE after 1", err, f.calls.Load())
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Fatalf("took %v; the 10 s backoff must not be slept under a 2 s deadline", elapsed)
	}
}

// TestRetryStopsWhenContextCanceled pins that cancelling the context ends a backoff wait.
func TestRetryStopsWhenContextCanceled(t *testing.T) {
	f := &fakeServer{simulate: failing(100, codes.Unavailable)}
	slow := RetryPolicy{MaxAttempts: 5, InitialBackoff: time.Minute, Multiplier: 1}
	c := dialTest(t, serve(t, f), WithPlaintext(), WithRetry(slow))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Simulate(ctx, &pb.SimulateRequest{})
	if Code(err) != codes.Unavailable || time.Since(start) > 10*time.Second {
		t.Fatalf("err = %v after %v; want UNAVAILABLE soon after cancel", err, time.Since(start))
	}
}

// TestRetryWaitsForARestartingServer pins the case retries exist for: the server is not
// listening at the first call and comes up a moment later.
func TestRetryWaitsForARestartingServer(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens: the first attempt fails UNAVAILABLE

	f := &fakeServer{}
	srv := grpc.NewServer()
	pb.RegisterServewiseServiceServer(srv, f)
	t.Cleanup(srv.Stop)
	started := make(chan error, 1)
	time.AfterFunc(300*time.Millisecond, func() {
		lis, err := net.Listen("tcp", addr)
		started <- err
		if err == nil {
			go func() { _ = srv.Serve(lis) }()
		}
	})

	policy := RetryPolicy{MaxAttempts: 8, InitialBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond, Multiplier: 2}
	// gRPC's own reconnect backoff (1 s base) would otherwise outlast the test's retries.
	fastReconnect := grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.2, MaxDelay: 100 * time.Millisecond},
		MinConnectTimeout: time.Second,
	})
	c := dialTest(t, addr, WithPlaintext(), WithRetry(policy), WithDialOptions(fastReconnect))
	if _, err := c.Simulate(testContext(t), &pb.SimulateRequest{}); err != nil {
		if lerr := <-started; lerr != nil {
			t.Skipf("could not re-listen on %s: %v", addr, lerr)
		}
		t.Fatalf("Simulate while the server starts: %v", err)
	}
	if f.calls.Load() != 1 {
		t.Fatalf("server saw %d calls, want 1", f.calls.Load())
	}
}

// TestBackoffSchedule pins the nominal waits: exponential from InitialBackoff, capped.
func TestBackoffSchedule(t *testing.T) {
	want := []time.Duration{100, 200, 400, 800, 1600, 2000, 2000}
	for i, w := range want {
		if got := DefaultRetryPolicy.Backoff(i + 1); got != w*time.Millisecond {
			t.Errorf("Backoff(%d) = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	if got := (RetryPolicy{InitialBackoff: time.Second, Multiplier: 0.5}).Backoff(3); got != time.Second {
		t.Errorf("a multiplier below 1 must not shrink the wait: got %v", got)
	}
	if got := DefaultRetryPolicy.Backoff(0); got != 0 {
		t.Errorf("Backoff(0) = %v, want 0", got)
	}
}

// TestRetryWaitsAreJitteredWithinBounds pins that the interceptor sleeps the jittered schedule,
// within ±Jitter of each nominal wait, and never for a non-retryable error.
func TestRetryWaitsAreJitteredWithinBounds(t *testing.T) {
	for _, u := range []float64{0, 0.5, 0.999999} {
		var waits []time.Duration
		sleep := func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
		unavailable := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
			return status.Error(codes.Unavailable, "down")
		}
		err := DefaultRetryPolicy.interceptor(func() float64 { return u }, sleep)(
			context.Background(), "/m", nil, nil, nil, unavailable)
		if Code(err) != codes.Unavailable || len(waits) != DefaultRetryPolicy.MaxAttempts-1 {
			t.Fatalf("u=%v: err %v after %d waits", u, err, len(waits))
		}
		for i, got := range waits {
			nominal := float64(DefaultRetryPolicy.Backoff(i + 1))
			lo, hi := time.Duration(nominal*0.8), time.Duration(nominal*1.2)
			if got < lo || got > hi {
				t.Errorf("u=%v wait %d = %v, want within [%v, %v]", u, i+1, got, lo, hi)
			}
		}
	}
	var slept bool
	invalid := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		return status.Error(codes.InvalidArgument, "bad")
	}
	_ = DefaultRetryPolicy.interceptor(func() float64 { return 0 },
		func(context.Context, time.Duration) error { slept = true; return nil })(
		context.Background(), "/m", nil, nil, nil, invalid)
	if slept {
		t.Error("slept before returning INVALID_ARGUMENT")
	}
}

// TestRetryable pins the retryable set: UNAVAILABLE and nothing else, including non-gRPC errors.
func TestRetryable(t *testing.T) {
	if !Retryable(status.Error(codes.Unavailable, "x")) {
		t.Error("UNAVAILABLE must be retryable")
	}
	for _, err := range []error{nil, errors.New("plain"), status.Error(codes.Internal, "x"), context.DeadlineExceeded} {
		if Retryable(err) {
			t.Errorf("%v must not be retryable", err)
		}
	}
}

// TestWritesAreNotRetried pins that EvaluateSwitch and RegisterDeployment are called once even
// on UNAVAILABLE: the write may have happened, and EvaluateSwitch logs a decision.
func TestWritesAreNotRetried(t *testing.T) {
	for _, method := range []string{
		"/servewise.v1.ServewiseService/EvaluateSwitch",
		"/servewise.v1.ServewiseService/RegisterDeployment",
	} {
		calls := 0
		invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
			calls++
			return status.Error(codes.Unavailable, "gone")
		}
		intercept := fastRetry.interceptor(func() float64 { return 0.5 }, sleepContext)
		err := intercept(context.Background(), method, nil, nil, nil, invoker)
		if Code(err) != codes.Unavailable || calls != 1 {
			t.Fatalf("%s: err = %v after %d calls, want UNAVAILABLE after 1", method, err, calls)
		}
	}
}
