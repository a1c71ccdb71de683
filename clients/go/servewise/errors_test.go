package servewise

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/servewise/servewise/clients/go/servewisev1"
)

func badRequestStatus(t *testing.T) *status.Status {
	t.Helper()
	s, err := status.New(codes.InvalidArgument, "invalid request: 2 field violations").WithDetails(
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "workload.rate_per_s", Description: "must be > 0"},
			{Field: "slo.latency_ms", Description: "must be > 0"},
		}},
		&errdetails.ErrorInfo{Reason: "INVALID_WORKLOAD", Domain: "servewise"},
	)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestErrorCarriesCodeAndFieldViolations pins what a failed call exposes, over a real connection.
func TestErrorCarriesCodeAndFieldViolations(t *testing.T) {
	s := badRequestStatus(t)
	f := &fakeServer{simulate: func(context.Context, int32) (*pb.SimulateResponse, error) { return nil, s.Err() }}
	c := dialTest(t, serve(t, f), WithPlaintext())
	_, err := c.Simulate(testContext(t), &pb.SimulateRequest{})
	var serr *Error
	if !errors.As(err, &serr) {
		t.Fatalf("err %T is not an *Error", err)
	}
	want := []FieldViolation{{"workload.rate_per_s", "must be > 0"}, {"slo.latency_ms", "must be > 0"}}
	if serr.Code != codes.InvalidArgument || len(serr.FieldViolations) != 2 ||
		serr.FieldViolations[0] != want[0] || serr.FieldViolations[1] != want[1] {
		t.Fatalf("got %+v", serr)
	}
	if serr.Reason != "INVALID_WORKLOAD" || serr.Message != s.Message() {
		t.Fatalf("reason %q, message %q", serr.Reason, serr.Message)
	}
	if status.Code(err) != codes.InvalidArgument || Code(err) != codes.InvalidArgument {
		t.Fatal("status.Code and Code must see INVALID_ARGUMENT")
	}
	if got := FieldViolations(err); len(got) != 2 {
		t.Fatalf("FieldViolations = %v", got)
	}
	for _, part := range []string{"InvalidArgument", "workload.rate_per_s: must be > 0", "slo.latency_ms"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("Error() = %q lacks %q", err.Error(), part)
		}
	}
}

// TestErrorHelpers pins the helpers on errors that did not come through the Client.
func TestErrorHelpers(t *testing.T) {
	if Code(nil) != codes.OK || FieldViolations(nil) != nil {
		t.Error("nil must be OK with no violations")
	}
	if Code(errors.New("x")) != codes.Unknown {
		t.Error("a plain error must be Unknown")
	}
	if got := FieldViolations(badRequestStatus(t).Err()); len(got) != 2 {
		t.Errorf("FieldViolations of a raw status error = %v", got)
	}
	if wrapError(io.EOF) != io.EOF {
		t.Error("io.EOF (end of stream) must pass through unwrapped")
	}
	deadline := wrapError(status.Error(codes.DeadlineExceeded, "late"))
	if !errors.Is(deadline, context.DeadlineExceeded) || errors.Is(deadline, context.Canceled) {
		t.Error("DEADLINE_EXCEEDED must match context.DeadlineExceeded only")
	}
	if !errors.Is(wrapError(status.Error(codes.Canceled, "gone")), context.Canceled) {
		t.Error("CANCELED must match context.Canceled")
	}
	once := wrapError(status.Error(codes.Internal, "x"))
	if wrapError(once) != once {
		t.Error("wrapping an *Error again must return it unchanged")
	}
}
