package servewise

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	pb "github.com/servewise/servewise/clients/go/servewisev1"
)

// Client calls a Servewise server. It is safe for concurrent use; make one per server and
// share it.
type Client struct {
	conn *grpc.ClientConn
	rpc  pb.ServewiseServiceClient
}

// Dial creates a client for addr ("host:port", or any gRPC target such as "dns:///host:port").
// By default the connection uses TLS with the system roots, retries UNAVAILABLE with
// [DefaultRetryPolicy] and connects lazily on the first call; see the With* options. ctx bounds
// the connection attempt only when [WithBlock] is given.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	cfg := newConfig(opts)
	grpcOpts, err := cfg.grpcOptions()
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, grpcOpts...)
	if err != nil {
		return nil, fmt.Errorf("servewise: dial %s: %w", addr, err)
	}
	if cfg.block {
		if err := waitReady(ctx, conn); err != nil {
			conn.Close()
			return nil, fmt.Errorf("servewise: dial %s: %w", addr, err)
		}
	}
	return NewClient(conn), nil
}

// NewClient wraps an existing connection (for example one shared with other services' stubs).
// Its interceptors and credentials are the caller's: only [Dial] installs the retry policy.
func NewClient(conn *grpc.ClientConn) *Client {
	return &Client{conn: conn, rpc: pb.NewServewiseServiceClient(conn)}
}

func waitReady(ctx context.Context, conn *grpc.ClientConn) error {
	conn.Connect()
	for {
		state := conn.GetState()
		if state == connectivity.Ready {
			return nil
		}
		if !conn.WaitForStateChange(ctx, state) {
			return fmt.Errorf("not ready (last state %s): %w", state, ctx.Err())
		}
	}
}

// Close closes the connection; calls in flight fail with CANCELED.
func (c *Client) Close() error { return c.conn.Close() }

// Conn returns the underlying connection (for health checks or reflection).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Raw returns the generated stub, for call options or RPCs this package does not wrap yet.
func (c *Client) Raw() pb.ServewiseServiceClient { return c.rpc }

// OptimizeBatch returns the cheapest (instance type, max batch size, max queue delay, replicas)
// meeting the SLO, with predicted and simulated latency, cost and the cost-latency frontier. An
// SLO no plan meets is not an error: the response says infeasible and why.
func (c *Client) OptimizeBatch(ctx context.Context, req *pb.OptimizeBatchRequest, opts ...grpc.CallOption) (*pb.OptimizeBatchResponse, error) {
	resp, err := c.rpc.OptimizeBatch(ctx, req, opts...)
	return resp, wrapError(err)
}

// Simulate runs a discrete-event simulation of exactly one plan and workload.
func (c *Client) Simulate(ctx context.Context, req *pb.SimulateRequest, opts ...grpc.CallOption) (*pb.SimulateResponse, error) {
	resp, err := c.rpc.Simulate(ctx, req, opts...)
	return resp, wrapError(err)
}

// SelectMode chooses real-time, dynamic batching, offline batch or hybrid serving.
func (c *Client) SelectMode(ctx context.Context, req *pb.SelectModeRequest, opts ...grpc.CallOption) (*pb.SelectModeResponse, error) {
	resp, err := c.rpc.SelectMode(ctx, req, opts...)
	return resp, wrapError(err)
}

// PlanResources plans replicas over a day: dedicated, autoscaled or shared.
func (c *Client) PlanResources(ctx context.Context, req *pb.PlanResourcesRequest, opts ...grpc.CallOption) (*pb.PlanResourcesResponse, error) {
	resp, err := c.rpc.PlanResources(ctx, req, opts...)
	return resp, wrapError(err)
}

// EvaluateSwitch decides, from recent metrics, whether a deployment should switch now.
func (c *Client) EvaluateSwitch(ctx context.Context, req *pb.EvaluateSwitchRequest, opts ...grpc.CallOption) (*pb.EvaluateSwitchResponse, error) {
	resp, err := c.rpc.EvaluateSwitch(ctx, req, opts...)
	return resp, wrapError(err)
}

// RegisterDeployment creates a deployment (state version 0) or updates it at its current
// state version; a stale version fails with codes.FailedPrecondition.
func (c *Client) RegisterDeployment(ctx context.Context, req *pb.RegisterDeploymentRequest, opts ...grpc.CallOption) (*pb.RegisterDeploymentResponse, error) {
	resp, err := c.rpc.RegisterDeployment(ctx, req, opts...)
	return resp, wrapError(err)
}

// GetDeployment reads one deployment with its state version; codes.NotFound when unknown.
func (c *Client) GetDeployment(ctx context.Context, req *pb.GetDeploymentRequest, opts ...grpc.CallOption) (*pb.GetDeploymentResponse, error) {
	resp, err := c.rpc.GetDeployment(ctx, req, opts...)
	return resp, wrapError(err)
}

// ListDeployments lists deployments by id, a page at a time.
func (c *Client) ListDeployments(ctx context.Context, req *pb.ListDeploymentsRequest, opts ...grpc.CallOption) (*pb.ListDeploymentsResponse, error) {
	resp, err := c.rpc.ListDeployments(ctx, req, opts...)
	return resp, wrapError(err)
}

// Route returns the pool a request goes to.
func (c *Client) Route(ctx context.Context, req *pb.RouteRequest, opts ...grpc.CallOption) (*pb.RouteResponse, error) {
	resp, err := c.rpc.Route(ctx, req, opts...)
	return resp, wrapError(err)
}

// Control opens the bidirectional control stream: metric samples in, control events out. The
// stream lives until ctx ends, the server ends it, or CloseSend is followed by Recv returning
// io.EOF. It is never retried.
func (c *Client) Control(ctx context.Context, opts ...grpc.CallOption) (*ControlStream, error) {
	stream, err := c.rpc.Control(ctx, opts...)
	if err != nil {
		return nil, wrapError(err)
	}
	return &ControlStream{stream: stream}, nil
}

// ControlStream is an open Control stream. One goroutine may Send while another Recvs.
type ControlStream struct {
	stream grpc.BidiStreamingClient[pb.ControlRequest, pb.ControlResponse]
}

// Send sends one request. It returns io.EOF when the server has already ended the stream; Recv
// then returns the reason.
func (s *ControlStream) Send(req *pb.ControlRequest) error {
	return wrapError(s.stream.Send(req))
}

// Recv waits for the next response. It returns io.EOF when the server ends the stream cleanly
// and an *Error when it ends with a status.
func (s *ControlStream) Recv() (*pb.ControlResponse, error) {
	resp, err := s.stream.Recv()
	return resp, wrapError(err)
}

// CloseSend tells the server no more requests follow; keep calling Recv until io.EOF.
func (s *ControlStream) CloseSend() error { return s.stream.CloseSend() }
