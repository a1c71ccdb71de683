package servewise

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FieldViolation is one google.rpc.BadRequest field violation: a field path in the request
// (for example "workload.rate_per_s" or "candidates[1].profile.points[0].latency_ms") and why
// its value was rejected.
type FieldViolation struct {
	Field       string
	Description string
}

// Error is a failed Servewise call. Every error the [Client] returns for a finished RPC is an
// *Error; use [errors.As] to reach it. It also satisfies status.FromError and status.Code, and
// errors.Is(err, context.DeadlineExceeded) / errors.Is(err, context.Canceled) hold for the
// matching codes.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the server's one-line description.
	Message string
	// FieldViolations lists every invalid request field (INVALID_ARGUMENT only).
	FieldViolations []FieldViolation
	// Reason is the google.rpc.ErrorInfo reason (a stable UPPER_SNAKE value), when present.
	Reason string

	status *status.Status
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "servewise: %s: %s", e.Code, e.Message)
	if len(e.FieldViolations) > 0 {
		b.WriteString(" (")
		for i, v := range e.FieldViolations {
			if i > 0 {
				b.WriteString("; ")
			}
			fmt.Fprintf(&b, "%s: %s", v.Field, v.Description)
		}
		b.WriteString(")")
	}
	return b.String()
}

// GRPCStatus returns the underlying status, details included, so status.FromError and
// status.Code work on an *Error.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Is reports context.DeadlineExceeded and context.Canceled for the matching codes, so callers
// can test for a timeout without knowing gRPC codes.
func (e *Error) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	case context.Canceled:
		return e.Code == codes.Canceled
	}
	return false
}

// Code returns the gRPC code of err: codes.OK for nil, the status code of an *Error or any
// gRPC status error, and codes.Unknown otherwise.
func Code(err error) codes.Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return status.Code(err)
}

// FieldViolations returns the BadRequest field violations carried by err, or nil.
func FieldViolations(err error) []FieldViolation {
	var e *Error
	if errors.As(err, &e) {
		return e.FieldViolations
	}
	if s, ok := status.FromError(err); ok {
		return fromStatus(s).FieldViolations
	}
	return nil
}

// wrapError turns an error from a gRPC call into an *Error; nil and io.EOF (the clean end of a
// stream) pass through, as do errors that are not gRPC statuses.
func wrapError(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	return fromStatus(s)
}

func fromStatus(s *status.Status) *Error {
	e := &Error{Code: s.Code(), Message: s.Message(), status: s}
	for _, detail := range s.Details() {
		switch d := detail.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations,
					FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		case *errdetails.ErrorInfo:
			if e.Reason == "" {
				e.Reason = d.GetReason()
			}
		}
	}
	return e
}
