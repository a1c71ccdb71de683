package servewise

import (
	"context"
	"math"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RetryPolicy retries unary calls that fail with UNAVAILABLE (the server is down, restarting
// or unreachable), with exponential backoff and jitter. No other code is retried: the others
// mean the request or the server's state is at fault, and repeating the call would fail the same
// way. Streams (Control) are never retried, since messages already sent cannot be replayed.
//
// OptimizeBatch, Simulate, SelectMode, PlanResources, Route and the deployment reads are safe
// to repeat. EvaluateSwitch (it logs a decision) and RegisterDeployment (it writes state) are
// not retried: an UNAVAILABLE may follow a write that happened, and repeating it could log the
// decision twice.
type RetryPolicy struct {
	// MaxAttempts is the most calls made, the first included; 1 or less disables retries.
	MaxAttempts int
	// InitialBackoff is the wait before the first retry.
	InitialBackoff time.Duration
	// MaxBackoff caps every wait.
	MaxBackoff time.Duration
	// Multiplier grows the wait after each retry (values below 1 count as 1).
	Multiplier float64
	// Jitter spreads each wait uniformly over ±Jitter of its nominal value (0 to 1), so
	// clients that failed together do not retry together.
	Jitter float64
}

// DefaultRetryPolicy makes up to 4 attempts, waiting about 100 ms, 200 ms and 400 ms between them.
var DefaultRetryPolicy = RetryPolicy{
	MaxAttempts:    4,
	InitialBackoff: 100 * time.Millisecond,
	MaxBackoff:     2 * time.Second,
	Multiplier:     2,
	Jitter:         0.2,
}

// Backoff is the nominal wait (before jitter) ahead of retry number retry (1 for the first).
func (p RetryPolicy) Backoff(retry int) time.Duration {
	if retry < 1 || p.InitialBackoff <= 0 {
		return 0
	}
	mult := math.Max(p.Multiplier, 1)
	d := float64(p.InitialBackoff) * math.Pow(mult, float64(retry-1))
	if p.MaxBackoff > 0 && d > float64(p.MaxBackoff) {
		d = float64(p.MaxBackoff)
	}
	return time.Duration(d)
}

// jittered spreads d over [d(1-j), d(1+j)] given a uniform u in [0, 1).
func (p RetryPolicy) jittered(d time.Duration, u float64) time.Duration {
	j := math.Min(math.Max(p.Jitter, 0), 1)
	return time.Duration(float64(d) * (1 + j*(2*u-1)))
}

// Retryable reports whether a call that failed with err may be repeated: UNAVAILABLE only.
func Retryable(err error) bool {
	return status.Code(err) == codes.Unavailable
}

// UnaryClientInterceptor returns an interceptor applying the policy; [Dial] installs it unless
// [WithoutRetry] is given. It returns the last call's error when it gives up, and gives up
// early when the context ends or its deadline would pass during the next wait.
func (p RetryPolicy) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return p.interceptor(rand.Float64, sleepContext)
}

func (p RetryPolicy) interceptor(
	uniform func() float64,
	sleep func(context.Context, time.Duration) error,
) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if notRetried[method] {
			return err
		}
		for retry := 1; retry < p.MaxAttempts && err != nil && Retryable(err); retry++ {
			wait := p.jittered(p.Backoff(retry), uniform())
			if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= wait {
				return err // the retry could not finish in time; report the real failure
			}
			if sleep(ctx, wait) != nil {
				return err
			}
			err = invoker(ctx, method, req, reply, cc, opts...)
		}
		return err
	}
}

// notRetried lists the full method names of the RPCs that write state.
var notRetried = map[string]bool{
	"/servewise.v1.ServewiseService/EvaluateSwitch":     true,
	"/servewise.v1.ServewiseService/RegisterDeployment": true,
}

func sleepContext(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
